"""The lab console's database reads on a long history: rollups (what the console does) against
the raw rows (the baseline), in the same run on the same data.

History: ``N`` numeric endpoints x ``D`` days at 1 Hz, generated in the server (one
``INSERT … SELECT generate_series`` per endpoint and day, so the rollup trigger runs per
statement, as with the logger's COPY batches).  Sizes: ``--quick`` 100 x 0.25 d (2.16 M rows);
default 100 x 1 d (8.64 M rows); ``--console-days 30`` the issue's full size, 100 x 30 d (259 M
rows, ~25 GB of disk and a long load).  The report says which size ran.

Measured, median of the repetitions:

* ``series`` over the whole history, 1 and 10 endpoints (<= 1200 points each): the console's
  query (per-minute/per-hour rollups) and the raw baseline (the same buckets from the raw rows);
* the raw rows of 1 endpoint over the window, fetched as a naive console would (information);
* the run summary of all endpoints over the whole history (rollups + raw edges) and its raw
  baseline; the latest value of every endpoint;
* the whole HTTP request ``GET /api/series`` (10 endpoints) through a running console process,
  and that process's VmRSS afterwards;
* the rollup trigger's cost on ingest: COPY of 2 000-row batches (the logger's batch size) with
  the trigger and with it disabled.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import psutil
import psycopg
import yaml

from .env import Environment, NotRunnable, dsn_params
from .results import Report, Row, at_most

PREFIX = "bench_console_"
TARGET_MS = 1000


def sizes(quick: bool, days: float | None, repeat: int | None) -> tuple[int, float, int]:
    """(endpoints, days, repetitions)."""
    if days is not None:
        return 100, days, repeat or 3
    return (100, 0.25, repeat or 2) if quick else (100, 1.0, repeat or 3)


def load_history(dsn: str, n: int, days: float, end: dt.datetime) -> list[str]:
    """n endpoints x days of 1 Hz values ending at ``end``; returns the endpoint names."""
    names = [f"{PREFIX}{i:03d}" for i in range(n)]
    seconds = int(days * 86400)
    start = end - dt.timedelta(seconds=seconds)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO endpoint_id_map (endpoint_name, type) "
            "SELECT x, 'numeric' FROM unnest(%s::text[]) AS x ON CONFLICT DO NOTHING",
            (names,),
        )
        ids = [
            r[0]
            for r in conn.execute(
                "SELECT endpoint_id FROM endpoint_id_map WHERE endpoint_name = ANY(%s) "
                "ORDER BY endpoint_name",
                (names,),
            )
        ]
        superuser = conn.execute(
            "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
        ).fetchone()[0]
        if superuser:
            # skip the per-row foreign-key check (half the load time); replica mode silences
            # ordinary triggers, so the rollup trigger must fire ALWAYS
            conn.execute(
                "ALTER TABLE endpoint_numeric_data "
                "ENABLE ALWAYS TRIGGER endpoint_numeric_data_rollup"
            )
        chunk = 86400
        for eid in ids:
            for offset in range(0, seconds, chunk):
                with conn.transaction():
                    if superuser:
                        conn.execute("SET LOCAL session_replication_role = replica")
                    conn.execute(
                        'INSERT INTO endpoint_numeric_data (endpoint_id, "timestamp", value_raw, '
                        "value_cal) SELECT %s, %s::timestamp + make_interval(secs => s), "
                        "sin(s / 600.0) + %s * 0.01, 20 + 5 * sin(s / 600.0) "
                        "FROM generate_series(%s::int, %s::int) AS s",
                        (eid, start, eid, offset, min(offset + chunk, seconds) - 1),
                    )
        for table in (
            "endpoint_numeric_data",
            "endpoint_numeric_rollup_1m",
            "endpoint_numeric_rollup_1h",
        ):
            conn.execute(f"VACUUM ANALYZE {table}")
    return names


async def timed(fn: Callable[[], Awaitable[Any]]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = await fn()
    return (time.perf_counter() - t0) * 1000, out


async def measure_queries(
    dsn: str, names: list[str], start: dt.datetime, end: dt.datetime, repeat: int
) -> dict[str, list[float]]:
    from insectarium.console import queries

    samples: dict[str, list[float]] = {}
    info: dict[str, Any] = {}

    def add(key: str, ms: float) -> None:
        samples.setdefault(key, []).append(ms)

    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        known = await queries.endpoint_map(conn)
        ten = names[:10]
        width = queries.bucket_seconds(start, end, 1200)

        async def raw_buckets(selection: list[str]) -> int:
            n = 0
            for name in selection:
                _mode, rows = await queries.aggregated_numeric(
                    conn, known[name].id, start, end, width, source="raw"
                )
                n += len(rows)
            return n

        async def raw_rows() -> int:
            cur = await conn.execute(
                'SELECT "timestamp", value_raw, value_cal FROM endpoint_numeric_data '
                'WHERE endpoint_id = %s AND "timestamp" BETWEEN %s AND %s ORDER BY "timestamp"',
                (known[names[0]].id, start, end),
            )
            return len(await cur.fetchall())

        for r in range(repeat + 1):  # the first round warms the caches and is not counted
            rounds = [
                ("series_1", lambda: queries.series(conn, names[:1], start, end, max_points=1200)),
                ("series_10", lambda: queries.series(conn, ten, start, end, max_points=1200)),
                ("raw_buckets_1", lambda: raw_buckets(names[:1])),
                ("raw_buckets_10", lambda: raw_buckets(ten)),
                ("latest_all", lambda: queries.endpoints(conn)),
                ("summary_all", lambda: queries.run_summary(conn, start, end)),
                ("raw_summary_all", lambda: raw_summary(conn, start, end)),
                ("raw_rows_1", raw_rows),
            ]
            for key, fn in rounds:
                ms, out = await timed(fn)
                if r:
                    add(key, ms)
                if key == "series_10":
                    info["mode"] = out[0]["mode"]
                    info["points"] = len(out[0]["t"])
                if key == "raw_rows_1":
                    info["raw_rows"] = out
    samples["_info"] = [info]  # type: ignore[list-item]
    return samples


async def raw_summary(conn: Any, start: dt.datetime, end: dt.datetime) -> list[Any]:
    cur = await conn.execute(
        "SELECT endpoint_id, count(*), min(value_cal), max(value_cal), avg(value_cal) "
        'FROM endpoint_numeric_data WHERE "timestamp" BETWEEN %s AND %s GROUP BY endpoint_id',
        (start, end),
    )
    return await cur.fetchall()


def measure_http(
    env: Environment, dsn: str, names: list[str], last_s: int, repeat: int
) -> tuple[list[float], float | None, str]:
    """``GET /api/series`` for 10 endpoints over the whole history through a console process."""
    from insectarium.testing.servers import free_port

    pg = dsn_params(dsn)
    port = free_port()
    password = uuid.uuid4().hex
    config = {
        "listen": {"host": "127.0.0.1", "port": port},
        "secret_key": uuid.uuid4().hex * 2,
        "users": [{"name": "bench", "password": password, "role": "viewer"}],
        "database": {
            "host": pg.get("host") or "127.0.0.1",
            "port": int(pg.get("port") or 5432),
            "dbname": pg["dbname"],
            "user": pg.get("user") or "postgres",
            "password": pg.get("password") or "unused-trust",
        },
    }
    path = env.workdir / "console.yaml"
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    log = (env.logs / "console.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "insectarium.console", "-c", str(path), "--log-level", "warning"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    token = base64.b64encode(f"bench:{password}".encode()).decode()
    query = "&".join(f"endpoint={n}" for n in names[:10])
    url = f"http://127.0.0.1:{port}/api/series?{query}&last={last_s}"
    samples: list[float] = []
    body_kb = ""
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise NotRunnable("the console did not start (see its log)") from None
                time.sleep(0.2)
        for r in range(repeat + 1):
            req = urllib.request.Request(url, headers={"Authorization": f"Basic {token}"})
            t0 = time.perf_counter()
            with urllib.request.urlopen(req, timeout=120) as resp:
                body = resp.read()
            ms = (time.perf_counter() - t0) * 1000
            json.loads(body)
            body_kb = f"{len(body) / 1024:.0f} kB"
            if r:
                samples.append(ms)
        rss = psutil.Process(proc.pid).memory_info().rss / 2**20
    finally:
        proc.terminate()
        proc.wait(15)
        log.close()
    return samples, rss, body_kb


def measure_ingest(dsn: str, eid: int, batches: int) -> dict[str, list[float]]:
    """values/s of COPY in 2 000-row batches, with the rollup trigger and without it."""
    out: dict[str, list[float]] = {"with": [], "without": []}
    base = dt.datetime(2001, 1, 1)
    with psycopg.connect(dsn, autocommit=True) as conn:
        for rep in range(3):
            for mode in ("with", "without"):
                action = "ENABLE ALWAYS" if mode == "with" else "DISABLE"
                conn.execute(
                    f"ALTER TABLE endpoint_numeric_data {action} TRIGGER "
                    "endpoint_numeric_data_rollup"
                )
                offset = (rep * 2 + (mode == "with")) * batches * 2000
                t0 = time.perf_counter()
                for b in range(batches):
                    with (
                        conn.transaction(),
                        conn.cursor() as cur,
                        cur.copy(
                            'COPY endpoint_numeric_data (endpoint_id, "timestamp", value_raw, '
                            "value_cal) FROM STDIN"
                        ) as copy,
                    ):
                        for i in range(2000):
                            s = offset + b * 2000 + i
                            copy.write_row((eid, base + dt.timedelta(seconds=s), s, 2.0 * s))
                out[mode].append(batches * 2000 / (time.perf_counter() - t0))
        conn.execute(
            "ALTER TABLE endpoint_numeric_data ENABLE ALWAYS TRIGGER endpoint_numeric_data_rollup"
        )
    return out


def run(
    env: Environment, report: Report, quick: bool, repeat: int | None, days: float | None
) -> None:
    env.require_schema()
    assert env.dsn is not None
    with psycopg.connect(env.dsn) as conn:
        if conn.execute("SELECT to_regclass('public.endpoint_numeric_rollup_1m')").fetchone() == (
            None,
        ):
            raise NotRunnable("no rollup tables: migration 007 is not applied")
    n, d, reps = sizes(quick, days, repeat)
    end = dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0)
    t0 = time.perf_counter()
    names = load_history(env.dsn, n, d, end)
    load_s = time.perf_counter() - t0
    rows = int(n * d * 86400)
    size = f"{n} endpoints x {d:g} d at 1 Hz = {rows / 1e6:.2f} M rows (loaded in {load_s:.0f} s)"
    start = end - dt.timedelta(seconds=int(d * 86400))
    got = asyncio.run(measure_queries(env.dsn, names, start, end, reps))
    info = got.pop("_info")[0]  # type: ignore[index]
    b = "console"
    target = at_most(TARGET_MS, f"< {TARGET_MS} ms")
    rows_spec = [
        ("series_1", "series 1 endpoint, whole window", target, f"rollups; {size}"),
        (
            "series_10",
            "series 10 endpoints, whole window",
            target,
            f"rollups ({info.get('mode')}), {info.get('points')} points each",
        ),
        ("raw_buckets_1", "baseline: same buckets from raw, 1", None, "date_bin over raw rows"),
        ("raw_buckets_10", "baseline: same buckets from raw, 10", None, "date_bin over raw rows"),
        (
            "raw_rows_1",
            "baseline: raw rows of 1 endpoint",
            None,
            f"{info.get('raw_rows')} rows to Python",
        ),
        ("latest_all", f"latest value of {n + 5} endpoints", target, "LATERAL per endpoint"),
        (
            "summary_all",
            f"run summary of {n} endpoints, whole window",
            target,
            "rollup + raw edges",
        ),
        ("raw_summary_all", "baseline: summary from raw", None, "count/min/max/avg over raw"),
    ]
    for key, metric, tgt, note in rows_spec:
        report.add(Row(b, metric, "ms", got.get(key, []), tgt, note=note))
    rolled = info.get("mode") in ("1m", "1h")
    for key, base in (("series_1", "raw_buckets_1"), ("series_10", "raw_buckets_10")):
        if got.get(key) and got.get(base):
            ratio = statistics.median(got[base]) / statistics.median(got[key])
            report.add(
                Row(
                    b,
                    f"{key}: raw baseline / console",
                    "x",
                    [ratio],
                    None,
                    digits=1,
                    note="the raw baseline grows with the window, the rollups do not"
                    if rolled
                    else "window short: the console reads raw rows too",
                )
            )
    http, rss, body = measure_http(env, env.dsn, names, int(d * 86400) + 60, reps)
    report.add(
        Row(
            b,
            "GET /api/series, 10 endpoints",
            "ms",
            http,
            target,
            note=f"whole HTTP request, {body}",
        )
    )
    if rss is not None:
        report.add(
            Row(b, "console VmRSS after the requests", "MB", [rss], at_most(100, "< 100 MB"))
        )
    eid = int(
        psycopg.connect(env.dsn)
        .execute("SELECT endpoint_id FROM endpoint_id_map WHERE endpoint_name = %s", (names[0],))
        .fetchone()[0]
    )
    ingest = measure_ingest(env.dsn, eid, 10 if quick else 25)
    report.add(Row(b, "COPY 2 000-row batches, rollup trigger on", "values/s", ingest["with"]))
    report.add(Row(b, "COPY 2 000-row batches, trigger off", "values/s", ingest["without"]))
