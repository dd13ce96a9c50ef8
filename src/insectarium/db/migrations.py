"""Apply ``files/sql/NNN_description.sql`` in order, once each.

Every applied file is recorded in ``public.schema_migrations(version, filename, checksum,
applied_at)`` - ``version`` is the numeric prefix of the file name (``"001"``), ``checksum`` the
sha256 hex digest of the file's bytes.  The Ansible role ``postgresql`` uses the same table and
format, so either may apply the migrations to a database and the other will skip them.

* Each file runs in its own transaction together with its ``schema_migrations`` row.
* A file that was applied and has been edited since (checksum differs) is an error naming the
  file: add a new migration instead.
* Runs are serialised with an advisory lock, so two runners cannot interleave.
* Seeds (``files/sql/seed/*.sql``) are re-runnable data (``ON CONFLICT DO NOTHING``), applied
  on request and not recorded.

Functions accept either an open psycopg 3 connection (which must not be inside a transaction)
or a conninfo string / URL.  The SQL directory is, in order: the ``directory`` argument, the
environment variable ``INSECTARIUM_SQL_DIR``, ``files/sql`` of the source checkout.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import pq

log = logging.getLogger(__name__)

SQL_DIR_ENV = "INSECTARIUM_SQL_DIR"
MIGRATION_NAME = re.compile(r"^(?P<version>[0-9]+)_[^/]*\.sql$")
# Any 64-bit key: "insectarium schema_migrations".
ADVISORY_LOCK_KEY = 0x1A5EC7A81

CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS public.schema_migrations (
    version    text PRIMARY KEY,
    filename   text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


class MigrationError(RuntimeError):
    """A migration could not be found, checked or applied."""


class ChecksumMismatch(MigrationError):
    """An applied migration file was edited afterwards."""


@dataclass(frozen=True)
class Migration:
    version: str
    filename: str
    path: Path
    checksum: str

    @classmethod
    def from_path(cls, path: Path) -> Migration:
        match = MIGRATION_NAME.match(path.name)
        if match is None:
            raise MigrationError(f"{path.name}: not a migration file name (NNN_description.sql)")
        return cls(match["version"], path.name, path, checksum_of(path))

    def sql(self) -> str:
        return self.path.read_text(encoding="utf-8")


def checksum_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def sql_dir(directory: str | os.PathLike[str] | None = None) -> Path:
    """The migrations directory (argument, ``$INSECTARIUM_SQL_DIR``, or the checkout's)."""
    candidates: list[Path] = []
    if directory is not None:
        candidates = [Path(directory)]
    elif os.environ.get(SQL_DIR_ENV):
        candidates = [Path(os.environ[SQL_DIR_ENV])]
    else:
        # src/insectarium/db/migrations.py -> <repo>/files/sql; then the working directory.
        candidates = [
            Path(__file__).resolve().parents[3] / "files" / "sql",
            Path.cwd() / "files" / "sql",
        ]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    where = ", ".join(str(c) for c in candidates)
    raise MigrationError(f"no SQL migrations directory ({where}); set {SQL_DIR_ENV}")


def discover(directory: str | os.PathLike[str] | None = None) -> list[Migration]:
    """The migration files, ordered by numeric version."""
    base = sql_dir(directory)
    found = [
        Migration.from_path(p)
        for p in base.iterdir()
        if p.is_file() and MIGRATION_NAME.match(p.name)
    ]
    found.sort(key=lambda m: (int(m.version), m.filename))
    seen: dict[str, str] = {}
    for m in found:
        if m.version in seen:
            raise MigrationError(
                f"two migrations share version {m.version}: {seen[m.version]} and {m.filename}"
            )
        seen[m.version] = m.filename
    return found


@contextlib.contextmanager
def _connection(conn: psycopg.Connection[Any] | str) -> Iterator[psycopg.Connection[Any]]:
    if isinstance(conn, str):
        with psycopg.connect(conn) as owned:
            yield owned
        return
    if conn.info.transaction_status != pq.TransactionStatus.IDLE:
        raise MigrationError(
            "the connection is inside a transaction; commit or roll back before migrating"
        )
    yield conn


def _ensure_table(conn: psycopg.Connection[Any]) -> None:
    with conn.transaction():
        conn.execute(CREATE_TABLE)


def _applied(conn: psycopg.Connection[Any]) -> dict[str, tuple[str, str]]:
    with conn.transaction():
        rows = conn.execute(
            "SELECT version, filename, checksum FROM public.schema_migrations"
        ).fetchall()
    return {version: (filename, checksum) for version, filename, checksum in rows}


def _describe(exc: psycopg.Error, text: str) -> str:
    diag = exc.diag
    message = diag.message_primary or str(exc).strip()
    parts = [f"{type(exc).__name__}: {message}"]
    if diag.statement_position:
        with contextlib.suppress(ValueError):
            line = text[: int(diag.statement_position)].count("\n") + 1
            parts.append(f"line {line}")
    if diag.message_detail:
        parts.append(diag.message_detail)
    if diag.context:
        parts.append(diag.context.strip().splitlines()[0])
    return "; ".join(parts)


def _check(migrations: list[Migration], applied: dict[str, tuple[str, str]]) -> None:
    for m in migrations:
        if m.version in applied and applied[m.version][1] != m.checksum:
            recorded_name, recorded = applied[m.version]
            raise ChecksumMismatch(
                f"migration {m.filename} was changed after it was applied "
                f"(recorded as {recorded_name} with sha256 {recorded[:12]}…, "
                f"file now {m.checksum[:12]}…). Add a new migration instead of editing an "
                "applied one."
            )


def status(
    conn: psycopg.Connection[Any] | str, directory: str | os.PathLike[str] | None = None
) -> list[tuple[Migration, str]]:
    """Each migration with ``"applied"``, ``"pending"`` or ``"changed"`` (read-only)."""
    migrations = discover(directory)
    with _connection(conn) as c:
        with c.transaction():
            exists = c.execute("SELECT to_regclass('public.schema_migrations')").fetchone()
        applied = _applied(c) if exists and exists[0] else {}
    result = []
    for m in migrations:
        if m.version not in applied:
            state = "pending"
        elif applied[m.version][1] != m.checksum:
            state = "changed"
        else:
            state = "applied"
        result.append((m, state))
    return result


def migrate(
    conn: psycopg.Connection[Any] | str,
    directory: str | os.PathLike[str] | None = None,
    *,
    seed: bool = False,
    seed_path: str | os.PathLike[str] | None = None,
) -> list[Migration]:
    """Apply the pending migrations in order; return those applied (empty: up to date).

    With ``seed`` also apply the seed files (``seed_path``, default ``<sql dir>/seed``).
    """
    migrations = discover(directory)
    done: list[Migration] = []
    with _connection(conn) as c:
        c.execute("SELECT pg_advisory_lock(%s)", (ADVISORY_LOCK_KEY,))
        if not c.autocommit:
            c.commit()
        try:
            _ensure_table(c)
            applied = _applied(c)
            _check(migrations, applied)
            for m in migrations:
                if m.version in applied:
                    continue
                text = m.sql()
                try:
                    with c.transaction():
                        c.execute(text)  # type: ignore[arg-type]  # file contents, not input
                        c.execute(
                            "INSERT INTO public.schema_migrations (version, filename, checksum) "
                            "VALUES (%s, %s, %s) ON CONFLICT (version) DO NOTHING",
                            (m.version, m.filename, m.checksum),
                        )
                except psycopg.Error as exc:
                    raise MigrationError(
                        f"migration {m.filename} failed (rolled back): {_describe(exc, text)}"
                    ) from exc
                log.info("applied migration %s", m.filename)
                done.append(m)
            if seed:
                apply_seed(c, seed_path if seed_path is not None else sql_dir(directory) / "seed")
        finally:
            if not c.closed and not c.broken:
                if c.info.transaction_status == pq.TransactionStatus.INERROR:
                    c.rollback()
                c.execute("SELECT pg_advisory_unlock(%s)", (ADVISORY_LOCK_KEY,))
                if not c.autocommit:
                    c.commit()
    return done


def seed_files(path: str | os.PathLike[str]) -> list[Path]:
    """A seed file, or the ``*.sql`` files of a seed directory in name order."""
    p = Path(path)
    if p.is_dir():
        return sorted(f for f in p.iterdir() if f.is_file() and f.suffix == ".sql")
    if p.is_file():
        return [p]
    raise MigrationError(f"no seed file or directory {p}")


def apply_seed(conn: psycopg.Connection[Any] | str, path: str | os.PathLike[str]) -> list[Path]:
    """Apply re-runnable seed SQL (a file or a directory of ``*.sql``), one transaction each."""
    files = seed_files(path)
    with _connection(conn) as c:
        for f in files:
            text = f.read_text(encoding="utf-8")
            try:
                with c.transaction():
                    c.execute(text)  # type: ignore[arg-type]
            except psycopg.Error as exc:
                raise MigrationError(
                    f"seed {f.name} failed (rolled back): {_describe(exc, text)}"
                ) from exc
            log.info("applied seed %s", f.name)
    return files
