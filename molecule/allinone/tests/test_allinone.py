"""Verify the all-in-one container: every role through the sysv fallback (no systemd)."""

from __future__ import annotations

import json
import os
import time

import pytest
import testinfra

INVENTORY = os.environ.get("MOLECULE_INVENTORY_FILE", "")
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
    return testinfra.get_host(f"ansible://insectarium-aio?ansible_inventory={INVENTORY}")


def test_no_systemd(aio):
    assert aio.check_output("cat /proc/1/comm") != "systemd"


@pytest.mark.parametrize("port", [5672, 5432])
def test_ports(aio, port):
    assert aio.socket(f"tcp://0.0.0.0:{port}").is_listening


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


def test_dl_agent_get_peaches(aio):
    deadline = time.monotonic() + 60
    cmd = aio.run("dl-agent --json-print get peaches")
    while cmd.rc != 0 and time.monotonic() < deadline:
        time.sleep(2)
        cmd = aio.run("dl-agent --json-print get peaches")
    assert cmd.rc == 0, cmd.stderr
    assert "value_raw" in cmd.stdout


def test_console_answers_401_without_credentials_and_200_with_them(aio):
    from pathlib import Path

    import yaml

    secrets = yaml.safe_load(
        (
            Path(__file__).resolve().parents[3] / "inventories/docker/group_vars/all/secrets.yml"
        ).read_text()
    )
    script = (
        "import base64, sys, urllib.error, urllib.request\n"
        "req = urllib.request.Request(sys.argv[1], headers={'Accept': 'application/json'})\n"
        "if sys.argv[2]:\n"
        "    token = base64.b64encode(sys.argv[2].encode()).decode()\n"
        "    req.add_header('Authorization', 'Basic ' + token)\n"
        "try:\n"
        "    print(urllib.request.urlopen(req, timeout=30).status)\n"
        "except urllib.error.HTTPError as e:\n"
        "    print(e.code)\n"
    )
    url = "http://127.0.0.1:8080/api/services"
    deadline = time.monotonic() + 60
    status = ""
    while time.monotonic() < deadline:
        status = aio.run("python3 -c %s %s %s", script, url, "").stdout.strip()
        if status == "401":
            break
        time.sleep(2)
    assert status == "401"
    auth = f"lab:{secrets['vault_console_lab_password']}"
    assert aio.check_output("python3 -c %s %s %s", script, url, auth).strip() == "200"
