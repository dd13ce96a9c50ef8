"""``insectarium``: look at the lab's runs and database from a shell.

* ``insectarium runs [--last N]`` — recent runs (id, name, start, end, duration);
* ``insectarium run RUN_ID`` — one run: its row, the files of its run directory and how many
  values each endpoint logged during the run;
* ``insectarium report RUN_ID`` — write the run report (HTML with plots + CSV of the values), the
  same one the DAQ writes at the end of a run: from the database (read-only role), or with
  ``--from-files`` from the run directory's snapshot alone;
* ``insectarium db migrate [--seed]`` — apply the SQL migrations (``insectarium.db.migrations``).

It reads the database directly (no broker needed), so it still works when the services are down.
Connection: ``--dsn``, or ``--host/--port/--dbname`` with the user and password of the auth file
group ``postgres`` (``--auth-file``, default ``~/.dripline_authentications.yaml``) or
``POSTGRES_USER``/``POSTGRES_PASSWORD``.  That group may also say where the database is and how
to reach it (``host``, ``port``, ``dbname``, ``sslmode``, ``sslrootcert``, ``sslcert``,
``sslkey``): the lab writes it so for its shifter account, so ``insectarium runs`` needs no
options.  Options and ``PG*`` variables win over the file.

Everything read from the lab is printed as plain text (:func:`~.common.printable` in a
``rich.text.Text``): a run named ``[/bold] oops`` is shown as such instead of crashing rich's
markup parser, and escape sequences in names are shown escaped instead of acting on the terminal.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .common import printable

if TYPE_CHECKING:
    import psycopg
    from rich.console import Console
    from rich.text import Text

DATA_DIR_ENV = "INSECTARIUM_DATA_DIR"
DEFAULT_DATA_DIR = "/var/lib/insectarium/data"
DATA_TABLES = ("endpoint_numeric_data", "endpoint_string_data", "endpoint_json_data")
DB_TLS_KEYS = ("sslmode", "sslrootcert", "sslcert", "sslkey")


# --------------------------------------------------------------------------- arguments
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="insectarium",
        description="Inspect the insectarium lab: runs, their files and logged values; "
        "apply database migrations.",
    )
    db = parser.add_argument_group("database connection")
    db.add_argument(
        "--dsn",
        default=os.environ.get("INSECTARIUM_PG_DSN"),
        help="libpq conninfo or postgresql:// URL (default $INSECTARIUM_PG_DSN); "
        "overrides --host/--port/--dbname",
    )
    db.add_argument(
        "--host",
        default=os.environ.get("PGHOST"),
        help="database server (default $PGHOST, the auth file's postgres.host, or localhost)",
    )
    db.add_argument(
        "--port",
        type=int,
        default=int(os.environ["PGPORT"]) if os.environ.get("PGPORT") else None,
        help="database port (default $PGPORT, the auth file's postgres.port, or 5432)",
    )
    db.add_argument(
        "--dbname",
        default=os.environ.get("PGDATABASE"),
        help="database name (default $PGDATABASE, the auth file's postgres.dbname, or sc_db)",
    )
    db.add_argument(
        "--auth-file",
        default=None,
        help="YAML/JSON auth file; its 'postgres' group gives user and password "
        "(env POSTGRES_USER / POSTGRES_PASSWORD override it)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    runs = sub.add_parser("runs", help="list recent runs", description="List the newest runs.")
    runs.add_argument(
        "--last", type=int, default=20, metavar="N", help="how many runs (default 20)"
    )

    run = sub.add_parser(
        "run",
        help="show one run: row, files, logged values",
        description="Show a run's row, the files of its run directory and how "
        "many values each endpoint logged between its start and end (or now).",
    )
    run.add_argument("run_id", type=int, metavar="RUN_ID")
    run.add_argument(
        "--data-dir",
        default=os.environ.get(DATA_DIR_ENV, DEFAULT_DATA_DIR),
        help=f"data directory of the DAQ (default ${DATA_DIR_ENV} or {DEFAULT_DATA_DIR})",
    )

    report = sub.add_parser(
        "report",
        help="write a run's report (HTML + CSV)",
        description="Write <prefix><RUN_ID>_report.html (plots, summary, metadata, files) and "
        "_values.csv (every value) for a run: from the database, or with --from-files from the "
        "run directory's end-of-run snapshot (no database needed).",
    )
    report.add_argument("run_id", type=int, metavar="RUN_ID")
    report.add_argument(
        "--data-dir",
        default=os.environ.get(DATA_DIR_ENV, DEFAULT_DATA_DIR),
        help=f"data directory of the DAQ (default ${DATA_DIR_ENV} or {DEFAULT_DATA_DIR})",
    )
    report.add_argument(
        "--from-files",
        action="store_true",
        help="read the run directory's snapshot instead of the database",
    )
    report.add_argument(
        "--out",
        default=None,
        help="directory to write into (default: the run directory if writable, else .)",
    )
    report.add_argument(
        "--prefix", default="rid", help="file name prefix (default rid, as the lab's DAQ)"
    )

    dbcmd = sub.add_parser("db", help="database maintenance", description="Database maintenance.")
    dbsub = dbcmd.add_subparsers(dest="db_command", required=True, metavar="DB_COMMAND")
    migrate = dbsub.add_parser(
        "migrate",
        help="apply pending SQL migrations",
        description="Apply pending migrations (files/sql/NNN_*.sql).",
    )
    migrate.add_argument(
        "--seed", action="store_true", help="also apply the seed (the lab's endpoints)"
    )
    migrate.add_argument(
        "--sql-dir",
        default=None,
        help="migrations directory (default $INSECTARIUM_SQL_DIR or files/sql)",
    )
    return parser


# --------------------------------------------------------------------------- connection
def conninfo(args: argparse.Namespace) -> str:
    """The DSN to use; credentials from the auth file / environment unless the DSN has them."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    from insectarium.dripline.config import Authentication

    auth = Authentication.load(args.auth_file)
    group = auth.groups.get("postgres", {})
    if args.dsn:
        params: dict[str, Any] = dict(conninfo_to_dict(args.dsn))
    else:
        given = {"host": args.host, "port": args.port, "dbname": args.dbname}
        defaults = {"host": "localhost", "port": 5432, "dbname": "sc_db"}
        params = {k: v if v is not None else group.get(k) or defaults[k] for k, v in given.items()}
    if "user" not in params or "password" not in params:
        creds = auth.postgres
        params.setdefault("user", creds.username)
        params.setdefault("password", creds.password)
    for key in DB_TLS_KEYS:  # how to reach the server securely (libpq's names)
        if group.get(key) and key not in params and not os.environ.get(f"PG{key.upper()}"):
            params[key] = group[key]
    params.setdefault("connect_timeout", 5)
    return make_conninfo(**params)


def connect(args: argparse.Namespace) -> psycopg.Connection[Any]:
    import psycopg

    return psycopg.connect(conninfo(args), autocommit=True, options="-c timezone=UTC")


# --------------------------------------------------------------------------- formatting
def fmt_time(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dt.datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return str(value)


def fmt_duration(start: Any, end: Any) -> str:
    if not isinstance(start, dt.datetime):
        return "-"
    if isinstance(end, dt.datetime):
        seconds = (end - start).total_seconds()
        return f"{seconds:.1f} s"
    return "running?"


def run_directory(data_dir: str | os.PathLike[str], run_id: int) -> Path:
    """``<dir>/<R//10**6:03d>yyyxxx/<R//10**3:06d>xxx/<R:09d>/`` (the DAQ's layout)."""
    return (
        Path(data_dir)
        / f"{run_id // 10**6:03d}yyyxxx"
        / f"{run_id // 10**3:06d}xxx"
        / f"{run_id:09d}"
    )


def _console() -> Console:
    from rich.console import Console

    return Console(highlight=False, emoji=False, soft_wrap=False, width=max(100, _terminal_width()))


def cell(value: Any, style: str = "") -> Text:
    """A table cell or line holding lab data: plain text, never markup."""
    from rich.text import Text

    return Text(printable(value), style=style)


def _terminal_width() -> int:
    try:
        return os.get_terminal_size().columns
    except OSError:
        return 120


def _fetch_runs(conn: psycopg.Connection[Any], last: int) -> list[dict[str, Any]]:
    from psycopg.rows import dict_row

    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute("SELECT * FROM runs.run_table ORDER BY run_id DESC LIMIT %s", (last,))
        return cur.fetchall()


# --------------------------------------------------------------------------- commands
def cmd_runs(args: argparse.Namespace, console: Console) -> int:
    from rich.table import Table

    if args.last < 1:
        console.print(cell("--last must be at least 1", "red"))
        return 2
    with connect(args) as conn:
        rows = _fetch_runs(conn, args.last)
    table = Table(title=f"runs (newest {args.last})")
    for column in ("run_id", "name", "start (UTC)", "end (UTC)", "duration", "ended"):
        table.add_column(column, justify="right" if column == "run_id" else "left")
    for row in rows:
        end = row.get("end_timestamp")
        table.add_row(
            cell(row["run_id"]),
            cell(row.get("run_name", "")),
            cell(fmt_time(row.get("start_timestamp"))),
            cell(fmt_time(end)),
            cell(fmt_duration(row.get("start_timestamp"), end)),
            cell(row.get("end_reason") or ("-" if end is None else "")),
        )
    if not rows:
        console.print("no runs yet")
        return 0
    console.print(table)
    return 0


def _value_counts(
    conn: psycopg.Connection[Any], start: dt.datetime, end: dt.datetime
) -> list[tuple[str, str, int, Any, Any]]:
    """(endpoint, type, count, first, last) of the values logged in [start, end]."""
    from psycopg import sql

    parts = sql.SQL(" UNION ALL ").join(
        sql.SQL(
            'SELECT endpoint_id, "timestamp" FROM {} '
            'WHERE "timestamp" BETWEEN %(start)s AND %(end)s'
        ).format(sql.Identifier("public", table))
        for table in DATA_TABLES
    )
    query = sql.SQL(
        "SELECT m.endpoint_name, m.type::text, count(*), min(d.timestamp), max(d.timestamp) "
        "FROM ({}) AS d JOIN public.endpoint_id_map AS m USING (endpoint_id) "
        "GROUP BY m.endpoint_name, m.type ORDER BY m.endpoint_name"
    ).format(parts)
    return conn.execute(query, {"start": start, "end": end}).fetchall()


def cmd_run(args: argparse.Namespace, console: Console) -> int:
    from psycopg.rows import dict_row
    from rich.table import Table

    with connect(args) as conn:
        with conn.cursor(row_factory=dict_row) as cur:
            cur.execute("SELECT * FROM runs.run_table WHERE run_id = %s", (args.run_id,))
            row = cur.fetchone()
        if row is None:
            console.print(cell(f"there is no run {args.run_id}", "red"))
            return 1
        start = row.get("start_timestamp")
        end = row.get("end_timestamp")
        window_end = end or dt.datetime.now(dt.UTC).replace(tzinfo=None)
        counts = _value_counts(conn, start, window_end) if start else []

    info = Table(title=f"run {args.run_id}", show_header=False)
    info.add_column("column", style="bold")
    info.add_column("value")
    for key, value in row.items():
        info.add_row(cell(key), cell(fmt_time(value) if isinstance(value, dt.datetime) else value))
    info.add_row("duration", cell(fmt_duration(start, end)))
    console.print(info)

    directory = run_directory(args.data_dir, args.run_id)
    files = Table(title=cell(f"files in {directory}"))
    files.add_column("file")
    files.add_column("bytes", justify="right")
    files.add_column("modified (UTC)")
    entries = sorted(p for p in directory.iterdir() if p.is_file()) if directory.is_dir() else []
    for path in entries:
        stat = path.stat()
        modified = dt.datetime.fromtimestamp(stat.st_mtime, dt.UTC)
        files.add_row(cell(path.name), cell(stat.st_size), cell(fmt_time(modified)))
    if entries:
        console.print(files)
    else:
        console.print(cell(f"no files in {directory}"))

    label = f"{fmt_time(start)} .. {fmt_time(end) if end else 'now'}"
    values = Table(title=f"values logged during the run ({label} UTC)")
    for column in ("endpoint", "type", "values", "first", "last"):
        values.add_column(column, justify="right" if column == "values" else "left")
    for name, kind, count, first, last in counts:
        values.add_row(
            cell(name), cell(kind), cell(count), cell(fmt_time(first)), cell(fmt_time(last))
        )
    if counts:
        console.print(values)
    else:
        console.print(cell(f"no values logged during the run ({label} UTC)"))
    return 0


def cmd_report(args: argparse.Namespace, console: Console) -> int:
    from insectarium import report as reports

    if args.run_id < 0:
        console.print("[red]RUN_ID must not be negative[/red]")
        return 2
    directory = reports.run_directory(args.data_dir, args.run_id)
    if args.from_files:
        if not directory.is_dir():
            console.print(f"[red]no run directory {directory}[/red]")
            return 1
        built = reports.from_run_directory(directory, args.run_id)
    else:
        with connect(args) as conn:
            try:
                built = reports.from_database(conn, args.run_id, data_directory=args.data_dir)
            except LookupError as exc:
                console.print(f"[red]{exc}[/red]")
                return 1
    out = Path(args.out) if args.out else directory
    if not args.out and not (directory.is_dir() and os.access(directory, os.W_OK)):
        out = Path.cwd()
    written = reports.write_report(built, out, f"{args.prefix}{args.run_id:09d}")
    for path in written:
        console.print(f"wrote {path}")
    for note in built.notes:
        console.print(f"[yellow]note: {note}[/yellow]")
    return 0


def cmd_db(args: argparse.Namespace, console: Console) -> int:
    from insectarium.db import migrations  # lazy: only this command needs it

    applied = migrations.migrate(conninfo(args), args.sql_dir, seed=args.seed)
    if applied:
        console.print(cell("applied: " + ", ".join(m.filename for m in applied)))
    else:
        console.print(cell("database is up to date"))
    if args.seed:
        console.print(cell("seed applied"))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = _console()
    commands = {"runs": cmd_runs, "run": cmd_run, "report": cmd_report, "db": cmd_db}
    try:
        import psycopg
    except ImportError:  # pragma: no cover - psycopg is a dependency
        print("error: psycopg is not installed", file=sys.stderr)
        return 2
    try:
        return commands[args.command](args, console)
    except psycopg.OperationalError as exc:
        print(f"error: cannot reach the database: {printable(_scrub(exc, args))}", file=sys.stderr)
        return 2
    except psycopg.Error as exc:
        print(f"error: database: {printable(_scrub(exc, args))}", file=sys.stderr)
        return 2
    except Exception as exc:
        if type(exc).__name__ in ("MigrationError", "ChecksumMismatch"):
            print(f"error: {printable(exc)}", file=sys.stderr)
            return 1
        raise


def _scrub(exc: BaseException, args: argparse.Namespace) -> str:
    """The error text without any password we might have used."""
    text = str(exc).strip().replace("\n", " ")
    try:
        from psycopg.conninfo import conninfo_to_dict

        password = str(conninfo_to_dict(conninfo(args)).get("password") or "")
    except Exception:
        password = ""
    if len(password) >= 3:
        text = text.replace(password, "***")
    return text


if __name__ == "__main__":
    sys.exit(main())
