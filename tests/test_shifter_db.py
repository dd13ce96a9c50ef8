"""The shifters' database account: read-only grants of the postgresql role, reached through the
auth file the lab writes (``postgres`` group with host, port and dbname), no options needed."""

from __future__ import annotations

import secrets
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from psycopg.conninfo import conninfo_to_dict

from insectarium.cli import lab

from .role_grants import DEFAULTS, grant_read_only
from .test_lab_cli import seed_runs


@pytest.fixture
def shifter(lab_database: str, postgres_server: Any, tmp_path: Path) -> tuple[str, Path]:
    role = f"shifter_{uuid.uuid4().hex[:8]}"
    password = secrets.token_urlsafe(16)
    postgres_server.create_role(role, password)
    grant_read_only(lab_database, role)
    params = conninfo_to_dict(lab_database)
    auth = tmp_path / "auth.yaml"
    auth.write_text(
        yaml.safe_dump(
            {
                "dripline": {"username": "lab", "password": "unused-here"},
                "postgres": {
                    "username": role,
                    "password": password,
                    "host": params["host"],
                    "port": int(params["port"]),
                    "dbname": params["dbname"],
                    "sslmode": "disable",
                },
            }
        )
    )
    return role, auth


def test_read_only_purposes_include_the_shifter() -> None:
    assert "shifter" in DEFAULTS["postgresql_read_only_purposes"]


def test_shifter_reads_runs_with_the_auth_file_alone(
    lab_database: str,
    shifter: tuple[str, Path],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for var in ("PGHOST", "PGPORT", "PGDATABASE", "INSECTARIUM_PG_DSN", "PGSSLMODE"):
        monkeypatch.delenv(var, raising=False)
    ended, _ = seed_runs(lab_database)
    _, auth = shifter
    assert lab.main(["--auth-file", str(auth), "runs"]) == 0
    out = capsys.readouterr()
    assert "calibration" in out.out, out.err
    assert lab.main(["--auth-file", str(auth), "run", str(ended)]) == 0
    out = capsys.readouterr()
    assert "peaches" in out.out, out.err


def test_the_auth_file_settings_reach_libpq(shifter: tuple[str, Path]) -> None:
    """sslmode and friends from the auth file end up in the connection string."""
    _, auth = shifter
    args = lab.build_parser().parse_args(["--auth-file", str(auth), "runs"])
    params = conninfo_to_dict(lab.conninfo(args))
    assert params["sslmode"] == "disable"
    args = lab.build_parser().parse_args(["--auth-file", str(auth), "--host", "elsewhere", "runs"])
    assert conninfo_to_dict(lab.conninfo(args))["host"] == "elsewhere"


def test_shifter_cannot_write(lab_database: str, shifter: tuple[str, Path]) -> None:
    role, auth = shifter
    creds = yaml.safe_load(auth.read_text())["postgres"]
    dsn = lab_database.replace("user=postgres", f"user={role} password={creds['password']}")
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM runs.run_table").fetchone() is not None
        for statement in (
            "INSERT INTO runs.run_table (run_name) VALUES ('forged')",
            "UPDATE runs.run_table SET run_name = 'renamed'",
            "DELETE FROM endpoint_numeric_data",
            "DROP TABLE runs.run_table",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
