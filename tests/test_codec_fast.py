"""The codec's fast paths write and read exactly what the plain paths do (issue 14 item 3)."""

from __future__ import annotations

import copy
import datetime as dt
import decimal

from pamqp import encode as pamqp_encode
from pamqp.commands import Basic
from pamqp.header import ContentHeader

from insectarium.dripline.constants import MsgOp
from insectarium.dripline.message import (
    _ENCODED_SENDERS,
    _MAX_ENCODED_SENDERS,
    EncodedTable,
    Message,
    _plain,
    amqp_chunks,
    encode,
    headers_of,
)


def wire(headers: dict) -> bytes:
    return ContentHeader(0, 2, Basic.Properties(headers=headers)).marshal()


def test_pre_encoded_sender_info_writes_the_same_bytes() -> None:
    msg = Message.request("peaches", MsgOp.GET, {}, sender="fast")
    fast = headers_of(msg)
    assert isinstance(fast["sender_info"], EncodedTable)
    assert fast["sender_info"] == msg.sender_info  # still reads as the plain table
    plain = {**fast, "sender_info": dict(msg.sender_info)}
    assert wire(fast) == wire(plain)
    assert fast["sender_info"].wire == b"F" + pamqp_encode.field_table(dict(msg.sender_info))


def test_a_changed_sender_info_is_never_sent_with_stale_bytes() -> None:
    msg = Message.request("peaches", MsgOp.GET, {}, sender="changing")
    msg.sender_info = copy.deepcopy(msg.sender_info)  # nested tables are shared process-wide
    first = headers_of(msg)["sender_info"]
    msg.sender_info["hostname"] = "elsewhere"
    second = headers_of(msg)["sender_info"]
    assert second["hostname"] == "elsewhere"
    assert b"elsewhere" in second.wire and b"elsewhere" not in first.wire
    msg.sender_info["versions"]["dripline"]["version"] = "9.9.9"  # nested change too
    assert b"9.9.9" in headers_of(msg)["sender_info"].wire


def test_the_encoded_sender_cache_is_bounded() -> None:
    for i in range(3 * _MAX_ENCODED_SENDERS):
        headers_of(Message.request("x", MsgOp.GET, {}, sender=f"svc{i}"))
        assert len(_ENCODED_SENDERS) <= _MAX_ENCODED_SENDERS


def test_amqp_chunks_match_encode() -> None:
    msg = Message.request("peaches", MsgOp.SET, {"values": ["x" * 2500]}, specifier="s")
    fast = amqp_chunks(msg, max_payload_size=1000)
    slow = encode(msg, max_payload_size=1000)
    assert [body for body, _ in fast] == [m.body for m in slow]
    for (_, props), m in zip(fast, slow, strict=True):
        assert ContentHeader(0, 1, props).marshal() == ContentHeader(0, 1, m.properties).marshal()


def test_plain_fast_path_keeps_every_conversion() -> None:
    value = {
        "s": "t",
        "i": 1,
        "f": 1.5,
        "b": True,
        "n": None,
        "bytes": b"ab",
        "dec": decimal.Decimal("1.25"),
        "when": dt.datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=dt.UTC),
        "nested": {"list": [b"x", {"k": 2}], 3: "int key"},
    }
    assert _plain(value) == {
        "s": "t",
        "i": 1,
        "f": 1.5,
        "b": True,
        "n": None,
        "bytes": "ab",
        "dec": 1.25,
        "when": "2026-01-02T03:04:05.000006Z",
        "nested": {"list": ["x", {"k": 2}], "3": "int key"},
    }
