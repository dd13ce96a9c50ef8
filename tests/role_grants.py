"""The postgresql role's grants (roles/postgresql/defaults/main.yml) applied to a test role.

Tests that run a service or tool under exactly the privileges the lab gives it use these, so a
grant the role forgets fails here and not first on a provisioned lab.
"""

from __future__ import annotations

from typing import Any

import psycopg
import yaml
from psycopg import sql

from .runtime_support import REPO

DEFAULTS: dict[str, Any] = yaml.safe_load((REPO / "roles/postgresql/defaults/main.yml").read_text())


def _target(grant: dict[str, Any]) -> sql.Composable:
    kind, objs = grant["type"], grant["objs"]
    if kind == "schema":
        return sql.SQL("SCHEMA {}").format(sql.Identifier(objs))
    what = {"table": "TABLES", "sequence": "SEQUENCES"}[kind]
    if objs == "ALL_IN_SCHEMA":
        return sql.SQL("ALL {} IN SCHEMA {}").format(sql.SQL(what), sql.Identifier(grant["schema"]))
    names = [sql.Identifier(grant["schema"], name) for name in objs.split(",")]
    return sql.SQL("{} {}").format(sql.SQL(kind.upper()), sql.SQL(", ").join(names))


def apply_grants(dsn: str, role: str, grants: list[dict[str, Any]]) -> None:
    """Apply postgresql_privs-style grants ({type, schema, objs, privs}) as the role does."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for g in grants:
            conn.execute(
                sql.SQL("GRANT {} ON {} TO {}").format(
                    sql.SQL(g["privs"]), _target(g), sql.Identifier(role)
                )
            )


def apply_column_grants(dsn: str, role: str, grants: list[dict[str, Any]]) -> None:
    """Apply postgresql_column_grants entries ({schema, table, priv, columns})."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for g in grants:
            conn.execute(
                sql.SQL("GRANT {} ({}) ON {}.{} TO {}").format(
                    sql.SQL(g["priv"]),
                    sql.SQL(", ").join(sql.Identifier(c) for c in g["columns"]),
                    sql.Identifier(g["schema"]),
                    sql.Identifier(g["table"]),
                    sql.Identifier(role),
                )
            )


def grant_purpose(dsn: str, role: str, purpose: str) -> None:
    """Everything the role grants to the service role of ``purpose`` (e.g. ``run_writer``)."""
    apply_grants(dsn, role, DEFAULTS["postgresql_grants"].get(purpose, []))
    apply_column_grants(dsn, role, DEFAULTS["postgresql_column_grants"].get(purpose, []))


def grant_read_only(dsn: str, role: str) -> None:
    """The grants of a read-only purpose (postgresql_read_only_grants)."""
    apply_grants(dsn, role, DEFAULTS["postgresql_read_only_grants"])
