"""``not-sc_db``: the SQL sensor logger (dragonfly's ``SensorLogger``, made fast and lossless).

Every ``sensor_value.<endpoint>`` alert is a candidate row.  As in dragonfly (and unlike
dripline-python 5's ``PostgresSensorLogger``) only endpoints listed in ``endpoint_id_map`` are
stored, in the table their ``type`` names; values of other endpoints are dropped with **one** log
line per endpoint name, so a chatty unmapped sensor cannot flood the log.  Per-name bookkeeping is
kept for at most :data:`~insectarium.dripline.limits.MAX_TRACKED_NAMES` names; values of further
names are counted together (50 000 invented names grew the logger's memory, log and status reply
without bound).

What differs from dragonfly, and why (performance-notes.md):

* ``endpoint_id_map`` is held in memory, refreshed when an unknown name shows up (at most every
  ``id_map_min_refresh_s``) and every ``id_map_refresh_s``; an endpoint added to the table later
  is picked up without a restart.
* Values are buffered and written with ``COPY`` straight into ``endpoint_*_data`` (not through the
  trigger views), one transaction per flush: every ``batch_size`` values or ``flush_interval_s``,
  whichever comes first.  That is what reaches tens of thousands of values per second.
* An alert is acknowledged only after the transaction holding its value committed
  (:meth:`SensorLogger.process_alert` waits for it), and the queue ``not-sc_db_alerts`` is a
  durable quorum queue: neither a logger restart, a database outage nor a broker restart loses
  values (a classic queue left by an older version is converted, see
  :mod:`insectarium.dripline.alert_queue`).  During an outage the batch is
  retried with back-off; a value already stored (redelivered after a crash) is skipped through an
  ``ON CONFLICT DO NOTHING`` path and counted, instead of failing its whole batch.
* The alerts are received on their own pika connection in a thread
  (:mod:`insectarium.dripline.alert_feed`, ``alert_client: pika``, the default): aio-pika costs
  three times the CPU per delivery, which capped the logger at a fraction of what the broker
  delivers (issue 14).  ``alert_client: aio-pika`` keeps everything on the service's connection.
* Several logger processes may drain the same queue (``sensor_logger_processes`` in the
  lab_services role): each value is delivered to one of them, acknowledged only once stored, and
  a redelivered value already stored is skipped, so none is stored twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import math
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import psycopg
from aio_pika.abc import AbstractIncomingMessage
from psycopg import sql

from ..dripline import AlertConsumer, Endpoint, Message, MsgType
from ..dripline.alert_feed import AlertFeed, FeedDelivery, connection_parameters
from ..dripline.chunking import Delivery
from ..dripline.constants import CONTENT_ENCODING
from ..dripline.limits import MAX_TRACKED_NAMES
from ..dripline.memory import release_soon
from ..dripline.message import parse_timestamp
from ..dripline.throttle import LogThrottle
from .postgres import (
    CONNECTION_ERRORS,
    DEFAULT_DATA_TABLES,
    PostgreSQLService,
    identifier,
    qualified,
)
from .row_buffer import NumericRows, Row, copy_time

log = logging.getLogger(__name__)

SEED_HINT = "files/sql/seed/50_lab_endpoints.sql or postgresql_endpoints"


def parse_alert_time(text: str) -> dt.datetime:
    """The alert's ``timestamp`` header as a naive UTC datetime (``ValueError`` if malformed).

    The exact dripline form is read with ``fromisoformat`` (fast); anything else must still parse
    as a dripline timestamp.
    """
    if len(text) == 27 and text[10] == "T" and text[26] == "Z" and text[19] == ".":
        return dt.datetime.fromisoformat(text[:26])
    return parse_timestamp(text).replace(tzinfo=None)


def as_float(value: Any) -> float | None:
    """A finite float, or ``None`` when the value is not a number (or is NaN/inf)."""
    if value is None or isinstance(value, dict | list):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def as_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"))


def _is_text(value: str | None) -> bool:
    """Whether ``value`` can be encoded as UTF-8 (JSON allows lone surrogates, text does not)."""
    if value is None or value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def as_json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"))


ACK_DELAY_S = 0.02  # finished deliveries acknowledged together within this delay
#: a burst: this many values stored since the last trim ...
TRIM_AFTER_VALUES = 20_000
#: ... and then nothing to store for this long: give the burst's memory back (malloc_trim)
TRIM_IDLE_S = 1.0


@dataclass(eq=False)
class _Acks:
    """Delivery bookkeeping of one channel (tags restart on a new channel).

    Only delivery tags are kept, never the deliveries: up to a prefetch count (10 000) of
    values wait for their commit, and a delivery object per value (with its routing key and
    content encoding) was most of what a burst left behind in CPython's arenas (bench/README,
    "the logger's growth").  The acknowledgement goes through ``channel.basic_ack``, which
    aiormq's channel (aio-pika's ``incoming.channel``) and the feed's
    :class:`~insectarium.dripline.alert_feed.Generation` both have.
    """

    channel: Any
    inflight: set[int] = field(default_factory=set)
    done: list[int] = field(default_factory=list)
    scheduled: bool = False

    def finished(self, tags: list[int]) -> None:
        """``tags`` are stored (or dropped): acknowledge them with the next ack."""
        inflight = self.inflight
        inflight.difference_update(tags)
        self.done.extend(tags)
        if not inflight:
            # a set keeps its table at the largest size it had (0.5 MiB after a burst at a
            # prefetch of 10 000) until it is replaced
            self.inflight = set()


@dataclass
class Batch:
    """Values waiting for one transaction, and the future their alerts wait on."""

    #: by kind: numeric rows as COPY text, the others as tuples
    rows: dict[str, NumericRows | list[Row]] = field(default_factory=dict)
    memos: list[tuple[str, Row, str]] = field(default_factory=list)
    #: delivery tags of the lean path by channel, acknowledged once the batch is committed
    deliveries: list[tuple[_Acks, list[int]]] = field(default_factory=list)
    size: int = 0
    started: float = 0.0
    done: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )

    def wait_for(self, acks: _Acks, tag: int) -> None:
        """The delivery ``tag`` of ``acks`` is finished when this batch is committed."""
        deliveries = self.deliveries
        if deliveries and deliveries[-1][0] is acks:
            deliveries[-1][1].append(tag)
        else:
            deliveries.append((acks, [tag]))


class SensorLogger(PostgreSQLService, AlertConsumer):
    """Stores ``sensor_value.<endpoint>`` alerts of mapped endpoints in the slow-control DB."""

    # a failed write is retried on a new connection anyway: no ping before every batch
    database_idle_check_s = 5.0

    def __init__(
        self,
        name: str,
        *,
        alert_keys: list[str] | None = None,
        alert_key_parser_re: str | None = r"^[^.]+\.(?P<endpoint_name>.+)$",
        alert_queue_name: str | None = None,
        alert_queue_durable: bool = True,
        alert_prefetch_count: int = 10000,
        schema: str | None = None,
        id_map_table: str = "endpoint_id_map",
        data_tables: dict[str, str] | None = None,
        metadata_table: str | None = "measurement_metadata",
        batch_size: int = 2000,
        flush_interval_s: float = 0.2,
        id_map_refresh_s: float = 60.0,
        id_map_min_refresh_s: float = 2.0,
        retry_max_delay_s: float = 10.0,
        alert_client: Literal["pika", "aio-pika"] = "pika",
        **kwargs: Any,
    ) -> None:
        super().__init__(
            name,
            alert_keys=alert_keys or ["sensor_value.#"],
            alert_key_parser_re=alert_key_parser_re,
            alert_queue_name=alert_queue_name,
            alert_queue_durable=alert_queue_durable,
            alert_prefetch_count=alert_prefetch_count,
            **kwargs,
        )
        if batch_size < 1 or flush_interval_s <= 0:
            raise ValueError("batch_size must be >= 1 and flush_interval_s > 0")
        if alert_client not in ("pika", "aio-pika"):
            raise ValueError(f"alert_client must be pika or aio-pika, not {alert_client!r}")
        self.alert_client = alert_client
        self._feed: AlertFeed | None = None
        #: the durable queue as last declared (its channel is the service's, not the feed's)
        self._durable_declared: Any = None
        self._feed_slices: asyncio.Queue[list[FeedDelivery]] = asyncio.Queue()
        self.schema = schema
        self.id_map_sql = qualified(schema, id_map_table)
        self.data_tables = dict(DEFAULT_DATA_TABLES if data_tables is None else data_tables)
        self._table_sql = {t: qualified(schema, n) for t, n in self.data_tables.items()}
        self._copy_sql: dict[str, sql.Composable] = {}  # kind -> its COPY statement
        for kind in self.data_tables:
            identifier(kind, "endpoint type")
        self.metadata_sql = qualified(schema, metadata_table) if metadata_table else None
        self.batch_size = batch_size
        # with fewer unacknowledged alerts than batch_size a batch could never fill up
        self.flush_at = max(1, min(batch_size, alert_prefetch_count // 2))
        if self.flush_at < batch_size:
            log.info(
                "%s: alert_prefetch_count %d limits batches to %d values",
                name,
                alert_prefetch_count,
                self.flush_at,
            )
        self.flush_interval_s = float(flush_interval_s)
        self.id_map_refresh_s = float(id_map_refresh_s)
        self.id_map_min_refresh_s = float(id_map_min_refresh_s)
        self.retry_max_delay_s = float(retry_max_delay_s)
        # endpoint_name -> (endpoint_id, type)
        self.endpoint_map: dict[str, tuple[int, str]] = {}
        self._map_loaded_at = -math.inf
        self._map_refresh: asyncio.Task[bool] | None = None
        self._map_failing = False
        self._names: dict[str, str | None] = {}  # routing key -> endpoint name (parse cache)
        self._batch: Batch | None = None
        self._acks: dict[int, _Acks] = {}
        self._current: Batch | None = None  # the batch being written
        self._wake = asyncio.Event()  # a new batch was started
        self._full = asyncio.Event()  # the batch reached flush_at values
        self._writer: asyncio.Task[None] | None = None
        self._since_trim = 0  # values stored since memory was last handed back
        self._trim_check: asyncio.TimerHandle | None = None
        # what happened so far, for the status reply and the log
        self.stored = 0
        self.duplicates = 0
        self.rejected = 0
        self.dropped_unknown: Counter[str] = Counter()  # at most MAX_TRACKED_NAMES names
        self.dropped_unknown_other = 0  # values of names beyond those
        self.dropped_malformed = 0
        #: deliveries the broker had given out before (to a process that went away unacknowledged)
        self.redelivered = 0
        self._warned: set[str] = set()
        self._malformed_seen: Counter[str] = Counter()
        self._untracked = LogThrottle(log)

    # ----------------------------------------------------------------- life cycle
    async def on_start(self) -> None:
        await super().on_start()
        await self.refresh_endpoint_map()
        self._writer = self.spawn(self._write_loop(), name="sql-writer")
        if self.id_map_refresh_s > 0:
            self.schedule(self._periodic_refresh, self.id_map_refresh_s)

    async def setup_consumers(self) -> None:
        """Declare the alert queue as every alert consumer does; consume it through the feed."""
        if self.alert_client != "pika":
            await super().setup_consumers()
            return
        assert self.connection is not None
        durable = self._durable_queue() if self.alert_queue_durable else None
        declare_again = None
        if durable is not None:
            self._durable_declared = await durable.declare()

            async def declare_again() -> None:
                """Someone deleted the durable queue: it and its bindings again (the channel
                of the previous declaration goes; ``declare`` opens one)."""
                previous, self._durable_declared = self._durable_declared, await durable.declare()
                with contextlib.suppress(Exception):
                    await previous.channel.close()

            async def bind_again() -> None:
                """In case the alerts exchange was deleted (its bindings went with it)."""
                await self.bind_alert_keys(self._durable_declared)

            self.connection.rebinders.append(bind_again)
        self.spawn(self._feed_loop(), name="alert-feed")
        self._feed = AlertFeed(
            connection_parameters(
                self.mesh,
                self.authentication.dripline,
                f"{self.name} alerts ({self.instance_id[:8]})",
            ),
            self.alert_queue_name,
            prefetch=self.alert_prefetch_count,
            deliver=self._feed_slices.put_nowait,
            loop=asyncio.get_running_loop(),
            declare=None if durable is not None else self._declare_transient,
            redeclare=declare_again,
            name=f"{self.name} alert feed",
            # as often as the service's own connection retries: both come back together
            retry_max_delay_s=self.connection.reconnect_interval,
        )
        self._feed.start()
        await self._feed.wait_consuming(timeout_s=30.0)
        if durable is not None:
            await durable.finish_upgrade()
        log.info(
            "%s consuming alerts %s on %s queue %s (pika)",
            self.name,
            self.alert_keys,
            f"durable {self.alert_queue_type}" if durable is not None else "transient",
            self.alert_queue_name,
        )

    def _declare_transient(self, channel: Any) -> None:
        """On the feed's thread, for each of its connections: the exclusive queue, bound."""
        exchange = self.mesh.alerts_exchange
        channel.exchange_declare(exchange, exchange_type="topic", durable=False, auto_delete=False)
        channel.queue_declare(
            self.alert_queue_name, durable=False, exclusive=True, auto_delete=True
        )
        for key in self.alert_keys:
            channel.queue_bind(self.alert_queue_name, exchange, routing_key=key)

    async def _feed_loop(self) -> None:
        """Take the feed's deliveries in order; a plain alert never makes this loop wait for a
        commit (only for an ``endpoint_id_map`` refresh), anything else gets its own task.

        Each delivery is let go as soon as it is handled (popped off its slice, not iterated):
        a slice of 2 000 whole deliveries (body, encoded headers, message id: ~0.8 kB each)
        stayed referenced until its last value was buffered, which is what the logger's heap
        grew by in a burst.
        """
        while True:
            deliveries = await self._feed_slices.get()
            deliveries.reverse()  # oldest last: popped first
            while deliveries:
                incoming = deliveries.pop()
                acks = self._acks_for(incoming)
                tag = incoming.delivery_tag
                acks.inflight.add(tag)
                if incoming.redelivered:
                    self.redelivered += 1
                try:
                    fast = self._lean_fields(incoming)
                except Exception:  # never let one message stop the loop that feeds all
                    await self._drop(acks, tag, incoming)
                    continue
                if fast is None:
                    self.spawn(self._settle_other(acks, tag, incoming), name="alert")
                    continue
                # the common case, a mapped endpoint, without a coroutine per value
                name = self._endpoint_name(incoming.routing_key)
                entry = self.endpoint_map.get(name) if name else None
                if entry is None:
                    await self._settle_lean(acks, tag, incoming, fast)
                    continue
                try:
                    batch = self._buffer(name, entry, *fast)
                except Exception:
                    await self._drop(acks, tag, incoming)
                    continue
                if batch is None:
                    self._finished(acks, [tag])
                else:  # waits for the commit: only the tag is kept
                    batch.wait_for(acks, tag)

    async def stop(self) -> None:
        """Write what is buffered before going (what cannot be written is redelivered later)."""
        waiting = [b.done for b in (self._current, self._batch) if b is not None]
        if self._writer is not None and waiting:
            self._full.set()
            await asyncio.wait(waiting, timeout=5.0)
            await asyncio.sleep(0.01)  # let the alert callbacks finish
        for acks in list(self._acks.values()):  # including those scheduled but not yet sent
            await self._send_acks(acks)
        if self._feed is not None:
            await self._feed.stop()
            self._feed = None
        if self._trim_check is not None:
            self._trim_check.cancel()
            self._trim_check = None
        await super().stop()

    # ----------------------------------------------------------------- endpoint_id_map
    async def _periodic_refresh(self) -> None:
        await self.refresh_endpoint_map()

    async def refresh_endpoint_map(self) -> dict[str, Any]:
        """Reload ``endpoint_id_map`` now (also a ``cmd`` on the service).  Returns a summary."""
        ok = await self._refresh_once()
        return {"loaded": ok, "endpoints": len(self.endpoint_map)}

    async def _refresh_once(self, until_loaded: bool = False) -> bool:
        """One refresh at a time; concurrent callers share it.

        ``until_loaded`` keeps retrying (with back-off) until the database answers.
        """
        if self._map_refresh is None or self._map_refresh.done():
            work = self._load_map_retrying() if until_loaded else self._load_map()
            self._map_refresh = self.spawn(work, name="endpoint_id_map")
        ok = await asyncio.shield(self._map_refresh)
        if not ok and until_loaded:  # joined a single attempt that failed
            return await self._refresh_once(until_loaded=True)
        return ok

    async def _load_map_retrying(self) -> bool:
        delay = 0.5
        while not await self._load_map():
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.retry_max_delay_s)
        return True

    async def _load_map(self) -> bool:
        query = sql.SQL("SELECT endpoint_name, endpoint_id, type::text FROM {}").format(
            self.id_map_sql
        )
        try:
            async with self.db.connection() as conn:
                cur = await conn.execute(query)
                rows = await cur.fetchall()
                await conn.rollback()
        except Exception as exc:
            if not self._map_failing:
                log.warning(
                    "cannot read endpoint_id_map (%s); values wait until it can be read",
                    getattr(exc, "message", exc),
                )
            self._map_failing = True
            return False
        if self._map_failing:
            log.warning("endpoint_id_map read again (%d endpoints)", len(rows))
            self._map_failing = False
        self._map_loaded_at = time.monotonic()
        new_map = {str(n): (int(i), str(t)) for n, i, t in rows}
        added = sorted(set(new_map) - set(self.endpoint_map))
        self.endpoint_map = new_map
        for name in added:
            if name in self._warned:
                self._warned.discard(name)
                log.info("endpoint %r is now in endpoint_id_map; storing its values", name)
        log.debug("endpoint_id_map: %d endpoints", len(new_map))
        return True

    async def _lookup(self, name: str) -> tuple[int, str] | None:
        """The (id, type) of ``name``; an unknown name triggers a (rate-limited) refresh."""
        found = self.endpoint_map.get(name)
        if found is not None:
            return found
        if time.monotonic() - self._map_loaded_at >= self.id_map_min_refresh_s:
            # Until the map could be read, "unknown" cannot be told from "database away": wait
            # (the alert stays unacknowledged) rather than drop values of a mapped endpoint.
            await self._refresh_once(until_loaded=True)
            found = self.endpoint_map.get(name)
        return found

    # ----------------------------------------------------------------- alerts
    def _endpoint_name(self, routing_key: str) -> str | None:
        try:
            return self._names[routing_key]
        except KeyError:
            pass
        data = self.parse_routing_key(routing_key)
        name = None
        if data is not None:
            name = data.get("endpoint_name") or data.get("sensor_name") or None
        if len(self._names) < 10 * MAX_TRACKED_NAMES:
            self._names[routing_key] = name
        return name

    def _malformed(self, name: str, why: str) -> None:
        """Count a dropped value; warn for the first of each endpoint and then every 1000th."""
        self.dropped_malformed += 1
        if name not in self._malformed_seen and len(self._malformed_seen) >= MAX_TRACKED_NAMES:
            self._untracked("dropped a malformed value of %r: %s", name[:200], why)
            return
        self._malformed_seen[name] += 1
        seen = self._malformed_seen[name]
        if seen == 1 or seen % 1000 == 0:
            log.warning("dropped a value of %r (%d so far): %s", name[:200], seen, why)

    def _unknown(self, name: str, text: str, *args: Any) -> None:
        """Count a value of an endpoint that cannot be stored; say so once per name."""
        if name not in self.dropped_unknown and len(self.dropped_unknown) >= MAX_TRACKED_NAMES:
            self.dropped_unknown_other += 1
            self._untracked(
                "dropped a value of %r: not in endpoint_id_map (more than %d such names: "
                "counted together as dropped_unknown_other)",
                name[:200],
                MAX_TRACKED_NAMES,
            )
            return
        self.dropped_unknown[name] += 1
        if name not in self._warned:
            self._warned.add(name)
            log.warning(text, name[:200], *args)

    async def process_alert(self, msg: Message) -> None:
        """The runtime's path (chunked or unusual messages): same as the lean path."""
        await self._store(msg.routing_key, msg.payload, msg.timestamp)

    async def _store(self, routing_key: str, payload: Any, timestamp_text: str) -> None:
        """Buffer one value; return once it is committed (or dropped for a logged reason)."""
        batch = await self._enqueue(routing_key, payload, timestamp_text)
        if batch is not None:
            await asyncio.shield(batch.done)

    async def _enqueue(self, routing_key: str, payload: Any, timestamp_text: str) -> Batch | None:
        """Put one value in the open batch and return that batch; ``None`` if it is dropped.

        Does not suspend unless an unknown name needs an ``endpoint_id_map`` refresh.
        """
        name = self._endpoint_name(routing_key)
        if not name:
            self._malformed(routing_key, "routing key does not name an endpoint")
            return None
        entry = self.endpoint_map.get(name) or await self._lookup(name)
        return self._buffer(name, entry, payload, timestamp_text)

    def _buffer(
        self, name: str, entry: tuple[int, str] | None, payload: Any, timestamp_text: str
    ) -> Batch | None:
        """:meth:`_enqueue` once the name is looked up (never suspends)."""
        if entry is None:
            self._unknown(
                name,
                "endpoint %r is not in endpoint_id_map; its values are dropped (add it to %s)",
                SEED_HINT,
            )
            return None
        endpoint_id, kind = entry
        if kind not in self.data_tables:
            self._unknown(
                name,
                "endpoint %r has type %r, which has no data table (%s); its values are dropped",
                kind,
                ", ".join(self.data_tables),
            )
            return None
        if type(payload) is not dict and not isinstance(payload, Mapping):
            self._malformed(name, f"payload is not an object: {payload!r:.80}")
            return None
        try:
            timestamp = parse_alert_time(timestamp_text)
        except (ValueError, TypeError):
            self._malformed(name, f"bad timestamp header {timestamp_text!r:.60}")
            return None
        raw, cal = payload.get("value_raw"), payload.get("value_cal")
        memo = payload.get("memo")
        if kind == "numeric":
            raw_v, cal_v = as_float(raw), as_float(cal)
            if raw_v is None and raw is not None:
                self._malformed(name, f"value_raw {raw!r:.60} is not a number")
                return None
        elif kind == "json":
            raw_v, cal_v = as_json(raw), as_json(cal)
        else:
            raw_v, cal_v = as_text(raw), as_text(cal)
            if not (_is_text(raw_v) and _is_text(cal_v)):  # a lone surrogate cannot be stored
                self._malformed(name, "value is not valid Unicode text")
                return None
        if raw_v is None and cal_v is None and memo is None:
            self._malformed(name, "payload has no value_raw, value_cal or memo")
            return None
        memo_text = None if memo is None else as_text(memo) or ""
        if not _is_text(memo_text):
            self._malformed(name, "memo is not valid Unicode text")
            return None
        batch = self._batch
        if batch is None:
            batch = self._batch = Batch(started=time.monotonic())
            self._wake.set()
        rows = batch.rows.get(kind)
        if memo_text is not None:
            batch.memos.append((kind, (endpoint_id, timestamp, raw_v, cal_v), memo_text))
        elif kind == "numeric":  # the common case: as COPY text, no objects per value
            if rows is None:
                rows = batch.rows[kind] = NumericRows()
            assert isinstance(rows, NumericRows)
            rows.add(endpoint_id, copy_time(timestamp_text, timestamp), raw_v, cal_v)
        else:
            if rows is None:
                rows = batch.rows[kind] = []
            assert isinstance(rows, list)
            rows.append((endpoint_id, timestamp, raw_v, cal_v))
        batch.size += 1
        if batch.size >= self.flush_at:
            self._full.set()
        return batch

    # ----------------------------------------------------------------- deliveries
    async def _on_alert_delivery(self, incoming: AbstractIncomingMessage) -> None:
        """Lean path for the common single-chunk alert; acknowledgements sent in batches.

        Overrides the runtime's per-message path (reassembler, full message decode, one
        ``basic.ack`` per alert), which costs about twice the CPU per value; chunked or unusual
        messages still go through it.  The acknowledgement is deferred until the value is
        committed and then sent as one ``multiple`` ack for every finished delivery below the
        oldest unfinished one, so nothing is acknowledged before it is stored.
        """
        acks = self._acks_for(incoming)
        tag = incoming.delivery_tag or 0
        acks.inflight.add(tag)
        if incoming.redelivered:
            self.redelivered += 1
        fast = self._lean_fields(incoming)
        if fast is None:
            await self._settle_other(acks, tag, incoming)
        else:
            await self._settle_lean(acks, tag, incoming, fast)

    async def _settle_lean(
        self, acks: _Acks, tag: int, incoming: Any, fast: tuple[Any, str]
    ) -> None:
        """Buffer a plain alert's value; the writer finishes the delivery once it is stored."""
        try:
            batch = await self._enqueue(incoming.routing_key or "", *fast)
            if batch is not None:
                # finished by the writer once the batch is committed: no task waits here
                batch.wait_for(acks, tag)
                return
        except asyncio.CancelledError:
            raise  # stays in flight: never acknowledged here, redelivered after the restart
        except Exception:
            await self._drop(acks, tag, incoming)
            return
        self._finished(acks, [tag])

    async def _settle_other(self, acks: _Acks, tag: int, incoming: Any) -> None:
        """Chunked or unusual messages: the runtime's path (reassembly, full decode)."""
        try:
            await self._alert_reassembler.feed(Delivery.from_incoming(incoming))
        except asyncio.CancelledError:
            raise
        except Exception:
            await self._drop(acks, tag, incoming)
            return
        self._finished(acks, [tag])

    async def _drop(self, acks: _Acks, tag: int, incoming: Any) -> None:
        log.exception("failed to process alert %s; dropped", incoming.routing_key)
        acks.inflight.discard(tag)
        with contextlib.suppress(Exception):
            await incoming.nack(requeue=False)

    def _finished(self, acks: _Acks, tags: list[int]) -> None:
        """Deliveries are done with (stored or dropped): they may be acknowledged."""
        acks.finished(tags)
        if not acks.scheduled:
            acks.scheduled = True
            asyncio.get_running_loop().call_later(ACK_DELAY_S, self._schedule_ack, acks)

    def _lean_fields(self, incoming: Any) -> tuple[Any, str] | None:
        """(payload, timestamp) of a plain single-chunk JSON alert; ``None`` → runtime path."""
        if incoming.content_encoding != CONTENT_ENCODING or not (
            incoming.message_id or ""
        ).endswith("/0/1"):
            return None
        fields_of = getattr(incoming, "header_fields", None)
        if fields_of is not None:  # the pika feed: two headers read, the rest left encoded
            fields = fields_of(b"message_type", b"timestamp")
            if fields is None:
                return None  # a malformed header table: the runtime path reports it
            message_type, stamp = fields.get(b"message_type"), fields.get(b"timestamp")
        else:
            headers = incoming.headers or {}
            message_type, stamp = headers.get("message_type"), headers.get("timestamp")
        if message_type != MsgType.ALERT:
            return None
        if isinstance(stamp, bytes):
            stamp = stamp.decode("utf-8", "replace")
        try:
            payload = json.loads(incoming.body)
        except (ValueError, RecursionError):
            return None  # the runtime path reports it
        return payload, str(stamp)

    def alert_deliveries_settled(self, channel: Any) -> bool:
        """Every delivery of ``channel`` stored (or dropped) and acknowledged."""
        acks = self._acks.get(id(channel))
        return acks is None or acks.channel is not channel or not (acks.inflight or acks.done)

    def _acks_for(self, incoming: AbstractIncomingMessage) -> _Acks:
        channel = incoming.channel
        acks = self._acks.get(id(channel))
        if acks is None or acks.channel is not channel:
            acks = self._acks[id(channel)] = _Acks(channel)
        return acks

    def _schedule_ack(self, acks: _Acks) -> None:
        acks.scheduled = False
        # also while starting (a classic queue being drained before the service runs); after
        # the stop the connection is gone and stop() has sent what was left
        if self.connection is not None:
            self.spawn(self._send_acks(acks), name="ack")

    async def _send_acks(self, acks: _Acks) -> None:
        limit = min(acks.inflight) if acks.inflight else None
        if limit is None:
            ready, acks.done = acks.done, []
        else:
            ready = [t for t in acks.done if t < limit]
            acks.done = [t for t in acks.done if t >= limit]
        if not ready:
            return
        try:
            await acks.channel.basic_ack(delivery_tag=max(ready), multiple=True)
        except Exception as exc:  # channel gone: the broker redelivers; duplicates are skipped
            log.info("could not acknowledge %d alerts (%s)", len(ready), exc)
            self._acks.pop(id(acks.channel), None)

    # ----------------------------------------------------------------- writing
    async def _write_loop(self) -> None:
        """Take the buffered batch when it is full or ``flush_interval_s`` old, and store it.

        Alerts keep arriving into a new batch while one is being written, so the transaction
        time overlaps with the AMQP traffic.
        """
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch = self._batch
            if batch is None:
                continue
            while batch.size < self.flush_at:
                delay = batch.started + self.flush_interval_s - time.monotonic()
                if delay <= 0:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full.wait(), delay)
                self._full.clear()
            self._batch = None
            self._current = batch
            try:
                await self._write_with_retry(batch)
            except asyncio.CancelledError:
                batch.done.cancel()
                raise
            finally:
                self._current = None
            self._committed(batch)
            del batch  # not kept while waiting for the next one

    def _committed(self, batch: Batch) -> None:
        """A batch is stored: release what waits for it, and everything it holds.

        Its rows and delivery tags (thousands of small objects) are let go here, in a frame
        that ends, not in the writer's loop, whose variables would keep the last of them
        (and with them the memory of a whole burst) while it waits for the next batch.
        """
        batch.done.set_result(None)
        for acks, tags in batch.deliveries:
            self._finished(acks, tags)
        if self._batch is not None:
            self._wake.set()
        self._since_trim += batch.size
        if self._since_trim >= TRIM_AFTER_VALUES and self._trim_check is None:
            self._trim_check = asyncio.get_running_loop().call_later(
                TRIM_IDLE_S, self._trim_when_idle, self.stored
            )
        batch.rows.clear()
        batch.memos.clear()
        batch.deliveries.clear()

    def _trim_when_idle(self, stored_before: int) -> None:
        """After a burst, once nothing was stored for :data:`TRIM_IDLE_S`: hand the memory the
        burst used back to the system.

        Measured (bench/README, round 2): after draining 50 000 queued alerts this gives back
        what glibc holds, 0.3-1 MiB of the ~5 MiB the logger grew; the rest is CPython arenas
        pinned by the few objects that outlive a burst.  While values keep coming (a lab's
        steady stream) the check only re-arms itself once a second and never trims.
        """
        if self.stored != stored_before or self._batch is not None:  # still busy: look again
            self._trim_check = asyncio.get_running_loop().call_later(
                TRIM_IDLE_S, self._trim_when_idle, self.stored
            )
            return
        self._trim_check = None
        self._since_trim = 0
        release_soon(0.0)

    async def _write_with_retry(self, batch: Batch) -> None:
        delay = 0.2
        while True:
            try:
                await self._write_batch(batch)
                return
            except CONNECTION_ERRORS as exc:
                why = self.db.describe_error(exc)
            except psycopg.Error as exc:  # not expected: write_batch handles bad rows itself
                why = self.db.describe_error(exc)
            except Exception as exc:  # ThrowReply from the connection helper
                why = getattr(exc, "message", str(exc))
            log.warning(
                "could not store %d values (%s); retrying in %.1f s", batch.size, why, delay
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.retry_max_delay_s)

    async def _write_batch(self, batch: Batch) -> None:
        """Store one batch in one transaction: COPY, or the conflict-tolerant path."""
        async with self.db.connection() as conn:
            try:
                async with conn.transaction():
                    await self._copy_rows(conn, batch)
                    await self._insert_memos(conn, batch)
                self.stored += batch.size
                return
            except psycopg.errors.UniqueViolation:
                pass  # some values are stored already (redelivered): fall through
            except (psycopg.errors.DataError, UnicodeEncodeError) as exc:
                log.warning("a batch was refused (%s); storing its values one by one", exc)
                await self._store_one_by_one(conn, batch)
                return
            async with conn.transaction():
                inserted = await self._insert_rows(conn, batch)
                inserted += await self._insert_memos(conn, batch)
            skipped = batch.size - inserted
            self.stored += inserted
            self.duplicates += skipped
            log.info(
                "%d of %d values were already stored (same endpoint and timestamp); skipped",
                skipped,
                batch.size,
            )

    def _columns(self) -> sql.Composable:
        return sql.SQL(", ").join(
            map(sql.Identifier, ("endpoint_id", "timestamp", "value_raw", "value_cal"))
        )

    async def _copy_rows(self, conn: psycopg.AsyncConnection[Any], batch: Batch) -> None:
        async with conn.cursor() as cur:
            for kind, rows in batch.rows.items():
                statement = self._copy_sql.get(kind)
                if statement is None:
                    statement = self._copy_sql[kind] = sql.SQL("COPY {} ({}) FROM STDIN").format(
                        self._table_sql[kind], self._columns()
                    )
                async with cur.copy(statement) as copy:
                    if isinstance(rows, NumericRows):
                        await rows.copy_to(copy)
                    else:
                        for row in rows:
                            await copy.write_row(row)

    async def _insert_rows(self, conn: psycopg.AsyncConnection[Any], batch: Batch) -> int:
        """``INSERT … SELECT FROM unnest … ON CONFLICT DO NOTHING``; returns rows inserted."""
        inserted = 0
        casts = {"numeric": "float8", "string": "text", "json": "jsonb"}
        for kind, rows in batch.rows.items():
            cast = sql.SQL(casts.get(kind, "text"))
            statement = sql.SQL(
                "INSERT INTO {table} ({cols}) SELECT * FROM unnest("
                "%s::int4[], %s::timestamp[], %s::text[]::{c}[], %s::text[]::{c}[]) "
                "ON CONFLICT DO NOTHING"
            ).format(table=self._table_sql[kind], cols=self._columns(), c=cast)
            ids, stamps, raws, cals = zip(*rows, strict=True)
            text = (lambda v: None if v is None else str(v)) if kind == "numeric" else None
            raw_list = [text(v) for v in raws] if text else list(raws)
            cal_list = [text(v) for v in cals] if text else list(cals)
            cur = await conn.execute(statement, (list(ids), list(stamps), raw_list, cal_list))
            inserted += max(cur.rowcount, 0)
        return inserted

    async def _insert_memos(self, conn: psycopg.AsyncConnection[Any], batch: Batch) -> int:
        """Values carrying a memo: the data row, then its ``measurement_metadata`` row."""
        inserted = 0
        for kind, row, memo in batch.memos:
            statement = sql.SQL(
                "INSERT INTO {} ({}) VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING "
                "RETURNING meas_id"
            ).format(self._table_sql[kind], self._columns())
            cur = await conn.execute(statement, row)
            found = await cur.fetchone()
            if found is None:
                continue
            inserted += 1
            if self.metadata_sql is not None:
                await conn.execute(
                    sql.SQL(
                        'INSERT INTO {} (meas_id, endpoint_id, "timestamp", memo) '
                        "VALUES (%s, %s, %s, %s)"
                    ).format(self.metadata_sql),
                    (found[0], row[0], row[1], memo),
                )
        return inserted

    async def _store_one_by_one(self, conn: psycopg.AsyncConnection[Any], batch: Batch) -> None:
        """Slow path for a batch the database refused: keep every value it accepts."""
        async with conn.transaction():
            for kind, rows in batch.rows.items():
                for row in rows:
                    single = Batch(rows={kind: [row]}, size=1, done=batch.done)
                    await self._store_single(conn, single)
            for memo in batch.memos:
                await self._store_single(conn, Batch(memos=[memo], size=1, done=batch.done))

    async def _store_single(self, conn: psycopg.AsyncConnection[Any], single: Batch) -> None:
        try:
            async with conn.transaction():  # a savepoint
                inserted = await self._insert_rows(conn, single)
                inserted += await self._insert_memos(conn, single)
            self.stored += inserted
            self.duplicates += 1 - inserted
        except (psycopg.DataError, UnicodeEncodeError) as exc:
            self.rejected += 1
            log.warning("the database refused a value: %s", exc)

    # ----------------------------------------------------------------- introspection
    def status(self) -> dict[str, Any]:
        batch = self._batch
        return {
            "stored": self.stored,
            "duplicates_skipped": self.duplicates,
            "rejected": self.rejected,
            "dropped_unknown": dict(self.dropped_unknown),
            "dropped_unknown_other": self.dropped_unknown_other,
            "dropped_malformed": self.dropped_malformed,
            "redelivered": self.redelivered,
            "pending": (batch.size if batch else 0),
            "mapped_endpoints": len(self.endpoint_map),
        }

    def on_get(self) -> dict[str, Any]:
        """``dl-agent get not-sc_db`` → the status counters."""
        return self.status()


class SensorLoggerStatus(Endpoint):
    """A child endpoint (``sc_db_status``) answering ``get`` with its logger's counters."""

    def on_get(self) -> dict[str, Any]:
        service = self.service
        if not isinstance(service, SensorLogger):
            return {"error": "not hosted by a SensorLogger"}
        return service.status()
