"""Database schema tooling: the ordered SQL migrations in ``files/sql`` and their runner."""

from __future__ import annotations

from insectarium.db.migrations import (
    ChecksumMismatch,
    Migration,
    MigrationError,
    apply_seed,
    discover,
    migrate,
    sql_dir,
    status,
)

__all__ = [
    "ChecksumMismatch",
    "Migration",
    "MigrationError",
    "apply_seed",
    "discover",
    "migrate",
    "sql_dir",
    "status",
]
