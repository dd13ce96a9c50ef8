"""not-run_table (RunTable) against a real broker and a fresh lab database per test."""

from __future__ import annotations

import re
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from insectarium.dripline import ReplyError
from insectarium.dripline.config import load_file
from insectarium.dripline.factory import create_service
from insectarium.services.postgres import PostgreSQLService
from insectarium.services.run_table import RunTable

from .role_grants import grant_purpose
from .runtime_support import mesh_for, running, unique
from .test_sensor_logger import db_auth

STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


def run_service(dsn: str, amqp_url: str, table: RunTable) -> PostgreSQLService:
    auth, keys = db_auth(dsn, amqp_url)
    return PostgreSQLService(
        unique("run_table_service"),
        endpoints=[table],
        dripline_mesh=mesh_for(amqp_url),
        authentication=auth,
        heartbeat_interval_s=0,
        **keys,
    )


def lab_table(name: str) -> RunTable:
    """The endpoint exactly as files/configs/run_table.yaml configures it (renamed)."""
    config = load_file("files/configs/run_table.yaml")
    service = create_service(config, source="run_table.yaml")
    table = service.sync_children["run_table"]
    assert isinstance(table, RunTable)
    table.name = name
    return table


async def test_do_insert_returns_run_id_and_start_timestamp(
    lab_database: str, amqp_url: str, client: Any
) -> None:
    table = lab_table(unique("run_table"))
    async with running(run_service(lab_database, amqp_url, table)):
        first = await client.cmd(table.name, "do_insert", keyed_args={"run_name": "first"})
        second = await client.cmd(
            table.name,
            "do_insert",
            keyed_args={"run_name": "second", "operator": "ada", "bogus_column": 1},
        )
        recent = await client.cmd(table.name, "do_select", keyed_args={"last": 5})
        one = await client.cmd(table.name, "do_select", keyed_args={"run_id": first["run_id"]})
    assert set(first) == {"run_id", "start_timestamp"}
    assert isinstance(first["run_id"], int) and second["run_id"] == first["run_id"] + 1
    assert STAMP.match(first["start_timestamp"])
    assert [r["run_name"] for r in recent] == ["second", "first"]
    assert recent[0]["operator"] == "ada" and recent[0]["daq_id"] == 1  # default_insert_values
    assert one[0]["run_name"] == "first"


async def test_missing_required_column_is_1200(
    lab_database: str, amqp_url: str, client: Any
) -> None:
    table = lab_table(unique("run_table"))
    async with running(run_service(lab_database, amqp_url, table)):
        with pytest.raises(ReplyError) as err:
            await client.cmd(table.name, "do_insert", keyed_args={"operator": "ada"})
        with pytest.raises(ReplyError) as blank:
            await client.cmd(table.name, "do_insert", keyed_args={"run_name": "   "})
    assert err.value.return_code.value == 1200 and "run_name" in err.value.message
    assert blank.value.return_code.value == 1200  # the table's check constraint


async def test_sql_metacharacters_are_stored_verbatim(
    lab_database: str, amqp_url: str, client: Any
) -> None:
    nasty = "x'); DROP TABLE runs.run_table; -- \" ; \\ %s {0}"
    table = lab_table(unique("run_table"))
    async with running(run_service(lab_database, amqp_url, table)):
        row = await client.cmd(table.name, "do_insert", keyed_args={"run_name": nasty})
    with psycopg.connect(lab_database, autocommit=True) as conn:
        stored = conn.execute(
            "SELECT run_name FROM runs.run_table WHERE run_id = %s", (row["run_id"],)
        ).fetchone()
    assert stored == (nasty,)


async def test_end_run_once(lab_database: str, amqp_url: str, client: Any) -> None:
    table = lab_table(unique("run_table"))
    async with running(run_service(lab_database, amqp_url, table)):
        row = await client.cmd(table.name, "do_insert", keyed_args={"run_name": "ends"})
        ended = await client.cmd(table.name, "end_run", [row["run_id"]])
        with pytest.raises(ReplyError) as again:
            await client.cmd(table.name, "end_run", [row["run_id"]])
        with pytest.raises(ReplyError) as missing:
            await client.cmd(table.name, "end_run", keyed_args={"run_id": 999_999})
        # the DAQ's form: an explicit end (clamped to the start if the clocks disagree)
        other = await client.cmd(table.name, "do_insert", keyed_args={"run_name": "daq"})
        daq_end = await client.cmd(
            table.name,
            "end_run",
            keyed_args={"run_id": other["run_id"], "end_timestamp": "2000-01-01T00:00:00.000000Z"},
        )
    assert STAMP.match(ended["end_timestamp"]) and ended["end_timestamp"] >= row["start_timestamp"]
    assert again.value.return_code.value == 304 and "already ended" in again.value.message
    assert missing.value.return_code.value == 304 and "no run 999999" in missing.value.message
    assert daq_end["end_timestamp"] == other["start_timestamp"]


async def test_commands_are_limited_to_the_documented_ones(
    lab_database: str, amqp_url: str, client: Any
) -> None:
    table = lab_table(unique("run_table"))
    service = run_service(lab_database, amqp_url, table)
    async with running(service):
        for target, method in ((table.name, "_execute"), (service.name, "stop")):
            with pytest.raises(ReplyError) as err:
                await client.cmd(target, method, ["SELECT 1"])
            assert err.value.return_code.value == 306
        assert service.is_running


async def test_survives_a_database_restart(lab_database: str, amqp_url: str, client: Any) -> None:
    table = lab_table(unique("run_table"))
    service = run_service(lab_database, amqp_url, table)
    async with running(service):
        await client.cmd(table.name, "do_insert", keyed_args={"run_name": "before"})
        with psycopg.connect(lab_database, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = %s",
                (service.name,),
            )
        # the kept session is found dead before use and replaced: no request fails
        after = [
            await client.cmd(table.name, "do_insert", keyed_args={"run_name": name})
            for name in ("after-1", "after-2")
        ]
    assert [r["run_id"] for r in after] == [2, 3]


async def test_end_reason_and_open_runs(lab_database: str, amqp_url: str, client: Any) -> None:
    table = lab_table(unique("run_table"))
    async with running(run_service(lab_database, amqp_url, table)):
        a = await client.cmd(table.name, "do_insert", keyed_args={"run_name": "a", "daq_name": "d"})
        b = await client.cmd(table.name, "do_insert", keyed_args={"run_name": "b", "daq_name": "d"})
        c = await client.cmd(table.name, "do_insert", keyed_args={"run_name": "c", "daq_name": "e"})
        ended = await client.cmd(
            table.name, "end_run", keyed_args={"run_id": a["run_id"], "end_reason": "stopped"}
        )
        with pytest.raises(ReplyError) as bad:
            await client.cmd(
                table.name, "end_run", keyed_args={"run_id": b["run_id"], "end_reason": "bored"}
            )
        open_d = await client.cmd(table.name, "open_runs", keyed_args={"daq_name": "d"})
        open_all = await client.cmd(table.name, "open_runs")
    assert ended["end_reason"] == "stopped"
    assert bad.value.return_code.value == 304 and "end_reason must be one of" in bad.value.message
    assert [r["run_id"] for r in open_d] == [b["run_id"]]
    assert [r["run_id"] for r in open_all] == [b["run_id"], c["run_id"]]


async def test_oversize_names_and_non_finite_durations_are_clear_304s(
    lab_database: str, amqp_url: str, client: Any
) -> None:
    """A 1 MB run name used to fail as 'lost the connection' (the index refused it); a NaN or
    infinite run_time_s was stored."""
    table = lab_table(unique("run_table"))
    async with running(run_service(lab_database, amqp_url, table)):
        with pytest.raises(ReplyError) as long_name:
            await client.cmd(table.name, "do_insert", keyed_args={"run_name": "n" * 1_000_000})
        for bad in ("NaN", "Infinity", -1, 1e300):
            with pytest.raises(ReplyError) as duration:
                await client.cmd(
                    table.name, "do_insert", keyed_args={"run_name": "r", "run_time_s": bad}
                )
            assert duration.value.return_code.value == 304, bad
            assert "run_time_s must be" in duration.value.message
        ok = await client.cmd(
            table.name, "do_insert", keyed_args={"run_name": "n" * 255, "run_time_s": 60}
        )
    assert long_name.value.return_code.value == 304
    assert "1000000 characters long; the limit is 255" in long_name.value.message
    assert ok["run_id"] >= 1
    with psycopg.connect(lab_database, autocommit=True) as conn:
        # the database refuses them too (migration 005), should another writer try
        for column, value in (("run_name", "n" * 300), ("run_time_s", "NaN")):
            with pytest.raises(psycopg.errors.CheckViolation):
                conn.execute(
                    f"INSERT INTO runs.run_table (run_name, {column}) VALUES ('x', %s)"
                    if column != "run_name"
                    else "INSERT INTO runs.run_table (run_name) VALUES (%s)",
                    (value,),
                )


async def test_a_statement_the_database_refuses_is_not_a_lost_connection(
    lab_database: str, amqp_url: str, client: Any
) -> None:
    """An OperationalError on a working connection (here: a value too large for the btree
    index on run_name, with the name limit lifted) is reported as refused, and the next
    request works on the same service."""
    table = lab_table(unique("run_table"))
    with psycopg.connect(lab_database, autocommit=True) as conn:
        conn.execute("ALTER TABLE runs.run_table DROP CONSTRAINT run_name_length")
    async with running(run_service(lab_database, amqp_url, table)):
        import insectarium.services.run_table as rt

        limit, rt.MAX_NAME_LENGTH = rt.MAX_NAME_LENGTH, 10**7
        try:
            with pytest.raises(ReplyError) as refused:
                await client.cmd(
                    table.name,
                    "do_insert",
                    keyed_args={"run_name": "".join(f"{i:x}" for i in range(60_000))},
                )
        finally:
            rt.MAX_NAME_LENGTH = limit
        after = await client.cmd(table.name, "do_insert", keyed_args={"run_name": "fine"})
    assert refused.value.return_code.value == 1200
    assert "lost the connection" not in refused.value.message
    assert "index row" in refused.value.message
    assert after["run_id"] >= 1


async def test_the_run_writer_grants_of_the_lab_are_enough(
    lab_database: str, postgres_server: Any, amqp_url: str, client: Any
) -> None:
    """The service under exactly the postgresql role's run_writer grants: insert, end with a
    reason, read; a run's name stays out of its reach."""
    role = unique("run_writer")
    role_dsn = postgres_server.create_role(role)
    grant_purpose(lab_database, role, "run_writer")
    dsn = make_conninfo(role_dsn, dbname=conninfo_to_dict(lab_database)["dbname"])
    table = lab_table(unique("run_table"))
    async with running(run_service(dsn, amqp_url, table)):
        run = await client.cmd(table.name, "do_insert", keyed_args={"run_name": "granted"})
        ended = await client.cmd(
            table.name, "end_run", keyed_args={"run_id": run["run_id"], "end_reason": "completed"}
        )
        one = await client.cmd(table.name, "do_select", keyed_args={"run_id": run["run_id"]})
    assert ended["end_reason"] == "completed" and one[0]["end_reason"] == "completed"
    with (
        psycopg.connect(dsn, autocommit=True) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):
        conn.execute(
            "UPDATE runs.run_table SET run_name = 'forged' WHERE run_id = %s", [run["run_id"]]
        )
