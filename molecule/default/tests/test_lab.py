"""Verify the three-host lab: broker, database, services, clients and a virtual run across hosts.

Run by molecule's testinfra verifier (docker backend through the molecule inventory).
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest
import testinfra

INVENTORY = os.environ.get("MOLECULE_INVENTORY_FILE", "")
REPO = Path(__file__).resolve().parents[3]
PROGRAMS = [
    "not-glenlivet",
    "not-sc_db",
    "not-snapshot_service",
    "not-run_table",
    "not-status_multido",
    "not-generic_daq",
]
DATA_DIR = "/var/lib/insectarium/data"


def _host(name: str):
    return testinfra.get_host(f"ansible://{name}?ansible_inventory={INVENTORY}")


@pytest.fixture(scope="module")
def broker():
    return _host("rabbit-broker")


@pytest.fixture(scope="module")
def db():
    return _host("sc-db")


@pytest.fixture(scope="module")
def services():
    return _host("glenlivet")


def psql(db, sql: str) -> str:
    out = db.check_output("su postgres -c %s", f"psql -d sc_db -tAq -c {_quote(sql)}")
    return out.strip()


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"


def wait_for(check, timeout: float = 90, interval: float = 2):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    return last


# ------------------------------------------------------------------ broker
def test_broker_listens(broker):
    assert (
        broker.socket("tcp://0.0.0.0:5672").is_listening
        or broker.socket("tcp://:::5672").is_listening
    )
    assert broker.socket("tcp://0.0.0.0:15672").is_listening


def test_broker_has_no_guest(broker):
    users = json.loads(broker.check_output("rabbitmqctl -q list_users --formatter json"))
    names = {u["user"] for u in users}
    assert "guest" not in names
    assert {"admin", "lab", *PROGRAMS} <= names


def test_logger_queue_is_a_quorum_queue(broker):
    """Values waiting for not-sc_db survive a broker restart: the queue is a quorum queue."""
    out = broker.check_output("rabbitmqctl -q list_queues name type durable")
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.strip()}
    assert rows.get("not-sc_db_alerts") == ["quorum", "true"], out
    assert "not-sc_db_alerts.upgrade" not in rows


def test_service_users_have_least_privileges(broker):
    perms = json.loads(
        broker.check_output("rabbitmqctl -q list_user_permissions not-sc_db --formatter json")
    )
    assert len(perms) == 1
    for key in ("configure", "write", "read"):
        regex = perms[0][key]
        assert regex != ".*"
        assert re.fullmatch(regex, "not-sc_db")
        assert re.fullmatch(regex, "not-sc_db_alerts")
        assert re.fullmatch(regex, "not-sc_db_alerts.upgrade")  # classic → quorum conversion
        assert re.fullmatch(regex, "requests")
        assert not re.fullmatch(regex, "not-glenlivet")


# ------------------------------------------------------------------ database
def test_database_listens(db):
    assert db.socket("tcp://0.0.0.0:5432").is_listening


def test_migrations_applied_once_each(db):
    files = sorted(p.name for p in (REPO / "files" / "sql").glob("[0-9]*_*.sql"))
    rows = psql(db, "SELECT filename FROM public.schema_migrations ORDER BY version").splitlines()
    assert rows == files


def test_endpoints_registered(db):
    rows = dict(
        line.split("|")
        for line in psql(db, "SELECT endpoint_name, type FROM endpoint_id_map").splitlines()
    )
    assert rows["peaches"] == "numeric"
    assert rows["cheese"] == "string"
    assert rows["recipe"] == "json"
    assert "donuts" not in rows


def test_pg_hba_uses_scram(db):
    hba = db.file("/etc/postgresql/15/main/pg_hba.conf").content_string
    assert "scram-sha-256" in hba
    assert " trust" not in hba


# ------------------------------------------------------------------ services host
def test_supervisor_web_ui_local_only(services):
    assert services.socket("tcp://127.0.0.1:9001").is_listening
    assert not services.socket("tcp://0.0.0.0:9001").is_listening


@pytest.mark.parametrize("program", PROGRAMS)
def test_auth_file_is_private(services, program):
    f = services.file(f"/etc/insectarium/auth/{program}.yaml")
    assert f.exists
    assert f.user == "insectarium"
    assert f.mode == 0o600


@pytest.mark.parametrize("program", PROGRAMS)
def test_program_running(services, program):
    def running():
        out = services.run("supervisorctl status %s", program).stdout
        return "RUNNING" in out

    assert wait_for(running, timeout=60), services.run(
        "tail -n 30 /var/log/insectarium/%s.log", program
    ).stdout


def test_programs_do_not_run_as_root(services):
    out = services.check_output("ps -eo user:20,args | grep '[d]l-serve' || true")
    lines = [line for line in out.splitlines() if line.strip()]
    assert lines
    assert all(line.split()[0] == "insectarium" for line in lines)


# ------------------------------------------------------------------ clients and a run
def test_dl_agent_get_from_another_host(db):
    def get():
        cmd = db.run("dl-agent --json-print get peaches")
        return cmd if cmd.rc == 0 else None

    cmd = wait_for(get, timeout=60)
    assert cmd is not None, db.run("dl-agent get peaches").stderr
    assert "value_raw" in cmd.stdout


def _run_id(reply: dict) -> int:
    payload = reply.get("payload", reply)
    if isinstance(payload, dict):
        payload = payload.get("value_raw", payload.get("values", payload))
    if isinstance(payload, list):
        payload = payload[0]
    return int(payload)


def test_virtual_run_across_hosts(services, db):
    before = int(psql(db, "SELECT count(*) FROM endpoint_numeric_data") or 0)
    cmd = services.run("dl-agent --json-print cmd daq_interface -s start_timed_run molecule_run 3")
    assert cmd.rc == 0, cmd.stdout + cmd.stderr
    run_id = _run_id(json.loads(cmd.stdout))
    run_dir = f"{DATA_DIR}/{run_id // 1_000_000:03d}yyyxxx/{run_id // 1000:06d}xxx/{run_id:09d}"

    def files_written():
        out = services.run("ls %s", run_dir).stdout.split()
        meta = [n for n in out if n.endswith("_meta.json")]
        snap = [n for n in out if n.endswith("_snapshot.json")]
        return (meta, snap) if meta and snap else None

    found = wait_for(files_written, timeout=60)
    assert found, services.run("find %s -type f", DATA_DIR).stdout
    meta, snap = found
    json.loads(services.file(f"{run_dir}/{meta[0]}").content_string)
    json.loads(services.file(f"{run_dir}/{snap[0]}").content_string)

    row = psql(db, f"SELECT run_name FROM runs.run_table WHERE run_id = {run_id}")
    assert row == "molecule_run"

    def ended():  # the timer's end of run (migration 005 applied by the postgresql role)
        reason = psql(db, f"SELECT end_reason FROM runs.run_table WHERE run_id = {run_id}")
        return reason or None

    assert wait_for(ended, timeout=60) == "completed"

    def logged():
        n = int(psql(db, "SELECT count(*) FROM endpoint_numeric_data") or 0)
        return n > 0 and n >= before

    assert wait_for(logged, timeout=60)
