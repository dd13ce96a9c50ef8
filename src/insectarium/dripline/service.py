"""A dripline service: one AMQP queue, its endpoints, heartbeats and scheduled logging.

A :class:`Service` is itself an endpoint (requests to its own name reach it) and owns child
endpoints, each bound on the requests exchange as ``<endpoint>.#``.  The queue is named after the
service, exclusive and auto-deleted, exactly as dripline-cpp declares it, so a second process with
the same name is refused by the broker instead of silently sharing the load.

Requests are handled concurrently (up to ``prefetch_count`` at once): a run-control command that
waits on other services must not stall a simple ``get``.  When the broker goes away, the
connection reconnects by itself and the queue, bindings and consumer are restored; the service
says so in its log (one line when the broker goes, one when it is back) and keeps its state.
Alerts it could not publish meanwhile — sensor values above all — are kept in a bounded
:class:`~.outbox.AlertOutbox` and published when the broker is back, with their original
timestamps.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import aiormq
from aio_pika.abc import AbstractQueue

from .chunking import Reassembler
from .client import Interface
from .config_files import Authentication
from .connection import Connection, NotConnected, delivery_of
from .constants import DEFAULT_BROADCAST_KEY, MsgOp
from .endpoint import Endpoint, Reply, describe, maybe_await
from .entity import Entity
from .limits import ALERT_BUFFER_BYTES, ALERT_BUFFER_MESSAGES, clip
from .message import Message
from .outbox import AlertOutbox, AlertPublisher
from .quick_mesh import QuickMesh, as_mesh
from .throttle import LogThrottle

if TYPE_CHECKING:
    from .config import MeshConfig

log = logging.getLogger(__name__)


class ServiceAlreadyRunning(RuntimeError):
    """The broker refused our exclusive service queue: the name is taken by another process."""


class Service(Endpoint):
    """A process-level dripline service hosting endpoints."""

    def __init__(
        self,
        name: str,
        endpoints: Iterable[Endpoint] | None = None,
        enable_scheduling: bool = True,
        broadcast_key: str = DEFAULT_BROADCAST_KEY,
        loop_timeout_ms: int = 1000,
        message_wait_ms: int = 1000,
        heartbeat_interval_s: float = 60,
        dripline_mesh: Mapping[str, Any] | QuickMesh | MeshConfig | None = None,
        authentication: Authentication | None = None,
        username: str | None = None,
        password: str | None = None,
        prefetch_count: int = 32,
        request_timeout_s: float = 10.0,
        restart_on_error: bool = True,
        alert_buffer_messages: int = ALERT_BUFFER_MESSAGES,
        alert_buffer_bytes: int = ALERT_BUFFER_BYTES,
        **kwargs: Any,
    ) -> None:
        super().__init__(name, **kwargs)
        self.mesh = as_mesh(dripline_mesh)
        self.authentication = authentication or Authentication.load(
            username=username, password=password
        )
        self.enable_scheduling = enable_scheduling
        self.broadcast_key = broadcast_key
        self.loop_timeout_ms = loop_timeout_ms
        self.message_wait_ms = message_wait_ms
        self.heartbeat_interval_s = float(heartbeat_interval_s)
        self.prefetch_count = prefetch_count
        # accepted for dripline-python configs; reconnection is always on here
        self.restart_on_error = restart_on_error
        self.request_timeout_s = request_timeout_s
        self.instance_id = str(uuid.uuid4())
        self.service = self
        self.sync_children: dict[str, Endpoint] = {}
        self.connection: Connection | None = None
        self.interface: Interface | None = None
        self._queue: AbstractQueue | None = None
        self._consumer_tag: str | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping = asyncio.Event()
        self._running = False
        self._reassembler = self.make_reassembler(self._on_message)
        self._ignored = LogThrottle(log)
        self._invalid = LogThrottle(log)
        self._failed = LogThrottle(log, interval=1.0)
        self._reply_failed = LogThrottle(log, logging.ERROR)
        self._outbox = AlertOutbox(alert_buffer_messages, alert_buffer_bytes)
        self._alerts: AlertPublisher | None = None
        for endpoint in endpoints or ():
            self.add_endpoint(endpoint)

    def make_reassembler(self, on_message: Callable[[Message], Awaitable[None]]) -> Reassembler:
        """A chunk reassembler bounded by this service's mesh limits (one per consumed queue)."""
        return Reassembler(
            on_message,
            self.message_wait_ms,
            max_message_size=self.mesh.max_message_size,
            max_payload_size=self.mesh.max_payload_size,
        )

    # ----------------------------------------------------------------- structure
    def add_endpoint(self, endpoint: Endpoint) -> None:
        if endpoint.name == self.name or endpoint.name in self.sync_children:
            raise ValueError(f"service {self.name}: duplicate endpoint name {endpoint.name!r}")
        endpoint.service = self
        self.sync_children[endpoint.name] = endpoint
        if self._running and self._queue is not None:
            # added to a running service: bind its routing key now (completes asynchronously)
            self.spawn(
                self._queue.bind(self.mesh.requests_exchange, routing_key=f"{endpoint.name}.#"),
                name=f"bind:{endpoint.name}",
            )
        if self._running and isinstance(endpoint, Entity) and self.enable_scheduling:
            endpoint.start_logging()

    @property
    def is_running(self) -> bool:
        return self._running

    def binding_keys(self) -> list[str]:
        return [
            f"{self.name}.#",
            f"{self.broadcast_key}.#",
            *(f"{n}.#" for n in self.sync_children),
        ]

    # ----------------------------------------------------------------- hooks for subclasses
    async def on_start(self) -> None:
        """Called after the broker connection is up, before requests are consumed."""

    async def on_stopping(self) -> None:
        """Called when a stop begins (``is_running`` is already false): requests are still
        served and the connection, the client interface and background tasks still work, so
        that what must be finished can be (refuse to *start* anything new meanwhile)."""

    async def on_stop(self) -> None:
        """Called while stopping, after consuming has stopped and background tasks ended."""

    # ----------------------------------------------------------------- life cycle
    async def start(self) -> None:
        self.connection = Connection(
            self.mesh, self.authentication.dripline, name=f"{self.name} ({self.instance_id[:8]})"
        )
        await self.connection.connect()
        self._alerts = AlertPublisher(self.connection, self._outbox, self.spawn)
        self.mesh.register_return_codes()
        self.interface = Interface(
            dripline_mesh=self.mesh,
            connection=self.connection,
            name=self.name,
            timeout_s=self.request_timeout_s,
        )
        await self.on_start()
        channel = self.connection.channel
        assert channel is not None
        await channel.set_qos(prefetch_count=self.prefetch_count)
        try:
            self._queue = await channel.declare_queue(
                self.name, durable=False, exclusive=True, auto_delete=True
            )
        except aiormq.exceptions.ChannelLockedResource:
            await self.connection.close()
            self.connection = None
            raise ServiceAlreadyRunning(
                f"another process already serves {self.name!r} on broker {self.mesh.broker} "
                "(its queue is exclusive); stop it first or choose another name"
            ) from None
        for key in self.binding_keys():
            await self._queue.bind(self.mesh.requests_exchange, routing_key=key)
        await self.setup_consumers()
        self._consumer_tag = await self.connection.consume(
            self._queue, self._on_delivery, exclusive=True
        )
        self._running = True
        if self.enable_scheduling:
            for child in self.sync_children.values():
                if isinstance(child, Entity):
                    child.start_logging()
        if self.heartbeat_interval_s > 0:
            self.spawn(self._heartbeat_loop(), name="heartbeat")
        from .memory import release_free_memory

        release_free_memory()  # import and set-up garbage: not this service's working set
        log.info(
            "service %s started with endpoints %s", self.name, ", ".join(self.sync_children) or "-"
        )

    async def setup_consumers(self) -> None:
        """Extra queues (e.g. alert consumers) declared before requests start to flow."""

    async def run(self) -> None:
        """Start, serve until :meth:`request_stop` (or a signal in the CLI), then stop."""
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        try:
            await self._stopping.wait()
        finally:
            await self.stop()

    def request_stop(self) -> None:
        self._stopping.set()

    async def stop(self) -> None:
        if not self._running and self.connection is None:
            return
        self._running = False
        for child in self.sync_children.values():
            if isinstance(child, Entity):
                child.stop_logging()
        try:
            # still consuming: what must be finished may need this service's own endpoints
            # (the DAQ's end of run writes its snapshot through its metadata receiver)
            await self.on_stopping()
        except Exception:
            log.exception("service %s: on_stopping failed", self.name)
        if self._queue is not None:
            with contextlib.suppress(Exception):
                if self._consumer_tag and self.connection is not None:
                    await self.connection.cancel(self._consumer_tag)
                await self._queue.delete(if_unused=False, if_empty=False)
            self._queue = None
        if self._alerts is not None:
            await self._alerts.close(f"service {self.name}")
            self._alerts = None
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._reassembler.close()
        with contextlib.suppress(Exception):
            await self.on_stop()
        if self.interface is not None:
            await self.interface.close()
        if self.connection is not None:
            await self.connection.close()
            self.connection = None
        log.info("service %s stopped", self.name)

    def spawn(self, coro: Awaitable[Any], name: str = "") -> asyncio.Task[Any]:
        """Run a background coroutine owned by the service (cancelled on stop)."""
        task = asyncio.ensure_future(coro)
        if name:
            task.set_name(f"{self.name}:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task %s failed", task.get_name(), exc_info=task.exception())

    def schedule(
        self, func: Callable[[], Any], interval: float, start_delay: float | None = None
    ) -> asyncio.Task[Any]:
        """Call ``func`` (plain or async) every ``interval`` s; cancel the returned task to stop."""

        async def loop() -> None:
            await asyncio.sleep(interval if start_delay is None else start_delay)
            while True:
                try:
                    await maybe_await(func())
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("scheduled call %r failed", func)
                await asyncio.sleep(interval)

        return self.spawn(loop(), name=f"schedule:{getattr(func, '__name__', func)}")

    # ----------------------------------------------------------------- sending
    async def send(self, msg: Message) -> None:
        if self.connection is None:
            raise RuntimeError(f"service {self.name} is not started")
        if not self.connection.connected.is_set():
            raise NotConnected(
                f"not connected to broker {self.connection.url_for_humans} (reconnecting)"
            )
        await self.connection.publish(msg)

    async def send_alert(self, routing_key: str, payload: Any, *, keep: bool = True) -> None:
        """Publish an alert.  With ``keep`` (the default) an alert the broker cannot take now is
        kept and published when it is back (see :mod:`.outbox`); heartbeats pass ``False``."""
        msg = Message.alert(routing_key, payload, sender=self.name)
        if not keep:
            await self.send(msg)
            return
        if self._alerts is None:
            raise RuntimeError(f"service {self.name} is not started")
        await self._alerts.publish(msg)

    async def _heartbeat_loop(self) -> None:
        key = f"{self.mesh.heartbeat_routing_key}.{self.name}"
        while True:
            await asyncio.sleep(self.heartbeat_interval_s)
            try:
                await self.send_alert(key, {"name": self.name, "id": self.instance_id}, keep=False)
            except Exception as exc:  # the broker is away: the connection has said so already
                log.debug("heartbeat not sent: %s", exc)

    # requests to other endpoints, through the broker (like dl-python's RequestSender)
    def _iface(self) -> Interface:
        if self.interface is None:
            raise RuntimeError(f"service {self.name} is not started")
        return self.interface

    async def get(self, endpoint: str, specifier: str | None = None, **kw: Any) -> Any:
        return await self._iface().get(endpoint, specifier, **kw)

    async def set(self, endpoint: str, value: Any, specifier: str | None = None, **kw: Any) -> Any:
        return await self._iface().set(endpoint, value, specifier, **kw)

    async def cmd(
        self,
        endpoint: str,
        specifier: str,
        ordered_args: list[Any] | None = None,
        keyed_args: Mapping[str, Any] | None = None,
        **kw: Any,
    ) -> Any:
        return await self._iface().cmd(endpoint, specifier, ordered_args, keyed_args, **kw)

    # ----------------------------------------------------------------- receiving
    async def _on_delivery(self, incoming: aiormq.abc.DeliveredMessage) -> None:
        try:
            await self._reassembler.feed(delivery_of(incoming))
        except Exception:
            log.exception("failed to process a delivery; acknowledged and dropped")
        finally:
            with contextlib.suppress(Exception):
                # queued behind the reply, in order, without waiting for the socket to drain
                # (as the reply itself, see Connection._publish_chunk)
                await incoming.channel.basic_ack(incoming.delivery.delivery_tag, wait=False)

    def route(self, routing_key: str) -> Endpoint | None:
        first = routing_key.split(".", 1)[0]
        if first in (self.name, self.broadcast_key):
            return self
        return self.sync_children.get(first)

    async def _on_message(self, msg: Message) -> None:
        if msg.is_valid and not msg.is_request:
            self._ignored(
                "ignoring a non-request message (type %s) on %s", msg.message_type, msg.routing_key
            )
            return
        target = self.route(msg.routing_key)
        if target is None:
            reply = Reply(
                102, f"service {self.name} has no endpoint for routing key {msg.routing_key!r}"
            )
        else:
            reply = await target.handle_request(msg)
        # one line per set/cmd (what shifters read back); gets are the bulk of traffic: DEBUG.
        # Failures a peer can repeat at will are throttled: undecodable messages to one line a
        # minute, other error replies to one a second (each with the count of those not shown).
        if not msg.is_valid:
            self._invalid("%s -> %d %s", describe(msg), reply.code, clip(reply.message))
        elif reply.code >= 100:
            self._failed("%s -> %d %s", describe(msg), reply.code, clip(reply.message))
        else:
            level = logging.DEBUG if msg.message_operation == MsgOp.GET else logging.INFO
            if log.isEnabledFor(level):
                log.log(level, "%s -> %d %s", describe(msg), reply.code, clip(reply.message))
        await self.send_reply(msg, reply)

    async def send_reply(self, request: Message, reply: Reply) -> None:
        if not request.reply_to:
            log.debug("request %s has no reply_to; no reply sent", request.correlation_id)
            return
        out = request.make_reply(reply.code, reply.message, reply.payload, sender=self.name)
        try:
            await self.send(out)
        except Exception as exc:
            self._reply_failed("could not send reply to %s: %s", request.reply_to, exc)

    # ----------------------------------------------------------------- the service as endpoint
    async def set_condition(self, condition: int) -> Reply:
        """Broadcast habit: a service passes ``set_condition`` on to every child endpoint."""
        replies = [await child.set_condition(condition) for child in self.sync_children.values()]
        own = await super().set_condition(condition)
        acted = [r for r in replies if r.message != own.message or r.code != 0]
        if not acted:
            return own
        worst = max(acted, key=lambda r: r.code)
        return Reply(worst.code, "; ".join(r.message for r in acted if r.message))
