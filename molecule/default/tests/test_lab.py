"""Verify the three-host lab: broker, database, services, clients and a virtual run across hosts.

Run by molecule's testinfra verifier on the containers, and by `./lab verify --target vagrant`
over SSH on the Vagrant hosts: the `broker`, `db` and `services` fixtures (conftest.py) pick the
hosts from the inventory's groups.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
import yaml

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


def test_management_ui_on_the_lab_network_only(broker):
    """The inventories bind it to the broker's lab address; never all addresses."""
    addresses = broker.check_output("hostname -I").split()
    assert any(broker.socket(f"tcp://{a}:15672").is_listening for a in addresses), addresses
    assert not broker.socket("tcp://0.0.0.0:15672").is_listening
    assert not broker.socket("tcp://:::15672").is_listening


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
        assert not re.fullmatch(regex, "")  # the default exchange


def test_every_account_has_topic_permissions(broker):
    """Without topic permissions on an exchange RabbitMQ lets a user use any routing key."""
    for user in ("lab", *PROGRAMS):
        topics = json.loads(
            broker.check_output(
                "rabbitmqctl -q list_user_topic_permissions %s --formatter json", user
            )
        )
        assert {t["exchange"] for t in topics} == {"requests", "alerts"}, user
    topics = {
        t["exchange"]: t
        for t in json.loads(
            broker.check_output(
                "rabbitmqctl -q list_user_topic_permissions not-glenlivet --formatter json"
            )
        )
    }
    assert re.fullmatch(topics["alerts"]["write"], "sensor_value.peaches")
    assert re.fullmatch(topics["alerts"]["write"], "heartbeat.not-glenlivet")
    assert not re.fullmatch(topics["alerts"]["write"], "sensor_value.sc_db_status")
    assert not re.fullmatch(topics["alerts"]["write"], "heartbeat.not-sc_db")


def test_admin_has_no_access_to_the_mesh(broker):
    perms = json.loads(
        broker.check_output("rabbitmqctl -q list_user_permissions admin --formatter json")
    )
    for key in ("configure", "write", "read"):
        for name in ("requests", "alerts", "not-sc_db_alerts", "", "amq_0123abcd"):
            assert not re.fullmatch(perms[0][key], name), (key, name)


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


def as_role(db, role: str, password: str, sql: str, dbname: str = "sc_db", host: str = "sc-db"):
    """Run ``sql`` over TCP as a password-protected role, as a service would."""
    return db.run(
        "PGPASSWORD=%s psql -X -v ON_ERROR_STOP=1 -tAq -d %s -c %s",
        password,
        f"host={host} dbname={dbname} user={role} connect_timeout=5",
        sql,
    )


@pytest.mark.parametrize(
    ("role", "secret", "sql"),
    [
        ("sc_run_writer", "run_writer", "UPDATE runs.run_table SET run_name = 'renamed'"),
        ("sc_run_writer", "run_writer", "DELETE FROM runs.run_table"),
        ("sc_run_writer", "run_writer", "DROP TABLE runs.run_table"),
        ("sc_logger", "logger", "DELETE FROM endpoint_numeric_data"),
        ("sc_logger", "logger", "UPDATE endpoint_id_map SET type = 'json'"),
        ("sc_logger", "logger", "CREATE TEMP TABLE scratch (x int)"),
        (
            "sc_reader",
            "reader",
            "INSERT INTO endpoint_id_map (endpoint_name, type) VALUES ('x', 'numeric')",
        ),
        ("sc_shifter", "shifter", "INSERT INTO runs.run_table (run_name) VALUES ('forged')"),
        ("sc_shifter", "shifter", "CREATE TABLE public.mine (x int)"),
    ],
)
def test_database_roles_refuse_what_they_must_not(db, role, secret, sql, secrets):
    out = as_role(db, role, secrets[f"vault_postgresql_{secret}_password"], sql)
    assert out.rc != 0, out.stdout
    assert "permission denied" in out.stderr or "must be owner" in out.stderr, out.stderr


def test_run_writer_may_set_only_the_end(db, secrets):
    pw = secrets["vault_postgresql_run_writer_password"]
    ok = as_role(
        db,
        "sc_run_writer",
        pw,
        "UPDATE runs.run_table SET end_timestamp = end_timestamp, end_reason = end_reason "
        "WHERE false",
    )
    assert ok.rc == 0, ok.stderr
    inserted = as_role(
        db,
        "sc_run_writer",
        pw,
        "INSERT INTO runs.run_table (run_name) VALUES ('t') RETURNING run_id",
    )
    assert inserted.rc == 0, inserted.stderr


@pytest.mark.parametrize("role", ["sc_logger", "sc_shifter"])
def test_roles_reach_only_the_lab_database(db, role, secrets):
    secret = {"sc_logger": "logger", "sc_shifter": "shifter"}[role]
    # 127.0.0.1: pg_hba lets any database through there, so only the missing CONNECT stops it
    out = as_role(
        db,
        role,
        secrets[f"vault_postgresql_{secret}_password"],
        "SELECT 1",
        "postgres",
        "127.0.0.1",
    )
    assert out.rc != 0
    assert "permission denied for database" in out.stderr, out.stderr


# ------------------------------------------------------------------ services host
def test_supervisor_web_ui_local_only(services):
    assert services.socket("tcp://127.0.0.1:9001").is_listening
    assert not services.socket("tcp://0.0.0.0:9001").is_listening


@pytest.mark.parametrize("program", PROGRAMS)
def test_auth_file_is_private(services, program):
    f = services.file(f"/etc/insectarium/auth/{program}.yaml")
    assert f.exists
    assert f.user == program
    assert f.mode == 0o600


@pytest.mark.parametrize(
    ("reader", "secret_of"), [("not-glenlivet", "not-sc_db"), ("shifter", "not-run_table")]
)
def test_no_one_reads_another_programs_secrets(services, reader, secret_of):
    out = services.run(
        "su -s /bin/sh %s -c %s", reader, f"cat /etc/insectarium/auth/{secret_of}.yaml"
    )
    assert out.rc != 0
    assert "Permission denied" in out.stderr
    assert "password" not in out.stdout


def test_supervisor_web_ui_password_is_not_stored_in_clear(services, secrets):
    conf = services.file("/etc/supervisor/conf.d/00-inet_http_server.conf")
    assert conf.mode == 0o600
    assert secrets["vault_supervisor_password"] not in services.check_output(
        "cat /etc/supervisor/conf.d/00-inet_http_server.conf"
    )


@pytest.mark.parametrize("program", PROGRAMS)
def test_program_running(services, program):
    def running():
        out = services.run("supervisorctl status %s", program).stdout
        return "RUNNING" in out

    assert wait_for(running, timeout=60), services.run(
        "tail -n 30 /var/log/insectarium/%s.log", program
    ).stdout


def test_each_program_runs_as_its_own_user(services):
    out = services.check_output("ps -eo user:32,args | grep '[d]l-serve' || true")
    users = {}
    for line in out.splitlines():
        if line.strip():
            user, args = line.split(None, 1)
            program = re.search(r"--auth-file \S+/([^/ ]+)\.yaml", args).group(1)
            users[program] = user
    assert users == {p: p for p in PROGRAMS}


# ------------------------------------------------------------------ the shifter account
def as_shifter(host, command: str):
    return host.run("su - shifter -c %s", command)


def test_shifter_uses_the_lab_tools(services, db):
    got = as_shifter(db, "dl-agent --json-print get peaches")
    assert got.rc == 0, got.stderr
    runs = as_shifter(services, "insectarium runs")
    assert runs.rc == 0, runs.stderr


def test_shifter_cannot_forge_a_sensor_value(services, db):
    forged = as_shifter(services, "dl-agent alert sensor_value.peaches 31337")
    assert forged.rc == 4, forged.stdout + forged.stderr
    assert "refused" in forged.stderr
    time.sleep(3)  # the logger batches every 0.2 s: a forged value would be in by now
    stored = psql(
        db,
        "SELECT count(*) FROM endpoint_numeric_data d JOIN endpoint_id_map m USING (endpoint_id) "
        "WHERE m.endpoint_name = 'peaches' AND d.value_raw = 31337",
    )
    assert stored == "0"


def test_shifter_cannot_watch_requests(services):
    out = as_shifter(services, "timeout 20 dl-mon -r '#'")
    assert out.rc == 4, out.stdout + out.stderr
    assert "refused" in out.stderr


def test_shifter_secrets_are_private(services):
    f = services.file("/home/shifter/.dripline_authentications.yaml")
    assert f.user == "shifter" and f.mode == 0o600
    auth = yaml.safe_load(services.check_output("cat /home/shifter/.dripline_authentications.yaml"))
    assert auth["dripline"]["username"] == "lab"
    assert auth["postgres"]["username"] == "sc_shifter"


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

    # Values are logged every 10 s: new rows prove the logger is connected now (also after a
    # restart of the broker or the services host).
    def logged():
        n = int(psql(db, "SELECT count(*) FROM endpoint_numeric_data") or 0)
        return n > before

    assert wait_for(logged, timeout=60)


# ------------------------------------------------------------------ lab console
CONSOLE_PORT = 8080
# one HTTP request from a lab host, with Python's standard library (no curl in the images)
HTTP = """
import base64, json, sys, urllib.error, urllib.request
url, auth, method = sys.argv[1], sys.argv[2], sys.argv[3]
req = urllib.request.Request(url, method=method, data=b"{}" if method == "POST" else None)
req.add_header("Accept", "application/json")
req.add_header("Content-Type", "application/json")
if auth:
    req.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
try:
    with urllib.request.urlopen(req, timeout=30) as r:
        print(r.status); print(r.read().decode())
except urllib.error.HTTPError as e:
    print(e.code); print(e.read().decode())
"""


def http(host, url: str, auth: str = "", method: str = "GET") -> tuple[int, str]:
    out = host.check_output("python3 -c %s %s %s %s", HTTP, url, auth, method)
    status, _, body = out.partition("\n")
    return int(status), body


def test_console_answers_401_without_credentials_and_200_with_them(services, secrets):
    url = f"http://glenlivet:{CONSOLE_PORT}/api/runs"
    assert wait_for(lambda: http(services, url)[0] == 401, timeout=60)
    password = secrets["vault_console_lab_password"]
    status, body = http(services, url, f"lab:{password}")
    assert status == 200, body
    assert "molecule_run" in body or "runs" in json.loads(body)
    assert http(services, url, "lab:wrong-password")[0] == 401


def test_console_listens_on_the_lab_address_only(services):
    assert not services.socket(f"tcp://0.0.0.0:{CONSOLE_PORT}").is_listening
    assert not services.socket(f"tcp://127.0.0.1:{CONSOLE_PORT}").is_listening
    address = services.check_output("getent hosts glenlivet").split()[0]
    assert services.socket(f"tcp://{address}:{CONSOLE_PORT}").is_listening


def test_console_is_on_the_lab_network_and_shows_the_programs(db, secrets):
    base = f"http://glenlivet:{CONSOLE_PORT}"
    assert http(db, base + "/healthz")[0] == 200
    assert http(db, base + "/api/services")[0] == 401
    password = secrets["vault_console_lab_password"]
    status, body = http(db, base + "/api/services", f"lab:{password}")
    assert status == 200, body
    programs = {p["name"]: p["state"] for p in json.loads(body)["programs"]}
    assert set(PROGRAMS) <= set(programs), body
    assert json.loads(body)["errors"] == {}


def test_console_viewer_may_not_stop_programs(services, secrets):
    password = secrets["vault_console_shifter_password"]
    url = f"http://glenlivet:{CONSOLE_PORT}/api/services/glenlivet/not-glenlivet/stop"
    status, body = http(services, url, f"shifter:{password}", "POST")
    assert status == 403, body
    assert "RUNNING" in services.run("supervisorctl status not-glenlivet").stdout


def test_console_runs_as_its_own_user_with_a_private_config(services):
    out = services.check_output("ps -eo user:24,args | grep '[i]nsectarium-console' || true")
    assert out and all(line.split()[0] == "insectarium-console" for line in out.splitlines())
    f = services.file("/etc/insectarium/console.yaml")
    assert (f.user, f.group, f.mode) == ("root", "insectarium-console", 0o640)
    # it cannot read the services' credentials
    assert (
        services.run(
            "su -s /bin/sh insectarium-console -c 'cat /etc/insectarium/auth/not-sc_db.yaml'"
        ).rc
        != 0
    )


def test_console_database_role_is_read_only(db):
    assert psql(db, "SELECT has_table_privilege('sc_console', 'runs.run_table', 'SELECT')") == "t"
    for table, priv in (
        ("runs.run_table", "INSERT"),
        ("public.endpoint_numeric_data", "INSERT"),
        ("public.endpoint_id_map", "UPDATE"),
        ("public.endpoint_numeric_rollup_1m", "DELETE"),
    ):
        assert psql(db, f"SELECT has_table_privilege('sc_console', '{table}', '{priv}')") == "f"
