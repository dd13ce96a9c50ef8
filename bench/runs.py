"""Run start and end with the whole lab running: ``start_timed_run`` and the end-of-run snapshot.

100 mapped endpoints get one hour of 1 Hz history (360 000 rows, bulk-loaded with COPY); the six
lab services run as processes exactly as the lab starts them; then, per repetition:
``cmd daq_interface -s start_timed_run`` (time to reply), ``cmd daq_interface -s end_run`` (which
snapshots the run's own short window) and ``cmd sc_snapshot -s take_snapshot`` over the whole hour.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import time
from dataclasses import dataclass

import psycopg

from .env import CONFIGS, Environment, NotRunnable, ServiceProcess
from .results import Report, Row, at_most

N_ENDPOINTS = 100
HISTORY_S = 3600
PREFIX = "bench_run_"


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


def start_lab(
    env: Environment,
    services: list[LabService] | None = None,
    *,
    report: Report | None = None,
    benchmark: str = "runs",
    strict: bool = False,
) -> list[ServiceProcess]:
    """Start the services together; a missing config is NOT RUN (raised when ``strict``)."""
    procs: list[ServiceProcess] = []
    for spec in services or LAB_SERVICES:
        try:
            procs.append(
                ServiceProcess.dl_serve(env, spec.name, spec.config, *overrides_for(env, spec))
            )
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
    """100 endpoints x 3600 values at 1 Hz ending at ``end`` (naive UTC), via COPY."""
    names = [f"{PREFIX}{i:03d}" for i in range(N_ENDPOINTS)]
    with psycopg.connect(dsn) as conn:
        conn.execute(
            "INSERT INTO endpoint_id_map (endpoint_name, type) "
            "SELECT n, 'numeric' FROM unnest(%s::text[]) AS n ON CONFLICT DO NOTHING",
            (names,),
        )
        ids = conn.execute(
            "SELECT endpoint_id FROM endpoint_id_map WHERE endpoint_name = ANY(%s) "
            "ORDER BY endpoint_name",
            (names,),
        ).fetchall()
        start = end - dt.timedelta(seconds=HISTORY_S)
        buf = io.StringIO()
        for (eid,) in ids:
            for s in range(HISTORY_S):
                ts = start + dt.timedelta(seconds=s)
                buf.write(f"{eid}\t{ts:%Y-%m-%d %H:%M:%S}\t{s * 0.001:.3f}\t{s * 0.002:.3f}\n")
        with (
            conn.cursor() as cur,
            cur.copy(
                'COPY endpoint_numeric_data (endpoint_id, "timestamp", value_raw, value_cal) '
                "FROM STDIN"
            ) as copy,
        ):
            copy.write(buf.getvalue())
        conn.commit()
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE endpoint_numeric_data")
    return names


async def _measure(env: Environment, repeat: int, start: dt.datetime) -> dict[str, list[float]]:
    from insectarium.dripline import Interface
    from insectarium.dripline.message import format_timestamp

    assert env.broker is not None
    times: dict[str, list[float]] = {"start": [], "end_run": [], "snapshot": []}
    async with Interface(
        dripline_mesh=env.broker.mesh(),
        username=env.broker.user,
        password=env.broker.password,
        name="bench",
        timeout_s=60,
    ) as dl:
        for r in range(-1, repeat):  # r == -1: warm-up
            t0 = time.perf_counter()
            await dl.cmd("daq_interface", "start_timed_run", [f"bench_run_{r + 1}", 3600])
            t1 = time.perf_counter()
            await dl.cmd("daq_interface", "end_run")
            t2 = time.perf_counter()
            end = dt.datetime.now(dt.UTC)
            out = env.data_dir / "snapshots" / f"hour_{r + 1}_snapshot.json"
            await dl.cmd(
                "sc_snapshot",
                "take_snapshot",
                [format_timestamp(start), format_timestamp(end), "metadata", str(out)],
            )
            t3 = time.perf_counter()
            if r >= 0:
                times["start"].append((t1 - t0) * 1000)
                times["end_run"].append((t2 - t1) * 1000)
                times["snapshot"].append((t3 - t2) * 1000)
    return times


def run(env: Environment, report: Report, quick: bool, repeat: int | None) -> None:
    env.require_schema()
    assert env.dsn is not None
    missing = [s.config for s in LAB_SERVICES if not (CONFIGS / s.config).is_file()]
    if missing:
        raise NotRunnable("files/configs/" + ", ".join(missing) + " missing")
    reps = repeat or (2 if quick else 5)
    end = dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0)
    t0 = time.perf_counter()
    bulk_load(env.dsn, end)
    load_s = time.perf_counter() - t0
    procs = start_lab(env, strict=True)
    try:
        times = asyncio.run(_measure(env, reps, (end - dt.timedelta(seconds=HISTORY_S))))
        for p in procs:
            p.phase = f"{reps + 1} runs"
            p.rss()
    finally:
        stop_lab(procs)
    b = "run start/end"
    note = f"{N_ENDPOINTS * HISTORY_S} rows loaded in {load_s:.1f} s"
    target = at_most(1000, "< 1 000 ms")
    report.add(Row(b, "start_timed_run reply", "ms", times["start"], target, note=note))
    report.add(Row(b, "end_run reply", "ms", times["end_run"], target, note="snapshot of the run"))
    report.add(
        Row(b, "take_snapshot over 1 h", "ms", times["snapshot"], target, note="100 endpoints")
    )
