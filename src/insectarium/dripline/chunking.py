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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from .message import ChunkId, Message, decode, parse_message_id

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

    ``on_message`` is awaited for every complete (or timed-out) message.  Single-chunk messages
    are passed straight through with no bookkeeping, which is the hot path.
    """

    def __init__(
        self,
        on_message: Callable[[Message], Awaitable[None]],
        message_wait_ms: int = 1000,
    ) -> None:
        self._on_message = on_message
        self._wait_s = max(message_wait_ms, 1) / 1000.0
        self._pending: dict[str, _Pending] = {}
        self._finished: dict[str, bool] = {}  # recently completed UUIDs (late duplicates dropped)
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    async def feed(self, delivery: Delivery) -> None:
        try:
            chunk = parse_message_id(delivery.message_id)
        except ValueError as exc:
            await self._on_message(_decode(delivery, delivery.body, "", error=str(exc)))
            return
        if chunk.total == 1:
            await self._on_message(_decode(delivery, delivery.body, chunk.uuid))
            return
        message = self._add_chunk(chunk, delivery)
        if message is not None:
            await self._on_message(message)

    def _add_chunk(self, chunk: ChunkId, delivery: Delivery) -> Message | None:
        if chunk.uuid in self._finished:
            if not self._finished[chunk.uuid]:  # say it once per message, not once per chunk
                log.warning("dropping late chunks of message %s: already processed", chunk.uuid)
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
            log.warning(
                "chunk %s of %s disagrees on the chunk count; ignored", chunk.index, chunk.uuid
            )
            return None
        if chunk.index in pending.pieces:
            log.warning("duplicate chunk %s of message %s ignored", chunk.index, chunk.uuid)
            return None
        pending.pieces[chunk.index] = delivery.body
        if len(pending.pieces) < pending.total:
            return None
        self._close(chunk.uuid)
        body = b"".join(pending.pieces[i] for i in range(pending.total))
        return _decode(pending.first, body, chunk.uuid)

    def _close(self, uuid: str) -> _Pending | None:
        pending = self._pending.pop(uuid, None)
        if pending and pending.timer:
            pending.timer.cancel()
        self._finished[uuid] = False
        while len(self._finished) > 1000:
            self._finished.pop(next(iter(self._finished)))
        return pending

    def _expire(self, uuid: str) -> None:
        pending = self._close(uuid)
        if pending is None:
            return
        filler = b"#" * len(pending.first.body)
        body = b"".join(pending.pieces.get(i, filler) for i in range(pending.total))
        missing = pending.total - len(pending.pieces)
        log.warning(
            "message %s incomplete after %.3f s (%d chunk(s) missing)", uuid, self._wait_s, missing
        )
        message = _decode(pending.first, body, uuid, error="Entire message was not available")
        task = asyncio.get_running_loop().create_task(self._on_message(message))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def close(self) -> None:
        for uuid in list(self._pending):
            pending = self._pending.pop(uuid)
            if pending.timer:
                pending.timer.cancel()
