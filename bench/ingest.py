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

import asyncio
import datetime as dt
import json
import statistics
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import psycopg

from .baselines import NAIVE_QUEUE, NAIVE_READY, RAW_CONSUMERS, RAW_READY
from .blast import Blob, marshal_publish, publish_parallel
from .env import Environment, NotRunnable, ServiceProcess
from .results import Report, Row, Target, at_least

N_ENDPOINTS = 200
PREFIX = "bench_ingest_"
PUBLISHERS = 4
ALERTS_EXCHANGE = "alerts"
#: this run's own queues: nothing an earlier run left behind can be counted (issue 14, item 6)
RUN_TAG = uuid.uuid4().hex[:8]
OURS_QUEUE = f"bench_sc_db_alerts_{RUN_TAG}"
RAW_QUEUE = f"bench_raw_alerts_{RUN_TAG}"
#: seconds after a drain at which the logger's RSS is read again (it trims 1 s after a burst)
SETTLE_S = 2.5


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
    #: logger VmRSS (MiB, largest process) the moment the last row arrived, and SETTLE_S later
    rss_end: float | None = None
    rss_settled: float | None = None

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


def _cpu(procs: list[ServiceProcess]) -> float | None:
    """Summed user + system CPU seconds of ``procs`` (``None`` if one cannot be read)."""
    values = [p.cpu_s() for p in procs]
    return None if any(v is None for v in values) else sum(v for v in values if v is not None)


def backlog_round(
    env: Environment,
    make: Callable[[int], ServiceProcess],
    counter: RowCounter,
    ids: list[int],
    n: int,
    base: dt.datetime,
    phase: str,
    queue: str | None = None,
    processes: int = 1,
    settle: bool = False,
) -> Outcome:
    """Queue ``n`` alerts while the logger is stopped, start ``processes`` of it, time the drain.

    With ``settle`` the logger's RSS is also read :data:`SETTLE_S` after the last row.

    Afterwards ``queue`` is emptied and what was left in it is reported, so that a round that
    lost values cannot leave them to be counted by the next one.
    """
    assert env.dsn is not None and env.broker is not None
    blobs = encode_alerts(n, base)
    _, publish_s = publish_parallel(env.broker, blobs)
    procs = [make(i).launch() for i in range(processes)]
    cpu0: list[float | None] = []
    at_end: list[int | None] = [None] * processes
    try:
        rows, at_start, drain_s = counter.wait(
            n, from_first_row=True, on_start=lambda: cpu0.append(_cpu(procs))
        )
        cpu1 = _cpu(procs)
        for proc in procs:
            proc.phase = phase
            proc.rss()
        # the memory benchmark's "after load" figure stays the one read as the last row
        # arrived (the working set of the burst), not a later, smaller one
        at_end = [proc.rss_last for proc in procs]
        rss_settled = None
        if settle and rows >= n:
            # what the logger keeps once the burst is over (it trims after TRIM_IDLE_S idle);
            # read without a phase, so that it does not replace the memory table's figure
            time.sleep(SETTLE_S)
            for proc in procs:
                proc.phase = ""
            rss_settled = _max_mib([proc.rss() for proc in procs])
    finally:
        for proc in procs:
            proc.stop()
    for proc, value in zip(procs, at_end, strict=True):
        proc.rss_last = value
    if rows < n:
        for proc in procs:
            print(f"  {proc.name}: {n - rows} of {n} values missing; log: {proc.tail()}")
    if queue is not None and (left := queue_op(env, "purge", queue)):
        print(f"  {left} alerts were left in {queue} after the round (purged)")
    ok = check_and_clear(env.dsn, ids, n) if rows == n else False
    if rows != n:
        check_and_clear(env.dsn, ids, 0)
    cpu = cpu1 - cpu0[0] if cpu0 and cpu0[0] is not None and cpu1 is not None else None
    return Outcome(n, rows, ok, publish_s, at_start, drain_s, cpu, _max_mib(at_end), rss_settled)


def _max_mib(values: list[int | None]) -> float | None:
    known = [v for v in values if v is not None]
    return max(known) / 2**20 if known else None


def measure(
    env: Environment,
    make: Callable[[int], ServiceProcess],
    ids: list[int],
    n: int,
    repeat: int,
    n_live: int,
    queue: str | None = None,
    processes: tuple[int, ...] = (1,),
    settle: bool = False,
    before_single: Callable[[], None] | None = None,
) -> tuple[Outcome, dict[int, list[Outcome]]]:
    """A live round on a started logger (warm-up; also creates its queue), then backlog rounds
    with each number of ``processes`` in turn (alternating, so load swings hit all alike).

    ``before_single`` runs right before each 1-process round (the paired raw consumer)."""
    assert env.dsn is not None
    base = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    counter = RowCounter(env.dsn, ids)
    rounds: dict[int, list[Outcome]] = {p: [] for p in processes}
    try:
        with make(0):
            live = live_round(env, counter, ids, n_live, base - dt.timedelta(days=1))
        if queue is not None and (left := queue_op(env, "purge", queue)):
            print(f"  {left} alerts were left in {queue} after the live round (purged)")
        hour = 0
        for _ in range(repeat):
            for p in processes:
                if p == 1 and before_single is not None:
                    before_single()
                phase = f"draining {n} queued alerts" + (f" ({p} processes)" if p > 1 else "")
                start = base + dt.timedelta(hours=hour)
                hour += 1
                rounds[p].append(
                    backlog_round(env, make, counter, ids, n, start, phase, queue, p, settle)
                )
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
    report: Report,
    who: str,
    live: Outcome | None,
    rounds: list[Outcome],
    target: Target | None = None,
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
    ends = [o.rss_end for o in rounds if o.rss_end is not None]
    settled = [o.rss_settled for o in rounds if o.rss_settled is not None]
    if settled:
        report.add(
            Row(
                b,
                f"{who} RSS after draining, settled",
                "MiB",
                settled,
                note=f"VmRSS {SETTLE_S:g} s after the last row (largest process); as the last "
                f"row arrived: {statistics.median(ends):.1f} MiB (median; the memory table's "
                "figure)",
            )
        )
    if live is None:
        return row
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

    def naive(_i: int) -> ServiceProcess:
        return ServiceProcess.baseline(env, "naive-logger", NAIVE_READY)

    def ours(i: int) -> ServiceProcess:
        # every process drains the same queue; the second and later ones under their own name
        # and without the status endpoint, as the role deploys them (sensor_logger_processes)
        return ServiceProcess.dl_serve(
            env,
            f"not-sc_db-{i + 1}" if i else "not-sc_db",
            "slow_control_table.yaml",
            *env.db_overrides(),
            f"alert_queue_name={OURS_QUEUE}",
            *([f"name=not-sc_db-{i + 1}", "endpoints="] if i else []),
        )

    try:
        live, by_procs = measure(env, naive, ids, sz.naive, sz.naive_repeat, sz.naive_live)
        naive_row = report_rows(report, "naive", live, by_procs[1])
    finally:
        queue_op(env, "delete", NAIVE_QUEUE)
    raw = raw_rounds(env, report, sz.ours, sz.repeat)
    trigger_cost(env, report, ids, sz.ours, sz.repeat)
    try:
        ours(0)
    except NotRunnable as exc:
        report.not_run("logger ingest (ours)", str(exc))
        return
    # the best raw consumer drains the same backlog right before each 1-process round of ours,
    # so that each ratio compares two drains seconds apart (the machine's load swings within
    # minutes: the raw rounds above ran before the naive logger and the COPY rounds)
    best = max(raw.items(), key=lambda kv: kv[1])[0] if raw else None
    paired: list[RawOutcome | None] = []
    if best is not None:
        queue_op(env, "declare", RAW_QUEUE)
        paired_blobs = encode_alerts(sz.ours, dt.datetime(2025, 1, 1, tzinfo=dt.UTC))

    def raw_before_ours() -> None:
        if best is None:
            return
        # the logger's queue (bound to the same exchange) must not receive these alerts: it
        # is unbound for the raw round (the logger binds it again when it starts)
        queue_op(env, "unbind", OURS_QUEUE)
        try:
            paired.append(raw_drain(env, best, paired_blobs, sz.ours))
        finally:
            queue_op(env, "bind", OURS_QUEUE)

    try:
        live, by_procs = measure(
            env,
            ours,
            ids,
            sz.ours,
            sz.repeat,
            sz.live,
            OURS_QUEUE,
            processes=(1, 2),
            settle=True,
            before_single=raw_before_ours,
        )
    finally:
        queue_op(env, "delete", OURS_QUEUE)
        if best is not None:
            queue_op(env, "delete", RAW_QUEUE)
    row = report_rows(
        report, "ours (not-sc_db)", live, by_procs[1], at_least(20_000, ">= 20 000/s")
    )
    two = report_rows(report, "ours, 2 processes", None, by_procs[2])
    if row.median and two.samples:
        report.add(
            Row(
                "logger ingest",
                "ours, 2 processes / 1",
                "x",
                [r / row.median for r in two.samples],
                note="each 2-process round / median of 1 process (same queue, same run)",
                digits=2,
            )
        )
    if raw and row.samples:
        best_rate = raw[best]  # type: ignore[index]
        report.add(
            Row(
                "logger ingest",
                "ours / best raw consumer, medians",
                "x",
                [r / best_rate for r in row.samples],
                note=f"each round of ours (into PostgreSQL) / median of the raw {best} rounds "
                "above (no database; minutes apart)",
                digits=2,
            )
        )
        pairs = [
            (o.rate, r.n / r.seconds)
            for o, r in zip(by_procs[1], paired, strict=False)
            if r is not None and r.seconds > 0 and not o.lost
        ]
        ratio = report.add(
            Row(
                "logger ingest",
                "ours / best raw consumer",
                "x",
                [ours_rate / raw_rate for ours_rate, raw_rate in pairs],
                at_least(0.8, ">= 0.8"),
                note=f"each round of ours / the raw {best} drain of the same backlog right "
                "before it: " + ", ".join(f"{a:,.0f}/{b:,.0f}" for a, b in pairs),
                digits=2,
            )
        )
        if not pairs:
            ratio.not_run = f"no paired raw {best} round gave a result"
    if naive_row.median and row.samples:
        report.add(
            Row(
                "logger ingest",
                "ours / naive",
                "x",
                [r / naive_row.median for r in row.samples],
                at_least(15, ">= 15x"),
                note="each round of ours / median naive",
            )
        )


def trigger_cost(env: Environment, report: Report, ids: list[int], n: int, repeat: int) -> None:
    """Server-side cost of the logger's COPY batches with the numeric rollup trigger (007) on
    and off: the rows of ``n`` alerts as the logger writes them (2 000 per transaction over the
    200 endpoints), sent as ready-made COPY text so that the client costs nothing."""
    assert env.dsn is not None
    base = dt.datetime(2024, 1, 1)
    batches = []
    for lo in range(0, n, 2000):
        lines = [
            f"{ids[i % len(ids)]}\t{base + dt.timedelta(microseconds=i)}\t{i}\t{2 * i}\n"
            for i in range(lo, min(n, lo + 2000))
        ]
        batches.append("".join(lines).encode())
    copy_sql = (
        'COPY endpoint_numeric_data (endpoint_id, "timestamp", value_raw, value_cal) FROM STDIN'
    )
    rates: dict[str, list[float]] = {"on": [], "off": []}
    with psycopg.connect(env.dsn, autocommit=True) as conn:
        try:
            for _ in range(repeat):
                for mode in ("on", "off"):
                    action = "ENABLE" if mode == "on" else "DISABLE"
                    conn.execute(
                        f"ALTER TABLE endpoint_numeric_data {action} TRIGGER "
                        "endpoint_numeric_data_rollup"
                    )
                    t0 = time.perf_counter()
                    for data in batches:
                        with conn.transaction(), conn.cursor() as cur, cur.copy(copy_sql) as copy:
                            copy.write(data)
                    rates[mode].append(n / (time.perf_counter() - t0))
                    check_and_clear(env.dsn, ids, 0)
        finally:
            conn.execute(
                "ALTER TABLE endpoint_numeric_data ENABLE TRIGGER endpoint_numeric_data_rollup"
            )
            conn.execute(
                "DELETE FROM endpoint_numeric_rollup_1m WHERE bucket < '2025-01-01'; "
                "DELETE FROM endpoint_numeric_rollup_1h WHERE bucket < '2025-01-01'"
            )
    on, off = statistics.median(rates["on"]), statistics.median(rates["off"])
    report.add(
        Row(
            "logger ingest",
            "COPY only, rollup trigger on",
            "values/s",
            rates["on"],
            note=f"server side of ours: {n} rows in 2 000-row transactions, ready-made COPY "
            f"text; trigger off: {off:,.0f}/s, so the trigger costs "
            f"{(1 / on - 1 / off) * 1e6:.1f} us per value",
            digits=0,
        )
    )


@dataclass
class RawOutcome:
    n: int
    seconds: float
    cpu_s: float


def raw_rounds(env: Environment, report: Report, n: int, repeat: int) -> dict[str, float]:
    """Drain ``n`` queued alerts with each raw consumer (no database), ``repeat`` times,
    alternating consumers.  Returns the median msgs/s of each consumer that ran."""
    assert env.broker is not None
    blobs = encode_alerts(n, dt.datetime(2025, 1, 1, tzinfo=dt.UTC))
    results: dict[str, list[RawOutcome]] = {c: [] for c in RAW_CONSUMERS}
    queue_op(env, "declare", RAW_QUEUE)
    try:
        for _ in range(repeat):
            for consumer in RAW_CONSUMERS:
                outcome = raw_drain(env, consumer, blobs, n)
                if outcome is not None:
                    results[consumer].append(outcome)
    finally:
        queue_op(env, "delete", RAW_QUEUE)
    medians: dict[str, float] = {}
    for consumer, outcomes in results.items():
        rates = [o.n / o.seconds for o in outcomes if o.seconds > 0]
        cpu = [o.cpu_s / o.n * 1e6 for o in outcomes]
        row = report.add(
            Row(
                "logger ingest",
                f"raw {consumer} msgs/s",
                "msgs/s",
                rates,
                note=f"drain of {n} queued alerts x {len(rates)}, prefetch 10 000, one ack per "
                "2 000, no database (baseline)",
                digits=0,
            )
        )
        if not rates:
            row.not_run = "the consumer gave no result"
            continue
        medians[consumer] = statistics.median(rates)
        report.add(
            Row(
                "logger ingest",
                f"raw {consumer} CPU per msg",
                "us",
                cpu,
                note="consumer process CPU from the first delivery to the last",
                digits=0,
            )
        )
    return medians


def raw_drain(env: Environment, consumer: str, blobs: list[Blob], n: int) -> RawOutcome | None:
    """Queue ``n`` alerts in :data:`RAW_QUEUE` (which must exist), drain them with ``consumer``."""
    assert env.broker is not None
    publish_parallel(env.broker, blobs)
    proc = ServiceProcess.baseline(
        env, f"raw-{consumer}", RAW_READY, "--queue", RAW_QUEUE, "--expect", str(n)
    ).start()
    try:
        outcome = _raw_result(proc)
    finally:
        proc.stop()
    if outcome is None:
        print(f"  raw {consumer}: no result; log: {proc.tail()}")
        if left := queue_op(env, "purge", RAW_QUEUE):
            print(f"  {left} alerts were left in {RAW_QUEUE} (purged)")
    return outcome


def _raw_result(proc: ServiceProcess, stall_s: float = 30.0) -> RawOutcome | None:
    """The JSON line a raw consumer prints once it has drained the queue."""
    deadline = time.perf_counter() + stall_s
    while time.perf_counter() < deadline:
        for line in proc.log_text().splitlines():
            if line.startswith("{"):
                data = json.loads(line)
                return RawOutcome(int(data["n"]), float(data["seconds"]), float(data["cpu_s"]))
        if not proc.alive():
            return None
        time.sleep(0.02)
    return None


def queue_op(env: Environment, op: str, name: str) -> int:
    """``declare`` (a durable quorum queue bound as the logger's), ``purge``, ``delete``,
    ``bind`` or ``unbind`` (to ``sensor_value.#`` on the alerts exchange) a queue of this run;
    returns the messages purged or deleted with it (0 if it does not exist).

    The logger's and the naive logger's queues outlive their processes on purpose (backlog
    rounds): they are removed at the end.
    """
    import aio_pika
    import aiormq

    assert env.broker is not None

    async def work() -> int:
        conn = await aio_pika.connect(env.broker.url)  # type: ignore[union-attr]
        try:
            channel = await conn.channel()
            if op == "declare":
                queue = await channel.declare_queue(
                    name, durable=True, arguments={"x-queue-type": "quorum"}
                )
                exchange = await channel.declare_exchange(
                    ALERTS_EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=False
                )
                await queue.bind(exchange, routing_key="sensor_value.#")
                return 0
            try:
                queue = await channel.declare_queue(name, passive=True)
            except aiormq.exceptions.ChannelNotFoundEntity:
                return 0
            if op in ("bind", "unbind"):
                method = queue.bind if op == "bind" else queue.unbind
                await method(ALERTS_EXCHANGE, routing_key="sensor_value.#")
                return 0
            if op == "purge":
                result = await queue.purge()
            else:
                result = await queue.delete(if_unused=False, if_empty=False)
            return int(getattr(result, "message_count", 0) or 0)
        finally:
            await conn.close()

    return asyncio.run(work())
