"""Services that listen to alerts (sensor values, heartbeats, status messages).

An :class:`AlertConsumer` binds its own queue on the alerts exchange with ``alert_keys`` and hands
every alert to :meth:`process_payload` together with the named groups of
``alert_key_parser_re`` matched against the routing key — dripline-python 5's model.  The queue
can be made durable and named (``alert_queue_name``) so alerts published while the consumer is
restarting wait for it instead of being lost; messages are acknowledged only after
:meth:`process_alert` returns, so a crash mid-way redelivers them.  A durable queue is a quorum
queue by default (``alert_queue_type``), which also keeps its messages across a broker restart;
a classic queue of the same name left by an older version is converted (:mod:`.alert_queue`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
from typing import Any, Literal

from aio_pika.abc import AbstractIncomingMessage, AbstractQueue, AbstractRobustChannel

from .alert_queue import DurableAlertQueue
from .chunking import Delivery
from .message import Message
from .service import Service
from .throttle import LogThrottle

log = logging.getLogger(__name__)


class AlertConsumer(Service):
    def __init__(
        self,
        name: str,
        alert_keys: list[str] | None = None,
        alert_key_parser_re: str | None = None,
        alert_queue_name: str | None = None,
        alert_queue_durable: bool = False,
        alert_queue_type: Literal["quorum", "classic"] = "quorum",
        alert_prefetch_count: int = 1000,
        **kwargs: Any,
    ) -> None:
        super().__init__(name, **kwargs)
        if alert_queue_type not in ("quorum", "classic"):
            raise ValueError(
                f"alert_queue_type must be quorum or classic, not {alert_queue_type!r}"
            )
        self.alert_keys = list(alert_keys or ["#"])
        try:
            self._parser = re.compile(alert_key_parser_re) if alert_key_parser_re else None
        except re.error as exc:
            raise ValueError(
                f"alert_key_parser_re is not a valid regular expression: {exc}"
            ) from None
        self.alert_queue_name = alert_queue_name or f"{name}_alerts"
        self.alert_queue_durable = alert_queue_durable
        self.alert_queue_type = alert_queue_type
        self.alert_prefetch_count = alert_prefetch_count
        self._inflight: dict[int, int] = {}  # unsettled deliveries per channel
        self._alert_queue: AbstractQueue | None = None
        self._alert_consumer_tag: str | None = None
        self._alert_reassembler = self.make_reassembler(self._on_alert)
        self._undecodable = LogThrottle(log)
        self._unparsed = LogThrottle(log)

    async def _open_alert_channel(self) -> AbstractRobustChannel:
        assert self.connection is not None and self.connection.connection is not None
        channel = await self.connection.connection.channel()
        await channel.set_qos(prefetch_count=self.alert_prefetch_count)
        return channel  # type: ignore[return-value]

    async def setup_consumers(self) -> None:
        assert self.connection is not None
        if self.alert_queue_durable:
            durable = self._durable_queue()
            queue = await durable.declare()
        else:
            channel = await self._open_alert_channel()
            exchange = await self.connection.declare_exchange(channel, self.mesh.alerts_exchange)
            queue = await channel.declare_queue(
                self.alert_queue_name, durable=False, exclusive=True, auto_delete=True
            )
            await self.bind_alert_keys(queue, exchange)
        self._alert_consumer_tag = await queue.consume(self._on_alert_delivery)
        self._alert_queue = queue
        # in case the alerts exchange is deleted (its bindings go with it): see Connection
        self.connection.rebinders.append(functools.partial(self.bind_alert_keys, queue))
        if self.alert_queue_durable:
            await durable.finish_upgrade()
        log.info(
            "%s consuming alerts %s on %s queue %s",
            self.name,
            self.alert_keys,
            f"durable {self.alert_queue_type}" if self.alert_queue_durable else "transient",
            self.alert_queue_name,
        )

    async def bind_alert_keys(self, queue: AbstractQueue, exchange: Any = None) -> None:
        """Bind ``queue`` to the alerts exchange with every alert key (again: a no-op for the
        broker where the binding exists)."""
        for key in self.alert_keys:
            await queue.bind(exchange or self.mesh.alerts_exchange, routing_key=key)

    def _durable_queue(self) -> DurableAlertQueue:
        """The durable queue's declaration (with the conversion of an older classic queue)."""
        assert self.connection is not None
        return DurableAlertQueue(
            self.alert_queue_name,
            self.alert_keys,
            self.mesh.alerts_exchange,
            open_channel=self._open_alert_channel,
            declare_exchange=self.connection.declare_exchange,
            consume=self._on_alert_delivery,
            settled=self.alert_deliveries_settled,
            quorum=self.alert_queue_type == "quorum",
        )

    def alert_deliveries_settled(self, channel: Any) -> bool:
        """Whether every alert delivered on ``channel`` (an aiormq channel, as
        ``incoming.channel``) has been acknowledged or rejected."""
        return not self._inflight.get(id(channel))

    async def _on_alert_delivery(self, incoming: AbstractIncomingMessage) -> None:
        key = id(incoming.channel)
        self._inflight[key] = self._inflight.get(key, 0) + 1
        try:
            await self._settle(incoming)
        finally:
            self._inflight[key] -= 1

    async def _settle(self, incoming: AbstractIncomingMessage) -> None:
        try:
            await self._alert_reassembler.feed(Delivery.from_incoming(incoming))
        except Exception:
            # one more chance (a transient failure), then drop it rather than loop forever
            retry = not incoming.redelivered
            log.exception(
                "failed to process alert %s; %s",
                incoming.routing_key,
                "requeued for one retry" if retry else "dropped after a retry",
            )
            with contextlib.suppress(Exception):
                await incoming.nack(requeue=retry)
            return
        with contextlib.suppress(Exception):
            await incoming.ack()

    async def _on_alert(self, msg: Message) -> None:
        if not msg.is_valid:
            self._undecodable("dropping undecodable alert on %s: %s", msg.routing_key, msg.error)
            return
        await self.process_alert(msg)

    def parse_routing_key(self, routing_key: str) -> dict[str, str] | None:
        if self._parser is None:
            return {}
        match = self._parser.match(routing_key)
        return match.groupdict() if match else None

    async def process_alert(self, msg: Message) -> None:
        routing_data = self.parse_routing_key(msg.routing_key)
        if routing_data is None:
            self._unparsed(
                "alert routing key %r does not match the parser; ignored", msg.routing_key
            )
            return
        await self.process_payload(msg.payload, routing_data, msg.timestamp)

    async def process_payload(
        self, payload: Any, routing_data: dict[str, str], timestamp: str
    ) -> None:
        """Override: do something with one alert."""
        log.info("alert %s at %s: %s", routing_data, timestamp, payload)

    async def stop(self) -> None:
        self._alert_reassembler.close()
        if self._alert_queue is not None:
            with contextlib.suppress(Exception):
                if self._alert_consumer_tag:
                    await self._alert_queue.cancel(self._alert_consumer_tag)
                if not self.alert_queue_durable:
                    await self._alert_queue.delete(if_unused=False, if_empty=False)
        self._alert_queue = None
        await super().stop()
