"""The ``insectarium`` CLI (runs / run / db migrate) on a seeded lab database."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from insectarium.cli import lab

START = dt.datetime(2026, 4, 1, 8, 0, 0)


def seed_runs(dsn: str) -> tuple[int, int]:
    """An ended run with values logged inside and outside it, and a running one."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        ids = dict(conn.execute("SELECT endpoint_name, endpoint_id FROM endpoint_id_map"))
        ended = conn.execute(
            "INSERT INTO runs.run_table (run_name, start_timestamp, end_timestamp) "
            "VALUES ('calibration', %s, %s) RETURNING run_id",
            (START, START + dt.timedelta(seconds=90)),
        ).fetchone()[0]
        running = conn.execute(
            "INSERT INTO runs.run_table (run_name, start_timestamp) "
            "VALUES ('overnight', %s) RETURNING run_id",
            (START + dt.timedelta(hours=1),),
        ).fetchone()[0]
        for sec in (-5, 10, 20, 30, 100):  # three inside the ended run
            conn.execute(
                "INSERT INTO endpoint_numeric_data (endpoint_id, timestamp, value_raw) "
                "VALUES (%s, %s, 1)",
                (ids["peaches"], START + dt.timedelta(seconds=sec)),
            )
        conn.execute(
            "INSERT INTO endpoint_string_data (endpoint_id, timestamp, value_raw) "
            "VALUES (%s, %s, 'gouda')",
            (ids["cheese"], START + dt.timedelta(seconds=45)),
        )
    return ended, running


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = lab.main(list(argv))
    out = capsys.readouterr()
    return code, out.out + out.err


def test_runs_lists_recent_runs(lab_database: str, capsys: pytest.CaptureFixture[str]) -> None:
    seed_runs(lab_database)
    code, out = run_cli(capsys, "--dsn", lab_database, "runs", "--last", "5")
    assert code == 0, out
    assert "calibration" in out and "overnight" in out
    assert "2026-04-01 08:00:00" in out and "2026-04-01 08:01:30" in out
    assert "90.0 s" in out
    assert out.index("overnight") < out.index("calibration")  # newest first
    code, out = run_cli(capsys, "--dsn", lab_database, "runs", "--last", "1")
    assert "overnight" in out and "calibration" not in out


def test_run_shows_row_files_and_value_counts(
    lab_database: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ended, _running = seed_runs(lab_database)
    run_dir = lab.run_directory(tmp_path, ended)
    assert run_dir == tmp_path / "000yyyxxx" / "000000xxx" / f"{ended:09d}"
    run_dir.mkdir(parents=True)
    (run_dir / f"run{ended:09d}_meta.json").write_text("{}")
    (run_dir / f"run{ended:09d}_snapshot.json").write_text('{"peaches": []}')
    code, out = run_cli(
        capsys, "--dsn", lab_database, "run", str(ended), "--data-dir", str(tmp_path)
    )
    assert code == 0, out
    assert "calibration" in out
    assert f"run{ended:09d}_meta.json" in out and f"run{ended:09d}_snapshot.json" in out
    peaches = next(line for line in out.splitlines() if "peaches" in line)
    cheese = next(line for line in out.splitlines() if "cheese" in line)
    assert " 3 " in peaches and "numeric" in peaches
    assert " 1 " in cheese and "string" in cheese


def test_run_unknown_and_missing_directory(
    lab_database: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _ended, running = seed_runs(lab_database)
    code, out = run_cli(capsys, "--dsn", lab_database, "run", "424242")
    assert code == 1 and "no run 424242" in out
    code, out = run_cli(
        capsys, "--dsn", lab_database, "run", str(running), "--data-dir", str(tmp_path)
    )
    assert code == 0 and "no files in" in out and "now" in out


def test_connection_options_and_auth_file(
    lab_database: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    info = psycopg.conninfo.conninfo_to_dict(lab_database)
    auth = tmp_path / "auth.yaml"
    auth.write_text(
        f"postgres:\n  username: {info.get('user', 'postgres')}\n"
        f"  password: {info.get('password') or 'postgres'}\n"
    )
    seed_runs(lab_database)
    code, out = run_cli(
        capsys,
        "--host", str(info.get("host", "localhost")),
        "--port", str(info.get("port", 5432)),
        "--dbname", str(info["dbname"]),
        "--auth-file", str(auth),
        "runs",
    )  # fmt: skip
    assert code == 0 and "calibration" in out
    code, out = run_cli(capsys, "--host", "127.0.0.1", "--port", "1", "runs")
    assert code == 2 and "cannot reach the database" in out


def test_db_migrate_with_seed(empty_database: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run_cli(capsys, "--dsn", empty_database, "db", "migrate", "--seed")
    assert code == 0 and "applied:" in out and "seed applied" in out
    with psycopg.connect(empty_database, autocommit=True) as conn:
        names = {r[0] for r in conn.execute("SELECT endpoint_name FROM endpoint_id_map")}
    assert {"peaches", "chips", "waffles", "cheese", "recipe"} <= names
    assert "donuts" not in names
    code, out = run_cli(capsys, "--dsn", empty_database, "db", "migrate")
    assert code == 0 and "up to date" in out


@pytest.mark.parametrize("argv", [[], ["runs"], ["run"], ["db"], ["db", "migrate"]])
def test_help_everywhere(argv: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "insectarium.cli.lab", *argv, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: insectarium")


@pytest.mark.parametrize("command", [["runs"], ["run", "{id}"]])
def test_names_from_the_lab_are_printed_as_plain_text(
    lab_database: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    """A run named '[/bold] oops' crashed rich (MarkupError); escape sequences were printed raw."""
    hostile = "[/bold] oops [red]x[/red] :smile: \x1b[31mred\x1b[0m \u202eevil\nnext"
    with psycopg.connect(lab_database, autocommit=True) as conn:
        run_id = conn.execute(
            "INSERT INTO runs.run_table (run_name, start_timestamp, end_timestamp, end_reason) "
            "VALUES (%s, %s, %s, 'stopped') RETURNING run_id",
            (hostile, START, START + dt.timedelta(seconds=5)),
        ).fetchone()[0]
    argv = [part.format(id=run_id) for part in command]
    code, out = run_cli(
        capsys,
        "--dsn",
        lab_database,
        *argv,
        *(["--data-dir", str(tmp_path)] if argv[0] == "run" else []),
    )
    assert code == 0, out
    assert "[/bold] oops [red]x[/red] :smile:" in out  # markup and emoji codes as typed
    assert "\\x1b[31mred\\x1b[0m" in out and "\x1b" not in out  # the escape is shown, not sent
    assert "\\u202eevil\\nnext" in out and "\u202e" not in out
    if argv[0] == "runs":
        assert "stopped" in out  # how the run ended
