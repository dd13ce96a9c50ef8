"""The Vagrantfile and inventories/vagrant describe the same hosts, and the Vagrantfile is valid.

The Vagrantfile (Ruby) and the inventory (YAML) both name the three hosts and their addresses;
Ansible reaches the hosts with the inventory while Vagrant creates them from the Vagrantfile, so
a drift between the two would only show up as an unreachable host in the middle of `vagrant up`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
VAGRANTFILE = (REPO / "Vagrantfile").read_text()


def _vagrantfile_machines() -> dict[str, str]:
    machines = dict(re.findall(r'\{\s*name:\s*"([^"]+)",\s*ip:\s*"([^"]+)"', VAGRANTFILE))
    assert machines, "no MACHINES entries found in the Vagrantfile"
    return machines


def _inventory() -> dict:
    return yaml.safe_load((REPO / "inventories" / "vagrant" / "hosts.yml").read_text())


def _inventory_hosts() -> dict[str, str]:
    """Each host's ansible_host as Ansible merges it (a host may sit in several groups)."""
    tool = Path(sys.executable).with_name("ansible-inventory")
    out = subprocess.run(
        [str(tool), "-i", str(REPO / "inventories" / "vagrant"), "--list"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    hostvars = json.loads(out)["_meta"]["hostvars"]
    return {name: hv.get("ansible_host") for name, hv in hostvars.items()}


def test_vagrantfile_hosts_match_the_inventory():
    assert _inventory_hosts() == _vagrantfile_machines()


def test_inventory_uses_the_key_the_vagrantfile_authorizes():
    key = _inventory()["all"]["vars"]["ansible_ssh_private_key_file"]
    match = re.search(r'LAB_KEY = File\.join\(ROOT, "([^"]+)", "([^"]+)"\)', VAGRANTFILE)
    assert match, "LAB_KEY not found in the Vagrantfile"
    assert key == "/".join(match.groups())


def test_docker_provider_is_never_privileged():
    docker_block = VAGRANTFILE[VAGRANTFILE.index('node.vm.provider("docker")') :]
    assert '"--privileged' not in docker_block
    assert not re.search(r"\.privileged\s*=\s*true", VAGRANTFILE)
    assert "--volume=/sys/fs/cgroup:/sys/fs/cgroup:ro" in docker_block


@pytest.mark.skipif(shutil.which("vagrant") is None, reason="vagrant is not installed")
def test_vagrantfile_validates():
    env = {**os.environ, "VAGRANT_CHECKPOINT_DISABLE": "1"}
    result = subprocess.run(
        ["vagrant", "validate", "--ignore-provider"],
        check=False,
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
