"""Run start and end with the whole lab running: ``start_timed_run`` and the end-of-run snapshot.

100 mapped endpoints get one hour of 1 Hz history (360 000 rows, bulk-loaded with COPY); the six
lab services run as processes exactly as the lab starts them; then, per repetition:
``cmd daq_interface -s start_timed_run`` (time to reply), ``cmd daq_interface -s end_run`` (which
snapshots the run's own short window) and ``cmd sc_snapshot -s take_snapshot`` over the whole hour.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import yaml

from .env import CONFIGS, Environment, NotRunnable, ServiceProcess
from .results import Report, Row, at_most

N_ENDPOINTS = 100
HISTORY_S = 3600
PREFIX = "bench_run_"
LAB_NUMERIC = ("peaches", "chips", "waffles")


@dataclass(frozen=True)
class LabService:
    name: str
    config: str
    database: bool = False


LAB_SERVICES = [
    LabService("not-glenlivet", "kv_store_tutorial.yaml"),
    LabService("not-sc_db", "slow_control_table.yaml", database=True),
    LabService("not-snapshot_service", "slow_control_snapshot.yaml", database=True),
    LabService("not-run_table", "run_table.yaml", database=True),
    LabService("not-status_multido", "status_multigets.yaml"),
    LabService("not-generic_daq", "generic_daq.yaml"),
]


def overrides_for(env: Environment, spec: LabService) -> list[str]:
    words = list(env.db_overrides()) if spec.database else []
    if spec.name == "not-generic_daq":
        words.append(f"data_directory={env.data_dir}")
    return words


def snapshot_everything(env: Environment) -> Path:
    """slow_control_snapshot.yaml with ``target_items: []`` (= every mapped endpoint).

    The lab file reports five kv endpoints; the benchmark's 100 endpoints must be in the
    snapshot for it to cover the loaded hour.  Everything else is the lab's file unchanged.
    """
    spec = next(s for s in LAB_SERVICES if s.name == "not-snapshot_service")
    config = yaml.safe_load((CONFIGS / spec.config).read_text(encoding="utf-8"))
    for endpoint in config.get("endpoints", []):
        if "target_items" in endpoint:
            endpoint["target_items"] = []
    path = env.workdir / "configs" / spec.config
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def start_lab(
    env: Environment,
    services: list[LabService] | None = None,
    *,
    report: Report | None = None,
    benchmark: str = "runs",
    strict: bool = False,
    configs: dict[str, Path] | None = None,
) -> list[ServiceProcess]:
    """Start the services together; a missing config is NOT RUN (raised when ``strict``).

    ``configs`` replaces the lab file of some services (by service name).
    """
    procs: list[ServiceProcess] = []
    for spec in services or LAB_SERVICES:
        config: str | Path = (configs or {}).get(spec.name, spec.config)
        try:
            procs.append(ServiceProcess.dl_serve(env, spec.name, config, *overrides_for(env, spec)))
        except NotRunnable as exc:
            if strict:
                raise
            if report is not None:
                report.not_run(f"{benchmark}: {spec.name}", str(exc))
    for p in procs:
        p.launch()
    ready: list[ServiceProcess] = []
    try:
        for p in procs:
            try:
                ready.append(p.wait_ready())
            except NotRunnable as exc:
                if strict:
                    raise
                if report is not None:
                    report.not_run(f"{benchmark}: {p.name}", str(exc))
    except BaseException:
        stop_lab(procs)
        raise
    return ready


def stop_lab(procs: list[ServiceProcess]) -> None:
    for p in procs:
        if p.alive():
            p.proc.terminate()  # type: ignore[union-attr]
    for p in procs:
        p.stop()


def bulk_load(dsn: str, end: dt.datetime) -> list[str]:
    """100 endpoints x 3600 values at 1 Hz ending at ``end`` (naive UTC), via COPY.

    The lab's three numeric kv endpoints (seeded) are among the 100, so the lab's own snapshot
    config has values to report; the other 97 are registered here.
    """
    names = [*LAB_NUMERIC, *(f"{PREFIX}{i:03d}" for i in range(N_ENDPOINTS - len(LAB_NUMERIC)))]
    start = end - dt.timedelta(seconds=HISTORY_S)
    stamps = [f"{start + dt.timedelta(seconds=s):%Y-%m-%d %H:%M:%S}" for s in range(HISTORY_S)]
    values = [f"{s * 0.001:.3f}\t{s * 0.002:.3f}\n" for s in range(HISTORY_S)]
    with psycopg.connect(dsn) as conn:
        conn.execute(
            "INSERT INTO endpoint_id_map (endpoint_name, type) "
            "SELECT n, 'numeric' FROM unnest(%s::text[]) AS n ON CONFLICT DO NOTHING",
            (names,),
        )
        conn.commit()
        try:  # skip the per-row foreign-key checks (ids come from the map): half the load time
            conn.execute("SET session_replication_role = replica")
        except psycopg.Error:  # not a superuser: load with the checks
            conn.rollback()
        ids = conn.execute(
            "SELECT endpoint_id FROM endpoint_id_map WHERE endpoint_name = ANY(%s) "
            "AND type = 'numeric'",
            (names,),
        ).fetchall()
        if len(ids) != N_ENDPOINTS:
            raise NotRunnable(f"only {len(ids)} of {N_ENDPOINTS} numeric endpoints registered")
        with (
            conn.cursor() as cur,
            cur.copy(
                'COPY endpoint_numeric_data (endpoint_id, "timestamp", value_raw, value_cal) '
                "FROM STDIN"
            ) as copy,
        ):
            for (eid,) in ids:
                prefix = f"{eid}\t"
                copy.write(
                    "".join(prefix + ts + "\t" + v for ts, v in zip(stamps, values, strict=True))
                )
        conn.commit()
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE endpoint_numeric_data")
    return names


def interface(env: Environment) -> Any:
    from insectarium.dripline import Interface

    assert env.broker is not None
    return Interface(
        dripline_mesh=env.broker.mesh(),
        username=env.broker.user,
        password=env.broker.password,
        name="bench",
        timeout_s=60,
    )


async def timed(call: Awaitable[Any]) -> tuple[float, str]:
    """Milliseconds to the reply, and the error text if the reply was an error."""
    from insectarium.dripline import ReplyError

    t0 = time.perf_counter()
    try:
        await call
    except ReplyError as exc:
        return (time.perf_counter() - t0) * 1000, f"{exc.return_code.value} {exc.message}"
    return (time.perf_counter() - t0) * 1000, ""


@dataclass
class Timings:
    samples: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, list[str]] = field(default_factory=dict)

    def add(self, what: str, ms: float, error: str) -> None:
        if error:
            self.errors.setdefault(what, []).append(f"{error} (after {ms:.0f} ms)")
        else:
            self.samples.setdefault(what, []).append(ms)


#: seconds between a run and the RSS reading after it (the services trim right after a job)
SETTLE_S = 0.5


async def measure_runs(
    env: Environment,
    repeat: int,
    hour: tuple[str, str],
    t: Timings,
    tag: str,
    procs: list[ServiceProcess] | None = None,
) -> None:
    """start_timed_run, end_run, then take_snapshot over the loaded hour; first round warm-up.

    With ``procs``, each one's VmRSS is recorded after every run (``per_run``), outside the
    timed requests.
    """
    async with interface(env) as dl:
        for r in range(-1, repeat):
            name = f"bench_{tag}_{r + 1}"
            out = env.data_dir / "snapshots" / f"{name}_snapshot.json"
            results = [
                ("start", await timed(dl.cmd("daq_interface", "start_timed_run", [name, 3600]))),
                ("end_run", await timed(dl.cmd("daq_interface", "end_run"))),
                (
                    "snapshot",
                    await timed(
                        dl.cmd("sc_snapshot", "take_snapshot", [*hour, "metadata", str(out)])
                    ),
                ),
            ]
            if r >= 0:
                for what, (ms, error) in results:
                    t.add(what, ms, error)
            if procs:
                await asyncio.sleep(SETTLE_S)
                for p in procs:
                    if (value := p.rss()) is not None:
                        p.per_run.append(value)


async def measure_snapshot(
    env: Environment, repeat: int, hour: tuple[str, str], t: Timings
) -> None:
    async with interface(env) as dl:
        for r in range(repeat):
            out = env.data_dir / "snapshots" / f"all_{r}_snapshot.json"
            ms, error = await timed(
                dl.cmd("sc_snapshot", "take_snapshot", [*hour, "metadata", str(out)])
            )
            t.add("snapshot_all", ms, error)
            if error:
                break  # a failure takes long and will not heal by itself


def run(env: Environment, report: Report, quick: bool, repeat: int | None) -> None:
    from insectarium.dripline.message import format_timestamp

    env.require_schema()
    assert env.dsn is not None
    missing = [s.config for s in LAB_SERVICES if not (CONFIGS / s.config).is_file()]
    if missing:
        raise NotRunnable("files/configs/" + ", ".join(missing) + " missing")
    reps = repeat or (1 if quick else 5)
    end = dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0)
    t0 = time.perf_counter()
    bulk_load(env.dsn, end)
    load_s = time.perf_counter() - t0
    start = end - dt.timedelta(seconds=HISTORY_S)
    hour = (format_timestamp(start), format_timestamp(end + dt.timedelta(seconds=1)))
    t = Timings()
    procs = start_lab(env, strict=True)
    try:
        asyncio.run(measure_runs(env, reps, hour, t, "run", procs))
        # the resident size the services settle at after the load (they hand freed memory back
        # a moment after a large job, dripline/memory.py), not a reading taken mid-reply
        time.sleep(1.0)
        for p in procs:
            p.phase = f"{reps + 1} runs"
            p.rss()
        if not quick:
            every_endpoint_snapshot(env, procs, reps, hour, t)
    finally:
        stop_lab(procs)
    add_rows(report, t, load_s, quick)


def every_endpoint_snapshot(
    env: Environment, procs: list[ServiceProcess], reps: int, hour: tuple[str, str], t: Timings
) -> None:
    """Restart not-snapshot_service with ``target_items: []`` and snapshot the hour again."""
    snap = next(p for p in procs if p.name == "not-snapshot_service")
    snap.stop()
    procs.remove(snap)
    spec = next(s for s in LAB_SERVICES if s.name == snap.name)
    every = ServiceProcess.dl_serve(
        env, snap.name, snapshot_everything(env), *overrides_for(env, spec)
    )
    procs.append(every.start())
    n = min(reps, 3)
    asyncio.run(measure_snapshot(env, n, hour, t))
    time.sleep(1.0)  # as after the runs: the size the services settle at
    for p in procs:
        if p.name in (snap.name, "not-generic_daq"):  # the two that carried the snapshots
            p.phase = f"{n} snapshots of {N_ENDPOINTS} endpoints"
            p.rss()


def add_rows(report: Report, t: Timings, load_s: float, quick: bool) -> None:
    b = "run start/end"
    target = at_most(1000, "< 1 000 ms")
    rows = [
        (
            "start",
            "start_timed_run reply",
            f"{N_ENDPOINTS * HISTORY_S} rows loaded in {load_s:.1f} s",
        ),
        ("end_run", "end_run reply", "snapshot of the run's own seconds + run-table end"),
        (
            "snapshot",
            "take_snapshot 1 h, lab targets",
            "lab slow_control_snapshot.yaml: 3 of its 5 kv endpoints have 3600 values each",
        ),
    ]
    if not quick:
        rows.append(
            (
                "snapshot_all",
                "take_snapshot 1 h, 100 endpoints",
                f"target_items: [] -> {N_ENDPOINTS} x {HISTORY_S} values to metadata.write_json",
            )
        )
    for key, metric, note in rows:
        errors = t.errors.get(key, [])
        row = report.add(Row(b, metric, "ms", t.samples.get(key, []), target, note=note))
        if errors:
            row.failed = f"{len(errors)} failed: {errors[0]}"
