"""``python -m bench [--quick] [--only NAME …] [--repeat N]``: run the benchmarks, print, save.

Exit status: 0 when every selected benchmark ran (whatever its verdicts: a MISS is a finding,
not a failure), 3 when one could not run (missing config, server, schema …), 2 on a usage error.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import sys
import time
import traceback
from collections.abc import Callable

from rich.console import Console

from . import console as console_bench
from . import ingest, memory, rpc, runs
from .env import REPO, Environment, NotRunnable
from .results import Report, git_info, machine_info

EXIT_NOT_RUN = 3

BENCHMARKS: dict[str, str] = {
    "rpc": "request round trip (ours vs raw aio-pika, small and dripline-shaped); dl-agent, "
    "dragonfly and dl-mon start-up as processes",
    "ingest": "logger ingest: not-sc_db vs a naive one-INSERT-per-alert logger",
    "runs": "start_timed_run reply and end-of-run snapshot over 1 h of 100 endpoints",
    "memory": "VmRSS of every service process after start and after its load",
    "console": "console reads on a long 1 Hz history: rollups vs raw rows, HTTP, trigger cost",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="insectarium benchmarks (issue 6). Results: bench/results/<timestamp>.json",
        epilog="benchmarks: " + "; ".join(f"{k}: {v}" for k, v in BENCHMARKS.items()),
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, < 1 minute")
    parser.add_argument(
        "--only", nargs="+", choices=sorted(BENCHMARKS), metavar="NAME", help="run only these"
    )
    parser.add_argument("--repeat", type=int, default=None, help="repetitions per benchmark")
    parser.add_argument(
        "--amqp-url",
        default=os.environ.get("INSECTARIUM_BENCH_AMQP_URL"),
        help="use this broker instead of a private one (e.g. amqp://guest:guest@localhost:5672/)",
    )
    parser.add_argument(
        "--pg-dsn",
        default=os.environ.get("INSECTARIUM_BENCH_PG_DSN"),
        help="use this PostgreSQL (a role that may CREATE DATABASE) instead of a private one",
    )
    parser.add_argument(
        "--console-days",
        type=float,
        default=None,
        metavar="D",
        help="console benchmark: days of 1 Hz history for 100 endpoints (default 1, quick "
        "0.25; the issue's full size is 30 = 259 M rows, ~25 GB, a long load)",
    )
    parser.add_argument("--schema-file", help="apply this SQL file instead of the migrations")
    parser.add_argument("--keep", action="store_true", help="keep the database and the logs")
    parser.add_argument("--no-save", action="store_true", help="do not write the JSON file")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.repeat is not None and args.repeat < 1:
        parser.error("--repeat must be >= 1")
    logging.basicConfig(level=logging.WARNING)
    # the clients in this process would repeat, chunk by chunk, what the table reports once
    logging.getLogger("insectarium").setLevel(logging.ERROR)
    console = Console() if sys.stdout.isatty() else Console(width=200)
    selected = args.only or list(BENCHMARKS)
    report = Report()
    started = dt.datetime.now(dt.UTC)
    load_start = os.getloadavg()
    t0 = time.perf_counter()
    env = Environment(args.amqp_url, args.pg_dsn, keep=args.keep, schema_file=args.schema_file)
    plan: list[tuple[str, Callable[[], None]]] = [
        ("rpc", lambda: rpc.run(env, report, args.quick, args.repeat)),
        ("ingest", lambda: ingest.run(env, report, args.quick, args.repeat)),
        ("runs", lambda: runs.run(env, report, args.quick, args.repeat)),
        ("memory", lambda: memory.run(env, report, args.quick, "ingest" in selected)),
        (
            "console",
            lambda: console_bench.run(env, report, args.quick, args.repeat, args.console_days),
        ),
    ]
    try:
        console.print(f"[bold]insectarium bench[/] {' '.join(selected)}  (quick={args.quick})")
        env.open()
        console.print(
            f"broker {env.broker.host}:{env.broker.port} vhost {env.broker.vhost!r} "  # type: ignore[union-attr]
            f"({'private' if env.private else 'existing'}); database {env.dbname}; "
            f"work dir {env.workdir}"
        )
        if env.schema_error:
            console.print(f"[yellow]schema: {env.schema_error}[/]")
        for name, bench in plan:
            if name not in selected:
                continue
            b0 = time.perf_counter()
            console.print(f"[cyan]→ {name}[/]: {BENCHMARKS[name]}")
            try:
                bench()
            except NotRunnable as exc:
                report.not_run(name, str(exc))
            except Exception as exc:
                traceback.print_exc()
                report.not_run(name, f"{type(exc).__name__}: {exc}")
            console.print(f"  {name} took {time.perf_counter() - b0:.1f} s")
    except NotRunnable as exc:
        for name in selected:
            report.not_run(name, str(exc))
    finally:
        env.close()
    wall = time.perf_counter() - t0
    report.print(console, f"insectarium benchmarks — {'quick' if args.quick else 'full'} run")
    load_end = os.getloadavg()
    console.print(
        f"wall time {wall:.1f} s; load average {load_start[0]:.1f} at start, {load_end[0]:.1f} "
        f"at end on {os.cpu_count()} CPUs (compare figures within one run, not across runs)"
    )
    if not args.no_save:
        meta = {
            "timestamp": started.isoformat(),
            "wall_time_s": round(wall, 2),
            "args": {k: v for k, v in vars(args).items() if k not in ("amqp_url", "pg_dsn")},
            "selected": selected,
            "git": git_info(REPO),
            "machine": {
                **machine_info(),
                "loadavg_at_start": load_start,
                "loadavg_at_end": load_end,
            },
            "servers": env.info,
        }
        path = report.write_json(meta)
        console.print(f"results: {path.relative_to(REPO)}")
    return EXIT_NOT_RUN if report.any_not_run else 0


if __name__ == "__main__":
    sys.exit(main())
