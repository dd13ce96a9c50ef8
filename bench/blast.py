"""Publish pre-encoded AMQP messages as fast as a socket takes them.

aio-pika marshals every message's header table on each ``publish`` (pamqp, pure Python): ~3 000
dripline alerts/s per process on this machine, far below what a logger should ingest.  So the
alerts are built with the runtime's ``Message.alert`` + ``encode`` (the real wire format), turned
into AMQP frames ONCE with pamqp exactly as aiormq's ``basic_publish`` does, and each publisher
thread writes its share over its own minimal AMQP 0-9-1 connection with one ``sendall``.

The channel is in confirm mode and a publisher waits for the broker's acknowledgement of its last
message before closing, so "published" means "in the queue".  (``Close-Ok`` alone is not enough
for a quorum queue, the logger's: the broker acknowledges the close while the tail of a burst is
still on its way into the queue's log, and drops that tail when the channel goes.)
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import aio_pika
from pamqp import commands, frame
from pamqp.body import ContentBody
from pamqp.exceptions import UnmarshalingException
from pamqp.header import ContentHeader, ProtocolHeader

from .env import Broker

CHANNEL = 1


@dataclass(frozen=True)
class Blob:
    """Pre-marshalled ``basic.publish`` frames of ``messages`` messages."""

    data: bytes
    messages: int


def marshal_publish(exchange: str, routing_key: str, message: aio_pika.Message) -> bytes:
    """Method, content-header and body frames of one ``basic.publish`` (body < frame_max)."""
    props = message.properties
    body = message.body
    return b"".join(
        (
            frame.marshal(
                commands.Basic.Publish(exchange=exchange, routing_key=routing_key), CHANNEL
            ),
            frame.marshal(ContentHeader(0, len(body), props), CHANNEL),
            frame.marshal(ContentBody(body), CHANNEL),
        )
    )


class RawPublisher:
    """One AMQP connection and channel over a blocking socket; no heartbeats; confirm mode."""

    def __init__(self, broker: Broker, timeout_s: float = 30.0) -> None:
        self.broker = broker
        self.sock = socket.create_connection((broker.host, broker.port), timeout=timeout_s)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buf = b""
        self._handshake()

    def _send(self, value: object, channel: int = 0) -> None:
        self.sock.sendall(frame.marshal(value, channel))  # type: ignore[arg-type]

    def _expect(self, kind: type) -> object:
        while True:
            try:
                used, _channel, value = frame.unmarshal(self._buf)
            except UnmarshalingException:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError("broker closed the connection") from None
                self._buf += chunk
                continue
            self._buf = self._buf[used:]
            if isinstance(value, kind):
                return value
            if isinstance(value, commands.Connection.Close | commands.Channel.Close):
                raise ConnectionError(f"broker closed: {value.reply_code} {value.reply_text}")

    def _handshake(self) -> None:
        self.sock.sendall(ProtocolHeader().marshal())
        self._expect(commands.Connection.Start)
        b = self.broker
        self._send(
            commands.Connection.StartOk(
                client_properties={"connection_name": "bench publisher"},
                mechanism="PLAIN",
                response=f"\0{b.user}\0{b.password}",
                locale="en_US",
            )
        )
        tune = self._expect(commands.Connection.Tune)
        self._send(
            commands.Connection.TuneOk(
                channel_max=tune.channel_max,  # type: ignore[attr-defined]
                frame_max=tune.frame_max,  # type: ignore[attr-defined]
                heartbeat=0,
            )
        )
        self._send(commands.Connection.Open(virtual_host=b.vhost))
        self._expect(commands.Connection.OpenOk)
        self._send(commands.Channel.Open(), CHANNEL)
        self._expect(commands.Channel.OpenOk)
        self._send(commands.Confirm.Select(), CHANNEL)
        self._expect(commands.Confirm.SelectOk)
        self._sent = 0

    def blast(self, blob: Blob) -> None:
        self.sock.sendall(blob.data)
        self._sent += blob.messages

    def close(self) -> None:
        """Close once the broker has confirmed every message sent (it is in the queue)."""
        acked = 0
        while acked < self._sent:
            ack = self._expect(commands.Basic.Ack | commands.Basic.Nack)  # type: ignore[arg-type]
            if isinstance(ack, commands.Basic.Nack):
                raise ConnectionError(f"broker refused message {ack.delivery_tag}")
            acked = max(acked, ack.delivery_tag)  # type: ignore[attr-defined]
        self._send(commands.Connection.Close(200, "bye", 0, 0))
        self._expect(commands.Connection.CloseOk)
        self.sock.close()


def publish_parallel(broker: Broker, blobs: Sequence[Blob]) -> tuple[float, float]:
    """Send each blob on its own connection, all at once.

    Returns the ``perf_counter`` time the sending started and the seconds until every message
    is confirmed.
    """
    publishers = [RawPublisher(broker) for _ in blobs]
    errors: list[BaseException] = []
    start = threading.Barrier(len(blobs) + 1)

    def work(pub: RawPublisher, blob: Blob) -> None:
        try:
            start.wait()
            pub.blast(blob)
            pub.close()
        except BaseException as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=work, args=(p, b), daemon=True)
        for p, b in zip(publishers, blobs, strict=True)
    ]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return t0, elapsed
