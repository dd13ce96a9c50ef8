"""Dripline 3 messages and their AMQP encoding.

A :class:`Message` is the protocol-level view (type, operation, specifier, payload, return code…);
:func:`encode` turns it into one or more AMQP messages exactly as dripline-cpp writes them, and
:func:`decode` reads any peer's message back, marking it invalid (never raising) when it cannot.

The wire details that matter for interoperability (see ``dripline-3-wire.md`` §2):

* ``content-encoding`` is ``application/json``; the body is compact JSON, ``null`` when empty;
* ``message-id`` is always ``<uuid>/<chunk index>/<chunk count>``;
* integer headers are AMQP *unsigned 32-bit* (``'i'``) — dripline-cpp <= 2.10.3 accepts nothing
  else — which pamqp does not produce by itself, hence :class:`UInt32`;
* ``sender_info`` is a nested table with all five keys (a C++ peer drops the message otherwise).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import getpass
import json
import os
import re
import socket
import sys
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pamqp import encode as _pamqp_encode
from pamqp.commands import Basic as _Basic

from .. import __version__
from .constants import (
    CONTENT_ENCODING,
    DEFAULT_MAX_PAYLOAD_SIZE,
    DRIPLINE_VERSION,
    NIL_UUID,
    TIME_FORMAT,
    MsgOp,
    MsgType,
)
from .limits import MAX_ECHO_BYTES, MAX_HEADER_FIELD, clip

if TYPE_CHECKING:
    import aio_pika


class UInt32(int):
    """An ``int`` that must travel as AMQP field type ``'i'`` (unsigned 32-bit)."""

    __slots__ = ()

    def __new__(cls, value: int) -> UInt32:
        if not 0 <= int(value) <= 0xFFFFFFFF:
            raise ValueError(f"{value} does not fit an unsigned 32-bit header")
        return super().__new__(cls, value)


class EncodedTable(dict):  # type: ignore[type-arg]
    """A header table whose AMQP encoding is made once and then reused (``sender_info``).

    Still a plain mapping for anyone who reads it; pamqp's encoder (see
    :func:`_install_uint32_encoder`) writes :attr:`wire` instead of encoding the nested table
    again — about a third of a dripline header's encoding time.  Treat it as read-only.
    """

    __slots__ = ("wire",)

    def __init__(self, table: Mapping[str, Any]) -> None:
        super().__init__(table)
        self.wire = b"F" + _pamqp_encode.field_table(dict(table))


def _install_uint32_encoder() -> None:
    """Teach pamqp's table encoder to write :class:`UInt32` as ``'i'`` (and an
    :class:`EncodedTable` as its ready bytes).

    pamqp picks the smallest signed type for a Python ``int`` (``'b'`` for 0..127), which old
    dripline-cpp rejects.  ``field_table`` looks ``encode_table_value`` up as a module global, so
    wrapping it there covers nested tables too.  Idempotent.
    """
    original = _pamqp_encode.encode_table_value
    if getattr(original, "_dripline_uint32", False):
        return
    long_uint = _pamqp_encode.long_uint

    def encode_table_value(value: Any) -> bytes:
        kind = type(value)
        if kind is UInt32:
            return b"i" + long_uint(int(value))
        if kind is EncodedTable:
            return value.wire
        if isinstance(value, UInt32):
            return b"i" + long_uint(int(value))
        return original(value)

    encode_table_value._dripline_uint32 = True  # type: ignore[attr-defined]
    _pamqp_encode.encode_table_value = encode_table_value


_install_uint32_encoder()

#: nested header tables (``sender_info``) remembered by their exact bytes, and how many / how big
_TABLE_MEMO: dict[bytes, dict[str, Any]] = {}
TABLE_MEMO_ENTRIES = 128
TABLE_MEMO_MAX_BYTES = 2048


def _copy_table(value: Any) -> Any:
    """A copy of a decoded table deep enough that no caller can alter the remembered one
    (dicts and lists copied; every other decoded value is immutable)."""
    kind = type(value)
    if kind is dict:
        return {k: _copy_table(v) for k, v in value.items()}
    if kind is list:
        return [_copy_table(v) for v in value]
    return value


def _install_table_memo() -> None:
    """Decode each distinct nested header table once (pamqp's ``'F'`` decoder, remembered).

    Every dripline message carries ``sender_info``, a table of tables that is the same bytes for
    every message of one sender; pamqp decodes it field by field (re-slicing the buffer each
    time), which was about half of the header decoding in a request and again in its reply.
    The decoded value is kept by its exact bytes (bounded: :data:`TABLE_MEMO_ENTRIES` tables of
    at most :data:`TABLE_MEMO_MAX_BYTES`, forgotten all at once when full) and handed out as a
    fresh copy, so what a caller gets is exactly what pamqp would have made.  The top-level
    table (timestamps differ per message) is still decoded as it comes.  Idempotent.
    """
    from pamqp import decode as _pamqp_decode

    original = _pamqp_decode.TABLE_MAPPING[b"F"]
    if getattr(original, "_dripline_memo", False):
        return
    unpack_length = _pamqp_decode.common.Struct.integer.unpack_from

    def nested_table(value: bytes) -> tuple[int, Any]:
        try:
            length = unpack_length(value, 0)[0]
        except Exception:
            return original(value)  # pamqp says what is wrong
        if length > TABLE_MEMO_MAX_BYTES or length + 4 > len(value):
            return original(value)
        key = bytes(value[4 : 4 + length])
        known = _TABLE_MEMO.get(key)
        if known is None:
            consumed, known = original(value)
            if len(_TABLE_MEMO) >= TABLE_MEMO_ENTRIES:
                _TABLE_MEMO.clear()
            _TABLE_MEMO[key] = known
            return consumed, _copy_table(known)
        return length + 4, _copy_table(known)

    nested_table._dripline_memo = True  # type: ignore[attr-defined]
    _pamqp_decode.TABLE_MAPPING[b"F"] = nested_table


_install_table_memo()


def now_timestamp() -> str:
    """Current UTC time in the dripline header format."""
    return dt.datetime.now(dt.UTC).strftime(TIME_FORMAT)


def parse_timestamp(text: str) -> dt.datetime:
    """Parse a dripline timestamp into an aware UTC datetime (``ValueError`` if malformed)."""
    return dt.datetime.strptime(text, TIME_FORMAT).replace(tzinfo=dt.UTC)


def format_timestamp(value: dt.datetime) -> str:
    if value.tzinfo is not None:
        value = value.astimezone(dt.UTC)
    return value.strftime(TIME_FORMAT)


_SENDER_CACHE: dict[str, Any] = {}


def sender_info(service_name: str = "unknown") -> dict[str, Any]:
    """The ``sender_info`` table: exe, hostname, username, service_name and component versions."""
    if not _SENDER_CACHE:
        try:
            user = getpass.getuser()
        except (KeyError, OSError):
            user = str(os.getuid())
        _SENDER_CACHE.update(
            exe=os.path.abspath(sys.argv[0]) if sys.argv and sys.argv[0] else sys.executable,
            hostname=socket.gethostname(),
            username=user,
            versions={
                "dripline": {"version": DRIPLINE_VERSION},
                "insectarium": {"version": __version__, "package": "insectarium"},
            },
        )
    return {**_SENDER_CACHE, "service_name": service_name}


class RawJSON:
    """JSON text that a payload carries as it is, without being parsed and encoded again.

    For large documents built elsewhere, e.g. a snapshot that PostgreSQL renders as JSON text:
    as Python objects, its 360 000 values would cost the sender ~100 MB of short-lived dicts
    (whose freed arenas stay resident) and twice the CPU.  The text must be valid JSON; the
    receiver parses it like any other payload.
    """

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return f"RawJSON({len(self.text)} characters)"


class _HasRawJSON(Exception):
    """Raised by :func:`json_default` so that :func:`dump_payload` takes the splicing path."""


def json_default(value: Any) -> Any:
    """Make common Python values JSON-able instead of failing the whole reply."""
    if isinstance(value, RawJSON):
        raise _HasRawJSON
    if isinstance(value, dt.datetime):
        return format_timestamp(value)
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return str(value)


def dump_payload(payload: Any) -> bytes:
    """Compact JSON, as rapidjson writes it; ``None`` becomes ``null``.

    A string holding a lone surrogate (JSON allows ``"\\ud800"``, UTF-8 cannot carry it) is
    written as the same ``\\u`` escape it arrived as, instead of failing the whole message.
    """
    try:
        text = json.dumps(payload, separators=(",", ":"), ensure_ascii=False, default=json_default)
    except _HasRawJSON:
        text = _dump_with_raw(payload, ensure_ascii=False)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        try:
            text = json.dumps(payload, separators=(",", ":"), default=json_default)
        except _HasRawJSON:
            text = _dump_with_raw(payload, ensure_ascii=True)
        return text.encode("utf-8")  # ASCII but for RawJSON parts


def _dump_with_raw(payload: Any, *, ensure_ascii: bool) -> str:
    """Compact JSON of a payload holding :class:`RawJSON` parts, each spliced in as it is.

    Each part is first written as a marker string holding a random token (so no string of the
    payload can be taken for one), then the marker is replaced by the part's text.
    """
    token = uuid.uuid4().hex
    parts: list[str] = []

    def default(value: Any) -> Any:
        if isinstance(value, RawJSON):
            parts.append(value.text)
            return f"\x00{token}:{len(parts) - 1}\x00"
        return json_default(value)

    text = json.dumps(payload, separators=(",", ":"), ensure_ascii=ensure_ascii, default=default)
    # a marker as json.dumps writes it (NUL as \\u0000); a string of the payload that only
    # looks like one (another token) stays as it is
    marker = re.compile(r'"\\u0000([0-9a-f]{32}):([0-9]+)\\u0000"')
    return marker.sub(lambda m: parts[int(m[2])] if m[1] == token else m[0], text)


@dataclasses.dataclass
class Message:
    """One dripline message (request, reply or alert), independent of its AMQP chunks."""

    message_type: MsgType | int
    routing_key: str = ""
    payload: Any = None
    specifier: str = ""
    correlation_id: str = dataclasses.field(default_factory=lambda: str(uuid.uuid4()))
    message_uuid: str = dataclasses.field(default_factory=lambda: str(uuid.uuid4()))
    reply_to: str = ""
    timestamp: str = dataclasses.field(default_factory=now_timestamp)
    sender_info: dict[str, Any] = dataclasses.field(default_factory=sender_info)
    message_operation: MsgOp | int | None = None
    lockout_key: str = NIL_UUID
    return_code: int = 0
    return_message: str = ""
    # Set by decode(): whether the body and headers could be read, and why not.
    is_valid: bool = True
    error: str = ""

    # ----------------------------------------------------------------- constructors
    @classmethod
    def request(
        cls,
        routing_key: str,
        operation: MsgOp | int,
        payload: Any = None,
        *,
        specifier: str = "",
        lockout_key: str | None = None,
        reply_to: str = "",
        sender: str = "unknown",
    ) -> Message:
        return cls(
            message_type=MsgType.REQUEST,
            routing_key=routing_key,
            payload=payload,
            specifier=specifier or "",
            message_operation=operation,
            lockout_key=lockout_key or NIL_UUID,
            reply_to=reply_to,
            sender_info=sender_info(sender),
        )

    @classmethod
    def alert(cls, routing_key: str, payload: Any = None, *, sender: str = "unknown") -> Message:
        return cls(
            message_type=MsgType.ALERT,
            routing_key=routing_key,
            payload=payload,
            sender_info=sender_info(sender),
        )

    def make_reply(
        self,
        return_code: int = 0,
        return_message: str = "",
        payload: Any = None,
        *,
        sender: str = "unknown",
    ) -> Message:
        """The reply to this request: routed to ``reply_to``, same correlation id.

        ``return_message`` often quotes the request (a value that failed, a name not found), so it
        is cut to :data:`~.limits.MAX_HEADER_TEXT`: a header past the broker's frame limit would
        close the service's connection.
        """
        return Message(
            message_type=MsgType.REPLY,
            routing_key=self.reply_to,
            payload=payload,
            correlation_id=self.correlation_id,
            return_code=int(return_code),
            return_message=clip(return_message),
            sender_info=sender_info(sender),
        )

    # ----------------------------------------------------------------- helpers
    @property
    def is_request(self) -> bool:
        return self.message_type == MsgType.REQUEST

    @property
    def is_reply(self) -> bool:
        return self.message_type == MsgType.REPLY

    @property
    def is_alert(self) -> bool:
        return self.message_type == MsgType.ALERT

    @property
    def sender_service(self) -> str:
        return str(self.sender_info.get("service_name", "")) if self.sender_info else ""

    def to_dict(self) -> dict[str, Any]:
        """JSON view of the whole message, the shape ``dl-agent --json-print`` prints."""
        out: dict[str, Any] = {
            "routing_key": self.routing_key,
            "specifier": self.specifier,
            "correlation_id": self.correlation_id,
            "message_id": f"{self.message_uuid}/0/1",
            "reply_to": self.reply_to,
            "message_type": int(self.message_type),
            "encoding": CONTENT_ENCODING,
            "timestamp": self.timestamp,
            "sender_info": self.sender_info,
            "payload": self.payload,
        }
        if self.is_request:
            out["message_operation"] = (
                int(self.message_operation) if self.message_operation is not None else None
            )
            out["lockout_key"] = self.lockout_key
        if self.is_reply:
            out["return_code"] = self.return_code
            out["return_message"] = self.return_message
        return out


def local_reply(request: Message, code: int, message: str) -> Message:
    """A reply made on the client side (403 unroutable, 404 timeout), as dl-agent does."""
    from .return_codes import lookup

    reply = request.make_reply(code, message or lookup(code).description, None)
    reply.routing_key = request.reply_to
    return reply


# --------------------------------------------------------------------------- encoding
_Properties = _Basic.Properties
_ENCODED_SENDERS: dict[str, tuple[dict[str, Any], EncodedTable]] = {}
_MAX_ENCODED_SENDERS = 64


def _sender_table(info: dict[str, Any]) -> dict[str, Any]:
    """``sender_info`` as an :class:`EncodedTable`, encoded once per service name.

    A process sends the same table with every message (only ``service_name`` differs between
    its senders).  The cached encoding is reused only while the table equals the one it was made
    from (a deep copy), so a changed table is never sent with stale bytes.  Bounded: at most
    :data:`_MAX_ENCODED_SENDERS` names are kept.
    """
    name = info.get("service_name")
    if type(name) is not str:
        return info
    cached = _ENCODED_SENDERS.get(name)
    if cached is not None and cached[0] == info:
        return cached[1]
    import copy

    try:
        table = EncodedTable(info)
    except (TypeError, ValueError):
        return info  # not encodable here: the normal encoder raises the usual error
    if len(_ENCODED_SENDERS) >= _MAX_ENCODED_SENDERS:
        _ENCODED_SENDERS.clear()
    _ENCODED_SENDERS[name] = (copy.deepcopy(dict(info)), table)
    return table


def headers_of(msg: Message) -> dict[str, Any]:
    """The dripline header table; ``ValueError`` for a specifier no broker frame could carry."""
    if len(msg.specifier) > MAX_HEADER_FIELD:
        raise ValueError(
            f"specifier of {len(msg.specifier)} characters exceeds the limit of {MAX_HEADER_FIELD}"
        )
    headers: dict[str, Any] = {
        "message_type": UInt32(int(msg.message_type)),
        "specifier": msg.specifier or "",
        "timestamp": msg.timestamp,
        "sender_info": _sender_table(msg.sender_info)
        if type(msg.sender_info) is dict
        else msg.sender_info,
    }
    if msg.is_request:
        headers["message_operation"] = UInt32(int(msg.message_operation or 0))
        headers["lockout_key"] = msg.lockout_key or NIL_UUID
    if msg.is_reply:
        headers["return_code"] = UInt32(int(msg.return_code))
        headers["return_message"] = clip(msg.return_message or "")
    return headers


def multi_chunk_warning(msg: Message, chunks: int, max_payload_size: int) -> str:
    """What a sender says (once per process) when a request or alert is split into chunks."""
    kind = "alert" if msg.is_alert else "request"
    return (
        f"{kind} {msg.routing_key} goes out in {chunks} chunks (payload above "
        f"{max_payload_size} bytes); dripline-cpp 2.10 receivers can crash on multi-chunk "
        "messages: its dl-mon on requests and alerts, dripline-python 5 services on some "
        "requests (said once per process)"
    )


def split_body(body: bytes, max_payload_size: int) -> list[bytes]:
    """Cut a serialised payload into consecutive pieces of at most ``max_payload_size`` bytes."""
    if max_payload_size <= 0:
        raise ValueError("max_payload_size must be positive")
    if not body:
        return [b"null"]
    return [body[i : i + max_payload_size] for i in range(0, len(body), max_payload_size)]


def amqp_chunks(
    msg: Message, max_payload_size: int = DEFAULT_MAX_PAYLOAD_SIZE
) -> list[tuple[bytes, Any]]:
    """``(body, pamqp Basic.Properties)`` per chunk: what the publishing path hands straight
    to the channel, without building an ``aio_pika.Message`` (about 15 µs of attribute
    bookkeeping each) for every message."""
    headers = headers_of(msg)
    chunks = split_body(dump_payload(msg.payload), max_payload_size)
    total = len(chunks)
    reply_to = msg.reply_to or ""
    prefix = msg.message_uuid
    return [
        (
            chunk,
            _Properties(
                content_encoding=CONTENT_ENCODING,
                delivery_mode=1,  # as aio-pika wrote them: not persistent, priority 0
                priority=0,
                headers=headers,
                correlation_id=msg.correlation_id,
                reply_to=reply_to,
                message_id=f"{prefix}/{index}/{total}",
            ),
        )
        for index, chunk in enumerate(chunks)
    ]


def encode(
    msg: Message, max_payload_size: int = DEFAULT_MAX_PAYLOAD_SIZE
) -> list[aio_pika.Message]:
    """AMQP messages (one per chunk) carrying ``msg``; identical but for ``message-id``."""
    import aio_pika  # here, not at the top: the one-shot client (dl-agent) never loads it

    headers = headers_of(msg)
    chunks = split_body(dump_payload(msg.payload), max_payload_size)
    total = len(chunks)
    return [
        aio_pika.Message(
            body=chunk,
            headers=headers,
            content_encoding=CONTENT_ENCODING,
            correlation_id=msg.correlation_id,
            reply_to=msg.reply_to or "",
            message_id=f"{msg.message_uuid}/{index}/{total}",
        )
        for index, chunk in enumerate(chunks)
    ]


# --------------------------------------------------------------------------- decoding
@dataclasses.dataclass(frozen=True)
class ChunkId:
    uuid: str
    index: int
    total: int


def parse_message_id(message_id: str | None) -> ChunkId:
    """``UUID/i/N`` → :class:`ChunkId`; a bare id is one chunk (the standard allows it).

    Raises ``ValueError`` for ids whose chunk part is not two integers with ``0 <= i < N``.
    Whether ``N`` chunks are plausible is the receiver's call (:mod:`.chunking`), against its
    ``max_message_size``.
    """
    text = message_id or ""
    if "/" not in text:
        return ChunkId(text or str(uuid.uuid4()), 0, 1)
    base, _, rest = text.partition("/")
    index_text, sep, total_text = rest.partition("/")
    if not sep:
        raise ValueError(f"malformed message-id {text!r}: expected <uuid>/<index>/<total>")
    index, total = int(index_text), int(total_text)
    if total < 1 or not 0 <= index < total:
        raise ValueError(f"malformed message-id {text!r}: chunk {index} of {total}")
    return ChunkId(base, index, total)


def _as_int(value: Any) -> int | None:
    """An integer header of any AMQP integer type; anything else (text, bool …) is not one,
    as for dripline-cpp, whose ``GetInteger`` accepts integer types only."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return None


def _as_str(value: Any, name: str, problems: list[str]) -> str:
    """A header as text; bytes that are not UTF-8 (pamqp hands those over undecoded) are a
    problem of the message, not something to repair silently."""
    if value is None:
        return ""
    if isinstance(value, bytes | bytearray):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            problems.append(f"header {name} is not valid UTF-8")
            return bytes(value).decode("utf-8", "backslashreplace")
    return str(value)


def _property(value: Any) -> str:
    """An AMQP short-string property (at most 255 bytes) as text; we only echo it back."""
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "backslashreplace")
    return "" if value is None else str(value)


_PLAIN_SCALARS = frozenset({str, int, float, bool, type(None)})


def _plain(value: Any) -> Any:
    """Headers decoded by pamqp may hold bytes and nested tables; make them JSON-friendly.

    The common types are recognised by exact type first (ABC ``isinstance`` checks were most
    of a small reply's decoding time)."""
    kind = type(value)
    if kind in _PLAIN_SCALARS:
        return value
    if kind is dict:
        return {k if type(k) is str else str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, dt.datetime):
        return format_timestamp(value)
    return value


_MESSAGE_TYPES = frozenset(int(t) for t in MsgType)


def decode(
    *,
    body: bytes,
    headers: Mapping[str, Any] | None,
    routing_key: str = "",
    correlation_id: str | None = None,
    reply_to: str | None = None,
    content_encoding: str | None = None,
    message_uuid: str = "",
    error: str = "",
) -> Message:
    """Read a (reassembled) message; problems mark it invalid instead of raising.

    An invalid message keeps what could be read of its headers, and its payload becomes
    ``{"invalid": <raw text>, "error": <why>}`` as dripline-cpp does, so a request can be answered
    with 302 echoing it.
    """
    h = dict(headers or {})
    problems: list[str] = [error] if error else []
    if content_encoding != CONTENT_ENCODING:
        problems.append(f"unsupported content-encoding {clip(str(content_encoding), 100)}")
    payload: Any = None
    if problems:  # not parsed: only the start of the body is echoed back
        raw = body[:MAX_ECHO_BYTES].decode("utf-8", "backslashreplace")
    else:
        try:
            raw = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            problems.append(f"payload is not valid UTF-8 (byte {exc.start}: {exc.reason})")
            raw = body[:MAX_ECHO_BYTES].decode("utf-8", "backslashreplace")
    if not problems:
        try:
            payload = json.loads(raw)
        except ValueError as exc:
            problems.append(f"payload is not valid JSON: {exc}")
        except RecursionError:
            problems.append("payload is not valid JSON: nested too deeply")

    mtype = _as_int(h.get("message_type"))
    mop = _as_int(h.get("message_operation"))
    rcode = _as_int(h.get("return_code"))
    info = h.get("sender_info")
    msg = Message(
        message_type=mtype if mtype is not None else -1,
        routing_key=routing_key,
        specifier=_as_str(h.get("specifier"), "specifier", problems),
        correlation_id=_property(correlation_id),
        message_uuid=message_uuid,
        reply_to=_property(reply_to),
        timestamp=_as_str(h.get("timestamp"), "timestamp", problems),
        sender_info=_plain(info) if isinstance(info, Mapping) else {},
        message_operation=mop,
        lockout_key=_as_str(h.get("lockout_key"), "lockout_key", problems),
        return_code=999 if rcode is None else rcode,
        return_message=_as_str(h.get("return_message"), "return_message", problems),
    )
    if msg.message_type not in _MESSAGE_TYPES:
        problems.append(f"unknown message_type {clip(repr(h.get('message_type')), 100)}")
    if problems:
        msg.is_valid = False
        msg.error = "; ".join(problems)
        msg.payload = {"invalid": clip(raw, MAX_ECHO_BYTES), "error": msg.error}
    else:
        msg.payload = payload
    return msg
