"""The migration runner against a real (private) PostgreSQL: apply, re-apply, tamper, seed."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from insectarium.db import migrations
from insectarium.db.migrations import ChecksumMismatch, MigrationError

REPO = Path(__file__).resolve().parent.parent
SQL_DIR = REPO / "files" / "sql"


def test_migration_files_are_numbered_and_unique() -> None:
    found = migrations.discover(SQL_DIR)
    names = [m.filename for m in found]
    assert names[:4] == [
        "001_endpoint_id_map.sql",
        "002_data_tables.sql",
        "003_insert_views.sql",
        "004_runs.sql",
    ]
    assert [m.version for m in found] == sorted({m.version for m in found}, key=int)
    for m in found:
        assert m.checksum == hashlib.sha256(m.path.read_bytes()).hexdigest()


def test_sql_dir_resolution(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(migrations.SQL_DIR_ENV, raising=False)
    assert migrations.sql_dir() == SQL_DIR
    monkeypatch.setenv(migrations.SQL_DIR_ENV, str(tmp_path))
    assert migrations.sql_dir() == tmp_path
    assert migrations.sql_dir(SQL_DIR) == SQL_DIR
    monkeypatch.setenv(migrations.SQL_DIR_ENV, str(tmp_path / "missing"))
    with pytest.raises(MigrationError, match="INSECTARIUM_SQL_DIR"):
        migrations.sql_dir()


def _recorded(dsn: str) -> list[tuple[str, str, str]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT version, filename, checksum FROM public.schema_migrations ORDER BY version"
        ).fetchall()


def test_migrations_apply_to_an_empty_database(empty_database: str) -> None:
    applied = migrations.migrate(empty_database, SQL_DIR)
    files = migrations.discover(SQL_DIR)
    assert [m.filename for m in applied] == [m.filename for m in files]
    assert _recorded(empty_database) == [(m.version, m.filename, m.checksum) for m in files]
    with psycopg.connect(empty_database) as conn:
        tables = {
            r[0]
            for r in conn.execute(
                "SELECT table_schema || '.' || table_name FROM information_schema.tables "
                "WHERE table_schema IN ('public', 'runs')"
            )
        }
        assert {
            "public.endpoint_id_map",
            "public.endpoint_numeric_data",
            "public.endpoint_string_data",
            "public.endpoint_json_data",
            "public.measurement_metadata",
            "public.numeric_data",
            "public.string_data",
            "public.json_data",
            "public.schema_migrations",
            "runs.run_table",
        } <= tables
        # No seed unless asked for.
        assert conn.execute("SELECT count(*) FROM endpoint_id_map").fetchone() == (0,)


def test_reapplying_is_a_no_op(empty_database: str) -> None:
    migrations.migrate(empty_database, SQL_DIR, seed=True)
    before = _recorded(empty_database)
    with psycopg.connect(empty_database) as conn:
        stamps = conn.execute("SELECT applied_at FROM schema_migrations ORDER BY 1").fetchall()
    assert migrations.migrate(empty_database, SQL_DIR, seed=True) == []
    assert _recorded(empty_database) == before
    with psycopg.connect(empty_database) as conn:
        assert conn.execute("SELECT applied_at FROM schema_migrations ORDER BY 1").fetchall() == (
            stamps
        )
        # The seed is idempotent too.
        assert conn.execute("SELECT count(*) FROM endpoint_id_map").fetchone() == (5,)
    assert {state for _, state in migrations.status(empty_database, SQL_DIR)} == {"applied"}


def test_every_file_is_idempotent_on_its_own(empty_database: str) -> None:
    """Files are re-runnable even outside the runner (as the Ansible role may retry one)."""
    migrations.migrate(empty_database, SQL_DIR, seed=True)
    with psycopg.connect(empty_database, autocommit=True) as conn:
        for m in migrations.discover(SQL_DIR):
            conn.execute(m.sql())  # type: ignore[arg-type]
        migrations.apply_seed(conn, SQL_DIR / "seed")
        assert conn.execute("SELECT count(*) FROM endpoint_id_map").fetchone() == (5,)


def test_tampered_checksum_is_an_error_naming_the_file(empty_database: str, tmp_path: Path) -> None:
    sql_copy = tmp_path / "sql"
    shutil.copytree(SQL_DIR, sql_copy)
    migrations.migrate(empty_database, sql_copy)
    edited = sql_copy / "002_data_tables.sql"
    edited.write_text(edited.read_text() + "\n-- edited after the fact\n")
    with pytest.raises(ChecksumMismatch, match=r"002_data_tables\.sql was changed"):
        migrations.migrate(empty_database, sql_copy)
    assert [s for m, s in migrations.status(empty_database, sql_copy) if m.version == "002"] == [
        "changed"
    ]


def test_a_new_migration_is_applied_alone_and_a_failing_one_rolls_back(
    empty_database: str, tmp_path: Path
) -> None:
    sql_copy = tmp_path / "sql"
    shutil.copytree(SQL_DIR, sql_copy)
    migrations.migrate(empty_database, sql_copy)
    (sql_copy / "900_extra.sql").write_text("CREATE TABLE public.extra_table (x int);\n")
    (sql_copy / "901_broken.sql").write_text(
        "CREATE TABLE public.half_done (x int);\nSELECT no_such_column FROM public.extra_table;\n"
    )
    with pytest.raises(MigrationError, match=r"901_broken\.sql failed.*no_such_column.*line 2"):
        migrations.migrate(empty_database, sql_copy)
    with psycopg.connect(empty_database) as conn:
        assert conn.execute("SELECT to_regclass('public.extra_table')").fetchone() == (
            "extra_table",
        )
        assert conn.execute("SELECT to_regclass('public.half_done')").fetchone() == (None,)
    assert [r[1] for r in _recorded(empty_database)][-1] == "900_extra.sql"


def test_duplicate_versions_are_refused(tmp_path: Path) -> None:
    (tmp_path / "001_a.sql").write_text("SELECT 1;")
    (tmp_path / "001_b.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match="share version 001"):
        migrations.discover(tmp_path)


def test_runner_accepts_a_connection(empty_database: str) -> None:
    with psycopg.connect(empty_database) as conn:
        assert len(migrations.migrate(conn, SQL_DIR, seed=True)) >= 4
        assert conn.execute("SELECT count(*) FROM endpoint_id_map").fetchone() == (5,)
        conn.execute("SELECT 1")  # inside a transaction now
        with pytest.raises(MigrationError, match="inside a transaction"):
            migrations.migrate(conn, SQL_DIR)


def test_migrations_run_as_a_non_superuser_owner(postgres_server, empty_database: str) -> None:
    """Production applies them as the database owner (Ansible session_role), not a superuser."""
    from psycopg.conninfo import conninfo_to_dict

    dbname = conninfo_to_dict(empty_database)["dbname"]
    owner = f"owner_{dbname}"[:60]
    owner_dsn = postgres_server.create_role(owner, "owner-pw")
    with psycopg.connect(postgres_server.dsn("postgres"), autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{dbname}" OWNER TO "{owner}"')
    dsn = owner_dsn.replace("dbname=postgres", f"dbname={dbname}")
    try:
        assert migrations.migrate(dsn, SQL_DIR, seed=True)
        with psycopg.connect(dsn) as conn:
            assert conn.execute("SHOW timezone").fetchone() == ("UTC",)
            assert conn.execute("SELECT count(*) FROM numeric_data").fetchone() == (0,)
    finally:
        # Roles are cluster-wide: leave none behind (matters with INSECTARIUM_TEST_PG_DSN).
        with psycopg.connect(empty_database, autocommit=True) as db_admin:
            db_admin.execute(f'REASSIGN OWNED BY "{owner}" TO CURRENT_USER')
        with psycopg.connect(postgres_server.dsn("postgres"), autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{dbname}" OWNER TO CURRENT_USER')
            admin.execute(f'DROP ROLE "{owner}"')


def test_cli_migrate_and_status(empty_database: str) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "insectarium.db", *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    helped = run("migrate", "--help")
    assert helped.returncode == 0 and "--seed" in helped.stdout
    first = run("migrate", "--dsn", empty_database, "--seed")
    assert first.returncode == 0, first.stderr
    assert "001_endpoint_id_map.sql" in first.stdout
    again = run("migrate", "--dsn", empty_database)
    assert again.returncode == 0 and "up to date" in again.stdout
    st = run("status", "--dsn", empty_database)
    assert st.returncode == 0 and "applied  004_runs.sql" in st.stdout
    bad = run("migrate", "--dsn", empty_database, "--sql-dir", "/nonexistent/sql")
    assert bad.returncode == 1 and "error:" in bad.stderr


def test_status_is_read_only(empty_database: str) -> None:
    assert {s for _, s in migrations.status(empty_database, SQL_DIR)} == {"pending"}
    with psycopg.connect(empty_database) as conn:
        assert conn.execute("SELECT to_regclass('public.schema_migrations')").fetchone() == (None,)
