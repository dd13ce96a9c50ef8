"""Logger ingest: how many ``sensor_value.<name>`` alerts per second end up as rows.

200 endpoints are registered in ``endpoint_id_map`` first; the alerts are built with the runtime's
own ``Message.alert`` + ``encode`` (the real wire format, as an Entity sends them), each with its
own timestamp header so every value has a distinct primary key.  They are encoded beforehand and
published as fast as several publishers can while the logger consumes; the clock runs from the
first publish to the moment the last row is in the data table.  The count must reach the number
published; a shortfall is reported as loss.  ``not-sc_db`` runs as the lab runs it (``dl-serve -c
slow_control_table.yaml``); the naive baseline is :func:`bench.baselines.naive_logger`.
"""

from __future__ import annotations

import datetime as dt
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import psycopg

from .baselines import NAIVE_QUEUE, NAIVE_READY
from .blast import Blob, marshal_publish, publish_parallel
from .env import Environment, NotRunnable, ServiceProcess
from .results import Report, Row, Target, at_least

N_ENDPOINTS = 200
PREFIX = "bench_ingest_"
PUBLISHERS = 4
ALERTS_EXCHANGE = "alerts"


@dataclass
class Sizes:
    repeat: int
    ours: int
    naive: int
    naive_repeat: int
    #: alerts of the live round (warm-up) of ours / of the naive logger
    live: int
    naive_live: int


def sizes(quick: bool, repeat: int | None) -> Sizes:
    """The naive logger is two orders slower: fewer values give it the same statistical weight."""
    if quick:
        return Sizes(repeat or 1, 10_000, 300, 1, 2_000, 100)
    return Sizes(repeat or 3, 50_000, 3_000, min(repeat or 2, 2), 10_000, 500)


@dataclass
class Outcome:
    """One round: what was published, what arrived, and when."""

    published: int
    rows: int
    value_sum_ok: bool
    publish_s: float
    #: rows already in when timing started, and seconds from then until the last row
    rows_at_start: int
    drain_s: float
    #: logger CPU seconds spent on the timed rows (backlog rounds only)
    cpu_s: float | None = None

    @property
    def cpu_us_per_value(self) -> float | None:
        timed = self.rows - self.rows_at_start
        return self.cpu_s / timed * 1e6 if self.cpu_s is not None and timed > 0 else None

    @property
    def rate(self) -> float:
        timed = self.rows - self.rows_at_start
        return timed / self.drain_s if self.drain_s > 0 else 0.0

    @property
    def publish_rate(self) -> float:
        return self.published / self.publish_s if self.publish_s > 0 else 0.0

    @property
    def lost(self) -> bool:
        return self.rows != self.published or not self.value_sum_ok


def endpoint_names() -> list[str]:
    return [f"{PREFIX}{i:03d}" for i in range(N_ENDPOINTS)]


def register_endpoints(dsn: str, names: list[str]) -> list[int]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO endpoint_id_map (endpoint_name, type) "
            "SELECT n, 'numeric' FROM unnest(%s::text[]) AS n ON CONFLICT DO NOTHING",
            (names,),
        )
        rows = conn.execute(
            "SELECT endpoint_id FROM endpoint_id_map WHERE endpoint_name = ANY(%s)", (names,)
        ).fetchall()
    return [r[0] for r in rows]


def encode_alerts(n: int, base: dt.datetime, publishers: int = PUBLISHERS) -> list[Blob]:
    """``n`` alerts over the endpoints, as AMQP frames, dealt round-robin to ``publishers``.

    Value i goes to endpoint i mod 200 with timestamp base + i us and value_raw i.
    """
    from insectarium.dripline.message import Message, encode, format_timestamp

    names = endpoint_names()
    parts: list[list[bytes]] = [[] for _ in range(publishers)]
    step = dt.timedelta(microseconds=1)
    for i in range(n):
        rk = f"sensor_value.{names[i % N_ENDPOINTS]}"
        msg = Message.alert(rk, {"value_raw": float(i), "value_cal": 2.0 * i}, sender="bench")
        msg.timestamp = format_timestamp(base + i * step)
        (amqp,) = encode(msg)
        parts[i % publishers].append(marshal_publish(ALERTS_EXCHANGE, rk, amqp))
    return [Blob(b"".join(p), len(p)) for p in parts]


class RowCounter:
    """Counts the benchmark's rows in the data table (its own connection, polled every 20 ms)."""

    def __init__(self, dsn: str, ids: list[int]) -> None:
        self.conn = psycopg.connect(dsn, autocommit=True)
        self.range = (min(ids), max(ids))

    def count(self) -> int:
        sql = "SELECT count(*) FROM endpoint_numeric_data WHERE endpoint_id BETWEEN %s AND %s"
        return int(self.conn.execute(sql, self.range).fetchone()[0])  # type: ignore[index]

    def wait(
        self,
        expected: int,
        *,
        from_first_row: bool,
        first_s: float = 60,
        stall_s: float = 10,
        on_start: Callable[[], None] | None = None,
    ) -> tuple[int, int, float]:
        """Poll until ``expected`` rows, or no progress for ``stall_s`` (``first_s`` for the first).

        Returns (rows, rows when the clock started, seconds).  The clock starts now, or with
        ``from_first_row`` at the first poll that sees rows (a logger draining a backlog: its
        start-up is not ingest time; the rows of that first flush are then not counted).
        """
        t0 = time.perf_counter()
        start_rows = 0
        started = not from_first_row
        last, last_change = 0, t0
        while True:
            count = self.count()
            now = time.perf_counter()
            if not started and count > 0:
                started, t0, start_rows = True, now, count
                if on_start is not None:
                    on_start()
            if count >= expected:
                return count, start_rows, now - t0
            if count != last:
                last, last_change = count, now
            elif now - last_change > (stall_s if count else first_s):
                return count, start_rows, last_change - t0
            time.sleep(0.02)

    def close(self) -> None:
        self.conn.close()


def check_and_clear(dsn: str, ids: list[int], n: int) -> bool:
    """Whether the stored value_raw are exactly 0..n-1; then empty the table for the next round."""
    lo, hi = min(ids), max(ids)
    with psycopg.connect(dsn, autocommit=True) as conn:
        total = conn.execute(
            "SELECT coalesce(sum(value_raw), 0) FROM endpoint_numeric_data "
            "WHERE endpoint_id BETWEEN %s AND %s",
            (lo, hi),
        ).fetchone()[0]  # type: ignore[index]
        conn.execute(
            "DELETE FROM endpoint_numeric_data WHERE endpoint_id BETWEEN %s AND %s", (lo, hi)
        )
        conn.execute("VACUUM ANALYZE endpoint_numeric_data")
    return abs(float(total) - n * (n - 1) / 2) < 1e-6 * max(1.0, n * n)


def live_round(
    env: Environment, counter: RowCounter, ids: list[int], n: int, base: dt.datetime
) -> Outcome:
    """Publish while the (running) logger consumes; the clock runs from the first publish."""
    assert env.dsn is not None and env.broker is not None
    blobs = encode_alerts(n, base)
    t0, publish_s = publish_parallel(env.broker, blobs)
    rows, _, _ = counter.wait(n, from_first_row=False)
    total_s = time.perf_counter() - t0 if rows == n else 0.0
    ok = check_and_clear(env.dsn, ids, n) if rows == n else False
    return Outcome(n, rows, ok, publish_s, 0, total_s)


def backlog_round(
    env: Environment,
    make: Callable[[], ServiceProcess],
    counter: RowCounter,
    ids: list[int],
    n: int,
    base: dt.datetime,
    phase: str,
) -> Outcome:
    """Queue ``n`` alerts while the logger is stopped, start it, time the drain."""
    assert env.dsn is not None and env.broker is not None
    blobs = encode_alerts(n, base)
    _, publish_s = publish_parallel(env.broker, blobs)
    proc = make().launch()
    cpu0: list[float | None] = []
    try:
        rows, at_start, drain_s = counter.wait(
            n, from_first_row=True, on_start=lambda: cpu0.append(proc.cpu_s())
        )
        cpu1 = proc.cpu_s()
        proc.phase = phase
        proc.rss()
    finally:
        proc.stop()
    if rows < n:
        print(f"  {proc.name}: {n - rows} of {n} values missing; log: {proc.tail()}")
    ok = check_and_clear(env.dsn, ids, n) if rows == n else False
    if rows != n:
        check_and_clear(env.dsn, ids, 0)
    cpu = cpu1 - cpu0[0] if cpu0 and cpu0[0] is not None and cpu1 is not None else None
    return Outcome(n, rows, ok, publish_s, at_start, drain_s, cpu)


def measure(
    env: Environment,
    make: Callable[[], ServiceProcess],
    ids: list[int],
    n: int,
    repeat: int,
    n_live: int,
) -> tuple[Outcome, list[Outcome]]:
    """A live round on a started logger (warm-up; also creates its queue), then backlog rounds."""
    assert env.dsn is not None
    base = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    counter = RowCounter(env.dsn, ids)
    try:
        with make():
            live = live_round(env, counter, ids, n_live, base - dt.timedelta(days=1))
        phase = f"draining {n} queued alerts"
        rounds = [
            backlog_round(env, make, counter, ids, n, base + dt.timedelta(hours=r), phase)
            for r in range(repeat)
        ]
    finally:
        counter.close()
    return live, rounds


def loss_note(outcomes: list[Outcome]) -> str:
    lost = [o for o in outcomes if o.lost]
    if not lost:
        return "all values arrived"
    return "LOSS: " + ", ".join(
        f"{o.published - o.rows} of {o.published} missing"
        if o.rows != o.published
        else "stored values differ from those sent"
        for o in lost
    )


def report_rows(
    report: Report, who: str, live: Outcome, rounds: list[Outcome], target: Target | None = None
) -> Row:
    b = "logger ingest"
    n = rounds[0].published
    row = report.add(
        Row(
            b,
            f"{who} values/s",
            "values/s",
            [o.rate for o in rounds if not o.lost],
            target,
            note=f"drain of {n} queued alerts x {len(rounds)}; {loss_note(rounds)}",
            digits=0,
        )
    )
    if not row.samples:
        row.not_run = f"every round lost values: {loss_note(rounds)}"
    cpu = [c for o in rounds if (c := o.cpu_us_per_value) is not None]
    report.add(
        Row(
            b,
            f"{who} CPU per value",
            "us",
            cpu,
            note=f"logger process user+sys CPU while draining: at most "
            f"~{1e6 / statistics.median(cpu):,.0f} values/s with a core to itself"
            if cpu
            else "",
            digits=0,
        )
    )
    report.add(
        Row(
            b,
            f"{who} values/s, live",
            "values/s",
            [live.rate] if not live.lost else [],
            note=f"{live.published} alerts published while consuming, "
            f"{PUBLISHERS} publishers at {live.publish_rate:,.0f} msgs/s; {loss_note([live])}",
            digits=0,
        )
    )
    return row


def run(env: Environment, report: Report, quick: bool, repeat: int | None) -> None:
    env.require_schema()
    assert env.dsn is not None
    sz = sizes(quick, repeat)
    ids = register_endpoints(env.dsn, endpoint_names())
    if len(ids) != N_ENDPOINTS:
        raise NotRunnable(f"registered {len(ids)} of {N_ENDPOINTS} endpoints")

    def naive() -> ServiceProcess:
        return ServiceProcess.baseline(env, "naive-logger", NAIVE_READY)

    def ours() -> ServiceProcess:
        return ServiceProcess.dl_serve(
            env, "not-sc_db", "slow_control_table.yaml", *env.db_overrides()
        )

    try:
        live, rounds = measure(env, naive, ids, sz.naive, sz.naive_repeat, sz.naive_live)
        naive_row = report_rows(report, "naive", live, rounds)
    finally:
        delete_queue(env, NAIVE_QUEUE)
    try:
        ours()
    except NotRunnable as exc:
        report.not_run("logger ingest (ours)", str(exc))
        return
    live, rounds = measure(env, ours, ids, sz.ours, sz.repeat, sz.live)
    row = report_rows(report, "ours (not-sc_db)", live, rounds, at_least(20_000, ">= 20 000/s"))
    if naive_row.median and row.samples:
        report.add(
            Row(
                "logger ingest",
                "ours / naive",
                "x",
                [r / naive_row.median for r in row.samples],
                at_least(10, ">= 10x"),
                note="each round of ours / median naive",
            )
        )


def delete_queue(env: Environment, name: str) -> None:
    """The naive logger's queue outlives it on purpose (backlog rounds); remove it at the end."""
    import asyncio

    import aio_pika

    assert env.broker is not None

    async def delete() -> None:
        conn = await aio_pika.connect(env.broker.url)  # type: ignore[union-attr]
        try:
            channel = await conn.channel()
            await channel.queue_delete(name)
        finally:
            await conn.close()

    asyncio.run(delete())
