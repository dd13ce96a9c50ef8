"""The lab schema on a real (private) PostgreSQL: views, triggers, run table, indexes."""

from __future__ import annotations

import datetime as dt
import json

import psycopg
import pytest
from psycopg import errors

T0 = dt.datetime(2026, 11, 25, 12, 0, 0)


@pytest.fixture
def conn(lab_database: str):
    with psycopg.connect(lab_database, autocommit=True) as c:
        yield c


@pytest.fixture
def shared_conn(lab_database_module: str):
    """A connection to the module's shared lab database: read-only tests only."""
    with psycopg.connect(lab_database_module, autocommit=True) as c:
        yield c


def test_seed_registers_the_lab_endpoints(shared_conn: psycopg.Connection) -> None:
    conn = shared_conn
    rows = dict(conn.execute("SELECT endpoint_name, type::text FROM endpoint_id_map").fetchall())
    assert rows == {
        "peaches": "numeric",
        "chips": "numeric",
        "waffles": "numeric",
        "cheese": "string",
        "recipe": "json",
    }
    assert "donuts" not in rows


def test_enum_and_column_types(shared_conn: psycopg.Connection) -> None:
    conn = shared_conn
    labels = conn.execute("SELECT enum_range(NULL::endpoint_data_type)::text[]").fetchone()[0]
    assert labels == ["numeric", "string", "json"]
    cols = dict(
        conn.execute(
            "SELECT table_name || '.' || column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = 'public' AND column_name IN ('timestamp', 'value_raw', 'meas_id')"
        ).fetchall()
    )
    assert cols["endpoint_numeric_data.value_raw"] == "double precision"
    assert cols["endpoint_string_data.value_raw"] == "text"
    assert cols["endpoint_json_data.value_raw"] == "jsonb"
    assert cols["endpoint_numeric_data.timestamp"] == "timestamp without time zone"
    assert cols["endpoint_numeric_data.meas_id"] == "bigint"
    assert cols["measurement_metadata.meas_id"] == "bigint"
    assert cols["numeric_data.timestamp"] == "timestamp without time zone"


def test_insert_through_the_views(conn: psycopg.Connection) -> None:
    conn.execute(
        "INSERT INTO numeric_data (endpoint_name, timestamp, value_raw, value_cal) "
        "VALUES ('peaches', %s, 0.75, 1.5)",
        (T0,),
    )
    conn.execute(
        "INSERT INTO string_data (endpoint_name, timestamp, value_raw) "
        "VALUES ('cheese', %s, 'brie')",
        (T0,),
    )
    conn.execute(
        "INSERT INTO json_data (endpoint_name, timestamp, value_raw) VALUES ('recipe', %s, %s)",
        (T0, json.dumps({"flour": [1, 2], "name": "crêpe"})),
    )
    assert conn.execute(
        "SELECT endpoint_name, timestamp, value_raw, value_cal, memo FROM numeric_data"
    ).fetchall() == [("peaches", T0, 0.75, 1.5, None)]
    assert conn.execute("SELECT value_raw FROM string_data").fetchone() == ("brie",)
    assert conn.execute("SELECT value_raw FROM json_data").fetchone() == (
        {"flour": [1, 2], "name": "crêpe"},
    )
    # Stored in the underlying tables with an id from measurement_ids.
    row = conn.execute(
        "SELECT d.value_raw, d.meas_id FROM endpoint_numeric_data d "
        "JOIN endpoint_id_map m USING (endpoint_id) WHERE m.endpoint_name = 'peaches'"
    ).fetchone()
    assert row[0] == 0.75 and row[1] > 0
    ids = [
        r[0]
        for r in conn.execute(
            "SELECT meas_id FROM endpoint_numeric_data UNION ALL SELECT meas_id FROM "
            "endpoint_string_data UNION ALL SELECT meas_id FROM endpoint_json_data"
        )
    ]
    assert len(set(ids)) == 3


def test_unknown_endpoint_is_rejected_with_a_clear_message(conn: psycopg.Connection) -> None:
    with pytest.raises(errors.ForeignKeyViolation) as info:
        conn.execute(
            "INSERT INTO numeric_data (endpoint_name, timestamp, value_raw) "
            "VALUES ('donuts', %s, 1)",
            (T0,),
        )
    assert "unknown endpoint 'donuts'" in info.value.diag.message_primary
    assert "endpoint_id_map" in info.value.diag.message_primary
    assert "INSERT INTO endpoint_id_map" in (info.value.diag.message_hint or "")
    assert conn.execute("SELECT count(*) FROM endpoint_numeric_data").fetchone() == (0,)


@pytest.mark.parametrize(
    ("view", "name", "value", "actual"),
    [
        ("numeric_data", "cheese", "1.5", "string"),
        ("string_data", "peaches", "'x'", "numeric"),
        ("json_data", "chips", "'{}'", "numeric"),
        ("numeric_data", "recipe", "2", "json"),
    ],
)
def test_wrong_type_is_rejected(
    conn: psycopg.Connection, view: str, name: str, value: str, actual: str
) -> None:
    with pytest.raises(errors.DatatypeMismatch) as info:
        conn.execute(
            f"INSERT INTO {view} (endpoint_name, timestamp, value_raw) "
            f"VALUES ('{name}', %s, {value})",
            (T0,),
        )
    message = info.value.diag.message_primary
    assert f"endpoint '{name}' has type {actual}" in message
    assert f"{actual}_data" in (info.value.diag.message_hint or "")


def test_value_raw_or_memo_is_required(conn: psycopg.Connection) -> None:
    with pytest.raises(errors.NotNullViolation, match="value_raw or memo is required"):
        conn.execute(
            "INSERT INTO numeric_data (endpoint_name, timestamp) VALUES ('peaches', %s)", (T0,)
        )
    with pytest.raises(errors.NotNullViolation, match="value_raw or memo is required"):
        conn.execute(
            "INSERT INTO numeric_data (endpoint_name, timestamp, value_cal) "
            "VALUES ('peaches', %s, 3)",
            (T0,),
        )


def test_memo_goes_to_measurement_metadata(conn: psycopg.Connection) -> None:
    conn.execute(
        "INSERT INTO numeric_data (endpoint_name, timestamp, value_raw, memo) "
        "VALUES ('chips', %s, 2.0, 'calibrated by hand')",
        (T0,),
    )
    conn.execute(
        "INSERT INTO string_data (endpoint_name, timestamp, memo) "
        "VALUES ('cheese', %s, 'note without a value')",
        (T0 + dt.timedelta(seconds=1),),
    )
    data_id = conn.execute("SELECT meas_id FROM endpoint_numeric_data").fetchone()[0]
    meta = conn.execute(
        "SELECT mm.meas_id, m.endpoint_name, mm.timestamp, mm.memo FROM measurement_metadata mm "
        "JOIN endpoint_id_map m USING (endpoint_id) ORDER BY mm.timestamp"
    ).fetchall()
    assert meta[0] == (data_id, "chips", T0, "calibrated by hand")
    assert meta[1][1:] == ("cheese", T0 + dt.timedelta(seconds=1), "note without a value")
    # A memo-only measurement has no data row but shows in the view.
    assert conn.execute("SELECT count(*) FROM endpoint_string_data").fetchone() == (0,)
    assert conn.execute("SELECT endpoint_name, value_raw, memo FROM string_data").fetchall() == [
        ("cheese", None, "note without a value")
    ]
    assert conn.execute("SELECT value_raw, memo FROM numeric_data").fetchall() == [
        (2.0, "calibrated by hand")
    ]


def test_duplicate_endpoint_and_timestamp_is_refused(conn: psycopg.Connection) -> None:
    conn.execute(
        "INSERT INTO numeric_data (endpoint_name, timestamp, value_raw) VALUES ('peaches', %s, 1)",
        (T0,),
    )
    with pytest.raises(errors.UniqueViolation):
        conn.execute(
            "INSERT INTO numeric_data (endpoint_name, timestamp, value_raw) "
            "VALUES ('peaches', %s, 2)",
            (T0,),
        )


def test_timestamps_are_utc(conn: psycopg.Connection) -> None:
    aware = dt.datetime(2026, 11, 25, 14, 0, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    conn.execute(
        "INSERT INTO numeric_data (endpoint_name, timestamp, value_raw) VALUES ('waffles', %s, 1)",
        (aware,),
    )
    assert conn.execute("SELECT timestamp FROM numeric_data").fetchone() == (T0,)
    conn.execute("INSERT INTO numeric_data (endpoint_name, value_raw) VALUES ('waffles', 2)")
    newest = conn.execute("SELECT max(timestamp) FROM numeric_data").fetchone()[0]
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    assert abs((now - newest).total_seconds()) < 60


def test_run_table_defaults(conn: psycopg.Connection) -> None:
    before = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    run_id, start, daq_id, end = conn.execute(
        "INSERT INTO runs.run_table (run_name) VALUES ('first run') "
        "RETURNING run_id, start_timestamp, daq_id, end_timestamp"
    ).fetchone()
    after = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    assert isinstance(run_id, int) and run_id >= 1
    assert before - dt.timedelta(seconds=5) <= start <= after + dt.timedelta(seconds=5)
    assert start.tzinfo is None
    assert daq_id is None and end is None
    second = conn.execute(
        "INSERT INTO runs.run_table (run_name, daq_id, run_time_s, operator) "
        "VALUES ('second', 1, 60, 'mara') RETURNING run_id"
    ).fetchone()[0]
    assert second > run_id
    conn.execute(
        "UPDATE runs.run_table SET end_timestamp = start_timestamp + interval '61.5 s' "
        "WHERE run_id = %s",
        (second,),
    )
    assert conn.execute(
        "SELECT run_duration_s, run_time_s FROM runs.run_table WHERE run_id = %s", (second,)
    ).fetchone() == (61.5, 60.0)
    with pytest.raises(errors.NotNullViolation):
        conn.execute("INSERT INTO runs.run_table (daq_id) VALUES (1)")
    with pytest.raises(errors.CheckViolation):
        conn.execute(
            "UPDATE runs.run_table SET end_timestamp = start_timestamp - interval '1 s' "
            "WHERE run_id = %s",
            (run_id,),
        )


@pytest.mark.parametrize(
    "name",
    [
        "x'); DROP TABLE runs.run_table;--",
        'quote " and backslash \\ and $$dollar$$',
        "newline\nand tab\t; -- comment",
        "ünïcödé 🐝 run",
    ],
)
def test_metacharacters_are_stored_verbatim(conn: psycopg.Connection, name: str) -> None:
    run_id = conn.execute(
        "INSERT INTO runs.run_table (run_name, comment) VALUES (%s, %s) RETURNING run_id",
        (name, name),
    ).fetchone()[0]
    assert conn.execute(
        "SELECT run_name, comment FROM runs.run_table WHERE run_id = %s", (run_id,)
    ).fetchone() == (name, name)
    assert conn.execute("SELECT to_regclass('runs.run_table')").fetchone() == ("runs.run_table",)
    # Endpoint names, string values and memos too (the trigger's messages quote them safely).
    conn.execute("INSERT INTO endpoint_id_map (endpoint_name, type) VALUES (%s, 'string')", (name,))
    conn.execute(
        "INSERT INTO string_data (endpoint_name, timestamp, value_raw, memo) "
        "VALUES (%s, %s, %s, %s)",
        (name, T0, name, name),
    )
    assert conn.execute(
        "SELECT value_raw, memo FROM string_data WHERE endpoint_name = %s", (name,)
    ).fetchone() == (name, name)
    with pytest.raises(errors.DatatypeMismatch) as info:
        conn.execute("INSERT INTO numeric_data (endpoint_name, value_raw) VALUES (%s, 1)", (name,))
    assert "has type string" in info.value.diag.message_primary


LATEST_BEFORE = """
SELECT m.endpoint_name, d."timestamp", d.value_raw, d.value_cal
FROM endpoint_id_map AS m
LEFT JOIN LATERAL (
    SELECT t."timestamp", t.value_raw, t.value_cal
    FROM endpoint_numeric_data AS t
    WHERE t.endpoint_id = m.endpoint_id AND t."timestamp" < %(start)s
    ORDER BY t."timestamp" DESC
    LIMIT 1
) AS d ON true
WHERE m.endpoint_name = ANY(%(names)s)
ORDER BY m.endpoint_name
"""

LOGS_BETWEEN = """
SELECT m.endpoint_name, t."timestamp", t.value_raw, t.value_cal
FROM endpoint_numeric_data AS t
JOIN endpoint_id_map AS m ON t.endpoint_id = m.endpoint_id
WHERE t."timestamp" >= %(start)s AND t."timestamp" <= %(end)s
ORDER BY m.endpoint_name
"""


def _fill(conn: psycopg.Connection, n: int = 600) -> None:
    conn.execute(
        "INSERT INTO endpoint_numeric_data (endpoint_id, timestamp, value_raw, value_cal) "
        "SELECT m.endpoint_id, %s::timestamp + g * interval '1 s', g, 2 * g "
        "FROM endpoint_id_map m CROSS JOIN generate_series(0, %s - 1) AS g "
        "WHERE m.type = 'numeric'",
        (T0, n),
    )
    conn.execute("ANALYZE endpoint_numeric_data")


def test_snapshot_index_exists(shared_conn: psycopg.Connection) -> None:
    conn = shared_conn
    indexes = conn.execute(
        "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = %s",
        ("endpoint_numeric_data",),
    ).fetchall()
    defs = " | ".join(d for _, d in indexes)
    assert 'btree (endpoint_id, "timestamp")' in defs
    assert 'brin ("timestamp")' in defs
    for table in ("endpoint_string_data", "endpoint_json_data"):
        assert conn.execute(
            "SELECT count(*) FROM pg_indexes WHERE tablename = %s "
            "AND indexdef LIKE '%%(endpoint_id, \"timestamp\")%%'",
            (table,),
        ).fetchone() == (1,)


def test_snapshot_query_shapes_use_the_indexes(conn: psycopg.Connection) -> None:
    _fill(conn)
    params = {
        "start": T0 + dt.timedelta(seconds=300),
        "end": T0 + dt.timedelta(seconds=310),
        "names": ["peaches", "chips", "donuts"],
    }
    latest = conn.execute(LATEST_BEFORE, params).fetchall()
    assert [r[0] for r in latest] == ["chips", "peaches"]
    assert all(r[1] == T0 + dt.timedelta(seconds=299) and r[2] == 299 for r in latest)
    assert len(conn.execute(LOGS_BETWEEN, params).fetchall()) == 3 * 11
    conn.execute("SET enable_seqscan = off")
    plan = "\n".join(r[0] for r in conn.execute("EXPLAIN " + LATEST_BEFORE, params))
    assert "endpoint_numeric_data_pkey" in plan, plan
    assert "Index" in plan
    plan = "\n".join(r[0] for r in conn.execute("EXPLAIN " + LOGS_BETWEEN, params))
    assert "Seq Scan on endpoint_numeric_data" not in plan, plan
