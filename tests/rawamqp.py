"""A deliberately minimal AMQP 0-9-1 client over a plain socket, for wire-format tests.

It shares no code with aio-pika: frames are marshalled by pamqp, but the content-header frames it
receives are kept as raw bytes and their ``headers`` table is parsed here, recording each field's
AMQP type code.  That lets tests assert what a dripline-cpp peer would see (``'i'`` for unsigned
32-bit integers, ``'F'`` for nested tables …) rather than what a Python client decoded.
"""

from __future__ import annotations

import socket
import struct
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlparse

from pamqp import commands, frame, header
from pamqp import heartbeat as pamqp_heartbeat


@dataclass
class Field:
    type: str
    value: Any


def parse_table(data: bytes, offset: int = 0) -> tuple[dict[str, Field], int]:
    """Parse an AMQP field table starting at ``offset``; returns fields and the end offset."""
    (length,) = struct.unpack_from(">I", data, offset)
    offset += 4
    end = offset + length
    out: dict[str, Field] = {}
    while offset < end:
        klen = data[offset]
        offset += 1
        key = data[offset : offset + klen].decode()
        offset += klen
        value, offset = parse_value(data, offset)
        out[key] = value
    return out, end


def parse_value(data: bytes, offset: int) -> tuple[Field, int]:
    code = chr(data[offset])
    offset += 1
    fixed = {
        "t": ">B",
        "b": ">b",
        "B": ">B",
        "s": ">h",
        "u": ">H",
        "I": ">i",
        "i": ">I",
        "l": ">q",
        "L": ">Q",
        "f": ">f",
        "d": ">d",
        "T": ">Q",
    }
    if code in fixed:
        (value,) = struct.unpack_from(fixed[code], data, offset)
        return Field(code, value), offset + struct.calcsize(fixed[code])
    if code in ("S", "x"):
        (n,) = struct.unpack_from(">I", data, offset)
        raw = data[offset + 4 : offset + 4 + n]
        return Field(code, raw.decode() if code == "S" else raw), offset + 4 + n
    if code == "F":
        table, end = parse_table(data, offset)
        return Field(code, table), end
    if code == "A":
        (n,) = struct.unpack_from(">I", data, offset)
        end = offset + 4 + n
        items, pos = [], offset + 4
        while pos < end:
            item, pos = parse_value(data, pos)
            items.append(item)
        return Field(code, items), end
    if code == "D":
        scale = data[offset]
        (raw,) = struct.unpack_from(">i", data, offset + 1)
        return Field(code, raw / 10**scale), offset + 5
    if code == "V":
        return Field(code, None), offset
    raise ValueError(f"unknown field type {code!r}")


# Basic content-header property flags, in wire order
_PROPS = [
    ("content_type", 15, "shortstr"),
    ("content_encoding", 14, "shortstr"),
    ("headers", 13, "table"),
    ("delivery_mode", 12, "octet"),
    ("priority", 11, "octet"),
    ("correlation_id", 10, "shortstr"),
    ("reply_to", 9, "shortstr"),
    ("expiration", 8, "shortstr"),
    ("message_id", 7, "shortstr"),
    ("timestamp", 6, "longlong"),
    ("type", 5, "shortstr"),
    ("user_id", 4, "shortstr"),
    ("app_id", 3, "shortstr"),
    ("cluster_id", 2, "shortstr"),
]


def parse_content_header(payload: bytes) -> dict[str, Any]:
    """Raw properties of a content-header frame payload (class, weight, size, flags, props)."""
    _cls, _weight, _size, flags = struct.unpack_from(">HHQH", payload, 0)
    offset = 14
    props: dict[str, Any] = {}
    for name, bit, kind in _PROPS:
        if not flags & (1 << bit):
            continue
        if kind == "shortstr":
            n = payload[offset]
            props[name] = payload[offset + 1 : offset + 1 + n].decode()
            offset += 1 + n
        elif kind == "octet":
            props[name] = payload[offset]
            offset += 1
        elif kind == "longlong":
            props[name] = struct.unpack_from(">Q", payload, offset)[0]
            offset += 8
        else:
            props[name], offset = parse_table(payload, offset)
    return props


@dataclass
class RawDelivery:
    exchange: str
    routing_key: str
    properties: dict[str, Any]
    body: bytes = b""
    headers: dict[str, Field] = field(default_factory=dict)


class BrokerClosed(RuntimeError):
    """The broker closed our channel or connection (e.g. it refused a malformed frame)."""


class RawClient:
    def __init__(self, url: str, timeout: float = 10.0) -> None:
        u = urlparse(url)
        self.timeout = timeout
        self.sock = socket.create_connection(
            (u.hostname or "localhost", u.port or 5672), timeout=timeout
        )
        self.buf = b""
        self.sock.sendall(frame.marshal(header.ProtocolHeader(), 0))
        self._expect(commands.Connection.Start)
        user, password = unquote(u.username or "guest"), unquote(u.password or "guest")
        self._send(
            commands.Connection.StartOk(
                client_properties={"product": "rawamqp-test"},
                mechanism="PLAIN",
                response=f"\0{user}\0{password}",
                locale="en_US",
            )
        )
        tune = self._expect(commands.Connection.Tune)
        self.frame_max = tune.frame_max
        self._send(commands.Connection.TuneOk(channel_max=1, frame_max=tune.frame_max, heartbeat=0))
        vhost = unquote(u.path[1:]) if u.path and u.path != "/" else "/"
        self._send(commands.Connection.Open(virtual_host=vhost))
        self._expect(commands.Connection.OpenOk)
        self._send(commands.Channel.Open(), channel=1)
        self._expect(commands.Channel.OpenOk)
        self.deliveries: list[RawDelivery] = []

    # -- framing
    def _send(self, obj: Any, channel: int = 0) -> None:
        self.sock.settimeout(self.timeout)  # reads leave their own (short) timeout behind
        self.sock.sendall(frame.marshal(obj, channel))

    def _read_frame(self, deadline: float) -> tuple[Any, bytes]:
        while True:
            if len(self.buf) >= 7:
                (size,) = struct.unpack_from(">I", self.buf, 3)
                if len(self.buf) >= 8 + size:
                    raw = self.buf[: 8 + size]
                    self.buf = self.buf[8 + size :]
                    _consumed, _ch, obj = frame.unmarshal(raw)
                    return obj, raw
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no frame")
            self.sock.settimeout(remaining)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("broker closed the connection")
            self.buf += chunk

    def _expect(self, kind: type, timeout: float = 10.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            obj, _raw = self._read_frame(deadline)
            if isinstance(obj, kind):
                return obj
            if isinstance(obj, commands.Basic.Deliver):
                self._read_content(obj, deadline)
                continue
            if isinstance(obj, pamqp_heartbeat.Heartbeat):
                continue
            if isinstance(obj, commands.Channel.Close | commands.Connection.Close):
                raise BrokerClosed(f"broker closed: {obj.reply_code} {obj.reply_text}")

    def _read_content(self, deliver: Any, deadline: float) -> RawDelivery:
        _hdr, raw = self._read_frame(deadline)
        props = parse_content_header(raw[7:-1])
        delivery = RawDelivery(
            deliver.exchange, deliver.routing_key, props, headers=props.get("headers", {})
        )
        size = struct.unpack_from(">Q", raw, 7 + 4)[0]
        while len(delivery.body) < size:
            body_frame, _ = self._read_frame(deadline)
            delivery.body += body_frame.value
        self.deliveries.append(delivery)
        return delivery

    # -- operations
    def declare_queue(self, name: str = "") -> str:
        self._send(commands.Queue.Declare(queue=name, exclusive=True, auto_delete=True), channel=1)
        return self._expect(commands.Queue.DeclareOk).queue

    def bind(self, queue: str, exchange: str, routing_key: str) -> None:
        self._send(
            commands.Queue.Bind(queue=queue, exchange=exchange, routing_key=routing_key), channel=1
        )
        self._expect(commands.Queue.BindOk)

    def declare_exchange(self, name: str) -> None:
        self._send(commands.Exchange.Declare(exchange=name, exchange_type="topic"), channel=1)
        self._expect(commands.Exchange.DeclareOk)

    def consume(self, queue: str) -> None:
        self._send(commands.Basic.Consume(queue=queue, no_ack=True), channel=1)
        self._expect(commands.Basic.ConsumeOk)

    def publish(self, exchange: str, routing_key: str, body: bytes, **properties: Any) -> None:
        self._send(commands.Basic.Publish(exchange=exchange, routing_key=routing_key), channel=1)
        props = commands.Basic.Properties(**properties)
        self._send(header.ContentHeader(0, len(body), props), channel=1)
        from pamqp import body as pamqp_body

        for i in range(0, len(body), self.frame_max - 8):  # no frame for an empty body
            self._send(pamqp_body.ContentBody(body[i : i + self.frame_max - 8]), channel=1)

    def next_delivery(self, timeout: float = 10.0) -> RawDelivery:
        if self.deliveries:
            return self.deliveries.pop(0)
        deadline = time.monotonic() + timeout
        while True:
            obj, _raw = self._read_frame(deadline)
            if isinstance(obj, commands.Basic.Deliver):
                self._read_content(obj, deadline)
                return self.deliveries.pop(0)
            if isinstance(obj, commands.Channel.Close | commands.Connection.Close):
                raise BrokerClosed(f"broker closed: {obj.reply_code} {obj.reply_text}")

    def setup_reply_queue(self, exchange: str = "requests") -> str:
        """A queue bound on ``exchange`` to its own name, consumed: a dripline reply queue."""
        name = self.declare_queue(f"raw-{uuid.uuid4().hex}")
        self.declare_exchange(exchange)
        self.bind(name, exchange, name)
        self.consume(name)
        return name

    def close(self) -> None:
        try:
            self._send(
                commands.Connection.Close(reply_code=200, reply_text="bye", class_id=0, method_id=0)
            )
        finally:
            self.sock.close()
