"""not-snapshot_service (SQLSnapshot) against a real broker and a fresh lab database per test."""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

import psycopg
import pytest

from insectarium.dripline import Endpoint, ReplyError
from insectarium.services.postgres import PostgreSQLService
from insectarium.services.snapshot import SQLSnapshot

from .runtime_support import mesh_for, running, unique
from .test_sensor_logger import db_auth

T0 = dt.datetime(2026, 3, 1, 12, 0, 0)


def ts(seconds: float) -> str:
    return (T0 + dt.timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Recorder(Endpoint):
    """Stands in for the metadata receiver: remembers what ``write_json`` was given."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.calls: list[dict[str, Any]] = []

    def write_json(self, contents: Any, filename: str) -> str:
        self.calls.append({"contents": contents, "filename": filename})
        return filename


def seed_values(dsn: str) -> None:
    """peaches: before, two inside, after; cheese: before only; recipe: inside only."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        ids = dict(conn.execute("SELECT endpoint_name, endpoint_id FROM endpoint_id_map"))
        for sec, raw in ((-30, 0.1), (-10, 0.5), (1, 1.0), (2, 2.0), (20, 9.0)):
            conn.execute(
                "INSERT INTO endpoint_numeric_data (endpoint_id, timestamp, value_raw, value_cal) "
                "VALUES (%s, %s, %s, %s)",
                (ids["peaches"], T0 + dt.timedelta(seconds=sec), raw, 2 * raw),
            )
        conn.execute(
            "INSERT INTO endpoint_string_data (endpoint_id, timestamp, value_raw) "
            "VALUES (%s, %s, 'gouda')",
            (ids["cheese"], T0 - dt.timedelta(seconds=5)),
        )
        conn.execute(
            "INSERT INTO endpoint_json_data (endpoint_id, timestamp, value_raw) "
            "VALUES (%s, %s, %s)",
            (ids["recipe"], T0 + dt.timedelta(seconds=3), psycopg.types.json.Jsonb({"eggs": 2})),
        )


def snapshot_service(dsn: str, amqp_url: str, *endpoints: Endpoint) -> PostgreSQLService:
    auth, keys = db_auth(dsn, amqp_url)
    return PostgreSQLService(
        unique("snapshot_service"),
        endpoints=list(endpoints),
        dripline_mesh=mesh_for(amqp_url),
        authentication=auth,
        heartbeat_interval_s=0,
        **keys,
    )


async def test_take_snapshot_has_latest_before_start_then_the_window(
    lab_database: str, amqp_url: str, client: Any
) -> None:
    seed_values(lab_database)
    snap = SQLSnapshot(unique("sc_snapshot"), target_items=["peaches", "cheese", "recipe"])
    metadata = Recorder(unique("metadata"))
    async with running(snapshot_service(lab_database, amqp_url, snap, metadata)):
        summary = await client.cmd(
            snap.name, "take_snapshot", [ts(0), ts(10), metadata.name, "/tmp/x_snapshot.json"]
        )
    assert summary["values"] == 5 and summary["endpoints"] == 3
    assert len(metadata.calls) == 1 and metadata.calls[0]["filename"] == "/tmp/x_snapshot.json"
    contents = metadata.calls[0]["contents"]
    assert contents["peaches"] == [
        {"timestamp": ts(-10), "value_raw": 0.5, "value_cal": 1.0},
        {"timestamp": ts(1), "value_raw": 1.0, "value_cal": 2.0},
        {"timestamp": ts(2), "value_raw": 2.0, "value_cal": 4.0},
    ]
    assert contents["cheese"] == [{"timestamp": ts(-5), "value_raw": "gouda", "value_cal": None}]
    assert contents["recipe"] == [{"timestamp": ts(3), "value_raw": {"eggs": 2}, "value_cal": None}]


async def test_get_logs_get_latest_and_single_payload_field(
    lab_database: str, amqp_url: str, client: Any
) -> None:
    seed_values(lab_database)
    snap = SQLSnapshot(unique("sc_snapshot"), payload_field="value_cal")  # all mapped endpoints
    async with running(snapshot_service(lab_database, amqp_url, snap)):
        logs = await client.cmd(snap.name, "get_logs", [ts(0), ts(30)])
        latest = await client.cmd(snap.name, "get_latest", [ts(0)], {"names": ["peaches"]})
        returned = await client.cmd(snap.name, "take_snapshot", [ts(0), ts(1)])
    assert [p["value_cal"] for p in logs["peaches"]] == [2.0, 4.0, 18.0]
    assert set(logs) == {"peaches", "recipe"}
    assert latest == {"peaches": {"timestamp": ts(-10), "value_cal": 1.0}}
    assert returned["contents"]["peaches"][0] == {"timestamp": ts(-10), "value_cal": 1.0}


@pytest.mark.parametrize(
    ("start", "end", "needle"),
    [
        ("2026-03-01 12:00:00", ts(10), "start must be a timestamp"),
        (ts(0), "2026-03-01T12:00:10Z", "end must be a timestamp"),
        (ts(0), "2026-02-30T12:00:00.000000Z", "not a valid date"),
        (ts(10), ts(10), "must be later than start"),
        (ts(10), ts(0), "must be later than start"),
    ],
)
async def test_bad_windows_are_304(
    lab_database: str, amqp_url: str, client: Any, start: str, end: str, needle: str
) -> None:
    snap = SQLSnapshot(unique("sc_snapshot"))
    async with running(snapshot_service(lab_database, amqp_url, snap)):
        with pytest.raises(ReplyError) as err:
            await client.cmd(snap.name, "take_snapshot", [start, end])
    assert err.value.return_code.value == 304
    assert needle in err.value.message


async def test_unknown_target_is_1200_naming_it_or_skipped(
    lab_database: str, amqp_url: str, client: Any
) -> None:
    seed_values(lab_database)
    strict = SQLSnapshot(unique("sc_snapshot"), target_items=["peaches", "no_such_sensor"])
    lenient = SQLSnapshot(
        unique("sc_snapshot"), target_items=["peaches", "no_such_sensor"], on_unknown_target="skip"
    )
    async with running(snapshot_service(lab_database, amqp_url, strict, lenient)):
        with pytest.raises(ReplyError) as err:
            await client.cmd(strict.name, "take_snapshot", [ts(0), ts(10)])
        skipped = await client.cmd(lenient.name, "take_snapshot", [ts(0), ts(10)])
    assert err.value.return_code.value == 1200
    assert "no_such_sensor" in err.value.message
    assert set(skipped["contents"]) == {"peaches"}


async def test_database_away_is_1200_and_the_service_survives(
    lab_database: str, amqp_url: str, client: Any
) -> None:
    auth, keys = db_auth(lab_database, amqp_url)
    auth.groups["postgres"]["password"] = "s3cret-password"
    snap = SQLSnapshot(unique("sc_snapshot"))
    service = PostgreSQLService(
        unique("snapshot_service"),
        endpoints=[snap],
        dripline_mesh=mesh_for(amqp_url),
        authentication=auth,
        heartbeat_interval_s=0,
        **{**keys, "database_port": 1, "database_connect_timeout_s": 1},
    )
    async with running(service):
        for _ in range(2):
            with pytest.raises(ReplyError) as err:
                await client.cmd(snap.name, "get_logs", [ts(0), ts(10)])
            assert err.value.return_code.value == 1200
            assert "cannot connect" in err.value.message
            assert "s3cret-password" not in err.value.message


TRICKY_FLOATS = [1.0, -0.0, 0.1 + 0.2, 1e-7, 1e20, 123456789012345.0, 2.5e-300, -3.0]
TRICKY_STRINGS = ['say "cheese"', "back\\slash", "tab\tnew\nline", "grüße ✓", "\x01"]


async def test_snapshot_json_built_by_the_server_equals_the_values(
    lab_database: str, amqp_url: str, client: Any
) -> None:
    """The server renders the snapshot as JSON text: every value must come back exactly as
    the Python path gave it — floats as floats (``1.0`` not ``1``), NaN and infinities, text
    with quotes, escapes and non-ASCII, JSON values — and in time order."""
    floats = [*TRICKY_FLOATS, math.nan, math.inf, -math.inf]
    docs = [{"a": [1, 2.5, None]}, "just text", 7, [], {"ü": {"x": True}}]
    with psycopg.connect(lab_database, autocommit=True) as conn:
        ids = dict(conn.execute("SELECT endpoint_name, endpoint_id FROM endpoint_id_map"))
        for i, v in enumerate(floats):
            conn.execute(
                "INSERT INTO endpoint_numeric_data (endpoint_id, timestamp, value_raw, value_cal) "
                "VALUES (%s, %s, %s, %s)",
                (ids["peaches"], T0 + dt.timedelta(seconds=i), v, None if i % 2 else -v),
            )
        for i, text in enumerate(TRICKY_STRINGS):
            conn.execute(
                "INSERT INTO endpoint_string_data (endpoint_id, timestamp, value_raw) "
                "VALUES (%s, %s, %s)",
                (ids["cheese"], T0 + dt.timedelta(seconds=i), text),
            )
        for i, doc in enumerate(docs):
            conn.execute(
                "INSERT INTO endpoint_json_data (endpoint_id, timestamp, value_raw) "
                "VALUES (%s, %s, %s)",
                (ids["recipe"], T0 + dt.timedelta(seconds=i), psycopg.types.json.Jsonb(doc)),
            )
    snap = SQLSnapshot(unique("sc_snapshot"), target_items=["peaches", "cheese", "recipe"])
    metadata = Recorder(unique("metadata"))
    async with running(snapshot_service(lab_database, amqp_url, snap, metadata)):
        summary = await client.cmd(
            snap.name, "take_snapshot", [ts(1), ts(60), metadata.name, "/tmp/y_snapshot.json"]
        )
    contents = metadata.calls[0]["contents"]
    n = len(floats) + len(TRICKY_STRINGS) + len(docs)  # all in the window but second 0 ...
    assert summary == {**summary, "endpoints": 3, "values": n}  # ... which is the latest before
    peaches = contents["peaches"]
    assert [p["timestamp"] for p in peaches] == [ts(i) for i in range(len(floats))]
    for point, v in zip(peaches, floats, strict=True):
        raw = point["value_raw"]
        assert type(raw) is float
        assert (math.isnan(raw) and math.isnan(v)) or (raw == v and str(raw) == str(v))
    assert peaches[1]["value_cal"] is None and str(peaches[0]["value_cal"]) == "-1.0"
    assert [p["value_raw"] for p in contents["cheese"]] == TRICKY_STRINGS
    assert [p["value_cal"] for p in contents["cheese"]] == [None] * len(TRICKY_STRINGS)
    assert [p["value_raw"] for p in contents["recipe"]] == docs
