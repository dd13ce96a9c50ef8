"""The durable alert queue of a consumer: a quorum queue, and the upgrade from a classic one.

A classic durable queue keeps its *persistent* messages across a broker restart, but dripline
alerts are published transient (dripline-cpp and dripline-python do so, and so did we): every
value waiting for the logger was lost when the broker restarted, gracefully or not.  A quorum
queue stores every message it accepts on disk, whatever its delivery mode, so values queued for
a stopped logger survive a broker restart or ``kill -9`` whoever published them.

One limit measured here (RabbitMQ 3.10): a publisher that sends a *burst* without publisher
confirms and closes its channel at once can lose the tail of the burst — the quorum queue drops
what was still on its way into its log when the channel went (54 of 10 000 messages sent in
bursts of 500, none with a classic queue).  Publishing one message per connection, as
dripline-cpp services do, lost nothing (300 of 300); our services publish alerts with confirms,
and the benchmark's publishers wait for their confirms before closing.

A lab installed by an older version has the queue as a classic queue, and RabbitMQ refuses to
redeclare a queue with other arguments (``PRECONDITION_FAILED``).  :class:`DurableAlertQueue`
converts it without losing a value, using a sibling quorum queue ``<name>.upgrade`` (the broker
user needs the right to both names):

1. declare ``<name>.upgrade`` (quorum) with the same bindings, then unbind the old queue: every
   new alert now waits in the sibling;
2. consume the old queue until it is empty and every delivery is settled, then delete it;
3. declare ``<name>`` as a quorum queue with its bindings, unbind the sibling, consume the
   sibling until it is empty and settled, delete it.

Alerts published in the moments both queues are bound arrive twice; the sensor logger stores a
(endpoint, timestamp) pair once and counts the other as a duplicate.  A process killed half-way
resumes at its next start: step 3 runs whenever the sibling exists.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aiormq
from aio_pika.abc import AbstractExchange, AbstractQueue, AbstractRobustChannel

log = logging.getLogger(__name__)

QUORUM = {"x-queue-type": "quorum"}
UPGRADE_SUFFIX = ".upgrade"


class DurableAlertQueue:
    """Declares, binds and (if needed) upgrades one durable alert queue.

    ``settled(channel)`` tells whether every delivery made on an (underlying aiormq) channel is
    acknowledged; queues being drained get a channel of their own, so that the main queue's
    steady traffic does not keep them "unsettled".
    """

    def __init__(
        self,
        name: str,
        keys: list[str],
        exchange_name: str,
        *,
        open_channel: Callable[[], Awaitable[AbstractRobustChannel]],
        declare_exchange: Callable[[AbstractRobustChannel, str], Awaitable[AbstractExchange]],
        consume: Callable[[Any], Awaitable[None]],
        settled: Callable[[Any], bool],
        quorum: bool = True,
    ) -> None:
        self.name = name
        self.sibling = f"{name}{UPGRADE_SUFFIX}"
        self.keys = keys
        self.exchange_name = exchange_name
        self._open_channel = open_channel
        self._declare_exchange = declare_exchange
        self._consume = consume
        self._settled = settled
        self.arguments = dict(QUORUM) if quorum else None

    async def declare(self) -> AbstractQueue:
        """The bound queue, ready to consume (converted from a classic queue if needed)."""
        channel = await self._open_channel()
        await self._declare_exchange(channel, self.exchange_name)
        try:
            queue = await self._declare(channel, self.name)
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            if self.arguments is None:
                raise
            with contextlib.suppress(Exception):
                await channel.close()
            await self._convert(exc)
            channel = await self._open_channel()
            queue = await self._declare(channel, self.name)
        for key in self.keys:
            await queue.bind(self.exchange_name, routing_key=key)
        return queue

    async def finish_upgrade(self) -> None:
        """Empty and delete ``<name>.upgrade`` if an upgrade (or a crash during one) left it.

        Call once the main queue is bound and consumed."""
        if self.arguments is None or await self._message_count(self.sibling) is None:
            return
        await self._drain_and_delete(self.sibling, unbind=True)
        log.warning("queue %s is a quorum queue now; upgrade finished", self.name)

    # ----------------------------------------------------------------- steps
    async def _declare(self, channel: AbstractRobustChannel, name: str) -> AbstractQueue:
        return await channel.declare_queue(
            name, durable=True, auto_delete=False, arguments=self.arguments
        )

    async def _convert(self, exc: BaseException) -> None:
        log.warning(
            "queue %s exists as a classic queue (%s): converting it to a quorum queue, which "
            "keeps queued values across broker restarts; new values wait in %s meanwhile",
            self.name,
            getattr(exc, "args", [exc])[-1],
            self.sibling,
        )
        channel = await self._open_channel()
        try:
            sibling = await self._declare(channel, self.sibling)
            for key in self.keys:
                await sibling.bind(self.exchange_name, routing_key=key)
        finally:
            with contextlib.suppress(Exception):
                await channel.close()
        left = await self._message_count(self.name)
        log.warning("draining %d value(s) from the classic queue %s", left or 0, self.name)
        await self._drain_and_delete(self.name, unbind=True, classic=True)

    async def _drain_and_delete(self, name: str, *, unbind: bool, classic: bool = False) -> None:
        """Unbind queue ``name``, consume it until it is empty and its deliveries are settled,
        then delete it; on a channel of its own."""
        channel = await self._open_channel()
        try:
            if classic:
                queue = await channel.declare_queue(name, passive=True)
            else:
                queue = await self._declare(channel, name)
            if unbind:
                for key in self.keys:
                    await queue.unbind(self.exchange_name, routing_key=key)
            underlay = await channel.get_underlay_channel()
            tag = await queue.consume(self._consume)
            try:
                while True:  # polling the broker: there is no event for "queue empty"
                    if await self._message_count(name) == 0 and self._settled(underlay):
                        break
                    await asyncio.sleep(0.2)
            finally:
                with contextlib.suppress(Exception):
                    await queue.cancel(tag)
            # unbound, drained and settled: nothing can be lost.  (Quorum queues refuse the
            # if-empty flag with a connection error, so it is only asked of the classic one.)
            await queue.delete(if_unused=False, if_empty=classic)
        finally:
            with contextlib.suppress(Exception):
                await channel.close()

    async def _message_count(self, name: str) -> int | None:
        """Ready messages of queue ``name`` (asked of the broker), ``None`` if it does not exist.

        A throwaway channel: a passive declare of a missing queue closes the channel it is on
        (and aio-pika's robust channel would answer a repeated one from its cache).
        """
        probe = await self._open_channel()
        try:
            underlay = await probe.get_underlay_channel()
            result = await underlay.queue_declare(name, passive=True)
            return int(result.message_count or 0)
        except aiormq.exceptions.ChannelNotFoundEntity:
            return None
        finally:
            with contextlib.suppress(Exception):
                await probe.close()
