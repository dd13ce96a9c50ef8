"""A blocking, self-healing listener on the dripline exchanges: what ``dl-mon`` runs.

``dl-mon`` is started by hand to watch traffic *now*, so its start-up counts: on the async stack
(asyncio + aio-pika + aiormq) it spent ~150 ms importing before it listened.  A monitor needs
none of that: one connection, one queue, messages printed in order.  :class:`Listener` reuses
:class:`~.oneshot.OneShotClient` (one socket, pamqp's frame codec, the same connection attempts
and one-line errors as every client here) and adds what a long-lived consumer needs:

* **heartbeats** (asked of the broker, sent while idle; a broker silent for two intervals is
  taken as gone), so a vanished host is noticed instead of waited on forever;
* **reconnection**: when the broker goes (restart, network), one warning line, a reminder every
  :data:`~.limits.REPORT_INTERVAL_S` while it stays away, and one line when it is back, with the
  queue declared and every binding and the consumer restored — the lines a service logs
  (:class:`~.connection.Connection`);
* **bindings kept**: the queue is bound again every :data:`~.limits.REBIND_INTERVAL_S`, since
  deleting an exchange drops its bindings without a word to the consumer (a missing exchange
  closes the channel; the listener then reconnects, and binds once a peer declared it again);
* **chunk reassembly** with the bounds of :class:`~.chunking.Reassembler`: a message above
  ``max_message_size`` (or announcing more chunks than fit) is refused before anything is kept,
  incomplete chunk sets are capped in number and bytes (oldest released first) and released
  invalid ``message_wait_ms`` after their last chunk, missing pieces shown as ``#``.
"""

from __future__ import annotations

import contextlib
import logging
import select
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from pamqp import commands as _cmd
from pamqp import frame as _frame
from pamqp import heartbeat as _heartbeat
from pamqp.exceptions import UnmarshalingException

from .errors import BrokerUnavailable
from .limits import MAX_PENDING_BYTES, MAX_PENDING_MESSAGES, REBIND_INTERVAL_S, REPORT_INTERVAL_S
from .message import Message, parse_message_id
from .oneshot import (
    OneShotClient,
    _ChannelClosed,
    _ConnectionClosed,
    _decoded,
    _describe,
    _echo,
    _Pending,
    _Props,
)

if TYPE_CHECKING:
    from .config import MeshConfig
    from .config_files import Credentials
    from .quick_mesh import QuickMesh

log = logging.getLogger(__name__)

#: heartbeat interval asked of the broker (s), as aio-pika's default
HEARTBEAT_S = 60
#: the longest one frame (or a whole delivery once begun) may take to arrive
READ_LIMIT_S = 30.0

_LOST = (OSError, _ConnectionClosed, _ChannelClosed, UnmarshalingException)


class BindRefused(PermissionError):
    """The broker refused a binding: topic permissions of this user, or no such exchange."""

    def __init__(self, username: str, exchange: str, key: str, text: str) -> None:
        if text.startswith("NOT_FOUND"):
            why = f"cannot watch {key!r}: there is no exchange {exchange!r} (yet)"
        else:
            why = f"the broker refused to let user {username!r} watch {key!r} on {exchange!r}"
        super().__init__(f"{why}: {text}")


class _ConsumerCancelled(ConnectionError):
    """The broker cancelled our consumer (the queue went away): start over."""


class ChunkCollector:
    """Deliveries in, whole messages out, joining chunks by message UUID; no event loop.

    The synchronous twin of :class:`~.chunking.Reassembler` for :class:`Listener`, with the same
    bounds, so memory stays flat whatever a publisher sends.
    """

    def __init__(
        self,
        *,
        max_message_size: int,
        max_payload_size: int,
        message_wait_ms: int = 1000,
        max_pending_messages: int = MAX_PENDING_MESSAGES,
        max_pending_bytes: int | None = None,
    ) -> None:
        self.max_message_size = max_message_size
        self.max_chunks = max(1, max_message_size // max(1, max_payload_size))
        self.wait_s = max(message_wait_ms, 1) / 1000.0
        self.max_pending_messages = max(1, max_pending_messages)
        self.max_pending_bytes = max(max_pending_bytes or MAX_PENDING_BYTES, max_message_size)
        self._pending: dict[str, _Pending] = {}  # insertion order = age
        self._deadline: dict[str, float] = {}
        self._finished: dict[str, None] = {}  # recently completed UUIDs: late chunks dropped

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    @property
    def pending_bytes(self) -> int:
        return sum(p.size for p in self._pending.values())

    def next_deadline(self) -> float | None:
        return min(self._deadline.values(), default=None)

    def feed(self, routing_key: str, props: Any, body: bytes, oversize: int = 0) -> list[Message]:
        """The messages this delivery completes (or refuses, or pushes out of the bounds)."""
        first = _Props(routing_key, props)
        try:
            chunk = parse_message_id(props.message_id)
        except ValueError as exc:
            return [_decoded(first, body, "", str(exc))]
        size = oversize or len(body)
        if size > self.max_message_size:
            why = f"message of {size} bytes exceeds the limit of {self.max_message_size} bytes"
            return [_decoded(first, b"", chunk.uuid, why)]
        if chunk.total == 1:
            return [_decoded(first, body, chunk.uuid)]
        if chunk.total > self.max_chunks:
            why = (
                f"message id announces {chunk.total} chunks; at most {self.max_chunks} fit in "
                f"the limit of {self.max_message_size} bytes"
            )
            return [_decoded(first, b"", chunk.uuid, why)]
        if chunk.uuid in self._finished:
            return []  # a late or repeated chunk of a message already shown
        p = self._pending.get(chunk.uuid)
        if p is None:
            p = self._pending[chunk.uuid] = _Pending(first=first, total=chunk.total)
        # the wait restarts with every chunk (as the Reassembler): only a stalled message expires
        self._deadline[chunk.uuid] = time.monotonic() + self.wait_s
        if chunk.total != p.total or chunk.index in p.pieces:
            return []
        if p.size + len(body) > self.max_message_size:
            why = f"message exceeds the limit of {self.max_message_size} bytes"
            return [self._release(chunk.uuid, why)]
        p.pieces[chunk.index] = body
        p.size += len(body)
        if len(p.pieces) == p.total:
            self._forget(chunk.uuid)
            return [_decoded(p.first, b"".join(p.pieces[i] for i in range(p.total)), chunk.uuid)]
        return self._evict_beyond_bounds(keep=chunk.uuid)

    def expire(self, now: float | None = None) -> list[Message]:
        """Incomplete messages whose wait is over, released invalid."""
        now = time.monotonic() if now is None else now
        due = [uuid for uuid, deadline in self._deadline.items() if deadline <= now]
        return [self._release(uuid, "Entire message was not available") for uuid in due]

    def _evict_beyond_bounds(self, keep: str) -> list[Message]:
        out = []
        while len(self._pending) > 1 and (
            len(self._pending) > self.max_pending_messages
            or self.pending_bytes > self.max_pending_bytes
        ):
            oldest = next(uuid for uuid in self._pending if uuid != keep)
            out.append(
                self._release(
                    oldest,
                    f"dropped: more than {self.max_pending_messages} incomplete messages or "
                    f"{self.max_pending_bytes} bytes waiting",
                )
            )
        return out

    def _forget(self, uuid: str) -> _Pending:
        self._deadline.pop(uuid, None)
        self._finished[uuid] = None
        while len(self._finished) > 1000:
            self._finished.pop(next(iter(self._finished)))
        return self._pending.pop(uuid)

    def _release(self, uuid: str, why: str) -> Message:
        p = self._forget(uuid)
        return _decoded(p.first, _echo(p), uuid, why)


class Listener:
    """One exclusive, server-named queue bound with ``bindings`` ((exchange, key) pairs),
    consumed until :meth:`stop`; every message goes to ``on_message`` in arrival order."""

    def __init__(
        self,
        mesh: MeshConfig | QuickMesh,
        credentials: Credentials,
        bindings: Sequence[tuple[str, str]],
        *,
        name: str = "dl-mon",
        heartbeat_s: int = HEARTBEAT_S,
        reconnect_interval: float = 2.0,
        message_wait_ms: int = 1000,
    ) -> None:
        self.mesh = mesh
        self.credentials = credentials
        self.bindings = list(bindings)
        self.name = name
        self.heartbeat_s = heartbeat_s
        self.reconnect_interval = reconnect_interval
        self.reminder_interval = REPORT_INTERVAL_S
        self.rebind_interval_s = REBIND_INTERVAL_S
        self.queue = ""
        self.chunks = ChunkCollector(
            max_message_size=mesh.max_message_size,
            max_payload_size=mesh.max_payload_size,
            message_wait_ms=message_wait_ms,
        )
        self._client: OneShotClient | None = None
        self._stopped = False

    @property
    def url_for_humans(self) -> str:
        scheme, _, rest = self.mesh.url_for_humans.partition("://")
        return f"{scheme}://{self.credentials.username}@{rest}"

    def _new_client(self) -> OneShotClient:
        client = OneShotClient(self.mesh, self.credentials, name=self.name, timeout_s=None)
        client.heartbeat_s = self.heartbeat_s
        return client

    def start(self) -> None:
        """Connect (the mesh's attempts; :class:`BrokerUnavailable` when they fail), declare
        the queue and bind it; :class:`BindRefused` when the broker forbids a key."""
        client = self._new_client()
        client.connect()
        self._client = client
        try:
            self._subscribe(client)
        except BaseException:
            self.close()
            raise

    def _subscribe(self, client: OneShotClient) -> None:
        client.timeout_s = READ_LIMIT_S  # each set-up call answers promptly or never
        ok = client._call(
            _cmd.Queue.Declare(queue="", exclusive=True, auto_delete=True, durable=False),
            _cmd.Queue.DeclareOk,
        )
        self.queue = ok.queue
        self._bind(client)
        client._call(
            _cmd.Basic.Consume(queue=self.queue, no_ack=True, exclusive=True),
            _cmd.Basic.ConsumeOk,
        )

    def _bind(self, client: OneShotClient) -> None:
        """Bind the queue with every binding (for the broker, one that exists is a no-op)."""
        for exchange, key in self.bindings:
            try:
                client._call(
                    _cmd.Queue.Bind(queue=self.queue, exchange=exchange, routing_key=key),
                    _cmd.Queue.BindOk,
                )
            except _ChannelClosed as exc:
                raise BindRefused(self.credentials.username, exchange, key, exc.text) from None

    def stop(self) -> None:
        """Make :meth:`run` return (from a signal handler or ``on_message``)."""
        self._stopped = True

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def run(self, on_message: Callable[[Message], None]) -> None:
        """Deliver messages until :meth:`stop`, reconnecting whenever the broker goes."""
        while not self._stopped:
            client = self._client
            if client is None:
                self._reconnect("")
                continue
            try:
                self._pump(client, on_message)
            except _LOST as exc:  # _ConsumerCancelled, BindRefused too (OSErrors)
                if self._stopped:
                    break
                self._client = None
                client._drop()
                self._reconnect(_describe(exc))
        self.close()

    def _pump(self, client: OneShotClient, on_message: Callable[[Message], None]) -> None:
        sock = client._sock
        assert sock is not None
        beat = client.heartbeat / 2 if client.heartbeat else None
        last_in = last_out = time.monotonic()
        bind_at = last_in + self.rebind_interval_s
        while not self._stopped:
            now = time.monotonic()
            waits = [1.0, bind_at - now]  # 1 s: also how soon a stop() from a signal is noticed
            if beat is not None:
                waits.append(last_out + beat - now)
            deadline = self.chunks.next_deadline()
            if deadline is not None:
                waits.append(deadline - now)
            ready = bool(client._buffer) or bool(getattr(sock, "pending", lambda: 0)())
            if not ready:
                with contextlib.suppress(InterruptedError):
                    ready = bool(select.select([sock], [], [], max(0.0, min(waits)))[0])
            now = time.monotonic()
            if ready:
                self._step(client, now + READ_LIMIT_S)
                last_in = now
            if now >= bind_at:
                # a missing exchange: BindRefused, and run() reconnects; deliveries that arrive
                # while waiting for the answers join the inbox
                self._bind(client)
                bind_at = now + self.rebind_interval_s
                last_in = time.monotonic()  # the broker answered
            while client._inbox:
                for msg in self.chunks.feed(*client._inbox.pop(0)):
                    on_message(msg)
            for msg in self.chunks.expire(now):
                on_message(msg)
            if beat is not None:
                if now - last_in > 4 * beat:  # two heartbeat intervals without a byte
                    raise TimeoutError
                if now - last_out >= beat:
                    sock.sendall(_frame.marshal(_heartbeat.Heartbeat(), 0))
                    last_out = now

    @staticmethod
    def _step(client: OneShotClient, deadline: float) -> None:
        """Read one frame (a whole delivery once it begins; it goes to the client's inbox)."""
        channel, value = client._read_frame(deadline)
        client.answer_close(channel, value)
        if isinstance(value, _cmd.Basic.Deliver):
            client._read_content(value.routing_key, deadline)
        elif isinstance(value, _cmd.Basic.Cancel):
            raise _ConsumerCancelled(0, "the broker cancelled the consumer")
        # heartbeats, Connection.Blocked/Unblocked and the like: the arrival itself counts

    def _reconnect(self, why: str) -> None:
        """Until the broker is back (or :meth:`stop`): one line now, a reminder per interval,
        one line when it is back with the queue, bindings and consumer restored."""
        lost_at = time.monotonic()
        log.warning(
            "lost connection to broker %s (%s); reconnecting every %g s",
            self.url_for_humans,
            why or "connection closed",
            self.reconnect_interval,
        )
        remind_at = lost_at + self.reminder_interval
        last = why
        while not self._stopped:
            self._sleep(self.reconnect_interval)
            if self._stopped:
                return
            client = self._new_client()
            try:
                client.connect(attempts=1)
                self._subscribe(client)
            except (BrokerUnavailable, BindRefused, *_LOST) as exc:
                client._drop()
                last = str(exc) if isinstance(exc, BrokerUnavailable | BindRefused) else ""
                last = last or _describe(exc)
                now = time.monotonic()
                if now >= remind_at:
                    log.warning(
                        "still no connection to broker %s after %.0f s (last attempt: %s)",
                        self.url_for_humans,
                        now - lost_at,
                        last,
                    )
                    remind_at = now + self.reminder_interval
                continue
            self._client = client
            log.warning(
                "reconnected to broker %s after %.1f s; queues and consumers restored",
                self.url_for_humans,
                time.monotonic() - lost_at,
            )
            return

    def _sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while not self._stopped and (left := end - time.monotonic()) > 0:
            time.sleep(min(left, 0.2))
