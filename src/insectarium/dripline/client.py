"""Sending requests and waiting for replies: :class:`Interface` and :class:`BlockingInterface`.

One exclusive reply queue per client, bound on the requests exchange to its own name (as dripline
peers expect), consumed once; replies are matched to waiting calls by correlation id.  A
declare-bind-consume per call would cost the broker ~20 ms (performance-notes.md).

Errors are dripline return codes, also on the client side: 403 when the broker returned the
request because nothing is bound to the routing key, 404 when no reply came in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import uuid
from collections.abc import Coroutine, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import aiormq
from aio_pika.abc import AbstractQueue

from .chunking import Reassembler
from .config_files import Authentication
from .connection import Connection, UnroutableError, delivery_of
from .constants import MsgOp
from .message import Message, local_reply
from .quick_mesh import QuickMesh, as_mesh
from .return_codes import ThrowReply

if TYPE_CHECKING:
    from .config import MeshConfig

log = logging.getLogger(__name__)
T = TypeVar("T")


class ReplyError(ThrowReply):
    """A reply with an error code (>= 100); raising it inside a handler forwards the code."""

    def __init__(self, reply: Message) -> None:
        self.reply = reply
        super().__init__(reply.return_code, reply.return_message, reply.payload)


class Interface:
    """An async dripline client.

    Usable on its own (``async with Interface(...) as dl: await dl.get("peaches")``) or inside a
    service, sharing the service's connection.
    """

    def __init__(
        self,
        *,
        dripline_mesh: Mapping[str, Any] | QuickMesh | MeshConfig | None = None,
        authentication: Authentication | None = None,
        username: str | None = None,
        password: str | None = None,
        timeout_s: float = 10.0,
        name: str = "unknown",
        connection: Connection | None = None,
    ) -> None:
        self.mesh = as_mesh(dripline_mesh)
        auth = authentication or Authentication.load(username=username, password=password)
        self._credentials = auth.dripline
        self.timeout_s = timeout_s
        self.name = name
        self._connection = connection
        self._owns_connection = connection is None
        self._reply_queue: AbstractQueue | None = None
        # one reply awaited: a future; every reply until the timeout (collect): a queue
        self._waiting: dict[str, asyncio.Future[Message] | asyncio.Queue[Message]] = {}
        self._reassembler = Reassembler(
            self._on_reply,
            max_message_size=self.mesh.max_message_size,
            max_payload_size=self.mesh.max_payload_size,
        )
        self._start_lock = asyncio.Lock()
        self._consumer_tag: str | None = None

    async def __aenter__(self) -> Interface:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def connection(self) -> Connection:
        if self._connection is None:
            raise RuntimeError("Interface is not started")
        return self._connection

    async def start(self) -> None:
        async with self._start_lock:
            if self._reply_queue is not None:
                return
            if self._connection is None:
                self._connection = Connection(
                    self.mesh, self._credentials, name=f"{self.name} client"
                )
            if self._connection.connection is None:
                # an unreachable broker fails within the timeout (0: the attempts decide)
                await self._connection.connect(timeout_s=self.timeout_s or None)
            channel = self._connection.channel
            assert channel is not None
            name = f"amq_{uuid.uuid4().hex}"
            queue = await channel.declare_queue(
                name, exclusive=True, auto_delete=True, durable=False
            )
            await queue.bind(self.mesh.requests_exchange, routing_key=name)
            self._consumer_tag = await self._connection.consume(
                queue, self._on_delivery, no_ack=True, exclusive=True
            )
            self._reply_queue = queue

    async def close(self) -> None:
        self._reassembler.close()
        if self._reply_queue is not None and not self._owns_connection:
            # on a shared connection the queue must go explicitly; on our own, closing does it
            with contextlib.suppress(Exception):
                if self._consumer_tag and self._connection is not None:
                    await self._connection.cancel(self._consumer_tag)
                await self._reply_queue.delete(if_unused=False, if_empty=False)
        self._reply_queue = None
        if self._owns_connection and self._connection is not None:
            await self._connection.close()
            self._connection = None

    async def _on_delivery(self, incoming: aiormq.abc.DeliveredMessage) -> None:
        await self._reassembler.feed(delivery_of(incoming))

    async def _on_reply(self, reply: Message) -> None:
        waiting = self._waiting.get(reply.correlation_id)
        if waiting is None:
            log.debug("reply %s matches no waiting request; dropped", reply.correlation_id)
        elif isinstance(waiting, asyncio.Queue):
            waiting.put_nowait(reply)
        elif not waiting.done():  # a second reply to a one-reply request: dropped
            waiting.set_result(reply)

    # ----------------------------------------------------------------- requests
    async def send_request(
        self,
        request: Message,
        *,
        timeout_s: float | None = None,
        collect: bool = False,
    ) -> list[Message]:
        """Send ``request`` and return its reply (or, with ``collect``, every reply until timeout).

        Never raises for dripline-level failures: they come back as locally made replies (403, 404).
        ``timeout_s`` of 0 waits forever (dl-agent's habit).
        """
        await self.start()
        assert self._reply_queue is not None
        request.reply_to = self._reply_queue.name
        timeout = self.timeout_s if timeout_s is None else timeout_s
        loop = asyncio.get_running_loop()
        # one reply: a future, resolved by _on_reply (no task per request, as a Queue.get under
        # wait_for costs); every reply until the timeout: a queue
        inbox: asyncio.Future[Message] | asyncio.Queue[Message] = (
            asyncio.Queue() if collect else loop.create_future()
        )
        self._waiting[request.correlation_id] = inbox
        try:
            try:
                await self.connection.publish(request, mandatory=True)
            except UnroutableError as exc:
                return [local_reply(request, 403, str(exc))]
            except Exception as exc:
                return [local_reply(request, 403, f"Unable to send request: {exc}")]
            limit = timeout if timeout and timeout > 0 else None
            replies: list[Message] = []
            if isinstance(inbox, asyncio.Future):
                with contextlib.suppress(TimeoutError):
                    replies.append(await asyncio.wait_for(inbox, limit))
                return replies or [_timed_out(request, timeout)]
            deadline = None if limit is None else loop.time() + limit
            while True:
                remaining = None if deadline is None else deadline - loop.time()
                if remaining is not None and remaining <= 0:
                    break
                try:
                    replies.append(await asyncio.wait_for(inbox.get(), remaining))
                except TimeoutError:
                    break
            return replies or [_timed_out(request, timeout)]
        finally:
            self._waiting.pop(request.correlation_id, None)

    async def request(
        self,
        target: str,
        operation: MsgOp | int,
        payload: Any = None,
        *,
        specifier: str | None = None,
        lockout_key: str | None = None,
        timeout_s: float | None = None,
    ) -> Message:
        """Send one request and return the reply message, whatever its code."""
        msg = Message.request(
            target,
            operation,
            payload,
            specifier=specifier or "",
            lockout_key=lockout_key,
            sender=self.name,
        )
        return (await self.send_request(msg, timeout_s=timeout_s))[0]

    @staticmethod
    def _payload_or_raise(reply: Message) -> Any:
        if reply.return_code >= 100:
            raise ReplyError(reply)
        return reply.payload

    async def get(
        self,
        endpoint: str,
        specifier: str | None = None,
        lockout_key: str | None = None,
        timeout_s: float | None = None,
    ) -> Any:
        """The reply payload of a get; raises :class:`ReplyError` for an error code."""
        reply = await self.request(
            endpoint,
            MsgOp.GET,
            {},
            specifier=specifier,
            lockout_key=lockout_key,
            timeout_s=timeout_s,
        )
        return self._payload_or_raise(reply)

    async def set(
        self,
        endpoint: str,
        value: Any,
        specifier: str | None = None,
        lockout_key: str | None = None,
        timeout_s: float | None = None,
    ) -> Any:
        reply = await self.request(
            endpoint,
            MsgOp.SET,
            {"values": [value]},
            specifier=specifier,
            lockout_key=lockout_key,
            timeout_s=timeout_s,
        )
        return self._payload_or_raise(reply)

    async def cmd(
        self,
        endpoint: str,
        specifier: str,
        ordered_args: list[Any] | None = None,
        keyed_args: Mapping[str, Any] | None = None,
        lockout_key: str | None = None,
        timeout_s: float | None = None,
    ) -> Any:
        payload = {**(keyed_args or {}), "values": list(ordered_args or [])}
        reply = await self.request(
            endpoint,
            MsgOp.CMD,
            payload,
            specifier=specifier,
            lockout_key=lockout_key,
            timeout_s=timeout_s,
        )
        return self._payload_or_raise(reply)


class BlockingInterface:
    """The same client for plain scripts and notebooks: blocking calls, a private event loop.

    >>> with BlockingInterface(dripline_mesh={"broker": "rabbit-broker"}) as dl:
    ...     dl.get("peaches")
    """

    def __init__(self, **kwargs: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="dripline-client", daemon=True
        )
        self._thread.start()
        self._iface = self._run(self._make(kwargs))

    async def _make(self, kwargs: dict[str, Any]) -> Interface:
        return Interface(**kwargs)

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def __enter__(self) -> BlockingInterface:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get(self, endpoint: str, specifier: str | None = None, **kw: Any) -> Any:
        return self._run(self._iface.get(endpoint, specifier, **kw))

    def set(self, endpoint: str, value: Any, specifier: str | None = None, **kw: Any) -> Any:
        return self._run(self._iface.set(endpoint, value, specifier, **kw))

    def cmd(
        self,
        endpoint: str,
        specifier: str,
        ordered_args: list[Any] | None = None,
        keyed_args: Mapping[str, Any] | None = None,
        **kw: Any,
    ) -> Any:
        return self._run(self._iface.cmd(endpoint, specifier, ordered_args, keyed_args, **kw))

    def close(self) -> None:
        if self._loop.is_running():
            self._run(self._iface.close())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)


def _timed_out(request: Message, timeout: float) -> Message:
    """The 404 a request gets locally when no reply came within ``timeout``."""
    return local_reply(request, 404, f"Timed out after {timeout:g} s waiting for a reply")
