"""``SQLTable``: insert into and select from one table through dripline commands.

dragonfly's ``SQLTable`` / ``InsertDBEndpoint`` (and dripline-python 5's ``SQLTable``): what may be
inserted is fixed by configuration — ``required_insert_names``, ``optional_insert_names``,
``default_insert_values`` — and ``return_col_names`` says what ``do_insert`` replies.  A request
only ever supplies *values*: column names come from the YAML file (validated as plain identifiers)
and every value is a bound parameter, so quotes or semicolons in a run name are stored as typed.
Keys a request sends that are not configured are dropped (debug line), as in dragonfly; a missing
required key is a 1200 naming it.  Datetimes in replies use the dripline timestamp format.
"""

from __future__ import annotations

import datetime as dt
import decimal
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from ..dripline import Endpoint, ThrowReply
from ..dripline.message import format_timestamp
from .postgres import Database, PostgreSQLService, database_error, identifier, qualified

log = logging.getLogger(__name__)


def plain(value: Any) -> Any:
    """A JSON-friendly version of a database value (datetimes as dripline timestamps)."""
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return format_timestamp(value)
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        return float(value)
    return value


def plain_row(row: Mapping[str, Any]) -> dict[str, Any]:
    return {str(k): plain(v) for k, v in row.items()}


class SQLTable(Endpoint):
    """One table, written with ``do_insert`` and read with ``do_select``."""

    def __init__(
        self,
        name: str,
        *,
        table_name: str,
        schema: str | None = None,
        required_insert_names: list[str] | None = None,
        optional_insert_names: list[str] | None = None,
        default_insert_values: dict[str, Any] | None = None,
        return_col_names: list[str] | None = None,
        order_by: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(name, **kwargs)
        self.table_name = table_name
        self.schema = schema
        self.table_sql = qualified(schema, table_name)
        self.required_insert_names = list(required_insert_names or [])
        self.optional_insert_names = list(optional_insert_names or [])
        self.default_insert_values = dict(default_insert_values or {})
        self.return_col_names = list(return_col_names or [])
        for column in (
            *self.required_insert_names,
            *self.optional_insert_names,
            *self.default_insert_values,
            *self.return_col_names,
        ):
            identifier(column, "column name")
        self.order_by = order_by
        if order_by:
            identifier(order_by, "order_by column")

    # ----------------------------------------------------------------- helpers
    @property
    def where(self) -> str:
        return f"{self.schema}.{self.table_name}" if self.schema else self.table_name

    def _db(self) -> Database:
        service = self.service
        if not isinstance(service, PostgreSQLService):
            raise ThrowReply(
                "service_error", f"{self.name} must be hosted by a PostgreSQLService (database)"
            )
        return service.db

    def _insert_values(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """Defaults, then the allowed keys of ``given``; 1200 if a required column is missing."""
        allowed = set(self.required_insert_names) | set(self.optional_insert_names)
        values = dict(self.default_insert_values)
        dropped = []
        for key, value in given.items():
            if key in allowed:
                values[key] = value
            else:
                dropped.append(key)
        if dropped:
            self.log.debug("do_insert ignores keys %s (not configured)", sorted(dropped))
        for key, value in values.items():
            if isinstance(value, float) and not math.isfinite(value):
                raise ThrowReply(
                    "service_error_invalid_value", f"{key} must be a finite number, not {value}"
                )
        missing = [c for c in self.required_insert_names if values.get(c) is None]
        if missing:
            raise ThrowReply(
                "database_error",
                f"{self.where}: required column(s) missing from the request: {', '.join(missing)}",
            )
        return values

    async def _execute(
        self, query: sql.Composable, params: Sequence[Any] | None, doing: str
    ) -> list[dict[str, Any]]:
        """Run one statement in its own transaction; rows as dicts; DB errors → 1200."""
        db = self._db()
        async with db.connection() as conn:
            try:
                async with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
                    await cur.execute(query, params)
                    rows = await cur.fetchall() if cur.description else []
            except psycopg.Error as exc:
                if conn.broken or conn.closed:
                    raise  # the connection is gone: Database reports it as such
                # refused by the server on a working connection (a check, a value too large
                # for an index …): say what was refused, not "lost the connection"
                raise database_error(db, exc, f"{doing} {self.where}") from None
        return [plain_row(r) for r in rows]

    # ----------------------------------------------------------------- commands
    async def do_insert(self, **kwargs: Any) -> dict[str, Any]:
        """Insert one row from the request's keys; reply with ``return_col_names``."""
        values = self._insert_values(kwargs)
        columns = list(values)
        query = sql.SQL("INSERT INTO {table} ({cols}) VALUES ({params})").format(
            table=self.table_sql,
            cols=sql.SQL(", ").join(map(sql.Identifier, columns)),
            params=sql.SQL(", ").join(sql.Placeholder() * len(columns)),
        )
        if self.return_col_names:
            query = sql.SQL("{} RETURNING {}").format(
                query, sql.SQL(", ").join(map(sql.Identifier, self.return_col_names))
            )
        rows = await self._execute(query, [values[c] for c in columns], "inserting into")
        self.log.info("inserted into %s: %s", self.where, rows[0] if rows else values)
        return rows[0] if rows else {}

    async def do_select(
        self, where: dict[str, Any] | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """Rows whose columns equal ``where`` (column names checked against the table)."""
        limit = _positive_int(limit, "limit")
        conditions = []
        params: list[Any] = []
        known = await self._columns()
        for column, value in (where or {}).items():
            if column not in known:
                raise ThrowReply(
                    "service_error_invalid_value", f"{self.where} has no column {column!r}"
                )
            conditions.append(sql.SQL("{} = %s").format(sql.Identifier(column)))
            params.append(value)
        query = sql.SQL("SELECT * FROM {}").format(self.table_sql)
        if conditions:
            query = sql.SQL("{} WHERE {}").format(query, sql.SQL(" AND ").join(conditions))
        if self.order_by:
            query = sql.SQL("{} ORDER BY {} DESC").format(query, sql.Identifier(self.order_by))
        query = sql.SQL("{} LIMIT {}").format(query, sql.Literal(limit))
        return await self._execute(query, params, "reading")

    async def _columns(self) -> list[str]:
        """The table's column names (from the catalogue, so requests can be checked)."""
        rows = await self._execute(
            sql.SQL(
                "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) "
                "AND attnum > 0 AND NOT attisdropped ORDER BY attnum"
            ),
            [self.table_sql.as_string(None)],
            "describing",
        )
        return [r["attname"] for r in rows]


def _positive_int(value: Any, what: str, maximum: int = 10_000) -> int:
    if isinstance(value, bool):
        value = None
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number < 1 or number > maximum:
        raise ThrowReply(
            "service_error_invalid_value", f"{what} must be an integer 1..{maximum}, got {value!r}"
        )
    return number
