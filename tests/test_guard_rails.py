"""Guard rails of the real-lab inventory: site.yml refuses placeholder, weak or reused secrets
and a vault file that is missing or not encrypted, naming the variable or file, never a value.

The inventory is a copy of inventories/lab with the hosts reached locally; site.yml's first play
(playbooks/common.yml) runs with ``--tags common_secrets`` and no fact gathering, so only the
check itself runs (on the controller, as it does in site.yml).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .runtime_support import REPO

BIN = Path(sys.executable).parent
EXAMPLE = REPO / "inventories/lab/group_vars/all/vault.yml.example"

_spec = importlib.util.spec_from_file_location(
    "secrets_policy", REPO / "roles/common/filter_plugins/secrets_policy.py"
)
assert _spec is not None and _spec.loader is not None
policy = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(policy)


def _strong(seed: str) -> str:
    return "Zq8" + hashlib.sha256(seed.encode()).hexdigest()[:21]


def strong_secrets() -> dict[str, object]:
    """The example's variables, each with a distinct strong value."""
    example = yaml.safe_load(EXAMPLE.read_text())
    out: dict[str, object] = {}
    for name, value in example.items():
        if isinstance(value, dict):
            out[name] = {k: _strong(f"{name}.{k}") for k in value}
        else:
            out[name] = _strong(name)
    return out


@pytest.fixture
def lab_inventory(tmp_path: Path) -> Path:
    inv = tmp_path / "lab"
    shutil.copytree(REPO / "inventories/lab", inv, symlinks=False)
    (inv / "group_vars/all/vault.yml.example").unlink()
    (tmp_path / "vault-password").write_text("test-vault-password\n")
    return inv


def provision(inv: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
        "ANSIBLE_GATHERING": "explicit",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_VAULT_PASSWORD_FILE": str(inv.parent / "vault-password"),
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    return subprocess.run(
        [
            str(BIN / "ansible-playbook"),
            "-i",
            str(inv),
            str(REPO / "playbooks/common.yml"),  # site.yml's first play
            "--tags",
            "common_secrets",
            "-e",
            "ansible_connection=local",
            "-e",
            f"ansible_python_interpreter={sys.executable}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=env,
        cwd=REPO,
    )


def write_vault(inv: Path, secrets: dict[str, object], *, encrypt: bool) -> Path:
    vault = inv / "group_vars/all/vault.yml"
    vault.write_text("---\n" + yaml.safe_dump(secrets))
    if encrypt:
        subprocess.run(
            [str(BIN / "ansible-vault"), "encrypt", str(vault)],
            check=True,
            capture_output=True,
            env={**os.environ, "ANSIBLE_VAULT_PASSWORD_FILE": str(inv.parent / "vault-password")},
        )
    return vault


# --------------------------------------------------------------------------- the filter alone
def test_policy_names_variables_never_values() -> None:
    problems = policy.lab_secret_problems(
        {
            "vault_a": "CHANGE_ME",
            "vault_b": "short-9",
            "vault_c": {"svc1": "Zq8-same-value-Lw3xT9v", "svc2": "Zq8-same-value-Lw3xT9v"},
            "vault_d": "aaaaaaaaaaaaaaaaaaaaaaaa",
            "vault_e": "",
            "vault_f": "Zq8-fine-and-long-Lw3xT9v",
        }
    )
    text = "\n".join(problems)
    assert "vault_a: a placeholder" in text
    assert "vault_b: shorter than 16" in text
    assert "vault_c.svc2: same value as vault_c.svc1" in text
    assert "vault_d: too few distinct characters" in text
    assert "vault_e: not set" in text
    assert "vault_f" not in text
    for value in ("CHANGE_ME", "short-9", "same-value", "aaaa"):
        assert value not in text


def test_test_inventories_would_be_refused() -> None:
    """The throw-away test secrets are exactly what the policy is there to catch."""
    secrets = yaml.safe_load((REPO / "inventories/docker/group_vars/all/secrets.yml").read_text())
    problems = policy.lab_secret_problems(secrets)
    flagged = {p.split(":")[0].split(".")[0] for p in problems}
    assert flagged == set(secrets)


# --------------------------------------------------------------------------- site.yml on lab
def test_missing_vault_file_is_refused(lab_inventory: Path) -> None:
    out = provision(lab_inventory)
    assert out.returncode != 0
    assert "group_vars/all/vault.yml does not exist" in out.stdout, out.stdout[-2000:]


def test_unencrypted_vault_file_is_refused(lab_inventory: Path) -> None:
    write_vault(lab_inventory, strong_secrets(), encrypt=False)
    out = provision(lab_inventory)
    assert out.returncode != 0
    assert "vault.yml is not encrypted" in out.stdout, out.stdout[-2000:]


def test_placeholders_are_refused_by_name(lab_inventory: Path) -> None:
    secrets = strong_secrets()
    secrets["vault_rabbitmq_lab_password"] = "CHANGE_ME"
    secrets["vault_dripline_passwords"]["not-sc_db"] = "tiny"  # type: ignore[index]
    write_vault(lab_inventory, secrets, encrypt=True)
    out = provision(lab_inventory)
    assert out.returncode != 0
    assert "vault_rabbitmq_lab_password: a placeholder" in out.stdout, out.stdout[-2000:]
    assert "vault_dripline_passwords.not-sc_db: shorter than 16" in out.stdout
    assert "CHANGE_ME" not in out.stdout and "tiny" not in out.stdout


def test_strong_encrypted_secrets_pass(lab_inventory: Path) -> None:
    write_vault(lab_inventory, strong_secrets(), encrypt=True)
    out = provision(lab_inventory)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "Refuse placeholder, weak or reused secrets" in out.stdout
