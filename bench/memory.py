"""Resident memory (VmRSS, psutil) of each lab service process: after start, and after its load.

"After start" is read the moment the service logs that it started; "after <load>" once per load
that a benchmark drove (request round trip, ingest, the lab's runs, the 100-endpoint snapshots),
a second after it, each reading under the name of its load.  Services that no other
selected benchmark started are started here, all six together, to get at least the first figure.
"""

from __future__ import annotations

from .env import Environment, ServiceProcess
from .results import Report, Row, at_most
from .runs import LAB_SERVICES, start_lab, stop_lab

MB = 2**20
LIMIT_MB = 50


def run(env: Environment, report: Report, quick: bool, ingest_ran: bool) -> None:
    seen = {p.name for p in env.processes if p.rss_start is not None}
    missing = [s for s in LAB_SERVICES if s.name not in seen]
    if missing:
        started = start_lab(env, missing, report=report, benchmark="memory")
        stop_lab(started)
    for spec in LAB_SERVICES:
        procs = [p for p in env.processes if p.name == spec.name]
        if not procs:
            continue
        add_rows(report, spec.name, procs)


def add_rows(report: Report, name: str, procs: list[ServiceProcess]) -> None:
    target = at_most(LIMIT_MB, f"< {LIMIT_MB} MiB")
    start = [p.rss_start / MB for p in procs if p.rss_start]
    if start:
        report.add(
            Row(
                "memory", f"{name} after start", "MiB", start, target, note=f"{len(start)} start(s)"
            )
        )
    by_phase: dict[str, list[float]] = {}
    for p in procs:
        for phase, value in p.readings.items():
            by_phase.setdefault(phase, []).append(value / MB)
    for phase, values in by_phase.items():
        # one row per load (e.g. the lab's runs, then the 100-endpoint snapshots): the figure
        # read after that load, under its own name
        report.add(
            Row(
                "memory",
                f"{name} after {phase}",
                "MiB",
                [max(values)],
                target,
                note=f"{len(values)} process(es), the largest",
            )
        )
