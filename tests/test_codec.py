"""Message codec, chunk splitting/reassembly and return codes, without a broker."""

from __future__ import annotations

import asyncio
import json
import re

import pytest
from pamqp import decode as pamqp_decode
from pamqp import encode as pamqp_encode

from insectarium.dripline import return_codes
from insectarium.dripline.chunking import Delivery, Reassembler
from insectarium.dripline.constants import NIL_UUID, MsgOp, MsgType
from insectarium.dripline.message import (
    Message,
    RawJSON,
    UInt32,
    decode,
    dump_payload,
    encode,
    headers_of,
    parse_message_id,
    split_body,
)

from .rawamqp import parse_table


def test_uint32_header_encodes_as_amqp_unsigned_32() -> None:
    raw = pamqp_encode.field_table({"message_type": UInt32(3), "plain": 3})
    fields, _ = parse_table(raw)
    assert fields["message_type"].type == "i"
    assert fields["message_type"].value == 3
    assert fields["plain"].type != "i"  # plain ints keep pamqp's choice; only UInt32 is forced


def test_uint32_rejects_out_of_range() -> None:
    with pytest.raises(ValueError):
        UInt32(-1)
    with pytest.raises(ValueError):
        UInt32(2**32)


def test_request_headers_have_dripline_types() -> None:
    msg = Message.request("peaches", MsgOp.GET, {}, specifier="log_interval")
    fields, _ = parse_table(pamqp_encode.field_table(headers_of(msg)))
    assert fields["message_type"].type == "i" and fields["message_type"].value == 3
    assert fields["message_operation"].type == "i" and fields["message_operation"].value == 1
    assert fields["lockout_key"].type == "S" and fields["lockout_key"].value == NIL_UUID
    assert fields["specifier"].value == "log_interval"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", fields["timestamp"].value)
    info = fields["sender_info"]
    assert info.type == "F"
    assert set(info.value) == {"exe", "hostname", "username", "service_name", "versions"}
    assert info.value["versions"].type == "F"
    assert info.value["versions"].value["dripline"].value["version"].value == "3.0.0"
    assert "return_code" not in fields


def test_reply_copies_correlation_and_routes_to_reply_to() -> None:
    req = Message.request("peaches", MsgOp.GET, {}, reply_to="amq_xyz")
    rep = req.make_reply(310, "no such attribute", None, sender="svc")
    assert rep.routing_key == "amq_xyz"
    assert rep.correlation_id == req.correlation_id
    assert rep.specifier == ""
    fields, _ = parse_table(pamqp_encode.field_table(headers_of(rep)))
    assert fields["message_type"].value == 2
    assert fields["return_code"].type == "i" and fields["return_code"].value == 310
    assert fields["return_message"].value == "no such attribute"


def test_encode_sets_properties_and_null_body() -> None:
    (amqp,) = encode(Message.alert("sensor_value.x", None))
    assert amqp.body == b"null"
    assert amqp.content_encoding == "application/json"
    assert re.fullmatch(r"[0-9a-f-]{36}/0/1", amqp.message_id)
    # aio-pika leaves an empty reply-to unset; dripline-cpp reads an unset reply-to as ""
    assert not amqp.reply_to


def test_payload_is_compact_json_and_tolerates_python_types() -> None:
    import datetime as dt
    import decimal

    body = dump_payload(
        {
            "a": [1, 2],
            "t": dt.datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=dt.UTC),
            "d": decimal.Decimal("1.5"),
            "u": "ü",
        }
    )
    assert body == '{"a":[1,2],"t":"2024-01-02T03:04:05.000006Z","d":1.5,"u":"ü"}'.encode()


def test_raw_json_parts_are_spliced_in_as_they_are() -> None:
    """Pre-rendered JSON (the snapshot service's) goes into the payload unparsed; strings of
    the payload that look like the splicing markers, NUL characters and lone surrogates stay
    what they are."""
    raw = RawJSON('{"p":[{"v":1.0},{"v":NaN}],"s":"\\u00e9"}')
    payload = {
        "contents": raw,
        "twice": [RawJSON("null"), RawJSON('"ü"')],
        "fake": "\x00" + "ab" * 16 + ":0\x00",  # a marker of another token
        "name": "ü",
    }
    body = dump_payload(payload)
    assert body.startswith(b'{"contents":{"p":[{"v":1.0},{"v":NaN}],"s":"\\u00e9"},')
    decoded = json.loads(body)
    assert decoded["twice"] == [None, "ü"] and decoded["fake"] == payload["fake"]
    assert decoded["contents"]["s"] == "é" and decoded["name"] == "ü"
    lone = json.loads(dump_payload({"bad": "\ud800", "raw": RawJSON('"ü"')}))
    assert lone == {"bad": "\ud800", "raw": "ü"}
    assert repr(RawJSON("null")) == "RawJSON(4 characters)"


def test_split_body_in_max_payload_pieces() -> None:
    body = b"x" * 25_015
    chunks = split_body(body, 10_000)
    assert [len(c) for c in chunks] == [10_000, 10_000, 5_015]
    assert b"".join(chunks) == body


def test_encode_splits_with_shared_uuid_and_identical_headers() -> None:
    msg = Message.request("peaches", MsgOp.SET, {"values": ["y" * 2500]})
    parts = encode(msg, max_payload_size=1000)
    assert len(parts) == 3
    ids = [parse_message_id(p.message_id) for p in parts]
    assert {i.uuid for i in ids} == {msg.message_uuid}
    assert [(i.index, i.total) for i in ids] == [(0, 3), (1, 3), (2, 3)]
    assert all(p.headers == parts[0].headers for p in parts)
    assert json.loads(b"".join(part.body for part in parts)) == msg.payload


@pytest.mark.parametrize("bad", ["u/1", "u/x/2", "u/2/2", "u/0/0", "u/-1/3"])
def test_malformed_message_ids_are_rejected(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_message_id(bad)


def test_bare_message_id_is_one_chunk() -> None:
    assert parse_message_id("abc").total == 1


def _delivery(amqp_message, routing_key="peaches") -> Delivery:
    return Delivery(
        body=amqp_message.body,
        headers=dict(amqp_message.headers),
        routing_key=routing_key,
        correlation_id=amqp_message.correlation_id,
        reply_to=amqp_message.reply_to,
        content_encoding=amqp_message.content_encoding,
        message_id=amqp_message.message_id,
    )


async def test_reassembler_joins_out_of_order_chunks_and_ignores_duplicates() -> None:
    msg = Message.request("peaches", MsgOp.SET, {"values": ["z" * 3000]})
    parts = encode(msg, max_payload_size=1000)
    got: list[Message] = []

    async def sink(m: Message) -> None:
        got.append(m)

    r = Reassembler(sink, message_wait_ms=1000)
    for p in [parts[2], parts[0], parts[0], parts[1], parts[3]]:
        await r.feed(_delivery(p))
    assert len(got) == 1
    assert got[0].is_valid and got[0].payload == msg.payload
    assert got[0].message_operation == MsgOp.SET
    await r.feed(_delivery(parts[1]))  # late duplicate after completion: dropped
    assert len(got) == 1 and r.pending_count == 0


async def test_reassembler_waits_while_chunks_keep_arriving() -> None:
    """A large message whose chunks keep flowing is not cut off after message_wait_ms."""
    msg = Message.request("peaches", MsgOp.SET, {"values": ["z" * 3000]})
    parts = encode(msg, max_payload_size=500)
    got: list[Message] = []

    async def sink(m: Message) -> None:
        got.append(m)

    r = Reassembler(sink, message_wait_ms=100)
    for p in parts:  # 7 chunks, 60 ms apart: 420 ms in all, each gap well under 100 ms
        await r.feed(_delivery(p))
        await asyncio.sleep(0.06)
    assert len(got) == 1 and got[0].is_valid and got[0].payload == msg.payload


async def test_reassembler_times_out_incomplete_message_as_invalid() -> None:
    msg = Message.request("peaches", MsgOp.SET, {"values": ["z" * 3000]})
    parts = encode(msg, max_payload_size=1000)
    got: list[Message] = []

    async def sink(m: Message) -> None:
        got.append(m)

    r = Reassembler(sink, message_wait_ms=50)
    await r.feed(_delivery(parts[0]))
    await r.feed(_delivery(parts[2]))
    for _ in range(100):
        if got:
            break
        await asyncio.sleep(0.01)
    assert len(got) == 1
    assert not got[0].is_valid
    assert got[0].error == "Entire message was not available"
    assert "#" * 1000 in got[0].payload["invalid"]


def test_decode_invalid_json_keeps_headers_and_explains() -> None:
    (amqp,) = encode(Message.request("peaches", MsgOp.GET, {}))
    m = decode(body=b"{not json", headers=amqp.headers, content_encoding="application/json")
    assert not m.is_valid
    assert m.payload["invalid"] == "{not json"
    assert "not valid JSON" in m.payload["error"]
    assert m.message_operation == MsgOp.GET


def test_decode_wrong_encoding_is_invalid() -> None:
    (amqp,) = encode(Message.alert("x", 1))
    m = decode(body=amqp.body, headers=amqp.headers, content_encoding="application/msgpack")
    assert not m.is_valid and "content-encoding" in m.error


def test_decode_accepts_any_integer_header_kind() -> None:
    # aio-pika/pika peers send small signed ints ('b'); dripline-cpp sends 'i'; accept both
    for headers in (
        {"message_type": 3, "message_operation": 9},
        {"message_type": UInt32(3), "message_operation": UInt32(9)},
    ):
        _, wire = pamqp_decode.field_table(pamqp_encode.field_table(headers))
        m = decode(body=b"{}", headers=wire, content_encoding="application/json")
        assert m.is_valid
        assert m.message_type == MsgType.REQUEST and m.message_operation == MsgOp.CMD


def test_return_codes_table_and_registration() -> None:
    assert return_codes.lookup(307).name == "service_error_access_denied"
    assert return_codes.lookup("service_error_invalid_key").value == 308
    assert return_codes.lookup("no_such_name").value == 300
    assert return_codes.lookup(1102).name == "daq_running"
    code = return_codes.register_return_code(1234, "lab_test_code", "A test code")
    assert return_codes.lookup(1234) == code
    assert return_codes.register_return_code(1234, "lab_test_code", "A test code") == code
    with pytest.raises(ValueError):
        return_codes.register_return_code(1234, "other_name", "clash")
    with pytest.raises(ValueError):
        return_codes.register_return_code(555, "too_low", "reserved range")
    assert {c.value for c in return_codes.all_return_codes()} >= {
        0,
        1,
        2,
        3,
        4,
        5,
        100,
        101,
        102,
        200,
        201,
        202,
        203,
        300,
        301,
        302,
        303,
        304,
        305,
        306,
        307,
        308,
        310,
        400,
        401,
        402,
        403,
        404,
        999,
    }
