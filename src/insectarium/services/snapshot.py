"""``sc_snapshot``: the sensor values of a time window, written next to a run's data.

A port of dragonfly's ``PostgreSQLInterface.take_snapshot`` + ``SQLSnapshot`` (one endpoint here
instead of a provider with one child per table: the endpoint reads all the type tables itself).

``take_snapshot(start, end, metadata_target, filename)`` collects, for every target endpoint, the
values logged in ``[start, end]`` plus the latest value before ``start`` (what the sensor read
when the window opened), and sends ``{"contents": snapshot, "filename": filename}`` to
``<metadata_target>.write_json``.  Choices made where dragonfly is vague or awkward:

* each value carries **both** ``value_raw`` and ``value_cal`` (``payload_fields``); set
  ``payload_fields: [value_cal]`` for dragonfly's single-field shape;
* the latest-before-start value comes **first** in its list, so every list is in time order
  (dragonfly appended it last);
* an unknown name in ``target_items`` fails the request with 1200 naming it, as dragonfly did
  (``on_unknown_target: skip`` logs a warning and leaves it out instead);
* ``target_items`` empty or absent means every endpoint of ``endpoint_id_map``.

The snapshot itself is rendered as JSON text by PostgreSQL (one aggregated string per endpoint)
and passed on as :class:`~insectarium.dripline.message.RawJSON`: a snapshot of 100 endpoints over
an hour (360 000 values) would otherwise be 360 000 row tuples and dicts in this process — seconds
of CPU and ~100 MB of short-lived objects whose freed memory partly stays resident (bench
``runs``/``memory``).  Numbers keep Python's JSON form (``1.0``, ``NaN``, ``Infinity``), so the
written file is what the Python path wrote before.

Queries follow performance-notes.md: the window is one indexed range scan per type table, the
latest values one ``LATERAL … ORDER BY timestamp DESC LIMIT 1`` per endpoint, both using the
``(endpoint_id, timestamp)`` primary key.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
from collections.abc import Iterable
from typing import Any, Literal

from psycopg import sql

from ..dripline import Endpoint, ThrowReply
from ..dripline.memory import release_soon
from ..dripline.message import RawJSON, parse_timestamp
from .postgres import (
    DEFAULT_DATA_TABLES,
    PostgreSQLService,
    database_error,
    identifier,
    qualified,
)

log = logging.getLogger(__name__)

TIMESTAMP_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")
SQL_TIME_FORMAT = 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'
VALUE_FIELDS = ("value_raw", "value_cal")


def exact_timestamp(value: Any, what: str) -> dt.datetime:
    """A request timestamp in exact dripline form, as naive UTC (304 otherwise)."""
    if not isinstance(value, str) or not TIMESTAMP_RE.match(value):
        raise ThrowReply(
            "service_error_invalid_value",
            f"{what} must be a timestamp like 2026-01-31T12:00:00.000000Z, got {value!r}",
        )
    try:
        return parse_timestamp(value).replace(tzinfo=None)
    except ValueError:
        raise ThrowReply(
            "service_error_invalid_value", f"{what} {value!r} is not a valid date and time"
        ) from None


class SQLSnapshot(Endpoint):
    """Reads logged sensor values back for run metadata (``sc_snapshot``)."""

    def __init__(
        self,
        name: str,
        *,
        target_items: list[str] | None = None,
        payload_fields: list[str] | None = None,
        payload_field: str | None = None,
        schema: str | None = None,
        id_map_table: str = "endpoint_id_map",
        data_tables: dict[str, str] | None = None,
        on_unknown_target: Literal["error", "skip"] = "error",
        write_timeout_s: float = 10.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(name, **kwargs)
        self.target_items = list(target_items or [])
        fields = [payload_field] if payload_field else list(payload_fields or VALUE_FIELDS)
        for f in fields:
            if f not in VALUE_FIELDS:
                raise ValueError(f"payload field {f!r} must be one of {', '.join(VALUE_FIELDS)}")
        self.payload_fields = fields
        self.id_map_sql = qualified(schema, id_map_table)
        tables = DEFAULT_DATA_TABLES if data_tables is None else data_tables
        for kind in tables:
            identifier(kind, "endpoint type")
        self.tables = {kind: qualified(schema, t) for kind, t in tables.items()}
        self.on_unknown_target = on_unknown_target
        self.write_timeout_s = float(write_timeout_s)

    # ----------------------------------------------------------------- helpers
    def _db(self) -> Any:
        service = self.service
        if not isinstance(service, PostgreSQLService):
            raise ThrowReply(
                "service_error", f"{self.name} must be hosted by a PostgreSQLService (database)"
            )
        return service.db

    async def _targets(self, conn: Any, names: list[str] | None) -> dict[int, tuple[str, str]]:
        """endpoint_id → (name, type) of the wanted endpoints (all mapped ones if none named)."""
        cur = await conn.execute(
            sql.SQL("SELECT endpoint_id, endpoint_name, type::text FROM {}").format(self.id_map_sql)
        )
        mapped = {str(n): (int(i), str(t)) for i, n, t in await cur.fetchall()}
        wanted = names if names else list(mapped)
        unknown = [n for n in wanted if n not in mapped]
        if unknown:
            text = f"not in endpoint_id_map: {', '.join(sorted(unknown))}"
            if self.on_unknown_target == "error":
                raise ThrowReply("database_error", f"snapshot targets {text}")
            log.warning("snapshot skips targets %s", text)
        return {mapped[n][0]: (n, mapped[n][1]) for n in wanted if n in mapped}

    def _point_text(self, kind: str, alias: str = "") -> sql.Composable:
        """SQL expression: one value as the JSON text of a snapshot point.

        ``{"timestamp":"…","value_raw":…,"value_cal":…}`` (the configured payload fields), with
        floats written as Python's ``json`` writes them (``1.0`` rather than PostgreSQL's ``1``;
        ``NaN``/``Infinity`` bare), text as JSON strings and JSON values as they are.
        """
        prefix = sql.SQL(alias + ".") if alias else sql.SQL("")
        parts: list[sql.Composable] = [
            sql.SQL("""{} || to_char({}"timestamp", {}) || '"'""").format(
                sql.Literal('{"timestamp":"'), prefix, sql.Literal(SQL_TIME_FORMAT)
            )
        ]
        for f in self.payload_fields:
            column = sql.SQL("{}{}").format(prefix, sql.Identifier(f))
            if kind == "numeric":
                value = sql.SQL(
                    "CASE WHEN {c} IS NULL THEN 'null' "
                    "WHEN {c}::text ~ '^-?[0-9]+$' THEN {c}::text || '.0' "
                    "ELSE {c}::text END"
                ).format(c=column)
            else:  # text → JSON string, jsonb → its JSON text
                value = sql.SQL("coalesce(to_json({c})::text, 'null')").format(c=column)
            parts.append(sql.SQL("{} || {}").format(sql.Literal(f",{json.dumps(f)}:"), value))
        parts.append(sql.Literal("}"))
        return sql.SQL("(") + sql.SQL(" || ").join(parts) + sql.SQL(")")

    async def _log_texts(
        self, conn: Any, targets: dict[int, tuple[str, str]], start: dt.datetime, end: dt.datetime
    ) -> dict[str, tuple[int, str]]:
        """Per endpoint name: how many values are in the window, and their points as JSON text
        (comma-separated, in time order), built by the server."""
        out: dict[str, tuple[int, str]] = {}
        for kind, table in self.tables.items():
            ids = [i for i, (_n, t) in targets.items() if t == kind]
            if not ids:
                continue
            query = sql.SQL(
                "SELECT endpoint_id, count(*), string_agg({point}, ',' ORDER BY \"timestamp\") "
                'FROM {table} WHERE endpoint_id = ANY(%s) AND "timestamp" BETWEEN %s AND %s '
                "GROUP BY endpoint_id"
            ).format(point=self._point_text(kind), table=table)
            cur = await conn.execute(query, (ids, start, end))
            for eid, count, text in await cur.fetchall():
                out[targets[eid][0]] = (int(count), text)
        return out

    async def _latest_texts(
        self, conn: Any, targets: dict[int, tuple[str, str]], before: dt.datetime
    ) -> dict[str, str]:
        """Per endpoint name: its newest point strictly before ``before``, as JSON text."""
        out: dict[str, str] = {}
        for kind, table in self.tables.items():
            ids = [i for i, (_n, t) in targets.items() if t == kind]
            if not ids:
                continue
            query = sql.SQL(
                "SELECT e.id, {point} FROM unnest(%s::int[]) AS e(id) CROSS JOIN LATERAL ("
                '  SELECT "timestamp", value_raw, value_cal FROM {table} '
                '  WHERE endpoint_id = e.id AND "timestamp" < %s '
                '  ORDER BY "timestamp" DESC LIMIT 1) AS l'
            ).format(point=self._point_text(kind, alias="l"), table=table)
            cur = await conn.execute(query, (ids, before))
            for eid, text in await cur.fetchall():
                out[targets[eid][0]] = text
        return out

    def _window(self, start: Any, end: Any) -> tuple[dt.datetime, dt.datetime]:
        begin = exact_timestamp(start, "start")
        finish = exact_timestamp(end, "end")
        if finish <= begin:
            raise ThrowReply(
                "service_error_invalid_value", f"end {end} must be later than start {start}"
            )
        return begin, finish

    # ----------------------------------------------------------------- commands
    async def get_logs(self, start: str, end: str, names: list[str] | None = None) -> RawJSON:
        """Values logged between ``start`` and ``end`` (inclusive), by endpoint name
        (``{name: [point, …]}``, rendered by the server as the snapshot is)."""
        begin, finish = self._window(start, end)
        db = self._db()
        async with db.connection() as conn:
            try:
                targets = await self._targets(conn, names or self.target_items)
                logs = await self._log_texts(conn, targets, begin, finish)
            except ThrowReply:
                raise
            except Exception as exc:
                raise database_error(db, exc, "reading logged values") from None
        return _json_object((name, f"[{points}]") for name, (_count, points) in logs.items())

    async def get_latest(self, timestamp: str, names: list[str] | None = None) -> RawJSON:
        """The newest value of each endpoint strictly before ``timestamp`` (``{name: point}``)."""
        before = exact_timestamp(timestamp, "timestamp")
        if isinstance(names, str):
            names = [names]
        db = self._db()
        async with db.connection() as conn:
            try:
                targets = await self._targets(conn, names or self.target_items)
                latest = await self._latest_texts(conn, targets, before)
            except ThrowReply:
                raise
            except Exception as exc:
                raise database_error(db, exc, "reading latest values") from None
        return _json_object(latest.items())

    async def snapshot(self, start: str, end: str) -> RawJSON:
        """The snapshot contents (``{endpoint: [point, …]}``, JSON): latest before ``start``
        first, then the window, per endpoint."""
        contents, _endpoints, _values = await self._snapshot(start, end)
        return contents

    async def _snapshot(self, start: str, end: str) -> tuple[RawJSON, int, int]:
        """The contents as JSON text, and how many endpoints and values it holds."""
        begin, finish = self._window(start, end)
        db = self._db()
        async with db.connection() as conn:
            try:
                async with conn.transaction():  # one consistent view of the tables
                    # shortest exact float text (PostgreSQL >= 12; a role may have lowered it)
                    await conn.execute("SET LOCAL extra_float_digits = 1")
                    targets = await self._targets(conn, self.target_items)
                    latest = await self._latest_texts(conn, targets, begin)
                    logs = await self._log_texts(conn, targets, begin, finish)
            except ThrowReply:
                raise
            except Exception as exc:
                raise database_error(db, exc, "taking a snapshot") from None
        entries: list[tuple[str, str]] = []
        values = 0
        for name, _kind in sorted(targets.values()):
            count, window = logs.get(name, (0, ""))
            points = [p for p in (latest.get(name), window) if p]
            if points:
                entries.append((name, f"[{','.join(points)}]"))
                values += count + (name in latest)
            else:
                log.warning("snapshot %s..%s: no value at all for %s", start, end, name)
        if not entries:
            log.critical("snapshot %s..%s is empty: no logged values for any target", start, end)
        return _json_object(entries), len(entries), values

    async def take_snapshot(
        self,
        start: str,
        end: str,
        metadata_target: str | None = None,
        filename: str | None = None,
    ) -> dict[str, Any]:
        """Snapshot the window and have ``metadata_target`` write it to ``filename``.

        Without a ``metadata_target`` the snapshot itself is returned (handy from dl-agent).
        """
        contents, endpoints, values = await self._snapshot(start, end)
        summary: dict[str, Any] = {
            "start": start,
            "end": end,
            "endpoints": endpoints,
            "values": values,
        }
        if not metadata_target:
            return {**summary, "contents": contents}
        if not filename:
            raise ThrowReply(
                "service_error_invalid_value", "filename is required with a metadata_target"
            )
        service = self.service
        assert service is not None
        await service.cmd(
            metadata_target,
            "write_json",
            keyed_args={"contents": contents, "filename": filename},
            timeout_s=self.write_timeout_s,
        )
        log.info(
            "snapshot %s..%s (%d values of %d endpoints) sent to %s as %s",
            start,
            end,
            summary["values"],
            summary["endpoints"],
            metadata_target,
            filename,
        )
        release_soon()  # the snapshot's rows are dropped with this request
        return {**summary, "metadata_target": metadata_target, "filename": filename}


def _json_object(members: Iterable[tuple[str, str]]) -> RawJSON:
    """A JSON object from names and their values' JSON text."""
    return RawJSON("{" + ",".join(f"{json.dumps(name)}:{text}" for name, text in members) + "}")
