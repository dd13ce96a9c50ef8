"""End to end: the six lab services from their real configs, one virtual run, and what it leaves.

This is what ``supervisorctl start all`` plus ``dl-agent cmd daq_interface -s start_timed_run …``
does on a provisioned lab, on the test servers: a fresh ``sc_db`` (migrations + seed), every
service a ``dl-serve`` process with ``files/configs/<file>.yaml`` and only the host-specific
overrides Ansible passes (broker, auth file, ``database_*``, ``data_directory``).  The services
run in a private RabbitMQ vhost so that their fixed names (``not-glenlivet``, ``peaches`` …)
cannot meet another copy of the lab on a shared broker.

The run is started with ``dl-agent``; a second start is refused (1102) through both ``dl-agent``
and ``dragonfly``.  After the run it checks the run-table row, the ``_meta.json`` and
``_snapshot.json`` files in the run's directory, the values logged to the data tables during the
run, and that the unmapped ``donuts`` left nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

from .runtime_support import CONFIGS, LAB_SERVICES

SERVICES = LAB_SERVICES  # started in this order
# Long enough for a few dl-agent processes (~1 s each on the lab's 2 cores) to set values while
# the run is going; the run is ended by the DAQ's own timer.
RUN_SECONDS = 12
FIRST = "not-sc_db"

pytestmark = pytest.mark.slow


@dataclass
class Lab:
    """The running lab: how to reach it and where its logs and data are."""

    common_args: list[str]
    client: Any  # a BlockingInterface in the lab's vhost (fast: no process start per request)
    data_dir: Path
    dsn: str
    logs: dict[str, Path]
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    argv: dict[str, list[str]] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path = Path()

    def start(self, name: str) -> None:
        """(Re)start service ``name`` as the fixture first did (its log is appended to)."""
        with self.logs[name].open("ab") as log:
            self.procs[name] = subprocess.Popen(
                self.argv[name], stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=self.cwd
            )

    def agent(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """``dl-agent <connection options> <args>`` as a process."""
        return subprocess.run(
            [sys.executable, "-m", "insectarium.cli.agent", *self.common_args, *args],
            check=False,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def answers_ping(self, name: str) -> bool:
        from insectarium.dripline import ReplyError

        try:
            self.client.cmd(name, "ping", timeout_s=2)
        except ReplyError:
            return False
        return True

    def diagnostics(self) -> str:
        parts = []
        for name, path in self.logs.items():
            proc = self.procs.get(name)
            state = "not started" if proc is None else f"exit {proc.poll()}"
            text = path.read_text(errors="replace") if path.exists() else ""
            tail = "\n".join(text.splitlines()[-25:])
            parts.append(f"----- {name} ({state}) -----\n{tail}")
        return "\n".join(parts)


def wait_for(predicate: Any, timeout: float, what: str, lab: Lab) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout} s\n{lab.diagnostics()}")
        time.sleep(0.2)


@pytest.fixture
def vhost(rabbitmq_server: Any) -> Iterator[str]:
    """A private vhost on the test broker (``/`` if the broker cannot be administered)."""
    name = f"e2e_{uuid.uuid4().hex[:8]}"
    try:
        rabbitmq_server.ctl("add_vhost", name)
        rabbitmq_server.ctl("set_permissions", "-p", name, rabbitmq_server.user, ".*", ".*", ".*")
    except Exception:
        yield "/"
        return
    yield name
    with contextlib.suppress(Exception):
        rabbitmq_server.ctl("delete_vhost", name)


@pytest.fixture
def lab(rabbitmq_server: Any, vhost: str, lab_database: str, tmp_path: Path) -> Iterator[Lab]:
    from psycopg.conninfo import conninfo_to_dict

    from insectarium.dripline import Authentication, BlockingInterface, MeshConfig

    missing = [c for _n, c, _db in SERVICES if not (CONFIGS / c).is_file()]
    assert not missing, f"config files missing: {missing}"
    db = conninfo_to_dict(lab_database)
    auth = tmp_path / "auth.yaml"
    auth.write_text(
        json.dumps(
            {
                "dripline": {
                    "username": rabbitmq_server.user,
                    "password": rabbitmq_server.password,
                },
                "postgres": {"username": db.get("user", ""), "password": db.get("password", "")},
            }
        )
    )
    auth.chmod(0o600)
    agent_cfg = tmp_path / "agent.yaml"
    agent_cfg.write_text(json.dumps({"dripline_mesh": {"vhost": vhost}}))
    host = urlparse(rabbitmq_server.url).hostname or "localhost"
    connection = ["-b", host, "-p", str(rabbitmq_server.port), "--auth-file", str(auth)]
    data_dir = tmp_path / "data"
    logs_dir = tmp_path / "logs"
    logs_dir.mkdir()
    client = BlockingInterface(
        dripline_mesh=MeshConfig(broker=host, broker_port=rabbitmq_server.port, vhost=vhost),
        authentication=Authentication(
            groups={
                "dripline": {
                    "username": rabbitmq_server.user,
                    "password": rabbitmq_server.password,
                }
            }
        ),
        timeout_s=30,
        name="e2e",
    )
    lab = Lab(
        common_args=[*connection, "-c", str(agent_cfg)],
        client=client,
        data_dir=data_dir,
        dsn=lab_database,
        logs={name: logs_dir / f"{name}.log" for name, _c, _d in SERVICES},
    )
    db_overrides = [
        f"database_server={db.get('host') or 'localhost'}",
        f"database_port={db.get('port') or 5432}",
        f"database_name={db['dbname']}",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("INSECTARIUM_DATA_DIR", None)
    try:
        started: list[str] = []
        for name, config, needs_db in SERVICES:
            overrides = [f"dripline_mesh.vhost={vhost}"]
            if needs_db:
                overrides += db_overrides
            if name == "not-generic_daq":
                overrides.append(f"data_directory={data_dir}")
            argv = [
                sys.executable,
                "-m",
                "insectarium.cli.serve",
                "-c",
                str(CONFIGS / config),
                *connection,
                *overrides,
            ]
            lab.argv[name], lab.env, lab.cwd = argv, env, tmp_path
            lab.start(name)
            started.append(name)
            if name == FIRST:  # the logger's durable queue must exist before values flow
                wait_until_answering(lab, [name])
        wait_until_answering(lab, [n for n in started if n != FIRST])
        yield lab
    finally:
        client.close()
        for proc in reversed(list(lab.procs.values())):
            if proc.poll() is None:
                proc.terminate()
        for proc in lab.procs.values():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def wait_until_answering(lab: Lab, names: list[str]) -> None:
    """Until every named service answers ``ping`` (a service that exits fails the test)."""
    pending = list(names)

    def all_answer() -> bool:
        for name in list(pending):
            proc = lab.procs[name]
            if proc.poll() is not None:
                pytest.fail(f"{name} exited with {proc.returncode}\n{lab.diagnostics()}")
            if lab.answers_ping(name):
                pending.remove(name)
        return not pending

    wait_for(all_answer, 90, f"{', '.join(names)} answering ping", lab)


def query(dsn: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(sql, params).fetchall()


def logged_values(dsn: str, table: str, name: str) -> list[Any]:
    rows = query(
        dsn,
        f"SELECT d.value_raw FROM public.{table} d JOIN public.endpoint_id_map m "
        'USING (endpoint_id) WHERE m.endpoint_name = %s ORDER BY d."timestamp"',
        name,
    )
    return [r[0] for r in rows]


def has(values: list[Any], expected: float) -> bool:
    return any(
        isinstance(v, int | float) and not isinstance(v, bool) and v == pytest.approx(expected)
        for v in values
    )


def test_virtual_run(lab: Lab) -> None:
    # a value logged before the run: the snapshot's "latest before start"
    out = lab.agent("set", "peaches", "1.1")
    assert out.returncode == 0, f"{out.stdout}{out.stderr}"
    wait_for(
        lambda: 1.1 in logged_values(lab.dsn, "endpoint_numeric_data", "peaches"),
        30,
        "peaches=1.1 in the database",
        lab,
    )
    time.sleep(0.05)  # keep the pre-run row strictly before the run's start timestamp

    # exactly the documented habit: `dl-agent cmd daq_interface -s start_timed_run <name> <s>`
    started = lab.agent(
        "--json-print",
        "cmd",
        "daq_interface",
        "-s",
        "start_timed_run",
        "e2e_run",
        str(RUN_SECONDS),
    )
    assert started.returncode == 0, f"{started.stdout}{started.stderr}\n{lab.diagnostics()}"
    run_id = json.loads(started.stdout)["payload"]
    assert isinstance(run_id, int)

    # values during the run (log_on_set sends each to the logger at once)
    for endpoint, value in (
        ("peaches", 2.2),
        ("chips", 3.3),
        ("waffles", 4.4),
        ("cheese", "brie"),
        ("donuts", 13),
    ):
        lab.client.set(endpoint, value)
    # a second run is refused, through dl-agent and through the seed's dragonfly habit, at once
    second = {
        "dl-agent": [
            "insectarium.cli.agent",
            *lab.common_args,
            "cmd",
            "daq_interface",
            "-s",
            "start_timed_run",
            "second",
            "5",
        ],
        "dragonfly": [
            "insectarium.cli.dragonfly",
            "cmd",
            "-vv",
            *lab.common_args,
            "daq_interface.start_timed_run",
            "second",
            "5",
            "--strict",
        ],
    }
    procs = {
        tool: subprocess.Popen(
            [sys.executable, "-m", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for tool, argv in second.items()
    }
    outputs = {tool: proc.communicate(timeout=120) for tool, proc in procs.items()}
    for tool, proc in procs.items():
        assert proc.returncode == 11, (tool, outputs[tool])  # 1102 daq_running // 100
    assert outputs["dragonfly"][0].startswith(
        "daq_interface.start_timed_run->second->5(ret:1102): [not-generic_daq]-> None\n"
        "return message: DAQ is already running: aborting run"
    ), outputs["dragonfly"]
    status = lab.client.get("daq_interface")
    assert status["running"] is True and status["run_id"] == run_id, (
        f"the run ended before the values were set (slow machine?): {status}\n{lab.diagnostics()}"
    )

    # the end: the timer stops data taking, the snapshot is written, the DAQ is idle again
    wait_for(
        lambda: lab.client.get("daq_interface")["run_id"] is None,
        RUN_SECONDS + 60,
        "the run to end",
        lab,
    )

    # --- the run table
    rows = query(
        lab.dsn,
        "SELECT run_id, run_name, start_timestamp, end_timestamp, daq_name, run_time_s, "
        "end_reason FROM runs.run_table",
    )
    assert len(rows) == 1, rows
    row_id, row_name, start_ts, end_ts, daq_name, run_time_s, end_reason = rows[0]
    assert (row_id, row_name, daq_name, run_time_s, end_reason) == (
        run_id,
        "e2e_run",
        "generic_daq",
        RUN_SECONDS,
        "completed",
    )
    assert end_ts is not None and end_ts >= start_ts  # end_run reached the run table

    # --- the run directory
    r = run_id
    run_dir = lab.data_dir / f"{r // 10**6:03d}yyyxxx" / f"{r // 10**3:06d}xxx" / f"{r:09d}"
    base = f"rid{r:09d}"
    assert run_dir.is_dir(), f"{run_dir} missing; data dir holds {list(lab.data_dir.rglob('*'))}"
    meta = json.loads((run_dir / f"{base}_meta.json").read_text())
    assert meta["DAQ"] == "generic_daq"
    assert meta["run_time"] == RUN_SECONDS
    assert meta["run_id"] == run_id
    assert meta["DAQ_MODE"] == "virtual"
    assert meta["peaches"] == pytest.approx(2.2)  # value_cal of 1.1, read at run start
    assert meta["chips"] == 1.5
    assert meta["waffles"] == 4.0
    assert meta["cheese"] == "gouda"
    data_file = json.loads((run_dir / f"{base}.json").read_text())
    assert data_file["run_id"] == run_id and data_file["data_end"] is not None

    snapshot = json.loads((run_dir / f"{base}_snapshot.json").read_text())

    def snapshot_values(name: str) -> list[Any]:
        entries = snapshot.get(name) or []
        return [e.get(k) for e in entries for k in ("value_cal", "value_raw") if k in e]

    assert has(snapshot_values("peaches"), 4.4), snapshot  # value_cal of 2.2
    assert has(snapshot_values("chips"), 9.9), snapshot  # value_cal of 3.3
    assert "donuts" not in snapshot

    # --- the data tables
    for name, value in (("peaches", 2.2), ("chips", 3.3), ("waffles", 4.4)):
        assert has(logged_values(lab.dsn, "endpoint_numeric_data", name), value), name
    assert "brie" in logged_values(lab.dsn, "endpoint_string_data", "cheese")
    assert logged_values(lab.dsn, "endpoint_json_data", "recipe"), "recipe's first log missing"

    # --- donuts: served and logged by the key-value store, but not mapped, so nowhere in the DB
    assert lab.client.get("donuts")["value_raw"] == 13
    assert query(lab.dsn, "SELECT 1 FROM endpoint_id_map WHERE endpoint_name = 'donuts'") == []
    for table in ("endpoint_numeric_data", "endpoint_string_data", "endpoint_json_data"):
        orphans = query(
            lab.dsn,
            f"SELECT count(*) FROM public.{table} d LEFT JOIN public.endpoint_id_map m "
            "USING (endpoint_id) WHERE m.endpoint_name IS NULL OR m.endpoint_name = 'donuts'",
        )
        assert orphans == [(0,)], table


def run_row(dsn: str, run_id: int) -> tuple[Any, ...]:
    (row,) = query(
        dsn,
        "SELECT start_timestamp, end_timestamp, end_reason FROM runs.run_table WHERE run_id = %s",
        run_id,
    )
    return row


def run_files(lab: Lab, run_id: int) -> Path:
    r = run_id
    return lab.data_dir / f"{r // 10**6:03d}yyyxxx" / f"{r // 10**3:06d}xxx" / f"{r:09d}"


def test_a_stopped_or_crashed_daq_leaves_no_run_open(lab: Lab) -> None:
    """SIGTERM (supervisorctl stop) during a run ends it, snapshot included, before the DAQ
    exits; a run left open by kill -9 is closed as interrupted when the DAQ starts again."""
    import signal

    daq = "not-generic_daq"
    first = lab.client.cmd("daq_interface", "start_timed_run", ["stopped_run", 600])
    time.sleep(1)
    lab.procs[daq].send_signal(signal.SIGTERM)
    assert lab.procs[daq].wait(30) == 0, lab.diagnostics()
    start, end, reason = run_row(lab.dsn, first)
    assert reason == "stopped" and end is not None and end >= start
    files = run_files(lab, first)
    assert (files / f"rid{first:09d}_snapshot.json").is_file(), lab.diagnostics()
    assert json.loads((files / f"rid{first:09d}.json").read_text())["data_end"] is not None

    lab.start(daq)
    wait_until_answering(lab, [daq])
    second = lab.client.cmd("daq_interface", "start_timed_run", ["crashed_run", 600])
    time.sleep(1)
    lab.procs[daq].kill()  # no chance to end anything
    lab.procs[daq].wait(10)
    assert run_row(lab.dsn, second)[1] is None  # left open
    lab.start(daq)
    wait_until_answering(lab, [daq])
    wait_for(lambda: run_row(lab.dsn, second)[2] is not None, 60, "the open run closed", lab)
    start, end, reason = run_row(lab.dsn, second)
    assert reason == "interrupted" and start <= end
    assert (run_files(lab, second) / f"rid{second:09d}_snapshot.json").is_file()
    # its report is the last step of closing it; until then a start is refused as "ending a run"
    report = run_files(lab, second) / f"rid{second:09d}_report.html"
    wait_for(report.is_file, 60, "the interrupted run's report", lab)
    # the first run was not touched again, and the DAQ works
    assert run_row(lab.dsn, first)[2] == "stopped"

    def start_after_crash() -> int | None:
        from insectarium.dripline import ReplyError

        try:
            return lab.client.cmd("daq_interface", "start_timed_run", ["after_crash", 600])
        except ReplyError as exc:  # the last moments of closing the interrupted run
            if "ending a run" in exc.message:
                return None
            raise

    third = wait_for(start_after_crash, 30, "a new run after the recovery", lab)
    assert lab.client.cmd("daq_interface", "end_run")["end_reason"] == "ended"
    assert run_row(lab.dsn, third)[2] == "ended"
