"""Reassembly of dripline messages that arrive split into chunks.

Senders cut payloads above ``max_payload_size`` into pieces that share one message UUID
(``message-id = UUID/i/N``).  A :class:`Reassembler` collects them; a message is released when all
its chunks are there, or — after ``message_wait_ms`` without completion — released *invalid*, with
missing pieces replaced by ``#`` as dripline-cpp does, so that a request still gets a 302 reply
instead of silence.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from .constants import DEFAULT_MAX_PAYLOAD_SIZE
from .limits import (
    DEFAULT_MAX_MESSAGE_SIZE,
    MAX_ECHO_BYTES,
    MAX_PENDING_BYTES,
    MAX_PENDING_MESSAGES,
    REPORT_INTERVAL_S,
)
from .message import ChunkId, Message, decode, parse_message_id
from .throttle import LogThrottle

log = logging.getLogger(__name__)


@dataclass
class Delivery:
    """What we keep of one AMQP delivery (the AMQP objects themselves are acked elsewhere)."""

    body: bytes
    headers: dict[str, Any]
    routing_key: str
    correlation_id: str | None
    reply_to: str | None
    content_encoding: str | None
    message_id: str | None

    @classmethod
    def from_incoming(cls, incoming: Any) -> Delivery:
        return cls(
            body=incoming.body,
            headers=dict(incoming.headers or {}),
            routing_key=incoming.routing_key or "",
            correlation_id=incoming.correlation_id,
            reply_to=incoming.reply_to,
            content_encoding=incoming.content_encoding,
            message_id=incoming.message_id,
        )


@dataclass
class _Pending:
    first: Delivery
    total: int
    pieces: dict[int, bytes] = field(default_factory=dict)
    size: int = 0
    timer: asyncio.TimerHandle | None = None


def _decode(first: Delivery, body: bytes, uuid: str, error: str = "") -> Message:
    return decode(
        body=body,
        headers=first.headers,
        routing_key=first.routing_key,
        correlation_id=first.correlation_id,
        reply_to=first.reply_to,
        content_encoding=first.content_encoding,
        message_uuid=uuid,
        error=error,
    )


class Reassembler:
    """Turns deliveries into :class:`Message` objects, joining chunks by message UUID.

    ``on_message`` is awaited for every complete (or timed-out, or refused) message.
    Single-chunk messages are passed straight through with no bookkeeping, which is the hot path.

    Whatever arrives, memory stays bounded (:mod:`.limits`): a message larger than
    ``max_message_size`` (or whose id announces more chunks than could fit) is refused before
    anything is stored, and incomplete chunk sets are capped in number and bytes (the oldest is
    dropped, counted and reported once per interval).  Refused and dropped messages still reach
    ``on_message``, invalid, so that a request gets its 302 instead of silence.
    """

    def __init__(
        self,
        on_message: Callable[[Message], Awaitable[None]],
        message_wait_ms: int = 1000,
        *,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        max_payload_size: int = DEFAULT_MAX_PAYLOAD_SIZE,
        max_pending_messages: int = MAX_PENDING_MESSAGES,
        max_pending_bytes: int | None = None,
    ) -> None:
        self._on_message = on_message
        self._wait_s = max(message_wait_ms, 1) / 1000.0
        self.max_message_size = max_message_size
        # a chunk count above this cannot be a message we would accept
        self.max_chunks = max(1, max_message_size // max(1, max_payload_size))
        self.max_pending_messages = max(1, max_pending_messages)
        self.max_pending_bytes = max(max_pending_bytes or MAX_PENDING_BYTES, max_message_size)
        self._pending: dict[str, _Pending] = {}  # insertion order = age
        self._pending_bytes = 0
        self._finished: dict[str, bool] = {}  # recently completed UUIDs (late duplicates dropped)
        self._tasks: set[asyncio.Task[None]] = set()  # answering released messages
        self._room = asyncio.Event()  # set while there are fewer such tasks than the limit
        self.dropped = 0  # incomplete messages dropped to stay within the bounds
        self.refused = 0  # messages refused for their size
        self._reported = (0, 0)
        self._next_report = 0.0
        self._odd_chunk = LogThrottle(log)  # late, duplicate, inconsistent or missing chunks

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    @property
    def pending_bytes(self) -> int:
        return self._pending_bytes

    async def feed(self, delivery: Delivery) -> None:
        try:
            chunk = parse_message_id(delivery.message_id)
        except ValueError as exc:
            await self._on_message(_decode(delivery, delivery.body, "", error=str(exc)))
            return
        if chunk.total == 1:
            if len(delivery.body) > self.max_message_size:
                await self._on_message(self._refuse(delivery, chunk, len(delivery.body)))
                return
            await self._on_message(_decode(delivery, delivery.body, chunk.uuid))
            return
        if chunk.total > self.max_chunks:
            await self._on_message(self._refuse(delivery, chunk, 0))
            return
        while len(self._tasks) >= self.max_pending_messages:
            # Released (expired or dropped) messages are answered by tasks; if chunks arrive
            # faster than those answers go out, wait here: the delivery is not acknowledged
            # meanwhile, so the broker's prefetch limit holds the rest back (memory stays flat).
            self._room.clear()
            await self._room.wait()
        message = self._add_chunk(chunk, delivery)
        if message is not None:
            await self._on_message(message)

    def _refuse(self, delivery: Delivery, chunk: ChunkId, size: int) -> Message:
        """An invalid message for one whose size is over the limit (nothing kept of its body)."""
        self.refused += 1
        self._report()
        if size:
            why = f"message of {size} bytes exceeds the limit of {self.max_message_size} bytes"
        else:
            why = (
                f"message id announces {chunk.total} chunks; at most {self.max_chunks} fit in "
                f"the limit of {self.max_message_size} bytes"
            )
        return _decode(delivery, b"", chunk.uuid, error=why)

    def _add_chunk(self, chunk: ChunkId, delivery: Delivery) -> Message | None:
        if chunk.uuid in self._finished:
            if not self._finished[chunk.uuid]:  # say it once per message, not once per chunk
                self._odd_chunk("dropping late chunks of message %s: already processed", chunk.uuid)
                self._finished[chunk.uuid] = True
            return None
        loop = asyncio.get_running_loop()
        pending = self._pending.get(chunk.uuid)
        if pending is None:
            pending = _Pending(first=delivery, total=chunk.total)
            self._pending[chunk.uuid] = pending
        # The wait restarts with every chunk that arrives, so a large message that keeps
        # flowing is not cut off; only a stalled one expires (dripline-cpp counts from the
        # first chunk, which fails multi-megabyte payloads such as a long snapshot).
        if pending.timer is not None:
            pending.timer.cancel()
        pending.timer = loop.call_later(self._wait_s, self._expire, chunk.uuid)
        if chunk.total != pending.total:
            self._odd_chunk(
                "chunk %s of %s disagrees on the chunk count; ignored", chunk.index, chunk.uuid
            )
            return None
        if chunk.index in pending.pieces:
            self._odd_chunk("duplicate chunk %s of message %s ignored", chunk.index, chunk.uuid)
            return None
        size = len(delivery.body)
        if pending.size + size > self.max_message_size:
            self._expire(chunk.uuid, f"message exceeds the limit of {self.max_message_size} bytes")
            return None
        pending.pieces[chunk.index] = delivery.body
        pending.size += size
        self._pending_bytes += size
        if len(pending.pieces) < pending.total:
            self._evict_beyond_bounds(keep=chunk.uuid)
            return None
        self._close(chunk.uuid)
        body = b"".join(pending.pieces[i] for i in range(pending.total))
        return _decode(pending.first, body, chunk.uuid)

    def _evict_beyond_bounds(self, keep: str) -> None:
        """Drop the oldest incomplete messages until the count and byte bounds hold."""
        while (
            len(self._pending) > self.max_pending_messages
            or self._pending_bytes > self.max_pending_bytes
        ):
            oldest = next(iter(self._pending))
            if oldest == keep:
                if len(self._pending) == 1:
                    return
                # the newest message is the only one allowed to stay over the byte bound
                self._pending[oldest] = self._pending.pop(oldest)
                continue
            self.dropped += 1
            self._expire(
                oldest,
                f"dropped: more than {self.max_pending_messages} incomplete messages or "
                f"{self.max_pending_bytes} bytes waiting",
            )
        self._report()

    def _report(self) -> None:
        """One log line per interval for drops and refusals, with the counts since the last."""
        counts = (self.dropped, self.refused)
        if counts == self._reported:
            return
        now = time.monotonic()
        if now < self._next_report:
            return
        dropped, refused = (a - b for a, b in zip(counts, self._reported, strict=True))
        log.warning(
            "%d incomplete message(s) dropped to stay within %d messages / %d bytes, %d "
            "message(s) refused above %d bytes (totals %d, %d)",
            dropped,
            self.max_pending_messages,
            self.max_pending_bytes,
            refused,
            self.max_message_size,
            *counts,
        )
        self._reported = counts
        self._next_report = now + REPORT_INTERVAL_S

    def _close(self, uuid: str) -> _Pending | None:
        pending = self._pending.pop(uuid, None)
        if pending is not None:
            self._pending_bytes -= pending.size
            if pending.timer:
                pending.timer.cancel()
        self._finished[uuid] = False
        while len(self._finished) > 1000:
            self._finished.pop(next(iter(self._finished)))
        return pending

    def _expire(self, uuid: str, why: str = "") -> None:
        """Release an incomplete message, invalid: its request is answered 302."""
        pending = self._close(uuid)
        if pending is None:
            return
        missing = pending.total - len(pending.pieces)
        if not why:
            self._odd_chunk(
                "message %s incomplete after %.3f s (%d chunk(s) missing)",
                uuid,
                self._wait_s,
                missing,
            )
            why = "Entire message was not available"
        message = _decode(pending.first, _echo(pending), uuid, error=why)
        task = asyncio.get_running_loop().create_task(self._on_message(message))
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if len(self._tasks) < self.max_pending_messages:
            self._room.set()

    def close(self) -> None:
        for uuid in list(self._pending):
            pending = self._pending.pop(uuid)
            if pending.timer:
                pending.timer.cancel()
        self._pending_bytes = 0


def _echo(pending: _Pending) -> bytes:
    """The start of an incomplete message, missing chunks shown as ``#`` as dripline-cpp does,
    but never more than is echoed back (the whole filler could be gigabytes)."""
    filler_size = len(pending.first.body)
    out: list[bytes] = []
    size = 0
    for i in range(pending.total):
        piece = pending.pieces.get(i)
        if piece is None:
            piece = b"#" * min(filler_size, MAX_ECHO_BYTES)
        out.append(piece[: MAX_ECHO_BYTES - size])
        size += len(out[-1])
        if size >= MAX_ECHO_BYTES:
            break
    return b"".join(out)
