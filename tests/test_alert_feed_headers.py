"""The alert feed's lean content-header decoding (``LeanProperties``, ``table_fields``).

pika's own ``BasicProperties`` is the reference: every property and the whole header table
must read the same, for every property flag and every field type of pika's table dialect; a
malformed table must still be reported (by pika's decoder) and never read as a valid alert.
"""

from __future__ import annotations

import datetime as dt
import decimal
import struct
from typing import Any

import pika.data
import pika.exceptions
import pika.frame
import pika.spec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pamqp import encode as pamqp_encode

from insectarium.dripline.alert_feed import LeanProperties, install_lean_properties, table_fields

EVERY_TYPE: dict[str, Any] = {
    "message_type": 4,
    "sender_info": {"exe": "x", "versions": {"dripline": {"version": "3.0.0"}}},
    "bool": True,
    "int": -5,
    "long": 2**40,
    "double": 1.25,
    "decimal": decimal.Decimal("3.14"),
    "bytes": bytearray(b"\x00\xff"),
    "array": [1, "two", {"three": 3}, None],
    "stamp": dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
    "none": None,
    "text": "temp\u00e9rature",
    "timestamp": "2026-01-02T03:04:05.123456Z",
}


def field(key: bytes, kind: bytes, value: bytes) -> bytes:
    return bytes([len(key)]) + key + kind + value


def table(*fields: bytes) -> bytes:
    body = b"".join(fields)
    return struct.pack(">I", len(body)) + body


#: the types pamqp does not choose when encoding, added by hand (pika's dialect)
EXTRA_TYPES = b"".join(
    [
        field(b"i8", b"b", struct.pack(">b", -3)),
        field(b"u8", b"B", struct.pack(">B", 250)),
        field(b"i16", b"U", struct.pack(">h", -300)),
        field(b"u16", b"u", struct.pack(">H", 60000)),
        field(b"s16", b"s", struct.pack(">h", 12)),
        field(b"u32", b"i", struct.pack(">I", 4_000_000_000)),
        field(b"i64", b"L", struct.pack(">q", -(2**40))),
        field(b"f32", b"f", struct.pack(">f", 0.5)),
        field(b"latin", b"S", struct.pack(">I", 2) + b"\xe9\xe8"),
    ]
)


def every_type_table() -> bytes:
    encoded = pamqp_encode.field_table(EVERY_TYPE)
    body = encoded[4:] + EXTRA_TYPES
    return struct.pack(">I", len(body)) + body


def with_table(props: pika.spec.BasicProperties, raw_table: bytes) -> bytes:
    """``props`` encoded by pika, with ``raw_table`` as its header table."""
    assert props.headers is None
    data = b"".join(props.encode())
    flags = struct.unpack_from(">H", data)[0] | pika.spec.BasicProperties.FLAG_HEADERS
    offset = 2
    for present in (props.content_type, props.content_encoding):
        if present is not None:
            offset += 1 + data[offset]
    return struct.pack(">H", flags) + data[2:offset] + raw_table + data[offset:]


def encoded(props: pika.spec.BasicProperties, raw_table: bytes | None = None) -> bytes:
    if raw_table is None:
        return b"".join(props.encode())
    return with_table(props, raw_table)


def both(data: bytes) -> tuple[Any, LeanProperties]:
    return pika.spec.BasicProperties().decode(data), LeanProperties().decode(data)


def same(reference: Any, lean: LeanProperties) -> None:
    for name in vars(pika.spec.BasicProperties()):
        assert getattr(lean, name) == getattr(reference, name), name


FULL = pika.spec.BasicProperties(
    content_type="application/json",
    content_encoding="application/json",
    delivery_mode=2,
    priority=7,
    correlation_id="c" * 255,
    reply_to="amq.rabbitmq.reply-to",
    expiration="60000",
    message_id="0b1c/0/1",
    timestamp=1_700_000_000,
    type="alert",
    user_id="guest",
    app_id="dl-serve",
    cluster_id="",
)


@pytest.mark.parametrize(
    ("props", "raw_table"),
    [
        (pika.spec.BasicProperties(), None),
        (pika.spec.BasicProperties(), every_type_table()),
        (pika.spec.BasicProperties(), table()),
        (FULL, every_type_table()),
        (FULL, None),
        (pika.spec.BasicProperties(message_id="only this", app_id="and this"), None),
    ],
)
def test_every_property_reads_as_pikas_own(
    props: pika.spec.BasicProperties, raw_table: bytes | None
) -> None:
    reference, lean = both(encoded(props, raw_table))
    same(reference, lean)
    assert lean.headers == reference.headers  # decoded on first read, kept after
    assert lean.raw_headers is None
    if raw_table is not None and len(raw_table) > 4:
        assert set(reference.headers) == set(EVERY_TYPE) | {
            "i8", "u8", "i16", "u16", "s16", "u32", "i64", "f32", "latin",
        }  # fmt: skip


def test_short_strings_that_are_not_utf8_stay_bytes_as_in_pika() -> None:
    data = bytearray(encoded(pika.spec.BasicProperties(message_id="abcd", app_id="xy")))
    at = data.index(b"abcd")
    data[at : at + 2] = b"\xff\xfe"
    reference, lean = both(bytes(data))
    assert lean.message_id == reference.message_id == b"\xff\xfecd"
    same(reference, lean)


def test_the_wanted_fields_are_read_without_decoding_the_rest() -> None:
    data = encoded(FULL, every_type_table())
    reference, lean = both(data)
    keys = tuple(k.encode() for k in reference.headers)
    assert lean.header_fields(*keys) == {k.encode(): v for k, v in reference.headers.items()}
    assert lean.header_fields(b"timestamp", b"message_type") == {
        b"timestamp": "2026-01-02T03:04:05.123456Z",
        b"message_type": 4,
    }
    assert lean.header_fields(b"latin") == {b"latin": b"\xe9\xe8"}  # not UTF-8: bytes
    assert lean.raw_headers is not None  # still encoded: nothing else was decoded
    assert lean.header_fields(b"absent") == {}
    # a key inside a nested table is not a top-level header
    assert lean.header_fields(b"exe", b"version") == {}
    # once decoded, the same answers come from the decoded table
    assert lean.headers == reference.headers
    assert lean.header_fields(b"message_type", b"absent") == {b"message_type": 4}


def test_a_header_frame_from_the_wire_is_decoded_lean_once_installed() -> None:
    props = pika.spec.BasicProperties(headers={"message_type": 4}, content_encoding="x")
    frame = pika.frame.Header(1, 12, props).marshal()
    original = pika.spec.props[pika.spec.BasicProperties.INDEX]
    try:
        install_lean_properties()
        _, header = pika.frame.decode_frame(frame)
    finally:
        pika.spec.props[pika.spec.BasicProperties.INDEX] = original
    assert type(header.properties) is LeanProperties
    assert header.properties.headers == {"message_type": 4}
    assert header.properties.content_encoding == "x"
    assert header.body_size == 12


@pytest.mark.parametrize(
    "raw",
    [
        table(field(b"message_type", b"I", struct.pack(">i", 4)))[:-1],  # cut short
        table(field(b"odd", b"?", b""), field(b"message_type", b"I", struct.pack(">i", 4))),
        # a length that runs past the end of the table
        table(field(b"sender_info", b"F", struct.pack(">I", 999)), field(b"timestamp", b"V", b"")),
        struct.pack(">I", 50) + field(b"timestamp", b"V", b""),
        # a wanted field that is a broken nested table (pika's decoder: struct.error)
        table(field(b"message_type", b"F", struct.pack(">I", 3) + b"\x01k")),
        # a broken array and a timestamp out of range among the fields that are skipped
        table(field(b"list", b"A", struct.pack(">I", 1) + b"?"), field(b"timestamp", b"V", b"")),
        table(field(b"when", b"T", b"\xff" * 8), field(b"timestamp", b"V", b"")),
    ],
)
def test_a_malformed_table_is_not_read_as_fields(raw: bytes) -> None:
    assert table_fields(raw, (b"message_type", b"timestamp")) is None
    with pytest.raises(
        (pika.exceptions.InvalidFieldTypeException, struct.error, IndexError, OverflowError)
    ):
        _, end = pika.data.decode_table(raw, 0)
        if end != len(raw):  # pika stops at the declared end; the rest is garbage
            raise IndexError("trailing bytes")


def test_a_header_table_longer_than_its_frame_is_refused() -> None:
    data = bytearray(encoded(pika.spec.BasicProperties(), table(field(b"a", b"V", b""))))
    data[2:6] = struct.pack(">I", 10_000)
    with pytest.raises(ValueError, match="longer than"):
        LeanProperties().decode(bytes(data))


def _pika_fields(raw: bytes, wanted: tuple[bytes, ...]) -> dict[bytes, Any] | None:
    """What the full decode gives for ``wanted``; ``None`` where pika refuses the table.  (What
    follows the table's declared length is the next property in a frame: not pika's concern.)"""
    try:
        headers, _ = pika.data.decode_table(raw, 0)
    except Exception:
        return None
    return {k: headers[k.decode()] for k in wanted if k.decode() in headers}


@given(
    positions=st.lists(st.integers(min_value=0, max_value=10_000), min_size=1, max_size=4),
    values=st.lists(st.integers(min_value=0, max_value=255), min_size=4, max_size=4),
    cut=st.one_of(st.none(), st.integers(min_value=0, max_value=10_000)),
)
@settings(max_examples=3000, deadline=None)
def test_a_corrupted_table_reads_as_pika_reads_it_or_not_at_all(
    positions: list[int], values: list[int], cut: int | None
) -> None:
    """1-4 bytes of a real alert's header table changed, or the table cut short: the lean
    reading is pika's reading of the wanted fields, or ``None`` (then the full decode gives
    pika's error); never fields of a table pika refuses, e.g. one whose nested
    ``sender_info`` or array is broken."""
    raw = bytearray(every_type_table())
    for position, value in zip(positions, values, strict=False):
        raw[position % len(raw)] = value
    corrupted = bytes(raw if cut is None else raw[: cut % len(raw)])
    wanted = (b"message_type", b"timestamp")
    lean = table_fields(corrupted, wanted)
    if lean is not None:
        assert lean == _pika_fields(corrupted, wanted)
