"""Resident memory (VmRSS, psutil) of each lab service process: after start, and after its load.

"After start" is read the moment the service logs that it started; "after load" just before the
benchmark that drove it (request round trip, ingest, runs) stops it.  Services that no other
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
    loaded = [(p.rss_last / MB, p.phase) for p in procs if p.rss_last and p.phase]
    if loaded:
        worst = max(loaded)
        report.add(
            Row(
                "memory",
                f"{name} after load",
                "MiB",
                [worst[0]],
                target,
                note=f"after {worst[1]}",
            )
        )
