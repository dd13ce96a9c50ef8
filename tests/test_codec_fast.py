"""The codec's fast paths write and read exactly what the plain paths do (issue 14 item 3)."""

from __future__ import annotations

import copy
import datetime as dt
import decimal

import pytest
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


def _decode_header(headers_or_props: dict | Basic.Properties) -> dict:
    """Marshal a content header frame as we publish it and decode it as aiormq does."""
    from pamqp import frame

    props = headers_or_props
    if isinstance(props, dict):
        props = Basic.Properties(headers=props)
    return frame.unmarshal(frame.marshal(ContentHeader(0, 2, props), 1))[2].properties.headers


def test_remembered_nested_tables_decode_as_pamqp_does_and_stay_untouched() -> None:
    from pamqp import decode as pamqp_decode

    props = amqp_chunks(Message.request("peaches", MsgOp.GET, {"x": [1]}, sender="memo"))[0][1]
    memo = pamqp_decode.TABLE_MAPPING[b"F"]
    assert getattr(memo, "_dripline_memo", False)
    first, second = _decode_header(props), _decode_header(props)
    # what pamqp itself makes of the same bytes (its own table decoder, nothing remembered)
    pamqp_decode.TABLE_MAPPING[b"F"] = pamqp_decode.field_table
    try:
        plain = _decode_header(props)
    finally:
        pamqp_decode.TABLE_MAPPING[b"F"] = memo
    assert first == second == plain
    assert first["sender_info"]["service_name"] == "memo"
    # every caller gets its own copy: changing one changes neither the next nor the memo
    first["sender_info"]["versions"]["dripline"]["version"] = "changed"
    first["sender_info"]["hostname"] = "changed"
    third = _decode_header(props)
    assert third == plain and third["sender_info"] is not second["sender_info"]


def test_the_nested_table_memo_is_bounded() -> None:
    from insectarium.dripline import message

    for i in range(3 * message.TABLE_MEMO_ENTRIES):
        props = amqp_chunks(Message.request("peaches", MsgOp.GET, {}, sender=f"memo{i}"))[0][1]
        assert _decode_header(props)["sender_info"]["service_name"] == f"memo{i}"
        assert len(message._TABLE_MEMO) <= message.TABLE_MEMO_ENTRIES
    # a table above the size limit is decoded, never remembered
    message._TABLE_MEMO.clear()
    big = {"sender_info": {"exe": "x" * (message.TABLE_MEMO_MAX_BYTES + 10)}}
    assert _decode_header(big) == big
    assert not message._TABLE_MEMO
    # a table that claims more bytes than there are is pamqp's error, as before
    from pamqp import decode as pamqp_decode

    bad = b"\x00\x00\x10\x00abc"
    with pytest.raises(ValueError, match="exceeds available data"):
        pamqp_decode.TABLE_MAPPING[b"F"](bad)
    with pytest.raises(ValueError, match="exceeds available data"):
        pamqp_decode.field_table(bad)
