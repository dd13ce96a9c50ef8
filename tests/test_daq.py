"""The generic DAQ provider: run sequence, refusals, files, timer and alerts, on a real broker.

The run table and snapshot service are small stand-in endpoints here (their real, database-backed
versions are exercised by the end-to-end test); everything goes through RabbitMQ.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from insectarium.dripline import AlertConsumer, Endpoint, MsgOp, Service, ThrowReply
from insectarium.dripline.message import now_timestamp, parse_timestamp
from insectarium.services.daq import DAQService, GenericDAQProvider, run_directory
from insectarium.services.kv_store import KeyValueStore
from insectarium.services.metadata import MDReceiver
from insectarium.services.multido import MultiGet

from .runtime_support import eventually, running, unique


class FakeRunTable(Endpoint):
    """``do_insert`` hands out run ids from ``next_id``; ``end_run`` records what it was told."""

    def __init__(self, name: str, next_id: int, delay: float = 0.0) -> None:
        super().__init__(name)
        self.next_id, self.delay = next_id, delay
        self.rows: dict[int, dict[str, Any]] = {}

    async def do_insert(self, run_name: str, **optional: Any) -> dict[str, Any]:
        await asyncio.sleep(self.delay)
        run_id, self.next_id = self.next_id, self.next_id + 1
        self.rows[run_id] = {"run_name": run_name, "start_timestamp": now_timestamp(), **optional}
        return {"run_id": run_id, "start_timestamp": self.rows[run_id]["start_timestamp"]}

    def end_run(self, run_id: int, end_timestamp: str, end_reason: str | None = None) -> None:
        self.rows[run_id]["end_timestamp"] = end_timestamp
        self.rows[run_id]["end_reason"] = end_reason

    def open_runs(self, daq_name: str | None = None) -> list[dict[str, Any]]:
        return [
            {"run_id": run_id, **row}
            for run_id, row in self.rows.items()
            if "end_timestamp" not in row and daq_name in (None, row.get("daq_name"))
        ]


class InsertOnlyRunTable(FakeRunTable):
    """A run table without ``end_run`` (the DAQ must accept the 306)."""

    def __getattribute__(self, name: str) -> Any:
        if name == "end_run":
            raise AttributeError(name)
        return super().__getattribute__(name)


class FakeSnapshot(Endpoint):
    """``take_snapshot`` writes its arguments through the metadata receiver, like sc_snapshot."""

    def __init__(self, name: str, fail: bool = False, delay: float = 0.0) -> None:
        super().__init__(name)
        self.fail, self.delay = fail, delay
        self.calls: list[list[Any]] = []

    async def take_snapshot(
        self, start: str, end: str, metadata_target: str, filename: str
    ) -> None:
        self.calls.append([start, end, metadata_target, filename])
        await asyncio.sleep(self.delay)
        if self.fail:
            raise ThrowReply("database_error", "database away")
        contents = {"peaches": [{"timestamp": start, "value_cal": 1.5}], "end": end}
        await self.service.cmd(
            metadata_target, "write_json", [], {"contents": contents, "filename": filename}
        )


class Recorder(AlertConsumer):
    def __init__(self, name: str, **kw: Any) -> None:
        super().__init__(name, **kw)
        self.seen: list[tuple[str, Any]] = []

    async def process_alert(self, msg: Any) -> None:
        self.seen.append((msg.routing_key, msg.payload))


@dataclass
class Lab:
    daq: GenericDAQProvider
    daq_service: DAQService
    run_table: FakeRunTable
    snapshot: FakeSnapshot
    metadata: str
    data: Path
    kv: dict[str, str]

    @property
    def name(self) -> str:
        return self.daq.name


@pytest.fixture
async def make_lab(mesh, auth, tmp_path):
    """Build and start a DAQ service plus stand-in peers, all under unique names."""
    started: list[Service] = []

    async def make(
        *,
        next_id: int = 1_234_567,
        insert_delay: float = 0.0,
        run_table_cls: type[FakeRunTable] = FakeRunTable,
        snapshot_fails: bool = False,
        snapshot_delay: float = 0.0,
        run_table_name: str | None = None,
        metadata_state: str | None = None,
        open_rows: dict[int, dict[str, Any]] | None = None,
    ) -> Lab:
        p = unique("daq")
        kv = {k: f"{p}_{k}" for k in ("peaches", "cheese")}
        peers = Service(
            f"{p}_peers", dripline_mesh=mesh, authentication=auth, heartbeat_interval_s=0
        )
        peers.add_endpoint(KeyValueStore(kv["peaches"], initial_value=0.75, calibration="2*{}"))
        peers.add_endpoint(KeyValueStore(kv["cheese"], initial_value="gouda"))
        peers.add_endpoint(
            MultiGet(
                f"{p}_run_metadata",
                targets=[
                    {"target": kv["peaches"], "payload_field": "value_cal"},
                    {"target": kv["cheese"], "payload_field": "value_raw"},
                ],
            )
        )
        run_table = run_table_cls(f"{p}_run_table", next_id, insert_delay)
        run_table.rows.update(open_rows or {})
        snapshot = FakeSnapshot(f"{p}_sc_snapshot", fail=snapshot_fails, delay=snapshot_delay)
        peers.add_endpoint(run_table)
        peers.add_endpoint(snapshot)
        data = tmp_path / p
        svc = DAQService(
            p,
            data_directory=str(data),
            dripline_mesh=mesh,
            authentication=auth,
            heartbeat_interval_s=0,
        )
        daq = GenericDAQProvider(
            f"{p}_daq_interface",
            daq_name="generic_daq",
            filename_prefix="rid",
            run_table_endpoint=run_table_name or run_table.name,
            metadata_state_target=metadata_state or f"{p}_run_metadata",
            metadata_target=f"{p}_metadata",
            snapshot_state_target=snapshot.name,
            set_condition_list=[10],
            request_timeout_s=5,
        )
        svc.add_endpoint(daq)
        svc.add_endpoint(MDReceiver(f"{p}_metadata"))
        for s in (peers, svc):
            await s.start()
            started.append(s)
        return Lab(daq, svc, run_table, snapshot, f"{p}_metadata", data, kv)

    yield make
    for s in reversed(started):
        await s.stop()


async def cmd(client, target: str, specifier: str, *values: Any, **kw: Any):
    return await client.request(
        target, MsgOp.CMD, {**kw, "values": list(values)}, specifier=specifier
    )


def test_run_directory_layout() -> None:
    assert run_directory("/data", 42) == Path("/data/000yyyxxx/000000xxx/000000042")
    assert run_directory("/d", 1_234_567) == Path("/d/001yyyxxx/001234xxx/001234567")
    assert run_directory("/d", 987_654_321_0) == Path("/d/9876yyyxxx/9876543xxx/9876543210")


async def test_a_run_from_start_to_end(make_lab, client) -> None:
    lab = await make_lab()
    reply = await cmd(client, lab.name, "start_timed_run", "unit_run", 60)
    assert reply.return_code == 0, reply.return_message
    assert reply.payload == 1_234_567  # dl3: the bare run id

    run_dir = lab.data / "001yyyxxx" / "001234xxx" / "001234567"
    meta = json.loads((run_dir / "rid001234567_meta.json").read_text())
    assert meta == {
        "DAQ": "generic_daq",
        "run_time": 60,
        "run_id": 1_234_567,
        lab.kv["peaches"]: 1.5,
        lab.kv["cheese"]: "gouda",
        "DAQ_MODE": "virtual",
    }
    data_file = json.loads((run_dir / "rid001234567.json").read_text())
    assert data_file["run_name"] == "unit_run"
    assert lab.run_table.rows[1_234_567]["daq_name"] == "generic_daq"
    assert lab.run_table.rows[1_234_567]["run_time_s"] == 60
    assert data_file["data_end"] is None

    status = await client.get(lab.name)
    assert status["running"] is True
    assert status["run_id"] == 1_234_567
    assert status["run_name"] == "unit_run"
    assert status["started"] == lab.run_table.rows[1_234_567]["start_timestamp"]
    assert parse_timestamp(status["ends_at"]) > parse_timestamp(status["started"])
    assert await client.get(lab.name, "is_running") == {"values": [True]}
    assert await client.get(lab.name, "run_id") == {"values": [1_234_567]}
    refused = await client.request(lab.name, MsgOp.SET, {"values": [False]}, specifier="is_running")
    assert refused.return_code == 310

    second = await cmd(client, lab.name, "start_timed_run", "other_run", 5)
    assert second.return_code == 1102
    assert len(lab.run_table.rows) == 1  # refused before touching the run table

    ended = await cmd(client, lab.name, "end_run")
    assert ended.return_code == 0, ended.return_message
    assert ended.payload["run_id"] == 1_234_567
    start, end, md_target, filename = lab.snapshot.calls[0]
    assert start == lab.run_table.rows[1_234_567]["start_timestamp"]
    assert parse_timestamp(end) >= parse_timestamp(start)
    assert md_target == lab.metadata
    assert filename == str(run_dir / "rid001234567_snapshot.json")
    assert json.loads(Path(filename).read_text())["end"] == end  # noqa: ASYNC240
    assert lab.run_table.rows[1_234_567]["end_timestamp"] == end
    assert json.loads((run_dir / "rid001234567.json").read_text())["data_end"] is not None
    assert (await client.get(lab.name))["running"] is False

    idle = await cmd(client, lab.name, "end_run")
    assert idle.return_code == 304
    assert idle.return_message == "No run to end"


async def test_safe_mode_refuses_runs_until_condition_0(make_lab, client) -> None:
    lab = await make_lab()
    assert (await cmd(client, lab.name, "set_condition", 10)).return_code == 0
    refused = await cmd(client, lab.name, "start_timed_run", "safe_run", 5)
    assert refused.return_code == 1101
    assert not lab.run_table.rows
    ignored = await cmd(client, lab.name, "set_condition", 7)
    assert ignored.return_message.startswith("No action taken")
    assert (await client.get(lab.name))["safe_mode"] is True
    assert (await cmd(client, lab.name, "set_condition", 0)).return_code == 0
    ok = await cmd(client, lab.name, "start_timed_run", "after_safe", 30)
    assert ok.return_code == 0, ok.return_message
    assert (await cmd(client, lab.name, "end_run")).return_code == 0


async def test_broadcast_set_condition_reaches_the_daq(make_lab, client) -> None:
    lab = await make_lab()
    await client.request(
        lab.daq_service.name, MsgOp.CMD, {"values": [10]}, specifier="set_condition"
    )
    assert lab.daq.safe_mode
    assert (await cmd(client, lab.name, "start_timed_run", "r", 5)).return_code == 1101


async def test_concurrent_starts_give_one_run(make_lab, client) -> None:
    lab = await make_lab(insert_delay=0.3)
    replies = await asyncio.gather(
        cmd(client, lab.name, "start_timed_run", "race_a", 30),
        cmd(client, lab.name, "start_timed_run", "race_b", 30),
    )
    codes = sorted(r.return_code for r in replies)
    assert codes == [0, 1102]
    assert len(lab.run_table.rows) == 1
    assert (await cmd(client, lab.name, "end_run")).return_code == 0


async def test_a_start_while_a_run_is_ending_says_so(make_lab, client) -> None:
    lab = await make_lab(snapshot_delay=1.0)
    assert (await cmd(client, lab.name, "start_timed_run", "first", 30)).return_code == 0
    ending = asyncio.ensure_future(cmd(client, lab.name, "end_run"))
    await eventually(lambda: lab.snapshot.calls, timeout=5)  # the end has begun
    refused = await cmd(client, lab.name, "start_timed_run", "second", 30)
    assert refused.return_code == 1102
    assert "ending a run" in refused.return_message
    assert (await ending).return_code == 0
    assert (await cmd(client, lab.name, "start_timed_run", "second", 30)).return_code == 0
    running = await cmd(client, lab.name, "start_timed_run", "third", 30)
    assert running.return_message.endswith("DAQ is already running: aborting run")
    assert (await cmd(client, lab.name, "end_run")).return_code == 0


async def test_unknown_run_table_is_304_and_leaves_nothing(make_lab, client) -> None:
    lab = await make_lab(run_table_name=unique("no_run_table"))
    reply = await cmd(client, lab.name, "start_timed_run", "orphan", 5)
    assert reply.return_code == 304
    assert 'run "orphan" not started' in reply.return_message
    status = await client.get(lab.name)
    assert status["running"] is False and status["run_id"] is None
    assert not lab.data.exists() or not any(lab.data.rglob("*.json"))


async def test_bad_run_time_is_304(make_lab, client) -> None:
    lab = await make_lab()
    for bad in ("soon", 0, -5, "inf", 10**12):
        reply = await cmd(client, lab.name, "start_timed_run", "r", bad)
        assert reply.return_code == 304, bad
    # NaN and Infinity are not JSON, but Python peers send them (json.dumps allows them)
    for bad in (float("nan"), float("inf")):
        reply = await cmd(client, lab.name, "start_timed_run", "r", bad)
        assert reply.return_code == 304 and "finite" in reply.return_message, bad
    reply = await cmd(client, lab.name, "start_timed_run", "x" * 1_000_000, 5)
    assert reply.return_code == 304
    assert "1000000 characters long; the limit is 255" in reply.return_message
    assert not lab.run_table.rows


async def test_a_run_that_fails_to_start_is_ended_as_aborted(make_lab, client) -> None:
    lab = await make_lab(metadata_state=unique("no_metadata_here"))
    reply = await cmd(client, lab.name, "start_timed_run", "doomed", 30)
    assert reply.return_code == 403  # the metadata MultiGet is not there
    (row,) = lab.run_table.rows.values()
    assert row["end_reason"] == "aborted" and row["end_timestamp"]
    assert not lab.snapshot.calls  # no data was taken: no snapshot
    assert not lab.daq.busy


async def test_stopping_the_service_during_a_run_ends_it_with_a_snapshot(make_lab, client) -> None:
    lab = await make_lab(next_id=77)
    assert (
        await cmd(client, lab.name, "start_timed_run", "interrupted_by_stop", 600)
    ).return_code == 0
    await lab.daq_service.stop()
    row = lab.run_table.rows[77]
    assert row["end_reason"] == "stopped" and row["end_timestamp"]
    (call,) = lab.snapshot.calls
    assert call[3].endswith("rid000000077_snapshot.json")
    snapshot = lab.data / "000yyyxxx" / "000000xxx" / "000000077" / "rid000000077_snapshot.json"
    assert snapshot.is_file()  # written through the stopping service's own metadata receiver


async def test_runs_left_open_by_a_crash_are_closed_as_interrupted_at_start(
    make_lab, client
) -> None:
    import datetime as dt

    from insectarium.dripline.message import format_timestamp

    hour_ago = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    rows = {
        5: {  # this DAQ's: planned to last 60 s, so it ended at the latest then
            "run_name": "lost",
            "daq_name": "generic_daq",
            "start_timestamp": format_timestamp(hour_ago),
            "run_time_s": 60,
        },
        6: {"run_name": "other daq", "daq_name": "another_daq", "start_timestamp": "x"},
    }
    lab = await make_lab(open_rows=rows)
    await eventually(lambda: "end_reason" in lab.run_table.rows[5], timeout=15)
    row = lab.run_table.rows[5]
    assert row["end_reason"] == "interrupted"
    assert row["end_timestamp"] == format_timestamp(hour_ago + dt.timedelta(seconds=60))
    assert "end_reason" not in lab.run_table.rows[6]  # another DAQ's run is left alone
    assert lab.snapshot.calls[0][:2] == [row["start_timestamp"], row["end_timestamp"]]
    # the row is closed before the run report is written (in a worker thread, under the end
    # lock): the DAQ must then be free, not at the instant the row changed
    await eventually(lambda: not lab.daq.busy, timeout=15)


async def test_timer_ends_the_run(make_lab, client) -> None:
    lab = await make_lab(next_id=42, run_table_cls=InsertOnlyRunTable)
    reply = await cmd(client, lab.name, "start_timed_run", "short", 1)
    assert reply.return_code == 0, reply.return_message
    snapshot = lab.data / "000yyyxxx" / "000000xxx" / "000000042" / "rid000000042_snapshot.json"
    await eventually(snapshot.exists, timeout=15)
    await eventually(lambda: not lab.daq.busy, timeout=5)
    assert (await client.get(lab.name))["run_id"] is None
    # the run table had no end_run (306): that is not an error
    assert "end_timestamp" not in lab.run_table.rows[42]


async def test_timer_end_failure_is_logged_critical_and_alerted(
    make_lab, client, mesh, auth, caplog
) -> None:
    lab = await make_lab(snapshot_fails=True)
    recorder = Recorder(
        unique("crit"),
        alert_keys=[f"status_message.{lab.daq_service.name}.critical"],
        dripline_mesh=mesh,
        authentication=auth,
        heartbeat_interval_s=0,
    )
    async with running(recorder):
        reply = await cmd(client, lab.name, "start_timed_run", "doomed", 1)
        assert reply.return_code == 0, reply.return_message
        await eventually(lambda: recorder.seen, timeout=15)
    key, payload = recorder.seen[0]
    assert key == f"status_message.{lab.daq_service.name}.critical"
    assert "snapshot failed" in payload["message"] and "database away" in payload["message"]
    assert any(
        r.levelname == "CRITICAL" and "database away" in r.getMessage() for r in caplog.records
    )
    # the DAQ is usable again
    assert not lab.daq.busy
    assert (await cmd(client, lab.name, "start_timed_run", "next", 30)).return_code == 0
    ended = await cmd(client, lab.name, "end_run")
    assert ended.return_code == 1200  # the snapshot error, named, after the run was ended
    assert "run 1234568 ended, but" in ended.return_message
    assert not lab.daq.busy


async def test_internal_methods_are_not_commands(make_lab, client) -> None:
    lab = await make_lab()
    for name in (
        "stop_data_taking",
        "start_data_taking",
        "interrupt",
        "run_path",
        "on_set_condition",
        "finish_run",
        "end_for_shutdown",
        "close_interrupted_runs",
    ):
        assert (await cmd(client, lab.name, name)).return_code == 306, name
    for name in ("stop", "on_start", "on_stopping"):
        assert (await cmd(client, lab.daq_service.name, name)).return_code == 306, name


def test_lab_config_builds_with_data_directory_override(tmp_path, monkeypatch) -> None:
    from insectarium.dripline.config import load_file
    from insectarium.dripline.factory import create_service

    cfg = load_file(Path(__file__).resolve().parents[1] / "files/configs/generic_daq.yaml")
    svc = create_service({**cfg, "data_directory": str(tmp_path)}, source="generic_daq.yaml")
    assert svc.data_directory == str(tmp_path)
    daq = svc.sync_children["daq_interface"]
    assert daq.data_directory == tmp_path
    assert daq.run_path(42, "_meta.json") == (
        tmp_path / "000yyyxxx/000000xxx/000000042/rid000000042_meta.json"
    )
    assert (daq.run_table_endpoint, daq.metadata_state_target) == ("run_table", "run_metadata")
    assert (daq.metadata_target, daq.snapshot_state_target) == ("metadata", "sc_snapshot")
    monkeypatch.setenv("INSECTARIUM_DATA_DIR", str(tmp_path / "env"))
    assert create_service(cfg).data_directory == str(tmp_path / "env")
