"""A lean alert consumer: one queue on its own pika connection, in a thread.

aio-pika spends ~90 us of CPU per delivery here (it turns every frame into a full
``IncomingMessage`` and runs a task per message); pika's blocking connection receives the same
alert for ~30 us.  For a service whose whole job is to swallow alerts (the sensor logger) that is
the difference between a fraction of a core and the broker's own rate (issue 14).  So the feed
receives on a :class:`pika.BlockingConnection` in a daemon thread and hands the deliveries to the
service's event loop through a queue: the loop is woken (``call_soon_threadsafe``, a write to its
self-pipe) only when it has taken everything handed over before, not per message or per read;
everything else — decoding, storing, deciding when to acknowledge — stays on the loop.

Acknowledgements go back through :meth:`AlertFeed.ack`, which the pika thread performs
(``add_callback_threadsafe``).  A delivery belongs to one *generation* (one connection): after a
reconnect the old delivery tags mean nothing, so acknowledging them raises :class:`FeedGone` and
the broker redelivers those messages (a logger skips values it already stored).

The connection takes the service's broker, vhost, credentials and TLS settings (same CA, same
client certificate).  With a ``declare`` callback the feed declares its queue itself on every
connection (an exclusive, auto-deleted queue must belong to the connection that consumes it);
otherwise the queue must exist (a durable queue the service declared).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

import pika
import pika.exceptions

from .config import Credentials, MeshConfig, tls_context

log = logging.getLogger(__name__)

#: deliveries handed to the loop at once at most
SLICE = 2000


class FeedGone(Exception):
    """The connection a delivery came on is gone: it cannot be acknowledged any more."""


class Generation:
    """One connection's channel: delivery tags are only meaningful within it."""

    __slots__ = ("channel", "connection", "number")

    def __init__(self, number: int, connection: Any, channel: Any) -> None:
        self.number = number
        self.connection = connection
        self.channel = channel


class FeedDelivery:
    """One delivery, shaped like the parts of aio-pika's ``IncomingMessage`` the services read.

    Only what is read is kept (not pika's frame objects): up to a prefetch count of these wait
    in memory.  A consumer done with the content may :meth:`release` it and keep the delivery
    for its acknowledgement only.
    """

    __slots__ = (
        "body",
        "channel",
        "content_encoding",
        "correlation_id",
        "delivery_tag",
        "feed",
        "headers",
        "message_id",
        "redelivered",
        "reply_to",
        "routing_key",
    )

    def __init__(
        self, feed: AlertFeed, generation: Generation, method: Any, properties: Any, body: bytes
    ) -> None:
        self.feed = feed
        self.channel = generation
        self.delivery_tag: int = method.delivery_tag
        self.routing_key: str = method.routing_key
        self.redelivered: bool = method.redelivered
        self.headers: dict[str, Any] = properties.headers or {}
        self.content_encoding: str | None = properties.content_encoding
        self.message_id: str | None = properties.message_id
        self.correlation_id: str | None = properties.correlation_id
        self.reply_to: str | None = properties.reply_to
        self.body = body

    def release(self) -> None:
        """Drop the body and headers (the delivery is then only good for its acknowledgement)."""
        self.body = b""
        self.headers = {}

    async def ack(self, multiple: bool = False) -> None:
        self.feed.settle(self.channel, "ack", self.delivery_tag, multiple=multiple)

    async def nack(self, requeue: bool = True) -> None:
        self.feed.settle(self.channel, "nack", self.delivery_tag, requeue=requeue)


def connection_parameters(
    mesh: MeshConfig, credentials: Credentials, name: str
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

    def __init__(
        self,
        parameters: pika.ConnectionParameters,
        queue: str,
        *,
        prefetch: int,
        deliver: Callable[[list[FeedDelivery]], None],
        loop: asyncio.AbstractEventLoop,
        declare: Callable[[Any], None] | None = None,
        name: str = "alert feed",
        retry_max_delay_s: float = 2.0,
    ) -> None:
        self.parameters = parameters
        self.queue = queue
        self.prefetch = prefetch
        self.deliver = deliver
        self.loop = loop
        self.declare = declare
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
        #: set once the first connection consumes (or failed for good: see ``error``)
        self.consuming = threading.Event()
        self.error: BaseException | None = None

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
                if not self._lost:
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

    def _consume(self) -> None:
        connection = pika.BlockingConnection(self.parameters)
        try:
            channel = connection.channel()
            channel.basic_qos(prefetch_count=self.prefetch)
            if self.declare is not None:
                self.declare(channel)
            self._count += 1
            generation = Generation(self._count, connection, channel)
            received = self._received

            def on_message(_ch: Any, method: Any, properties: Any, body: bytes) -> None:
                received.append(FeedDelivery(self, generation, method, properties, body))

            channel.basic_consume(self.queue, on_message)
            self._generation = generation
            if self._lost:
                log.warning("%s: consuming %s again", self.name, self.queue)
                self._lost = False
            self.consuming.set()
            while not self._stop.is_set():
                connection.process_data_events(time_limit=0.2)
                # while deliveries keep coming, read on before waking the loop (pika reads
                # 4 kB, about ten alerts, at a time): one wake-up per slice, not per read
                before = -1
                while before < len(received) < SLICE // 4:
                    before = len(received)
                    connection.process_data_events(time_limit=0)
                if received and not self._wakeup_pending:
                    self._wakeup_pending = True
                    self.loop.call_soon_threadsafe(self._hand_over)
        finally:
            self._generation = None
            if connection.is_open:
                try:
                    connection.process_data_events(time_limit=0)  # acks asked for until now
                    connection.close()
                except Exception as exc:
                    log.debug("%s: close: %s", self.name, exc)
