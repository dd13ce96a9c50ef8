"""A blocking dripline client for one request (or one alert/reply) per process.

``dl-agent get peaches`` and ``dragonfly get peaches`` are whole processes that a shifter runs
hundreds of times a day; the async stack (asyncio + aio-pika + aiormq, ~120 ms of imports on the
lab's machines) was most of their run time.  This client speaks AMQP 0-9-1 over one plain (or
TLS) socket with pamqp's frame codec — the library aio-pika itself builds on — and does exactly
what :class:`~.client.Interface` does for one call:

* connect with the same attempts, pauses and time limit as :meth:`.Connection.connect`, failing
  with the same one-line :class:`~.errors.BrokerUnavailable` (refused credentials, unverifiable
  TLS certificate, unreachable broker);
* declare the requests exchange, an exclusive reply queue ``amq_<hex>`` bound to its own name,
  consume it, publish the request *mandatory* on a confirming channel (403 when the broker
  returns it, 404 when no reply comes in time);
* reassemble chunked replies within ``max_message_size`` and the pending limits of
  :mod:`.limits`, and decode them with the same codec (:mod:`.message`);
* publish an alert or reply with confirms, a refusal raising :class:`~.errors.PublishRefused`.

Every size the broker (or a peer writing to our reply queue) controls is bounded: frames by the
negotiated ``frame_max``, a message by ``max_message_size``, pending chunk sets by count and bytes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pamqp import body as _body
from pamqp import commands as _cmd
from pamqp import frame as _frame
from pamqp import header as _header
from pamqp import heartbeat as _heartbeat
from pamqp.exceptions import UnmarshalingException

from .. import __version__
from .config_files import Credentials, tls_context
from .errors import (
    BrokerUnavailable,
    PublishRefused,
    broker_not_verified,
    broker_unreachable,
    cert_verification_error,
    credentials_refused,
    exchanges_refused,
)
from .limits import MAX_ECHO_BYTES, MAX_PENDING_BYTES, MAX_PENDING_MESSAGES
from .message import (
    Message,
    amqp_chunks,
    decode,
    local_reply,
    multi_chunk_warning,
    parse_message_id,
)

if TYPE_CHECKING:
    import ssl

    from .config import MeshConfig
    from .quick_mesh import QuickMesh

#: our frame_max (the broker's may be smaller); also the bound on any frame we read
FRAME_MAX = 131_072
_FRAME_HEADER = 7
_FRAME_END = b"\xce"


class _ChannelClosed(Exception):
    """The broker closed our channel (``reply_code``/``reply_text`` as it said them)."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(f"{code} {text}")
        self.code = code
        self.text = text


class _ConnectionClosed(ConnectionError):
    def __init__(self, code: int, text: str) -> None:
        super().__init__(f"{code} {text}")
        self.code = code
        self.text = text


class _AuthRefused(ConnectionError):
    pass


def _describe(exc: BaseException) -> str:
    """A connection error in a few words, as :func:`.connection.describe_error` says them."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, _ConnectionClosed):
        return exc.text or str(exc)
    if isinstance(exc, OSError) and exc.errno is not None and exc.errno > 0:
        with contextlib.suppress(ValueError):
            return os.strerror(exc.errno)  # "Connection refused"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror  # "Name or service not known"
    text = str(exc).strip() or type(exc).__name__
    return text.replace("\n", " ")[:300]


@dataclass
class _Pending:
    """Chunks of one reply still arriving."""

    first: Any  # the properties of its first chunk
    total: int
    pieces: dict[int, bytes] = field(default_factory=dict)
    size: int = 0


class OneShotClient:
    """One connection, one channel with confirms, one reply queue: one request and done.

    Use as a context manager; :meth:`connect` is called on entry.  Not thread-safe, and by
    itself not for long-lived processes (no reconnection, no heartbeats): that is
    :class:`~.client.Interface`, or :class:`~.listener.Listener` for dl-mon, which builds
    both on this client.
    """

    #: heartbeat interval asked of the broker (s); 0 = none, right for one short exchange
    heartbeat_s = 0

    def __init__(
        self,
        mesh: MeshConfig | QuickMesh,
        credentials: Credentials,
        *,
        name: str = "dl-agent",
        timeout_s: float | None = 10.0,
    ) -> None:
        self.mesh = mesh
        self.credentials = credentials
        self.name = name
        self.timeout_s = timeout_s if timeout_s and timeout_s > 0 else None
        self._sock: socket.socket | ssl.SSLSocket | None = None
        self._buffer = bytearray()
        self._frame_max = FRAME_MAX
        self.heartbeat = 0  # as negotiated with the broker (s)
        self._confirm_seq = 0
        self._reply_queue = ""
        # deliveries read so far: (routing key, properties, body, size if refused as too large)
        self._inbox: list[tuple[str, Any, bytes, int]] = []
        self.max_chunks = max(1, mesh.max_message_size // max(1, mesh.max_payload_size))
        self.max_pending_bytes = max(MAX_PENDING_BYTES, mesh.max_message_size)

    # ----------------------------------------------------------------- connection
    @property
    def url_for_humans(self) -> str:
        scheme, _, rest = self.mesh.url_for_humans.partition("://")
        return f"{scheme}://{self.credentials.username}@{rest}"

    def __enter__(self) -> OneShotClient:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connect(self, attempts: int | None = None) -> None:
        """Open the connection, a confirming channel and the exchanges, retrying as
        :meth:`.Connection.connect` does (``attempts`` overrides the mesh's
        ``max_connection_attempts``); raises :class:`BrokerUnavailable` (one line)."""
        started = time.monotonic()
        deadline = started + self.timeout_s if self.timeout_s else None
        attempts = max(1, self.mesh.max_connection_attempts if attempts is None else attempts)
        delay = 0.5
        context = tls_context(self.mesh, self.credentials) if self.mesh.tls else None
        for attempt in range(1, attempts + 1):
            remaining = None if deadline is None else max(0.1, deadline - time.monotonic())
            try:
                self._open(remaining, context)
                break
            except _AuthRefused:
                self._drop()
                raise credentials_refused(self.url_for_humans, self.credentials.username) from None
            except (OSError, _ConnectionClosed, UnmarshalingException) as exc:
                self._drop()
                unverified = cert_verification_error(exc)
                if unverified is not None:
                    raise broker_not_verified(
                        self.url_for_humans, unverified, self.mesh.tls_ca_file
                    ) from None
                elapsed = time.monotonic() - started
                left = None if deadline is None else deadline - time.monotonic()
                if attempt == attempts or (left is not None and left <= 0.05):
                    raise broker_unreachable(
                        self.url_for_humans, _describe(exc), attempt, elapsed
                    ) from None
                time.sleep(delay if left is None else min(delay, left))
                delay = min(delay * 2, 10.0)
        try:
            self._call(_cmd.Channel.Open(), _cmd.Channel.OpenOk)
            self._call(_cmd.Confirm.Select(), _cmd.Confirm.SelectOk)
            for exchange in (self.mesh.requests_exchange, self.mesh.alerts_exchange):
                self._call(
                    _cmd.Exchange.Declare(
                        exchange=exchange, exchange_type="topic", durable=False, auto_delete=False
                    ),
                    _cmd.Exchange.DeclareOk,
                )
        except _ChannelClosed as exc:
            self.close()
            raise exchanges_refused(
                self.url_for_humans, self.credentials.username, exc.text
            ) from None
        except (OSError, _ConnectionClosed, UnmarshalingException) as exc:
            self._drop()
            raise BrokerUnavailable(
                f"lost the connection to broker {self.url_for_humans}: {_describe(exc)}"
            ) from None

    def _open(self, timeout_s: float | None, context: ssl.SSLContext | None) -> None:
        """One connection attempt: socket, (TLS,) AMQP handshake up to Connection.OpenOk."""
        sock: Any = socket.create_connection(
            (self.mesh.broker, self.mesh.broker_port), timeout=timeout_s
        )
        self._sock = sock
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if context is not None:
            sock = context.wrap_socket(sock, server_hostname=self.mesh.broker)
            self._sock = sock
        self._buffer.clear()
        sock.sendall(_frame.marshal(_header.ProtocolHeader(), 0))
        start = self._expect(_cmd.Connection.Start)
        mechanisms = start.mechanisms
        if isinstance(mechanisms, bytes | bytearray):
            mechanisms = bytes(mechanisms).decode("utf-8", "replace")
        if "PLAIN" not in str(mechanisms).split():
            raise _ConnectionClosed(0, "broker does not offer PLAIN authentication")
        properties = {
            "product": "insectarium",
            "version": __version__,
            "platform": "Python",
            "connection_name": self.name,
            "capabilities": {
                "authentication_failure_close": True,
                "basic.nack": True,
                "connection.blocked": False,
                "consumer_cancel_notify": True,
                "publisher_confirms": True,
            },
        }
        self._send(
            _cmd.Connection.StartOk(
                client_properties=properties,
                mechanism="PLAIN",
                response=f"\0{self.credentials.username}\0{self.credentials.password}",
                locale="en_US",
            )
        )
        try:
            tune = self._expect(_cmd.Connection.Tune)
        except _ConnectionClosed as exc:
            if exc.code == 403 or "ACCESS_REFUSED" in exc.text:
                raise _AuthRefused(exc.text) from None
            raise
        except ConnectionError as exc:  # an old broker just drops the connection
            raise _AuthRefused(str(exc)) from None
        self._frame_max = min(FRAME_MAX, tune.frame_max or FRAME_MAX)
        # by default no heartbeats: one short exchange; a long wait (-t 0) is the socket's
        # business.  A long-lived user asks for some (never more often than the broker wants).
        heartbeat = self.heartbeat_s
        if heartbeat and tune.heartbeat:
            heartbeat = min(heartbeat, tune.heartbeat)
        self.heartbeat = heartbeat
        self._send(
            _cmd.Connection.TuneOk(channel_max=1, frame_max=self._frame_max, heartbeat=heartbeat)
        )
        self._send(_cmd.Connection.Open(virtual_host=self.mesh.vhost))
        self._expect(_cmd.Connection.OpenOk)

    def close(self) -> None:
        """Close politely (Connection.Close / CloseOk, briefly awaited) and drop the socket."""
        if self._sock is None:
            return
        with contextlib.suppress(Exception):
            self._sock.settimeout(1.0)
            self._send(_cmd.Connection.Close(reply_code=200, reply_text="Normal shutdown"))
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:
                _channel, value = self._read_frame(deadline)
                if isinstance(value, _cmd.Connection.CloseOk):
                    break
        self._drop()

    def _drop(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
        self._sock = None

    # ----------------------------------------------------------------- frames
    def _send(self, value: Any, channel: int = 0) -> None:
        assert self._sock is not None
        self._sock.sendall(_frame.marshal(value, channel))

    def _read_exact(self, n: int, deadline: float | None) -> bytes:
        assert self._sock is not None
        while len(self._buffer) < n:
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                self._sock.settimeout(left)
            else:
                self._sock.settimeout(None)
            data = self._sock.recv(max(65536, n - len(self._buffer)))
            if not data:
                raise ConnectionResetError(0, "the broker closed the connection")
            self._buffer += data
        out = bytes(self._buffer[:n])
        del self._buffer[:n]
        return out

    def _read_frame(self, deadline: float | None) -> tuple[int, Any]:
        """One frame (channel, value); a frame above our frame_max is a protocol error."""
        head = self._read_exact(_FRAME_HEADER, deadline)
        if head[:4] == b"AMQP":  # the broker answered our header with its own: wrong version
            raise _ConnectionClosed(0, "the broker speaks another AMQP version")
        size = int.from_bytes(head[3:7], "big")
        if size > self._frame_max:
            raise _ConnectionClosed(0, f"frame of {size} bytes exceeds frame_max")
        rest = self._read_exact(size + 1, deadline)
        if rest[-1:] != _FRAME_END:
            raise _ConnectionClosed(0, "malformed frame from the broker")
        _consumed, channel, value = _frame.unmarshal(head + rest)
        return channel, value

    def _next(self, deadline: float | None) -> Any:
        """The next method frame; ``None`` after a delivery, which went to the inbox."""
        while True:
            channel, value = self._read_frame(deadline)
            if isinstance(value, _heartbeat.Heartbeat):
                continue
            self.answer_close(channel, value)
            if isinstance(value, _cmd.Basic.Deliver):
                self._read_content(value.routing_key, deadline)
                return None
            if isinstance(value, _cmd.Connection.Blocked | _cmd.Connection.Unblocked):
                continue
            return value

    def _expect(self, kind: type) -> Any:
        deadline = None if self.timeout_s is None else time.monotonic() + self.timeout_s
        value = None
        while value is None:
            value = self._next(deadline)
        if not isinstance(value, kind):
            raise _ConnectionClosed(0, f"unexpected {value.name} (waiting for {kind.__name__})")
        return value

    def _call(self, method: Any, reply: type) -> Any:
        self._send(method, 1)
        return self._expect(reply)

    def answer_close(self, channel: int, value: Any) -> None:
        """If ``value`` is the broker closing the connection or a channel: answer it (as the
        protocol asks) and raise :class:`_ConnectionClosed` / :class:`_ChannelClosed`."""
        if isinstance(value, _cmd.Connection.Close):
            with contextlib.suppress(OSError):
                self._send(_cmd.Connection.CloseOk())
            raise _ConnectionClosed(value.reply_code, value.reply_text)
        if isinstance(value, _cmd.Channel.Close):
            with contextlib.suppress(OSError):
                self._send(_cmd.Channel.CloseOk(), channel)
            raise _ChannelClosed(value.reply_code, value.reply_text)

    def _read_content(self, routing_key: str, deadline: float | None) -> None:
        """Header and body frames of a delivery; the body is bounded by max_message_size."""
        _channel, head = self._read_frame(deadline)
        if not isinstance(head, _header.ContentHeader):
            raise _ConnectionClosed(0, "content header expected after Basic.Deliver")
        size = head.body_size
        if size > self.mesh.max_message_size:
            # read and discard: a reply larger than we accept becomes an invalid message
            self._read_body(size, deadline, keep=False)
            self._inbox.append((routing_key, head.properties, b"", size))
            return
        body = self._read_body(size, deadline, keep=True)
        self._inbox.append((routing_key, head.properties, body, 0))

    def _read_body(self, size: int, deadline: float | None, *, keep: bool) -> bytes:
        """The body frames of ``size`` bytes (kept, or only read past)."""
        parts: list[bytes] = []
        got = 0
        while got < size:
            _channel, part = self._read_frame(deadline)
            if not isinstance(part, _body.ContentBody):
                raise _ConnectionClosed(0, "content body expected")
            if keep:
                parts.append(part.value)
            got += len(part.value)
        return b"".join(parts)

    # ----------------------------------------------------------------- publishing
    def _publish(self, msg: Message, exchange: str, *, mandatory: bool) -> str | None:
        """Publish every chunk and wait for the confirms; the text of a Basic.Return if the
        broker returned the message (mandatory, nothing bound)."""
        returned: str | None = None
        sent = 0
        chunks = amqp_chunks(msg, self.mesh.max_payload_size)
        if len(chunks) > 1 and not msg.is_reply:
            logging.getLogger(__name__).warning(
                multi_chunk_warning(msg, len(chunks), self.mesh.max_payload_size)
            )
        for chunk, properties in chunks:
            frames = [
                _frame.marshal(
                    _cmd.Basic.Publish(
                        exchange=exchange, routing_key=msg.routing_key, mandatory=mandatory
                    ),
                    1,
                ),
                _frame.marshal(_header.ContentHeader(0, len(chunk), properties), 1),
            ]
            step = self._frame_max - 8
            frames += [
                _frame.marshal(_body.ContentBody(chunk[i : i + step]), 1)
                for i in range(0, len(chunk), step)
            ]
            assert self._sock is not None
            self._sock.sendall(b"".join(frames))
            sent += 1
        self._confirm_seq += sent
        deadline = None if self.timeout_s is None else time.monotonic() + self.timeout_s
        confirmed = self._confirm_seq - sent
        while confirmed < self._confirm_seq:
            value = self._next(deadline)
            if isinstance(value, _cmd.Basic.Return):
                returned = f"Message returned. Reply code: {value.reply_code} {value.reply_text}"
                _channel, head = self._read_frame(deadline)  # the returned content: read past
                if isinstance(head, _header.ContentHeader):
                    self._read_body(head.body_size, deadline, keep=False)
                continue
            if isinstance(value, _cmd.Basic.Ack | _cmd.Basic.Nack):
                tag = value.delivery_tag
                confirmed = tag if value.multiple else max(confirmed, tag)
                if isinstance(value, _cmd.Basic.Nack):
                    raise PublishRefused(f"broker did not accept {msg.routing_key!r} (nack)")
        return returned

    def publish(self, msg: Message) -> None:
        """An alert (alerts exchange) or reply (requests exchange), confirmed by the broker;
        raises :class:`PublishRefused` when the broker refuses this user that routing key."""
        exchange = self.mesh.alerts_exchange if msg.is_alert else self.mesh.requests_exchange
        try:
            self._publish(msg, exchange, mandatory=False)
        except _ChannelClosed as exc:
            raise PublishRefused(
                f"broker refused {msg.routing_key!r} on exchange {exchange!r} "
                f"for user {self.credentials.username!r}: {exc.text}"
            ) from None

    # ----------------------------------------------------------------- requests
    def _start_reply_queue(self) -> None:
        name = f"amq_{uuid.uuid4().hex}"
        self._call(
            _cmd.Queue.Declare(queue=name, exclusive=True, auto_delete=True, durable=False),
            _cmd.Queue.DeclareOk,
        )
        self._call(
            _cmd.Queue.Bind(queue=name, exchange=self.mesh.requests_exchange, routing_key=name),
            _cmd.Queue.BindOk,
        )
        self._call(
            _cmd.Basic.Consume(queue=name, no_ack=True, exclusive=True), _cmd.Basic.ConsumeOk
        )
        self._reply_queue = name

    def send_request(
        self, request: Message, *, timeout_s: float | None = None, collect: bool = False
    ) -> list[Message]:
        """Send ``request``; its reply (or, with ``collect``, every reply until the timeout).

        Never raises for dripline-level failures: they come back as locally made replies
        (403 unroutable or refused, 404 timeout), as :meth:`.Interface.send_request`.
        """
        timeout = self.timeout_s if timeout_s is None else (timeout_s or None)
        try:
            if not self._reply_queue:
                self._start_reply_queue()
            request.reply_to = self._reply_queue
            returned = self._publish(request, self.mesh.requests_exchange, mandatory=True)
        except _ChannelClosed as exc:
            return [local_reply(request, 403, f"Unable to send request: {exc.text}")]
        except (OSError, _ConnectionClosed) as exc:
            return [local_reply(request, 403, f"Unable to send request: {_describe(exc)}")]
        if returned is not None:
            return [local_reply(request, 403, returned)]
        try:
            replies = self._collect(request.correlation_id, timeout, collect)
        except (OSError, _ConnectionClosed) as exc:
            replies = []
            if not isinstance(exc, TimeoutError):
                return [local_reply(request, 404, f"connection lost: {_describe(exc)}")]
        if not replies:
            waited = f"{timeout:g} s" if timeout else "ever"
            return [local_reply(request, 404, f"Timed out after {waited} waiting for a reply")]
        return replies

    def _collect(self, correlation_id: str, timeout: float | None, collect: bool) -> list[Message]:
        deadline = None if timeout is None else time.monotonic() + timeout
        pending: dict[str, _Pending] = {}
        pending_bytes = 0
        replies: list[Message] = []
        while True:
            while self._inbox:
                routing_key, props, body, oversize = self._inbox.pop(0)
                if (props.correlation_id or "") != correlation_id:
                    continue  # not an answer to us (or a stray): dropped
                done = self._take(routing_key, props, body, oversize, pending)
                if done is not None:
                    replies.append(done)
                    if not collect:
                        return replies
                pending_bytes = sum(p.size for p in pending.values())
                while pending and (
                    len(pending) > MAX_PENDING_MESSAGES or pending_bytes > self.max_pending_bytes
                ):
                    oldest = next(iter(pending))
                    pending_bytes -= pending.pop(oldest).size
            try:
                self._next(deadline)  # a delivery (None), or a method we have no use for
            except TimeoutError:
                # an incomplete chunked reply is released invalid, as the Reassembler does
                for chunk_uuid, p in pending.items():
                    replies.append(
                        _decoded(p.first, _echo(p), chunk_uuid, "Entire message was not available")
                    )
                return replies

    def _take(
        self, routing_key: str, props: Any, body: bytes, oversize: int, pending: dict
    ) -> Message | None:
        props_view = _Props(routing_key, props)
        try:
            chunk = parse_message_id(props.message_id)
        except ValueError as exc:
            return _decoded(props_view, body, "", str(exc))
        if oversize:
            why = (
                f"message of {oversize} bytes exceeds the limit of "
                f"{self.mesh.max_message_size} bytes"
            )
            return _decoded(props_view, b"", chunk.uuid, why)
        if chunk.total == 1:
            return _decoded(props_view, body, chunk.uuid)
        if chunk.total > self.max_chunks:
            why = (
                f"message id announces {chunk.total} chunks; at most {self.max_chunks} fit in "
                f"the limit of {self.mesh.max_message_size} bytes"
            )
            return _decoded(props_view, b"", chunk.uuid, why)
        p = pending.get(chunk.uuid)
        if p is None:
            p = pending[chunk.uuid] = _Pending(first=props_view, total=chunk.total)
        if chunk.total != p.total or chunk.index in p.pieces:
            return None
        if p.size + len(body) > self.mesh.max_message_size:
            del pending[chunk.uuid]
            why = f"message exceeds the limit of {self.mesh.max_message_size} bytes"
            return _decoded(p.first, _echo(p), chunk.uuid, why)
        p.pieces[chunk.index] = body
        p.size += len(body)
        if len(p.pieces) < p.total:
            return None
        del pending[chunk.uuid]
        return _decoded(p.first, b"".join(p.pieces[i] for i in range(p.total)), chunk.uuid)


@dataclass
class _Props:
    """What the codec reads of a delivery (as :class:`.chunking.Delivery`)."""

    routing_key: str
    properties: Any


def _decoded(first: _Props, body: bytes, chunk_uuid: str, error: str = "") -> Message:
    p = first.properties
    headers: Mapping[str, Any] = p.headers or {}
    return decode(
        body=body,
        headers=headers,
        routing_key=first.routing_key,
        correlation_id=p.correlation_id,
        reply_to=p.reply_to,
        content_encoding=p.content_encoding,
        message_uuid=chunk_uuid,
        error=error,
    )


def _echo(p: _Pending) -> bytes:
    """The start of an incomplete message, missing chunks as ``#`` (as :mod:`.chunking`)."""
    filler = max((len(v) for v in p.pieces.values()), default=0)
    out: list[bytes] = []
    size = 0
    for i in range(p.total):
        piece = p.pieces.get(i) or b"#" * min(filler, MAX_ECHO_BYTES)
        out.append(piece[: MAX_ECHO_BYTES - size])
        size += len(out[-1])
        if size >= MAX_ECHO_BYTES:
            break
    return b"".join(out)
