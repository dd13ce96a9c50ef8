"""A lean alert consumer: one queue on its own pika connection, in a thread.

aio-pika spends ~90 us of CPU per delivery here (it turns every frame into a full
``IncomingMessage`` and runs a task per message); pika's blocking connection receives the same
alert for ~30 us.  For a service whose whole job is to swallow alerts (the sensor logger) that is
the difference between a fraction of a core and the broker's own rate (issue 14).  So the feed
receives on a :class:`pika.BlockingConnection` in a daemon thread and hands the deliveries to the
service's event loop through a queue: the loop is woken (``call_soon_threadsafe``, a write to its
self-pipe) only when it has taken everything handed over before, not per message or per read;
everything else — decoding, storing, deciding when to acknowledge — stays on the loop.

Of pika's ~30 us, half was decoding each delivery's header table (a dripline alert's nested
``sender_info`` and the rest), of which a logger reads two fields: the feed has pika keep the
table encoded (:class:`LeanProperties`) and reads ``message_type`` and ``timestamp`` alone
(:meth:`FeedDelivery.header_fields`); the full table is decoded only for a message that takes
the runtime's path.

Acknowledgements go back through :meth:`AlertFeed.ack`, which the pika thread performs
(``add_callback_threadsafe``).  A delivery belongs to one *generation* (one connection): after a
reconnect the old delivery tags mean nothing, so acknowledging them raises :class:`FeedGone` and
the broker redelivers those messages (a logger skips values it already stored).

The connection takes the service's broker, vhost, credentials and TLS settings (same CA, same
client certificate).  With a ``declare`` callback the feed declares its queue itself on every
connection (an exclusive, auto-deleted queue must belong to the connection that consumes it);
otherwise the queue must exist (a durable queue the service declared).

If the broker cancels the feed's consumer (someone deleted the queue), the feed starts over
as after a lost connection; a durable queue is first declared again by the service
(``redeclare``, run on the loop), so values are stored again from that moment on.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

import pika
import pika.data
import pika.exceptions
import pika.spec

from .config_files import Credentials, tls_context
from .limits import REBIND_INTERVAL_S

if TYPE_CHECKING:
    from .config import MeshConfig
    from .quick_mesh import QuickMesh

log = logging.getLogger(__name__)

#: deliveries handed to the loop at once at most
SLICE = 2000
#: whole deliveries (~0.8 kB each as Python objects) the thread reads ahead of the loop at most;
#: the rest of the prefetch window waits in the socket.  Measured: without a bound the thread
#: held up to 1 300 while the loop was busy, and the arenas they filled stayed resident after
#: the burst (bench/README, "the logger's growth"); 500 is ~10 ms of the loop's work.
READ_AHEAD = 500
#: ... and waits for the loop to take them at most so long before it reads on (heartbeats and
#: acknowledgements are handled only while it reads; the broker gives up after two missed
#: heartbeats, 2 minutes)
READ_PAUSE_MAX_S = 10.0


# ------------------------------------------------------------------ lean content headers
# Measured (py-spy, samples holding the GIL, logger draining 80 000 alerts): pika's decoding of
# each delivery's properties was 41 % of the logger's CPU, almost all of it the header table —
# a dripline alert carries ~8 headers and a nested ``sender_info`` table, of which the logger
# reads two (``message_type``, ``timestamp``).  :class:`LeanProperties` decodes the scalar
# properties as pika does and keeps the header table as bytes: ``headers`` decodes it (with
# pika's own decoder, same result) the first time it is read, and :func:`table_fields` reads
# single top-level fields by skipping over the others by their encoded length.

#: encoded size of fixed-size AMQP field values, by type octet (pika's table dialect)
_FIXED_SIZE = {
    ord(k): n
    for k, n in (
        ("t", 1), ("b", 1), ("B", 1), ("U", 2), ("u", 2), ("s", 2), ("I", 4), ("i", 4),
        ("f", 4), ("L", 8), ("l", 8), ("d", 8), ("T", 8), ("D", 5), ("V", 0),
    )
}  # fmt: skip
#: types whose value is a 32-bit length and that many bytes (long string, bytes, array, table)
_SIZED = frozenset(map(ord, "SxAF"))
_LONG_STRING = ord("S")
#: types pika's decoder can refuse even at the right length (a nested table or array with a bad
#: field inside, a timestamp out of range, a float or double that is NaN or infinite: pika turns
#: both into integers): checked with pika's decoder when skipped, so that a table pika refuses
#: is never read as fields
_CHECKED = frozenset(map(ord, "FATfd"))
#: encoded nested values pika decoded without error (a dripline peer sends the same
#: ``sender_info`` with every message): bounded, forgotten all at once when full
_VALID_NESTED: set[bytes] = set()
VALID_NESTED_ENTRIES = 128
VALID_NESTED_MAX_BYTES = 2048


def _short_string(encoded: bytes, offset: int) -> tuple[str | bytes, int]:
    """As ``pika.data.decode_short_string``: text if it is UTF-8, else the bytes."""
    end = offset + 1 + encoded[offset]
    value = encoded[offset + 1 : end]
    try:
        return value.decode("utf-8"), end
    except UnicodeDecodeError:
        return value, end


def table_fields(table: bytes, wanted: tuple[bytes, ...]) -> dict[bytes, Any] | None:
    """The top-level fields ``wanted`` (keys as UTF-8 bytes) of an encoded AMQP field table.

    Other values are skipped by their encoded length, not decoded; a wanted value is decoded by
    pika's decoder.  ``None`` if the table is malformed or has a type this does not know (the
    caller then decodes the whole table and gets pika's error).
    """
    found: dict[bytes, Any] = {}
    try:
        end = 4 + int.from_bytes(table[:4])
        if end > len(table):
            return None
        offset = 4
        while offset < end:
            key_end = offset + 1 + table[offset]
            key = table[offset + 1 : key_end]
            kind = table[key_end]
            if key in wanted:
                if kind == _LONG_STRING:  # the usual case, decoded as pika does
                    start = key_end + 5
                    offset = start + int.from_bytes(table[key_end + 1 : start])
                    value = table[start:offset]
                    try:
                        found[key] = value.decode("utf-8")
                    except UnicodeDecodeError:
                        found[key] = value
                else:
                    found[key], offset = pika.data.decode_value(table, key_end)
                continue
            size = _FIXED_SIZE.get(kind)
            if size is not None:
                offset = key_end + 1 + size
            elif kind in _SIZED:
                offset = key_end + 5 + int.from_bytes(table[key_end + 1 : key_end + 5])
            else:
                return None
            if kind in _CHECKED and not _decodes(table, key_end, offset):
                return None
        return found if offset == end else None
    except Exception:  # pika's struct.error, IndexError, ...: the full decode reports it
        return None


def _decodes(table: bytes, start: int, end: int) -> bool:
    """Whether pika decodes the value at ``table[start:end]`` (type octet first) exactly."""
    if end > len(table):
        return False
    encoded = table[start:end]
    if encoded in _VALID_NESTED:
        return True
    try:
        _, stop = pika.data.decode_value(table, start)
    except Exception:  # whatever pika raises, the full decode reports it
        return False
    if stop != end:
        return False
    if len(encoded) <= VALID_NESTED_MAX_BYTES:
        if len(_VALID_NESTED) >= VALID_NESTED_ENTRIES:
            _VALID_NESTED.clear()
        _VALID_NESTED.add(encoded)
    return True


class LeanProperties(pika.spec.BasicProperties):
    """``BasicProperties`` whose header table is decoded only when ``headers`` is read.

    Installed as pika's decoder of basic content headers by :func:`install_lean_properties`;
    every attribute reads as pika's own class would give it.
    """

    #: short-string properties between priority and timestamp, and after timestamp (wire order)
    FLAGS = (
        (pika.spec.BasicProperties.FLAG_CORRELATION_ID, "correlation_id"),
        (pika.spec.BasicProperties.FLAG_REPLY_TO, "reply_to"),
        (pika.spec.BasicProperties.FLAG_EXPIRATION, "expiration"),
        (pika.spec.BasicProperties.FLAG_MESSAGE_ID, "message_id"),
    )
    TAIL = (
        (pika.spec.BasicProperties.FLAG_TYPE, "type"),
        (pika.spec.BasicProperties.FLAG_USER_ID, "user_id"),
        (pika.spec.BasicProperties.FLAG_APP_ID, "app_id"),
        (pika.spec.BasicProperties.FLAG_CLUSTER_ID, "cluster_id"),
    )

    _headers: dict[str, Any] | None
    #: the encoded header table (length prefix included) until ``headers`` is read
    raw_headers: bytes | None = None

    @property  # type: ignore[override]
    def headers(self) -> dict[str, Any] | None:
        raw = self.raw_headers
        if raw is not None:
            self._headers = pika.data.decode_table(raw, 0)[0]
            self.raw_headers = None
        return self._headers

    @headers.setter
    def headers(self, value: dict[str, Any] | None) -> None:
        self._headers = value
        self.raw_headers = None

    def header_fields(self, *keys: bytes) -> dict[bytes, Any] | None:
        """Top-level ``keys`` of the header table without decoding the rest (``None``: use
        :attr:`headers`, which reports a malformed table)."""
        raw = self.raw_headers
        if raw is not None:
            return table_fields(raw, keys)
        headers = self._headers or {}
        return {k: headers[name] for k in keys if (name := k.decode()) in headers}

    def decode(self, encoded: bytes, offset: int = 0) -> LeanProperties:
        B = pika.spec.BasicProperties
        flags = 0
        index = 0
        while True:
            partial = int.from_bytes(encoded[offset : offset + 2])
            offset += 2
            flags |= partial << (index * 16)
            if not partial & 1:
                break
            index += 1
        self.content_type = self.content_encoding = None
        if flags & B.FLAG_CONTENT_TYPE:
            self.content_type, offset = _short_string(encoded, offset)
        if flags & B.FLAG_CONTENT_ENCODING:
            self.content_encoding, offset = _short_string(encoded, offset)
        self._headers = None
        if flags & B.FLAG_HEADERS:
            end = offset + 4 + int.from_bytes(encoded[offset : offset + 4])
            if end > len(encoded):
                raise ValueError("header table longer than the content header frame")
            self.raw_headers = encoded[offset:end]
            offset = end
        else:
            self.raw_headers = None
        self.delivery_mode = self.priority = None
        if flags & B.FLAG_DELIVERY_MODE:
            self.delivery_mode = encoded[offset]
            offset += 1
        if flags & B.FLAG_PRIORITY:
            self.priority = encoded[offset]
            offset += 1
        for flag, name in self.FLAGS:
            value = None
            if flags & flag:
                value, offset = _short_string(encoded, offset)
            setattr(self, name, value)
        self.timestamp = None
        if flags & B.FLAG_TIMESTAMP:
            self.timestamp = int.from_bytes(encoded[offset : offset + 8])
            offset += 8
        for flag, name in self.TAIL:
            value = None
            if flags & flag:
                value, offset = _short_string(encoded, offset)
            setattr(self, name, value)
        return self


def install_lean_properties() -> None:
    """Make pika decode basic content headers with :class:`LeanProperties` (process-wide:
    the same attributes, so any other pika user in the process sees no difference)."""
    pika.spec.props[pika.spec.BasicProperties.INDEX] = LeanProperties


class ConsumerCancelled(pika.exceptions.AMQPError):
    """The broker cancelled the feed's consumer (its queue was deleted)."""


class FeedGone(Exception):
    """The connection a delivery came on is gone: it cannot be acknowledged any more."""


class Generation:
    """One connection's channel: delivery tags are only meaningful within it."""

    __slots__ = ("channel", "connection", "feed", "number")

    def __init__(self, feed: AlertFeed, number: int, connection: Any, channel: Any) -> None:
        self.feed = feed
        self.number = number
        self.connection = connection
        self.channel = channel

    async def basic_ack(self, delivery_tag: int, multiple: bool = False) -> None:
        """As aiormq's ``Channel.basic_ack``: a consumer may acknowledge by tag alone, without
        keeping the delivery (:class:`FeedGone` once this connection is gone)."""
        self.feed.settle(self, "ack", delivery_tag, multiple=multiple)


class FeedDelivery:
    """One delivery, shaped like the parts of aio-pika's ``IncomingMessage`` the services read.

    Only what is read is kept (not pika's frame objects).  A consumer that waits long before
    acknowledging keeps the tag, not this object (:meth:`Generation.basic_ack`).
    """

    __slots__ = (
        "_headers",
        "_raw_headers",
        "body",
        "channel",
        "content_encoding",
        "correlation_id",
        "delivery_tag",
        "message_id",
        "redelivered",
        "reply_to",
        "routing_key",
    )

    def __init__(self, generation: Generation, method: Any, properties: Any, body: bytes) -> None:
        self.channel = generation
        self.delivery_tag: int = method.delivery_tag
        self.routing_key: str = method.routing_key
        self.redelivered: bool = method.redelivered
        # the header table stays encoded until read (LeanProperties); pika's objects are not kept
        raw = getattr(properties, "raw_headers", None)
        self._raw_headers: bytes | None = raw
        self._headers: dict[str, Any] | None = None if raw is not None else properties.headers
        self.content_encoding: str | None = properties.content_encoding
        self.message_id: str | None = properties.message_id
        self.correlation_id: str | None = properties.correlation_id
        self.reply_to: str | None = properties.reply_to
        self.body = body

    @property
    def headers(self) -> dict[str, Any]:
        """All headers, decoded on first use."""
        raw = self._raw_headers
        if raw is not None:
            self._headers = pika.data.decode_table(raw, 0)[0]
            self._raw_headers = None
        return self._headers or {}

    def header_fields(self, *keys: bytes) -> dict[bytes, Any] | None:
        """Only the top-level headers ``keys`` (UTF-8 bytes), without decoding the others;
        ``None`` if the header table is malformed (:attr:`headers` then says how)."""
        raw = self._raw_headers
        if raw is not None:
            return table_fields(raw, keys)
        headers = self._headers or {}
        return {k: headers[name] for k in keys if (name := k.decode()) in headers}

    async def ack(self, multiple: bool = False) -> None:
        await self.channel.basic_ack(self.delivery_tag, multiple=multiple)

    async def nack(self, requeue: bool = True) -> None:
        generation = self.channel
        generation.feed.settle(generation, "nack", self.delivery_tag, requeue=requeue)


def connection_parameters(
    mesh: MeshConfig | QuickMesh, credentials: Credentials, name: str
) -> pika.ConnectionParameters:
    """pika's view of the service's broker connection settings (TLS included)."""
    ssl_options = None
    if mesh.tls:
        ssl_options = pika.SSLOptions(tls_context(mesh, credentials), server_hostname=mesh.broker)
    return pika.ConnectionParameters(
        host=mesh.broker,
        port=mesh.broker_port,
        virtual_host=mesh.vhost,
        credentials=pika.PlainCredentials(credentials.username, credentials.password),
        ssl_options=ssl_options,
        heartbeat=60,
        blocked_connection_timeout=300,
        connection_attempts=1,
        socket_timeout=5,
        client_properties={"connection_name": name},
    )


class AlertFeed:
    """Consume ``queue`` in a thread; hand ``(deliveries)`` slices to ``deliver`` on ``loop``."""

    #: how often ``declare`` runs again on a live connection: a deleted exchange takes the
    #: queue's bindings along, and the broker tells no consumer
    rebind_interval_s = REBIND_INTERVAL_S

    def __init__(
        self,
        parameters: pika.ConnectionParameters,
        queue: str,
        *,
        prefetch: int,
        deliver: Callable[[list[FeedDelivery]], None],
        loop: asyncio.AbstractEventLoop,
        declare: Callable[[Any], None] | None = None,
        redeclare: Callable[[], Coroutine[Any, Any, object]] | None = None,
        name: str = "alert feed",
        retry_max_delay_s: float = 2.0,
    ) -> None:
        self.parameters = parameters
        self.queue = queue
        self.prefetch = prefetch
        self.deliver = deliver
        self.loop = loop
        self.declare = declare
        #: declares a queue the service owns again, on the loop (after the queue was deleted)
        self.redeclare = redeclare
        self._redeclare_needed = False
        self.name = name
        self.retry_max_delay_s = retry_max_delay_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._generation: Generation | None = None
        self._count = 0
        self._lost = False
        # deliveries received, not yet taken by the loop; whether a wake-up is on its way
        self._received: deque[FeedDelivery] = deque()
        self._wakeup_pending = False
        #: set by the loop each time it took what was received (the thread may read on)
        self._taken = threading.Event()
        #: set once the first connection consumes (or failed for good: see ``error``)
        self.consuming = threading.Event()
        self.error: BaseException | None = None
        install_lean_properties()

    # ----------------------------------------------------------------- control (loop side)
    def start(self) -> None:
        # pika logs every failed attempt and closed connection at WARNING/ERROR; the feed says
        # it once itself (issue 10: an outage in a few lines)
        logging.getLogger("pika").setLevel(logging.CRITICAL)
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    async def wait_consuming(self, timeout_s: float) -> None:
        """Until the first connection consumes; its failure (e.g. refused) is raised here."""
        ok = await asyncio.to_thread(self.consuming.wait, timeout_s)
        if self.error is not None:
            raise self.error
        if not ok:
            raise TimeoutError(f"{self.name}: not consuming {self.queue} after {timeout_s:g} s")

    async def stop(self) -> None:
        """Stop consuming and close the connection (unacknowledged deliveries are requeued)."""
        self._stop.set()
        self._taken.set()  # in case the thread waits for the loop
        generation = self._generation
        if generation is not None:
            try:
                generation.connection.add_callback_threadsafe(lambda: None)  # wake it up
            except Exception:  # already closed
                log.debug("%s: connection already closed", self.name)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 10.0)
            self._thread = None

    def settle(self, generation: Generation, how: str, tag: int, **kwargs: Any) -> None:
        """Acknowledge (or reject) on the feed's thread; :class:`FeedGone` if ``generation`` is
        not the current connection any more."""
        if generation is not self._generation:
            raise FeedGone(f"{self.name}: the connection of delivery {tag} is gone")
        channel = generation.channel
        method = channel.basic_ack if how == "ack" else channel.basic_nack
        try:
            generation.connection.add_callback_threadsafe(lambda: method(tag, **kwargs))
        except Exception as exc:
            raise FeedGone(f"{self.name}: {exc}") from None

    def _hand_over(self) -> None:
        """On the loop: take what the thread received so far (in order), in slices."""
        self._wakeup_pending = False  # before taking: what arrives from now on wakes us again
        received = self._received
        while received:
            take = min(len(received), SLICE)
            self.deliver([received.popleft() for _ in range(take)])
        self._taken.set()

    # ----------------------------------------------------------------- the thread
    def _run(self) -> None:
        delay = 0.25
        while not self._stop.is_set():
            try:
                self._consume()
                return
            except (pika.exceptions.AMQPError, OSError) as exc:
                if not self.consuming.is_set() and isinstance(
                    exc, pika.exceptions.ProbableAuthenticationError | pika.exceptions.ChannelClosed
                ):
                    self.error = exc  # refused at the start: the service reports it
                    self.consuming.set()
                    return
                if isinstance(exc, ConsumerCancelled):
                    log.warning(
                        "%s: the broker stopped our consumer of %s (queue deleted?); "
                        "consuming again",
                        self.name,
                        self.queue,
                    )
                    self._lost = True
                    self._redeclare_needed = True
                    delay = 0.25
                elif not self._lost:
                    log.warning("%s: broker connection lost (%s); reconnecting", self.name, exc)
                    self._lost = True
                    delay = 0.25
            except Exception as exc:  # a bug: say so, keep trying
                log.exception("%s: unexpected error; reconnecting", self.name)
                if not self.consuming.is_set():
                    self.error = exc
                    self.consuming.set()
                    return
            finally:
                self._generation = None
            if self._stop.wait(delay):
                return
            delay = min(delay * 2, self.retry_max_delay_s)

    def _redeclare(self) -> None:
        """On the thread: have the loop declare the queue again; retried with the next attempt
        if that fails (e.g. the broker is away)."""
        if not self._redeclare_needed or self.redeclare is None:
            return
        future = asyncio.run_coroutine_threadsafe(self.redeclare(), self.loop)
        try:
            future.result(timeout=30)
        except Exception as exc:
            future.cancel()
            raise pika.exceptions.AMQPError(f"declaring {self.queue} again: {exc}") from exc
        self._redeclare_needed = False

    def _consume(self) -> None:
        self._redeclare()
        connection = pika.BlockingConnection(self.parameters)
        try:
            channel = connection.channel()
            channel.basic_qos(prefetch_count=self.prefetch)
            if self.declare is not None:
                self.declare(channel)
            self._count += 1
            generation = Generation(self, self._count, connection, channel)
            received = self._received

            def on_message(_ch: Any, method: Any, properties: Any, body: bytes) -> None:
                received.append(FeedDelivery(generation, method, properties, body))

            cancelled: list[Any] = []
            channel.add_on_cancel_callback(cancelled.append)
            channel.basic_consume(self.queue, on_message)
            self._generation = generation
            if self._lost:
                log.warning("%s: consuming %s again", self.name, self.queue)
                self._lost = False
            self.consuming.set()
            bind_at = time.monotonic() + self.rebind_interval_s
            while not self._stop.is_set():
                if len(received) >= READ_AHEAD:
                    self._taken.clear()
                    if len(received) >= READ_AHEAD:  # not taken yet: let the loop catch up
                        self._taken.wait(READ_PAUSE_MAX_S)
                connection.process_data_events(time_limit=0.2)
                if self.declare is not None and time.monotonic() >= bind_at:
                    self.declare(channel)  # a missing exchange: an error, and we reconnect
                    bind_at = time.monotonic() + self.rebind_interval_s
                # while deliveries keep coming, read on before waking the loop (pika reads
                # 4 kB, about ten alerts, at a time): one wake-up per slice, not per read
                before = -1
                while before < len(received) < READ_AHEAD:
                    before = len(received)
                    connection.process_data_events(time_limit=0)
                if received and not self._wakeup_pending:
                    self._wakeup_pending = True
                    self.loop.call_soon_threadsafe(self._hand_over)
                if cancelled:  # what it delivered before is handed over: start over
                    raise ConsumerCancelled(f"{self.queue}: consumer cancelled by the broker")
        finally:
            self._generation = None
            if connection.is_open:
                try:
                    connection.process_data_events(time_limit=0)  # acks asked for until now
                    connection.close()
                except Exception as exc:
                    log.debug("%s: close: %s", self.name, exc)
