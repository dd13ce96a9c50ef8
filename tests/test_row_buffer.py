"""The logger's numeric rows kept as COPY text (services/row_buffer.py): what PostgreSQL stores
from that text is exactly what the tuples psycopg wrote before would have stored."""

from __future__ import annotations

import datetime as dt
import uuid

import psycopg
import pytest

from insectarium.services.row_buffer import NumericRows, copy_time
from insectarium.services.sensor_logger import parse_alert_time

from .test_sensor_logger import register

#: floats whose text form is easy to get wrong: signed zero, the extremes, the classic
#: rounding case, exponents both ways
TRICKY = [
    0.0,
    -0.0,
    0.1 + 0.2,
    1e20,
    -1.5e-7,
    5e-324,
    1.7976931348623157e308,
    -2.2250738585072014e-308,
    123456789.123456789,
]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-01-02T03:04:05.000001Z", "2026-01-02T03:04:05.000001"),
        # not the plain form: formatted from the parsed value
        ("2026-01-02T03:04:05.5Z", "2026-01-02T03:04:05.500000"),
        ("2026-01-02T03:04:05.123Z", "2026-01-02T03:04:05.123000"),
        ("2026-01-02T03:04:05.000000Z", "2026-01-02T03:04:05.000000"),
    ],
)
def test_copy_time_is_the_parsed_timestamp(text: str, expected: str) -> None:
    timestamp = parse_alert_time(text)
    assert copy_time(text, timestamp) == expected
    assert dt.datetime.fromisoformat(copy_time(text, timestamp)) == timestamp


def test_rows_read_back_as_the_tuples_they_were_made_of() -> None:
    stamp = dt.datetime(2026, 1, 2, 3, 4, 5, 6)
    made = [(7, stamp, v, -v) for v in TRICKY] + [(8, stamp, None, 2.5), (9, stamp, 3.5, None)]
    buffer = NumericRows()
    for endpoint_id, timestamp, raw, cal in made:
        buffer.add(endpoint_id, timestamp.isoformat(), raw, cal)
    assert len(buffer) == len(made)
    back = list(buffer)
    assert back == made
    # the sign of zero survives too (-0.0 == 0.0, so compare the text)
    assert [repr(r[2]) for r in back] == [repr(r[2]) for r in made]


def test_postgresql_stores_exactly_what_the_text_says(lab_database: str) -> None:
    name = f"copytext_{uuid.uuid4().hex[:6]}"
    register(lab_database, **{name: "numeric"})
    base = dt.datetime(2026, 1, 2, 3, 4, 5)
    with psycopg.connect(lab_database, autocommit=True) as conn:
        (endpoint_id,) = conn.execute(
            "SELECT endpoint_id FROM endpoint_id_map WHERE endpoint_name = %s", (name,)
        ).fetchone()  # type: ignore[misc]
        made = [
            (endpoint_id, base + dt.timedelta(microseconds=i), v, None if i % 2 else v * 2)
            for i, v in enumerate(TRICKY)
        ]
        buffer = NumericRows()
        for row in made:
            buffer.add(row[0], row[1].isoformat(), row[2], row[3])
        with (
            conn.cursor() as cur,
            cur.copy(
                "COPY endpoint_numeric_data (endpoint_id, timestamp, value_raw, value_cal) "
                "FROM STDIN"
            ) as copy,
        ):
            copy.write(buffer.data)
        stored = conn.execute(
            "SELECT endpoint_id, timestamp, value_raw, value_cal FROM endpoint_numeric_data "
            "WHERE endpoint_id = %s ORDER BY timestamp",
            (endpoint_id,),
        ).fetchall()
    assert stored == made
    assert [repr(r[2]) for r in stored] == [repr(r[2]) for r in made]
