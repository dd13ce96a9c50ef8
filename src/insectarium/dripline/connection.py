"""One long-lived, self-healing AMQP connection per process.

dripline-cpp opens a connection for every message it sends; measured here that costs the broker
~6 ms per message against ~0.5 ms on a kept connection (performance-notes.md).  We keep one robust
connection (aio-pika reconnects and restores queues, bindings and consumers after the broker comes
back) with two channels: one with publisher confirms for requests, whose *mandatory* flag turns
"nobody is bound to this routing key" into an error the client can report as 403, and one without
confirms for replies, where waiting for the broker's ack would only add latency.

Alerts go through a third channel, with confirms: the broker authorises every routing key a user
publishes on (topic permissions), and a refused publish closes the channel it was sent on.  On a
channel of its own, awaited, a refused alert becomes a :class:`PublishRefused` error in the
sender's log (and a dl-agent exit status) instead of a silent drop, and never disturbs the
channel that consumes requests.  With ``mesh.tls`` the connection is ``amqps`` with the broker's
certificate verified (:func:`~.config.tls_context`).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractExchange, AbstractRobustChannel, AbstractRobustConnection

from .config import Credentials, MeshConfig, tls_context
from .message import Message, encode

log = logging.getLogger(__name__)


class UnroutableError(Exception):
    """The broker returned a mandatory message: nothing is bound to its routing key."""


class NotConnected(ConnectionError):
    """The broker connection is down for now; the robust connection is re-establishing it."""


class BrokerUnavailable(ConnectionError):
    """Could not reach the broker after the configured number of attempts."""


class PublishRefused(PermissionError):
    """The broker refused a publish (ACCESS_REFUSED): this user may not use that routing key."""


def _cert_verification_error(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    """The certificate check failure behind a connection error (aiormq wraps it), if any."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


class Connection:
    def __init__(
        self,
        mesh: MeshConfig,
        credentials: Credentials,
        *,
        name: str = "dripline",
        reconnect_interval: float = 2.0,
    ) -> None:
        self.mesh = mesh
        self._credentials = credentials
        self.name = name
        self.reconnect_interval = reconnect_interval
        self.connection: AbstractRobustConnection | None = None
        self.confirm_channel: AbstractRobustChannel | None = None
        self.channel: AbstractRobustChannel | None = None
        self.alerts_channel: AbstractRobustChannel | None = None
        self._confirm_requests: AbstractExchange | None = None
        self.requests_exchange: AbstractExchange | None = None
        self.alerts_exchange: AbstractExchange | None = None
        self.connected = asyncio.Event()

    @property
    def url_for_humans(self) -> str:
        scheme, _, rest = self.mesh.url_for_humans.partition("://")
        return f"{scheme}://{self._credentials.username}@{rest}"

    async def connect(self) -> None:
        attempts = max(1, self.mesh.max_connection_attempts)
        delay = 0.5
        context = tls_context(self.mesh, self._credentials) if self.mesh.tls else None
        for attempt in range(1, attempts + 1):
            try:
                self.connection = await aio_pika.connect_robust(
                    host=self.mesh.broker,
                    port=self.mesh.broker_port,
                    login=self._credentials.username,
                    password=self._credentials.password,
                    virtualhost=self.mesh.vhost,
                    ssl=self.mesh.tls,
                    ssl_context=context,
                    reconnect_interval=self.reconnect_interval,
                    client_properties={"connection_name": self.name},
                )
                break
            except aiormq.exceptions.ProbableAuthenticationError:
                raise BrokerUnavailable(
                    f"broker {self.url_for_humans} refused the credentials of user "
                    f"{self._credentials.username!r}"
                ) from None
            except (TimeoutError, OSError, aiormq.exceptions.AMQPError) as exc:
                unverified = _cert_verification_error(exc)
                if unverified is not None:
                    # retrying cannot help: the broker's certificate is not one we trust
                    raise BrokerUnavailable(
                        f"TLS: cannot verify broker {self.url_for_humans}: "
                        f"{unverified.verify_message} "
                        f"(CA file: {self.mesh.tls_ca_file or 'system default'})"
                    ) from None
                if attempt == attempts:
                    raise BrokerUnavailable(
                        f"cannot connect to {self.url_for_humans} "
                        f"after {attempts} attempt(s): {exc}"
                    ) from None
                log.warning(
                    "cannot connect to %s (%s); retry %d/%d in %.1f s",
                    self.url_for_humans,
                    exc,
                    attempt,
                    attempts,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
        assert self.connection is not None
        self.connection.close_callbacks.add(self._on_close)
        self.connection.reconnect_callbacks.add(self._on_reconnect)
        self.confirm_channel = await self.connection.channel(
            publisher_confirms=True, on_return_raises=True
        )
        self.channel = await self.connection.channel(publisher_confirms=False)
        self.channel.close_callbacks.add(self._on_channel_close)
        self.alerts_channel = await self.connection.channel(publisher_confirms=True)
        try:
            self._confirm_requests = await self.declare_exchange(
                self.confirm_channel, self.mesh.requests_exchange
            )
            self.requests_exchange = await self.declare_exchange(
                self.channel, self.mesh.requests_exchange
            )
            self.alerts_exchange = await self.declare_exchange(
                self.alerts_channel, self.mesh.alerts_exchange
            )
        except aiormq.exceptions.ChannelAccessRefused as exc:
            await self.connection.close()
            raise BrokerUnavailable(
                f"broker {self.url_for_humans} does not let user "
                f"{self._credentials.username!r} use the dripline exchanges: "
                f"{exc.args[0] if exc.args else exc}"
            ) from None
        self.connected.set()
        log.info("connected to %s", self.url_for_humans)

    @staticmethod
    async def declare_exchange(channel: AbstractRobustChannel, name: str) -> AbstractExchange:
        """Both dripline exchanges: topic, non-durable, not auto-deleted (as dripline-cpp)."""
        return await channel.declare_exchange(
            name, aio_pika.ExchangeType.TOPIC, durable=False, auto_delete=False
        )

    def _on_close(self, _conn: Any, exc: BaseException | None = None) -> None:
        if exc is not None and self.connected.is_set():
            log.warning("lost connection to broker %s (%s); reconnecting", self.url_for_humans, exc)
        self.connected.clear()

    def _on_channel_close(self, _channel: Any, exc: BaseException | None = None) -> None:
        # replies go unconfirmed: a refusal only shows here (the channel is then restored)
        if isinstance(exc, aiormq.exceptions.ChannelAccessRefused):
            log.error("broker %s refused an operation: %s", self.url_for_humans, exc)

    def _on_reconnect(self, _conn: Any) -> None:
        log.warning("reconnected to broker %s; queues and consumers restored", self.url_for_humans)
        self.connected.set()

    async def close(self) -> None:
        if self.connection is not None and not self.connection.is_closed:
            self.connected.clear()
            await self.connection.close()

    # ----------------------------------------------------------------- publishing
    async def _publish_chunk(
        self, exchange: AbstractExchange, message: aio_pika.Message, key: str, mandatory: bool
    ) -> None:
        """Publish, waiting (briefly) for a channel the broker just closed to be reopened.

        A refused publish closes its channel; aio-pika reopens it by itself, and the next
        message must not fail in between just because the reopening is still under way.
        """
        for attempt in range(1, 6):
            try:
                await exchange.publish(message, routing_key=key, mandatory=mandatory)
                return
            except aiormq.exceptions.ChannelInvalidStateError:
                channel = exchange.channel
                if attempt == 5 or self.connection is None or self.connection.is_closed:
                    raise
                await asyncio.sleep(0.05 * attempt)
                if isinstance(channel, AbstractRobustChannel):
                    await asyncio.wait_for(channel.ready(), timeout=5)

    def exchange_for(self, msg: Message) -> AbstractExchange:
        exchange = self.alerts_exchange if msg.is_alert else self.requests_exchange
        if exchange is None:
            raise RuntimeError("connection is not open")
        return exchange

    async def publish(
        self, msg: Message, *, mandatory: bool = False, confirm: bool = False
    ) -> None:
        """Send ``msg`` (split into chunks if needed) to the exchange its type calls for.

        With ``mandatory`` the message goes through the confirming channel and
        :class:`UnroutableError` is raised when the broker returns it.  Alerts are always
        confirmed; ``confirm`` does the same for a reply.  A confirmed message the broker
        refuses raises :class:`PublishRefused` (and is logged as an error here).
        """
        if (mandatory or confirm) and not msg.is_alert:
            exchange = self._confirm_requests
        else:
            exchange = self.exchange_for(msg)
        if exchange is None:
            raise RuntimeError("connection is not open")
        chunks = encode(msg, self.mesh.max_payload_size)
        if len(chunks) > 1 and msg.is_request:
            log.warning(
                "request to %s goes out in %d chunks; services built on dripline-cpp "
                "(dripline-python 5) crash on multi-chunk requests",
                msg.routing_key,
                len(chunks),
            )
        for amqp_message in chunks:
            try:
                await self._publish_chunk(exchange, amqp_message, msg.routing_key, mandatory)
            except aio_pika.exceptions.DeliveryError as exc:
                frame = getattr(exc, "frame", None)
                why = getattr(frame, "reply_text", None) or "NO_ROUTE"
                code = getattr(frame, "reply_code", 312)
                raise UnroutableError(f"Message returned. Reply code: {code} {why}") from None
            except aiormq.exceptions.ChannelAccessRefused as exc:
                text = exc.args[0] if exc.args else str(exc)
                log.error(
                    "broker refused to publish %s on %s for user %r: %s",
                    msg.routing_key,
                    exchange.name,
                    self._credentials.username,
                    text,
                )
                raise PublishRefused(
                    f"broker refused {msg.routing_key!r} on exchange {exchange.name!r} "
                    f"for user {self._credentials.username!r}: {text}"
                ) from None
