"""Which lab the testinfra suite verifies, so that one suite serves every target.

Molecule's verifier sets MOLECULE_INVENTORY_FILE (containers reached with `docker exec`, as
root). `./lab verify --target vagrant` sets LAB_INVENTORY=inventories/vagrant instead (SSH as
`vagrant`, every command through sudo because the inventory says `ansible_become: true`), and
any other inventory works the same way (real servers: `LAB_INVENTORY=inventories/lab`).

Hosts are found by their inventory group, never by name: `broker` is the first host of group
`rabbitmq`, `db` of `postgresql`, `services` of `lab_services`. New test files only need these
fixtures (or `lab_host("<group>")`) to run against every target.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest
import testinfra
from testinfra.host import Host
from testinfra.utils.ansible_runner import AnsibleRunner


def lab_inventory() -> str:
    """The inventory under test: LAB_INVENTORY wins over molecule's own."""
    inventory = os.environ.get("LAB_INVENTORY") or os.environ.get("MOLECULE_INVENTORY_FILE")
    if not inventory:
        raise pytest.UsageError(
            "no inventory: run through molecule, or set LAB_INVENTORY (e.g. inventories/vagrant)"
        )
    return inventory


@pytest.fixture(scope="session")
def inventory() -> str:
    return lab_inventory()


@pytest.fixture(scope="session")
def lab_host(inventory: str) -> Callable[[str], Host]:
    """Return a function giving the first host of an inventory group (one connection per host)."""
    runner = AnsibleRunner(inventory)
    cache: dict[str, Host] = {}

    def first_of(group: str) -> Host:
        names = runner.get_hosts(group)
        if not names:
            raise pytest.UsageError(f"inventory {inventory} has no host in group {group!r}")
        name = names[0]
        if name not in cache:
            cache[name] = testinfra.get_host(f"ansible://{name}?ansible_inventory={inventory}")
        return cache[name]

    return first_of


@pytest.fixture(scope="session")
def broker(lab_host: Callable[[str], Host]) -> Host:
    return lab_host("rabbitmq")


@pytest.fixture(scope="session")
def db(lab_host: Callable[[str], Host]) -> Host:
    return lab_host("postgresql")


@pytest.fixture(scope="session")
def services(lab_host: Callable[[str], Host]) -> Host:
    return lab_host("lab_services")


@pytest.fixture(scope="session")
def secrets(inventory: str) -> dict[str, Any]:
    """The inventory's `vault_*` values, as Ansible sees them for the services host.

    Read through the inventory (group_vars included), so the same tests know the test lab's
    passwords on every target without naming a file. An encrypted vault needs its password in
    the environment, as it does for `ansible-playbook`.
    """
    runner = AnsibleRunner(inventory)
    host = runner.get_hosts("lab_services")[0]
    variables = runner.get_variables(host)
    return {k: v for k, v in variables.items() if k.startswith("vault_")}
