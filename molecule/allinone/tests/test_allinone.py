"""Verify the all-in-one container: every role through the sysv fallback (no systemd), with the
lab's TLS switch on (amqps only, PostgreSQL hostssl + verify-full, management UI over HTTPS),
a virtual run over TLS, and a --check --diff run whose output holds no secret."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
import testinfra
import yaml

INVENTORY = os.environ.get("MOLECULE_INVENTORY_FILE", "")
SCENARIO = Path(__file__).resolve().parents[1]
REPO = SCENARIO.parents[1]
SECRETS = yaml.safe_load((REPO / "inventories/docker/group_vars/all/secrets.yml").read_text())
CA = "/etc/insectarium/tls/ca.pem"
HOST = os.environ.get("INSECTARIUM_AIO_NAME") or "insectarium-aio"  # inventory name
PROGRAMS = [
    "not-glenlivet",
    "not-sc_db",
    "not-snapshot_service",
    "not-run_table",
    "not-status_multido",
    "not-generic_daq",
]


@pytest.fixture(scope="module")
def aio():
    return testinfra.get_host(f"ansible://{HOST}?ansible_inventory={INVENTORY}")


def test_no_systemd(aio):
    assert aio.check_output("cat /proc/1/comm") != "systemd"


@pytest.mark.parametrize("port", [5671, 5432])
def test_ports(aio, port):
    assert (
        aio.socket(f"tcp://0.0.0.0:{port}").is_listening
        or aio.socket(f"tcp://:::{port}").is_listening
    )


def test_plain_amqp_is_off(aio):
    assert not aio.socket("tcp://0.0.0.0:5672").is_listening
    assert not aio.socket("tcp://:::5672").is_listening
    probe = aio.run(
        "python3 -c %s",
        f"import socket; socket.create_connection(('{HOST}', 5672), timeout=5)",
    )
    assert probe.rc != 0 and "Connection refused" in probe.stderr


def test_management_ui_https_on_the_lab_network_only(aio):
    address = aio.check_output("hostname -I").split()[0]
    assert aio.socket(f"tcp://{address}:15671").is_listening
    assert not aio.socket("tcp://0.0.0.0:15671").is_listening
    assert not aio.socket(f"tcp://{address}:15672").is_listening
    page = aio.run(
        "python3 -c %s",
        "import ssl, urllib.request; "
        f"ctx = ssl.create_default_context(cafile='{CA}'); "
        f"print(urllib.request.urlopen('https://{HOST}:15671/', context=ctx, timeout=10).status)",
    )
    assert page.rc == 0 and page.stdout.strip() == "200", page.stderr


def test_broker_certificate_names_the_host(aio):
    out = aio.run(
        "python3 -c %s",
        "import socket, ssl; "
        f"ctx = ssl.create_default_context(cafile='{CA}'); "
        f"raw = socket.create_connection(('{HOST}', 5671)); "
        f"s = ctx.wrap_socket(raw, server_hostname='{HOST}'); "
        "print(s.version())",
    )
    assert out.rc == 0 and out.stdout.startswith("TLSv1."), out.stderr


def test_supervisor_web_ui(aio):
    assert aio.socket("tcp://127.0.0.1:9001").is_listening


def test_no_guest(aio):
    users = json.loads(aio.check_output("rabbitmqctl -q list_users --formatter json"))
    assert "guest" not in {u["user"] for u in users}


@pytest.mark.parametrize("program", PROGRAMS)
def test_program_running(aio, program):
    deadline = time.monotonic() + 60
    out = ""
    while time.monotonic() < deadline:
        out = aio.run("supervisorctl status %s", program).stdout
        if "RUNNING" in out:
            break
        time.sleep(2)
    assert "RUNNING" in out, aio.run("tail -n 30 /var/log/insectarium/%s.log", program).stdout


def test_second_logger_process_drains_the_same_queue(aio):
    """lab_services_sensor_logger_processes: 2 -> not-sc_db and not-sc_db-2 on not-sc_db_alerts."""
    deadline = time.monotonic() + 60
    out = ""
    while time.monotonic() < deadline:
        out = aio.run("supervisorctl status not-sc_db-workers:not-sc_db-2").stdout
        if "RUNNING" in out:
            break
        time.sleep(2)
    assert "RUNNING" in out, aio.run("tail -n 30 /var/log/insectarium/not-sc_db-2.log").stdout
    consumers = None
    while time.monotonic() < deadline:
        out = aio.check_output("rabbitmqctl -q list_queues name consumers --formatter json")
        queues = {q["name"]: q["consumers"] for q in json.loads(out)}
        consumers = queues.get("not-sc_db_alerts")
        if consumers == 2:
            break
        time.sleep(2)
    assert consumers == 2, out


def test_programs_use_tls(aio):
    conf = aio.file("/etc/supervisor/conf.d/not-sc_db.conf").content_string
    assert f"-p 5671 --tls --tls-ca-file {CA}" in conf
    assert 'PGSSLMODE="verify-full"' in conf


def test_database_refuses_plain_tcp(aio):
    pw = SECRETS["vault_postgresql_shifter_password"]
    plain = aio.run(
        "PGPASSWORD=%s psql -X -tAc 'SELECT 1' %s",
        pw,
        f"host={HOST} dbname=sc_db user=sc_shifter sslmode=disable connect_timeout=5",
    )
    assert plain.rc != 0
    assert "no encryption" in plain.stderr, plain.stderr
    verified = aio.run(
        "PGPASSWORD=%s psql -X -tAc 'SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()' %s",
        pw,
        f"host={HOST} dbname=sc_db user=sc_shifter sslmode=verify-full sslrootcert={CA}",
    )
    assert verified.rc == 0 and verified.stdout.strip() == "t", verified.stderr


def test_dl_agent_get_peaches(aio):
    deadline = time.monotonic() + 60
    cmd = aio.run("dl-agent --json-print get peaches")
    while cmd.rc != 0 and time.monotonic() < deadline:
        time.sleep(2)
        cmd = aio.run("dl-agent --json-print get peaches")
    assert cmd.rc == 0, cmd.stderr
    assert "value_raw" in cmd.stdout


def test_virtual_run_over_tls(aio):
    cmd = aio.run("dl-agent --json-print cmd daq_interface -s start_timed_run tls_run 2")
    assert cmd.rc == 0, cmd.stdout + cmd.stderr
    reply = json.loads(cmd.stdout)
    payload = reply.get("payload", reply)
    run_id = int(payload if not isinstance(payload, dict) else payload.get("value_raw", payload))
    run_dir = (
        f"/var/lib/insectarium/data/{run_id // 1_000_000:03d}yyyxxx/"
        f"{run_id // 1000:06d}xxx/{run_id:09d}"
    )
    deadline = time.monotonic() + 60
    names: list[str] = []
    while time.monotonic() < deadline:
        names = aio.run("ls %s", run_dir).stdout.split()
        if any(n.endswith("_snapshot.json") for n in names):
            break
        time.sleep(2)
    assert any(n.endswith("_meta.json") for n in names), names
    assert any(n.endswith("_snapshot.json") for n in names), names
    # the shifter reads the run back over TLS with its read-only role and no options
    shown = aio.run("su - shifter -c %s", f"insectarium run {run_id}")
    assert shown.rc == 0 and "tls_run" in shown.stdout, shown.stderr


def _values(tree: dict) -> list[str]:
    values: list[str] = []
    for value in tree.values():
        values += list(value.values()) if isinstance(value, dict) else [value]
    return [str(v) for v in values]


def test_diff_output_holds_no_secret(aio, tmp_path):
    """--check --diff with every secret rotated and the broker's TLS key altered: the tasks that
    would change secret files or keys must not print them. A visible change (startsecs) proves
    that --diff does print diffs in this run."""
    rotated = {
        k: ({n: f"rotated-{n}-0123456789" for n in v} if isinstance(v, dict) else f"rotated-{k}")
        for k, v in SECRETS.items()
    }
    extra = tmp_path / "rotated.yml"
    extra.write_text(yaml.safe_dump({**rotated, "lab_services_program_startsecs": 6}))
    aio.check_output("echo >> /etc/rabbitmq/tls/server.key")  # the key copy now differs
    key = aio.check_output("sed -n 2p /etc/insectarium/tls/host.key")
    tags = ",".join(
        f"{role}_{phase}"
        for role in ("common", "rabbitmq", "postgresql", "lab_services")
        for phase in ("assert", "configure", "objects", "tls")
    )
    run = subprocess.run(
        [
            "ansible-playbook", "-i", INVENTORY, str(SCENARIO / "converge.yml"),
            "--check", "--diff", "--tags", tags, "-e", f"@{extra}",
        ],
        capture_output=True, text=True, timeout=900, check=False,
        env={**os.environ, "ANSIBLE_NOCOLOR": "1"},
    )  # fmt: skip
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-3000:]
    assert "+startsecs = 6" in out, "no diff was printed at all"
    assert re.search(r"changed=[1-9]", out)
    leaked = [v for v in _values(SECRETS) + _values(rotated) if v in out]
    assert not leaked, f"{len(leaked)} secret value(s) in the --diff output"
    assert "PRIVATE KEY" not in out and key.strip() not in out


def test_console_speaks_https_only_behind_a_login(aio):
    """With the TLS switch on, the console serves HTTPS with the host's lab certificate (checked
    against the lab CA and the host name), answers 401 without credentials and 200 with them, and
    plain HTTP gets no page."""
    script = (
        "import base64, ssl, sys, urllib.error, urllib.request\n"
        "ctx = ssl.create_default_context(cafile=sys.argv[3])\n"
        "req = urllib.request.Request(sys.argv[1], headers={'Accept': 'application/json'})\n"
        "if sys.argv[2]:\n"
        "    token = base64.b64encode(sys.argv[2].encode()).decode()\n"
        "    req.add_header('Authorization', 'Basic ' + token)\n"
        "try:\n"
        "    print(urllib.request.urlopen(req, timeout=30, context=ctx).status)\n"
        "except urllib.error.HTTPError as e:\n"
        "    print(e.code)\n"
    )
    # the lab address: the console listens there, not on every address
    url = f"https://{HOST}:8080/api/services"
    deadline = time.monotonic() + 60
    status = ""
    while time.monotonic() < deadline:
        status = aio.run("python3 -c %s %s '' %s", script, url, CA).stdout.strip()
        if status == "401":
            break
        time.sleep(2)
    assert status == "401"
    auth = f"lab:{SECRETS['vault_console_lab_password']}"
    assert aio.check_output("python3 -c %s %s %s %s", script, url, auth, CA).strip() == "200"
    plain = aio.run("python3 -c %s %s '' %s", script, f"http://{HOST}:8080/api/services", CA)
    assert plain.stdout.strip() not in ("200", "401"), plain.stdout
    key = aio.file("/etc/insectarium/console-tls/console.key")
    assert (key.user, key.group, key.mode) == ("root", "insectarium-console", 0o640)
