"""Bounds on what a peer controls: message ids, chunk sets, header text, bodies, calibration input.

No broker here: the codec, the reassembler and the calibration evaluator are driven directly.
The same cases reach a real service in test_hostile.py.
"""

from __future__ import annotations

import asyncio
import json
import time
import tracemalloc

import pytest

from insectarium.dripline import limits
from insectarium.dripline.calibration import CalibrationError, apply_calibration
from insectarium.dripline.chunking import Delivery, Reassembler
from insectarium.dripline.constants import MsgOp
from insectarium.dripline.entity import Entity, to_seconds
from insectarium.dripline.message import (
    Message,
    UInt32,
    decode,
    dump_payload,
    encode,
    headers_of,
)
from insectarium.dripline.throttle import LogThrottle

HEADERS = {"message_type": UInt32(3), "message_operation": UInt32(1)}


def _delivery(body: bytes, message_id: str, headers: dict | None = None) -> Delivery:
    return Delivery(
        body=body,
        headers=dict(HEADERS if headers is None else headers),
        routing_key="peaches",
        correlation_id="c",
        reply_to="amq_x",
        content_encoding="application/json",
        message_id=message_id,
    )


class Sink:
    def __init__(self) -> None:
        self.got: list[Message] = []

    async def __call__(self, m: Message) -> None:
        self.got.append(m)

    async def wait(self, n: int) -> list[Message]:
        for _ in range(200):
            if len(self.got) >= n:
                break
            await asyncio.sleep(0.01)
        return self.got


# --------------------------------------------------------------------------- message ids
async def test_implausible_chunk_count_is_refused_before_anything_is_kept() -> None:
    sink = Sink()
    r = Reassembler(sink, max_message_size=1_000_000, max_payload_size=10_000)
    assert r.max_chunks == 100
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    # the issue's case: 3 kB body announcing 100 000 chunks (was ~1 GB and a 300 MB reply)
    await r.feed(_delivery(b"x" * 3000, "u/0/100000"))
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert r.pending_count == 0 and r.refused == 1
    (m,) = sink.got
    assert not m.is_valid and "announces 100000 chunks" in m.error
    assert len(m.payload["invalid"]) == 0  # nothing of the body kept or echoed
    assert grown < 100_000  # bytes; the old filler alone was 300 MB


async def test_single_message_over_the_size_limit_is_refused() -> None:
    sink = Sink()
    r = Reassembler(sink, max_message_size=1000)
    await r.feed(_delivery(b'"' + b"x" * 2000 + b'"', "u/0/1"))
    (m,) = sink.got
    assert not m.is_valid and "exceeds the limit of 1000 bytes" in m.error


async def test_a_chunk_set_growing_past_the_limit_is_dropped_at_once() -> None:
    sink = Sink()
    r = Reassembler(sink, max_message_size=2500, max_payload_size=1000)
    await r.feed(_delivery(b"a" * 1000, "u/0/2"))
    await r.feed(_delivery(b"b" * 5000, "u/1/2"))  # a peer with a larger chunk size
    (m,) = await sink.wait(1)
    assert not m.is_valid and "exceeds the limit of 2500 bytes" in m.error
    assert r.pending_count == 0 and r.pending_bytes == 0


async def test_incomplete_chunk_sets_are_capped_in_number_oldest_dropped_with_302() -> None:
    sink = Sink()
    r = Reassembler(sink, message_wait_ms=60_000, max_pending_messages=10)
    for i in range(25):
        await r.feed(_delivery(b"[1,", f"set{i}/0/2"))
    assert r.pending_count == 10 and r.dropped == 15
    dropped = await sink.wait(15)
    assert len(dropped) == 15 and all(not m.is_valid for m in dropped)
    assert {m.message_uuid for m in dropped} == {f"set{i}" for i in range(15)}  # the oldest
    assert "incomplete messages" in dropped[0].error
    r.close()


async def test_incomplete_chunk_sets_are_capped_in_bytes() -> None:
    sink = Sink()
    r = Reassembler(
        sink,
        message_wait_ms=60_000,
        max_message_size=10_000,
        max_payload_size=3000,
        max_pending_bytes=10_000,
    )
    for i in range(10):
        await r.feed(_delivery(b"x" * 3000, f"big{i}/0/3"))
    assert r.pending_bytes <= 10_000 and r.pending_count == 3
    assert r.dropped == 7
    # a set that keeps flowing completes even while others are evicted around it
    await r.feed(_delivery(b"y" * 3000, "big9/1/3"))
    await r.feed(_delivery(b"z" * 3000, "big9/2/3"))
    assert r.pending_count <= 3
    r.close()


async def test_expired_set_with_many_missing_chunks_echoes_a_bounded_text() -> None:
    sink = Sink()
    r = Reassembler(sink, message_wait_ms=20, max_message_size=10**9, max_payload_size=10_000)
    await r.feed(_delivery(b"[" + b"1," * 49, "e/0/50000"))  # 50 000 chunks announced
    (m,) = await sink.wait(1)
    assert m.error == "Entire message was not available"
    assert len(m.payload["invalid"]) <= limits.MAX_ECHO_BYTES + 50
    assert "#" in m.payload["invalid"]


def test_log_throttle_says_it_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    throttle = LogThrottle(logging.getLogger("t"), interval=3600)
    with caplog.at_level(logging.WARNING, logger="t"):
        shown = [throttle("dropped %s", i) for i in range(1000)]
    assert shown.count(True) == 1 and throttle.total == 1000 and throttle.suppressed == 999
    assert len(caplog.records) == 1


# --------------------------------------------------------------------------- header text, bodies
def test_reply_return_message_is_capped_and_marked() -> None:
    request = Message.request("peaches", MsgOp.SET, reply_to="amq_x")
    reply = request.make_reply(304, "calibration failed: " + "9" * 200_000)
    assert len(reply.return_message) <= limits.MAX_HEADER_TEXT
    assert reply.return_message.endswith("characters cut]")
    assert len(headers_of(reply)["return_message"]) == len(reply.return_message)


def test_an_oversized_specifier_is_refused_before_the_broker_sees_it() -> None:
    msg = Message.request("peaches", MsgOp.GET, specifier="s" * (limits.MAX_HEADER_FIELD + 1))
    with pytest.raises(ValueError, match="specifier of"):
        encode(msg)


def test_non_utf8_body_and_header_are_invalid_not_repaired() -> None:
    m = decode(body=b'"caf\xe9"', headers=HEADERS, content_encoding="application/json")
    assert not m.is_valid and "not valid UTF-8" in m.error
    headers = {**HEADERS, "specifier": b"\xff\xfe"}
    m = decode(body=b"{}", headers=headers, content_encoding="application/json")
    assert not m.is_valid and "header specifier is not valid UTF-8" in m.error


def test_deeply_nested_json_is_invalid_not_a_crash() -> None:
    body = b"[" * 200_000 + b"]" * 200_000
    m = decode(body=body, headers=HEADERS, content_encoding="application/json")
    assert not m.is_valid and "not valid JSON" in m.error
    assert len(m.payload["invalid"]) <= limits.MAX_ECHO_BYTES + 50


def test_integer_headers_must_be_integers() -> None:
    for bad in ("3", b"3", "9" * 5000, True, 3.0):
        m = decode(body=b"{}", headers={"message_type": bad}, content_encoding="application/json")
        assert not m.is_valid, bad


def test_lone_surrogate_payload_is_sent_as_its_escape() -> None:
    value = json.loads('"\\ud800x"')
    body = dump_payload({"values": [value]})
    assert body == b'{"values":["\\ud800x"]}'
    assert json.loads(body) == {"values": [value]}


# --------------------------------------------------------------------------- calibration
HOSTILE = [
    "((9**999)**999)**4",
    "9**999*9**999*9**999",
    "int('9'*1500)*int('9'*1500)",
    "'%01000000000d' % 1",
    "[1]*100000*2",
    "'a'*99999+'a'*99999",
    "1+" * 900 + "1",
    "(" * 500 + "1" + ")" * 500,
    "2.0**(2**4000)",
    "x" * (limits.MAX_CALIBRATION_EXPRESSION + 1),
]


@pytest.mark.parametrize("value", HOSTILE, ids=lambda v: v[:24])
def test_hostile_calibration_input_is_refused_cheaply(value: str) -> None:
    started = time.process_time()
    with pytest.raises((CalibrationError, OverflowError)):
        apply_calibration("2*{}", value)
    # a correctness guard, not a benchmark: the unbounded version took seconds to hours
    assert time.process_time() - started < 1.0


def test_numbers_are_calibrated_without_reparsing_and_as_text_would() -> None:
    for calibration, raw in [("2*{}", 0.75), ("{} + 273.15", 4), ("times3({})", -2.5)]:
        text = calibration.format(raw)
        assert apply_calibration(calibration, raw) == apply_calibration(
            text.replace(str(raw), "{}"), str(raw)
        )


def test_dict_calibration_of_an_unhashable_value_is_a_calibration_error() -> None:
    with pytest.raises(CalibrationError):
        apply_calibration({"1": "on"}, {"a": 1})


@pytest.mark.parametrize(
    "value",
    [float("nan"), float("inf"), -1, 10**12, {"days": 10**9}, {"seconds": float("nan")}],
    ids=str,
)
def test_intervals_must_be_finite_and_bounded(value) -> None:
    with pytest.raises(ValueError):
        to_seconds(value, "log_interval")
    entity = Entity("e", log_interval=1)
    with pytest.raises(ValueError):
        entity.log_interval = value
    assert entity.log_interval == 1


# --------------------------------------------------------------------------- set -s <attribute>
@pytest.mark.parametrize(
    ("attribute", "value"),
    [
        ("calibration", 0.5),  # found by the fuzzer: every later get failed with 999
        ("calibration", "x" * (limits.MAX_CALIBRATION_EXPRESSION + 1)),
        ("max_absolute_change", "abc"),
        ("max_fractional_change", None),
        ("check_field", {"a": 1}),
        ("log_on_set", 1),
        ("log_interval", 0.001),  # ten thousand alerts a second
        ("log_interval", float("nan")),
        ("max_interval", float("inf")),
    ],
)
async def test_set_attribute_keeps_the_configuration_usable(attribute: str, value) -> None:
    from insectarium.services.kv_store import KeyValueStore

    kv = KeyValueStore("kv", initial_value=0.75, calibration="2*{}", log_on_set=True)
    before = getattr(kv, attribute)
    reply = await kv.handle_request(
        Message.request("kv", MsgOp.SET, {"values": [value]}, specifier=attribute)
    )
    assert reply.code == 304, reply
    assert getattr(kv, attribute) == before or before != before  # NaN stays NaN
    ok = await kv.handle_request(Message.request("kv", MsgOp.GET, {}))
    assert ok.code == 0 and ok.payload == {"value_raw": 0.75, "value_cal": 1.5}
    allowed = await kv.handle_request(
        Message.request("kv", MsgOp.SET, {"values": ["3*{}"]}, specifier="calibration")
    )
    assert allowed.code == 0 and kv.calibrate(2) == {"value_raw": 2, "value_cal": 6}
