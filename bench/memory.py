"""Resident memory (VmRSS, psutil) of each lab service process: after start, and after its load.

"After start" is read the moment the service logs that it started; "after <load>" once per load
that a benchmark drove (request round trip, ingest, the lab's runs, the 100-endpoint snapshots),
a second after it, each reading under the name of its load.  Services that no other
selected benchmark started are started here, all six together, to get at least the first figure.
"""

from __future__ import annotations

import itertools

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


#: what "stays flat over runs" allows per run: arena fragmentation moves a reading by a few
#: hundred kB either way; the DAQ's suspected leak was 2.4 MiB per run
GROWTH_LIMIT_MB = 0.5


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
    for p in procs:
        growth_row(report, name, p.per_run)


def growth_row(report: Report, name: str, per_run: list[int]) -> None:
    """Net VmRSS change per run from the second run to the last (the first run loads what runs
    need once: the report renderer, worker threads); the run-to-run steps, which fragmentation
    moves both ways, are in the note."""
    if len(per_run) < 3:
        return
    steps = [(b - a) / MB for a, b in itertools.pairwise(per_run[1:])]
    net = (per_run[-1] - per_run[1]) / MB / len(steps)
    report.add(
        Row(
            "memory",
            f"{name} RSS change per run",
            "MiB",
            [net],
            at_most(GROWTH_LIMIT_MB, f"<= {GROWTH_LIMIT_MB} MiB/run"),
            note=(
                f"runs 2-{len(per_run)}: {per_run[1] / MB:.1f} -> {per_run[-1] / MB:.1f} MiB, "
                f"steps {min(steps):+.2f} .. {max(steps):+.2f} (run 1: {per_run[0] / MB:.1f})"
            ),
            digits=2,
        )
    )
