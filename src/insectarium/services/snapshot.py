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

Queries follow performance-notes.md: the window is one indexed range scan per type table, the
latest values one ``LATERAL … ORDER BY timestamp DESC LIMIT 1`` per endpoint, both using the
``(endpoint_id, timestamp)`` primary key.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from typing import Any, Literal

from psycopg import sql

from ..dripline import Endpoint, ThrowReply
from ..dripline.memory import release_soon
from ..dripline.message import parse_timestamp
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

    def _point(self, stamp: str, raw: Any, cal: Any) -> dict[str, Any]:
        point: dict[str, Any] = {"timestamp": stamp}
        for f in self.payload_fields:
            point[f] = raw if f == "value_raw" else cal
        return point

    async def _logs(
        self, conn: Any, targets: dict[int, tuple[str, str]], start: dt.datetime, end: dt.datetime
    ) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {}
        for kind, table in self.tables.items():
            ids = [i for i, (_n, t) in targets.items() if t == kind]
            if not ids:
                continue
            query = sql.SQL(
                'SELECT endpoint_id, to_char("timestamp", {fmt}), value_raw, value_cal '
                'FROM {table} WHERE endpoint_id = ANY(%s) AND "timestamp" BETWEEN %s AND %s '
                'ORDER BY endpoint_id, "timestamp"'
            ).format(fmt=sql.Literal(SQL_TIME_FORMAT), table=table)
            async with conn.cursor() as cur:
                async for eid, stamp, raw, cal in cur.stream(query, (ids, start, end)):
                    out.setdefault(targets[eid][0], []).append(self._point(stamp, raw, cal))
        return out

    async def _latest(
        self, conn: Any, targets: dict[int, tuple[str, str]], before: dt.datetime
    ) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for kind, table in self.tables.items():
            ids = [i for i, (_n, t) in targets.items() if t == kind]
            if not ids:
                continue
            query = sql.SQL(
                "SELECT e.id, to_char(l.ts, {fmt}), l.value_raw, l.value_cal "
                "FROM unnest(%s::int[]) AS e(id) CROSS JOIN LATERAL ("
                '  SELECT "timestamp" AS ts, value_raw, value_cal FROM {table} '
                '  WHERE endpoint_id = e.id AND "timestamp" < %s '
                '  ORDER BY "timestamp" DESC LIMIT 1) AS l'
            ).format(fmt=sql.Literal(SQL_TIME_FORMAT), table=table)
            cur = await conn.execute(query, (ids, before))
            for eid, stamp, raw, cal in await cur.fetchall():
                out[targets[eid][0]] = self._point(stamp, raw, cal)
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
    async def get_logs(
        self, start: str, end: str, names: list[str] | None = None
    ) -> dict[str, list[dict[str, Any]]]:
        """Values logged between ``start`` and ``end`` (inclusive), by endpoint name."""
        begin, finish = self._window(start, end)
        db = self._db()
        async with db.connection() as conn:
            try:
                targets = await self._targets(conn, names or self.target_items)
                return await self._logs(conn, targets, begin, finish)
            except ThrowReply:
                raise
            except Exception as exc:
                raise database_error(db, exc, "reading logged values") from None

    async def get_latest(
        self, timestamp: str, names: list[str] | None = None
    ) -> dict[str, dict[str, Any]]:
        """The newest value of each endpoint strictly before ``timestamp``."""
        before = exact_timestamp(timestamp, "timestamp")
        if isinstance(names, str):
            names = [names]
        db = self._db()
        async with db.connection() as conn:
            try:
                targets = await self._targets(conn, names or self.target_items)
                return await self._latest(conn, targets, before)
            except ThrowReply:
                raise
            except Exception as exc:
                raise database_error(db, exc, "reading latest values") from None

    async def snapshot(self, start: str, end: str) -> dict[str, list[dict[str, Any]]]:
        """The snapshot contents: latest before ``start`` first, then the window, per endpoint."""
        begin, finish = self._window(start, end)
        db = self._db()
        async with db.connection() as conn:
            try:
                async with conn.transaction():  # one consistent view of the tables
                    targets = await self._targets(conn, self.target_items)
                    latest = await self._latest(conn, targets, begin)
                    logs = await self._logs(conn, targets, begin, finish)
            except ThrowReply:
                raise
            except Exception as exc:
                raise database_error(db, exc, "taking a snapshot") from None
        contents: dict[str, list[dict[str, Any]]] = {}
        for name, _kind in sorted(targets.values()):
            values = ([latest[name]] if name in latest else []) + logs.get(name, [])
            if values:
                contents[name] = values
            else:
                log.warning("snapshot %s..%s: no value at all for %s", start, end, name)
        if not contents:
            log.critical("snapshot %s..%s is empty: no logged values for any target", start, end)
        return contents

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
        contents = await self.snapshot(start, end)
        summary: dict[str, Any] = {
            "start": start,
            "end": end,
            "endpoints": len(contents),
            "values": sum(len(v) for v in contents.values()),
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
