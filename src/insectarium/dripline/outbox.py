"""Alerts a service could not publish while the broker was away, kept until it is back.

A sensor value logged during a broker restart used to be dropped: two scheduled rounds were lost
in a 20 s restart.  A service now keeps such alerts in an :class:`AlertOutbox` — bounded in
number and bytes (:data:`~.limits.ALERT_BUFFER_MESSAGES`, :data:`~.limits.ALERT_BUFFER_BYTES`;
the oldest goes first, counted) — and publishes them in order, with their original ``timestamp``
header, once the connection is back.

While anything is kept, new alerts queue behind it, so a consumer sees every sensor's values in
time order.  On the way out each kept alert is published *mandatory* and *confirmed*: after a
broker restart the alerts exchange and its bindings (transient in dripline) come back only when
each consumer has reconnected, and an alert published before the logger re-bound its queue would
vanish.  A returned alert is retried for :attr:`AlertOutbox.replay_window_s`; after that nobody is
listening for it and it is let go (counted), so a service without any consumer does not hold its
alerts forever.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from .connection import (
    BROKER_ERRORS,
    Connection,
    NotConnected,
    PublishRefused,
    UnroutableError,
)
from .limits import ALERT_BUFFER_BYTES, ALERT_BUFFER_MESSAGES
from .message import Message, dump_payload

log = logging.getLogger(__name__)


class Unroutable(Exception):
    """Raised by the publish callback when the broker returned the alert (no queue bound)."""


class AlertOutbox:
    """A FIFO of alerts with a size bound; :meth:`flush` publishes them through a callback."""

    def __init__(
        self,
        max_messages: int = ALERT_BUFFER_MESSAGES,
        max_bytes: int = ALERT_BUFFER_BYTES,
        replay_window_s: float = 30.0,
    ) -> None:
        self.max_messages = max(1, int(max_messages))
        self.max_bytes = max(1, int(max_bytes))
        self.replay_window_s = replay_window_s
        self._items: collections.deque[tuple[Message, int]] = collections.deque()
        self._bytes = 0
        self.kept = 0  # alerts taken in since the last flush
        self.dropped = 0  # alerts dropped to stay within the bounds (since the last flush)
        self.unroutable = 0  # kept alerts nobody was bound for after the replay window

    def __len__(self) -> int:
        return len(self._items)

    def __bool__(self) -> bool:
        return bool(self._items)

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def put(self, msg: Message) -> None:
        """Keep ``msg`` (the oldest alerts are dropped when a bound would be exceeded)."""
        size = len(dump_payload(msg.payload))
        if not self._items:
            log.warning(
                "keeping alerts until they can be delivered (broker away, or consumers not "
                "back yet; at most %d alerts / %d bytes)",
                self.max_messages,
                self.max_bytes,
            )
        self._items.append((msg, size))
        self._bytes += size
        self.kept += 1
        while len(self._items) > self.max_messages or (
            self._bytes > self.max_bytes and len(self._items) > 1
        ):
            _old, old_size = self._items.popleft()
            self._bytes -= old_size
            if self.dropped == 0:
                log.warning("alert buffer full: dropping the oldest kept alerts")
            self.dropped += 1

    async def flush(
        self,
        publish: Callable[[Message], Awaitable[None]],
        sleep: Callable[[float], Awaitable[None]],
    ) -> bool:
        """Publish the kept alerts in order; ``True`` when all are out.

        ``publish`` raises :class:`Unroutable` for a returned alert and any other exception
        when the broker is away again (the alert stays, the flush stops until next time).
        """
        started = time.monotonic()
        sent = 0
        pause = 0.2
        while self._items:
            msg, size = self._items[0]
            try:
                await publish(msg)
            except Unroutable:
                if time.monotonic() - started < self.replay_window_s:
                    await sleep(pause)  # a consumer has not re-bound its queue yet
                    pause = min(pause * 2, 5.0)
                    continue
                self.unroutable += 1  # nobody is listening for it: let it go
            except Exception as exc:
                log.info("broker away again while publishing kept alerts (%s)", exc)
                return False
            self._items.popleft()
            self._bytes -= size
            sent += 1
        log.warning(
            "published %d kept alert(s) (%d dropped when the buffer was full, %d let go: no "
            "queue was bound to take them)",
            sent,
            self.dropped,
            self.unroutable,
        )
        self.kept = self.dropped = self.unroutable = 0
        return True


class AlertPublisher:
    """Publishes a service's alerts through its connection, keeping in an :class:`AlertOutbox`
    those the broker cannot take now, and publishing them when it can.

    ``spawn`` runs the background flush as a task the owner cancels when it stops.
    """

    def __init__(
        self,
        connection: Connection,
        outbox: AlertOutbox,
        spawn: Callable[[Awaitable[Any], str], asyncio.Task[Any]],
    ) -> None:
        self.connection = connection
        self.outbox = outbox
        self._spawn = spawn
        self._flushing: asyncio.Task[Any] | None = None
        self._settle_until = 0.0  # published mandatory until then (after a reconnect)
        self.refused = 0  # alerts the broker refused (topic permissions): dropped, not kept
        connection.on_reconnected.append(self.after_reconnect)

    async def publish(self, msg: Message) -> None:
        """Publish ``msg`` now, or keep it (never raises for a broker that is away; raises
        :class:`~.connection.PublishRefused` when the broker refuses this key to this user)."""
        if self.outbox or not self.connection.connected.is_set():
            self.outbox.put(msg)  # behind the alerts already waiting: order is kept
            self.flush_soon()
            return
        # Just after a reconnect the consumers may not have re-bound their queues yet (the
        # alerts exchange and its bindings are transient): publish mandatory for a while and
        # keep what is returned.
        mandatory = time.monotonic() < self._settle_until
        try:
            await self.connection.publish(msg, confirm=True, mandatory=mandatory)
        except PublishRefused:
            # this account may not publish that key: keeping it would retry it forever; the
            # connection has logged the refusal (key and user), the caller gets the error
            self.refused += 1
            raise
        except (UnroutableError, *BROKER_ERRORS):
            self.outbox.put(msg)
            self.flush_soon()

    def after_reconnect(self) -> None:
        self._settle_until = time.monotonic() + self.outbox.replay_window_s
        self.flush_soon()

    def flush_soon(self) -> None:
        """Start publishing kept alerts if connected and not already doing so."""
        if (
            not self.outbox
            or not self.connection.connected.is_set()
            or (self._flushing is not None and not self._flushing.done())
        ):
            return
        self._flushing = self._spawn(self.outbox.flush(self._publish_kept, asyncio.sleep), "flush")

    async def _publish_kept(self, msg: Message) -> None:
        if not self.connection.connected.is_set():
            raise NotConnected("broker away")
        try:
            await self.connection.publish(msg, confirm=True, mandatory=True)
        except UnroutableError:
            raise Unroutable(msg.routing_key) from None
        except PublishRefused:
            self.refused += 1  # logged by the connection; never deliverable, so not kept

    async def close(self, owner: str) -> None:
        """At stop: publish what is still kept if the broker is there (briefly), else say so."""
        if not self.outbox:
            return
        self.outbox.replay_window_s = 0.0  # no consumer to wait for at shutdown
        if self._flushing is not None and not self._flushing.done():
            await asyncio.wait({self._flushing}, timeout=5)
        elif self.connection.connected.is_set():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.outbox.flush(self._publish_kept, asyncio.sleep), 5)
        if self.outbox:
            log.error(
                "%s stops with %d kept alert(s) unpublished (broker away)", owner, len(self.outbox)
            )
