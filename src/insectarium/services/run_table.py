"""``run_table``: run registration (dragonfly's ``RunDBInterface`` + ``InsertDBEndpoint``).

The DAQ provider calls ``cmd run_table -s do_insert run_name=<name>`` at the start of a run and
gets ``{"run_id": …, "start_timestamp": "…Z"}`` back: the id names the run's directory and files,
the timestamp opens the snapshot window.  On top of dragonfly:

* ``do_select(run_id=None, last=10)`` — one run, or the most recent ones (newest first);
* ``end_run(run_id, end_timestamp=None, end_reason=None)`` — stamps ``end_column`` (default
  ``end_timestamp``) with the given time or the database clock in UTC, once, and the reason in
  ``end_reason_column`` (``completed``, ``ended``, ``stopped``, ``interrupted``, ``aborted``);
* ``open_runs(daq_name=None)`` — runs without an end (the DAQ closes those a crash left open).

A run name is at most :data:`~insectarium.dripline.limits.MAX_NAME_LENGTH` characters and a run
time a finite number of seconds (304 otherwise): a 1 MB name used to surface as a misleading
"lost the connection", a NaN duration was stored.
"""

from __future__ import annotations

import math
from typing import Any

from psycopg import sql

from ..dripline import ThrowReply
from ..dripline.limits import MAX_INTERVAL_S, MAX_NAME_LENGTH
from .postgres import identifier
from .snapshot import exact_timestamp
from .sql_table import SQLTable, _positive_int


class RunTable(SQLTable):
    """``runs.run_table`` by default; everything else as :class:`SQLTable`."""

    def __init__(
        self,
        name: str,
        *,
        table_name: str = "run_table",
        schema: str | None = "runs",
        required_insert_names: list[str] | None = None,
        return_col_names: list[str] | None = None,
        id_column: str = "run_id",
        start_column: str = "start_timestamp",
        end_column: str | None = "end_timestamp",
        end_reason_column: str | None = "end_reason",
        **kwargs: Any,
    ) -> None:
        super().__init__(
            name,
            table_name=table_name,
            schema=schema,
            required_insert_names=(
                ["run_name"] if required_insert_names is None else required_insert_names
            ),
            return_col_names=(
                ["run_id", "start_timestamp"] if return_col_names is None else return_col_names
            ),
            order_by=id_column,
            **kwargs,
        )
        self.id_column = id_column
        identifier(id_column, "id_column")
        self.start_column = start_column
        identifier(start_column, "start_column")
        self.end_column = end_column
        if end_column:
            identifier(end_column, "end_column")
        self.end_reason_column = end_reason_column
        if end_reason_column:
            identifier(end_reason_column, "end_reason_column")
        self._reason_column_seen = False

    def _insert_values(self, given: Any) -> dict[str, Any]:
        values = super()._insert_values(given)
        name = values.get("run_name")
        if isinstance(name, str) and len(name) > MAX_NAME_LENGTH:
            raise ThrowReply(
                "service_error_invalid_value",
                f"run_name is {len(name)} characters long; the limit is {MAX_NAME_LENGTH}",
            )
        if "run_time_s" in values and values["run_time_s"] is not None:
            values["run_time_s"] = _seconds(values["run_time_s"], "run_time_s")
        return values

    async def do_select(  # type: ignore[override]
        self, run_id: int | None = None, last: int = 10
    ) -> list[dict[str, Any]]:
        """Run ``run_id`` (a one-row list; 304 if there is none), or the ``last`` newest runs."""
        if run_id is None:
            query = sql.SQL("SELECT * FROM {} ORDER BY {} DESC LIMIT {}").format(
                self.table_sql,
                sql.Identifier(self.id_column),
                sql.Literal(_positive_int(last, "last")),
            )
            return await self._execute(query, None, "reading")
        run = _run_id(run_id)
        query = sql.SQL("SELECT * FROM {} WHERE {} = %s").format(
            self.table_sql, sql.Identifier(self.id_column)
        )
        rows = await self._execute(query, [run], "reading")
        if not rows:
            raise ThrowReply("service_error_invalid_value", f"there is no run {run}")
        return rows

    async def end_run(
        self, run_id: int, end_timestamp: str | None = None, end_reason: str | None = None
    ) -> dict[str, Any]:
        """Record the end of run ``run_id``: ``end_timestamp`` (dripline format) or now (UTC),
        and why it ended (``end_reason``, kept when the table has ``end_reason_column``).

        Never earlier than the run's start (a DAQ clock slightly behind the database's would
        otherwise violate the table's check).  304 for an unknown or already ended run.
        """
        if not self.end_column:
            raise ThrowReply("service_error_invalid_method", f"{self.name} has no end_column")
        run = _run_id(run_id)
        end_at = None if end_timestamp is None else exact_timestamp(end_timestamp, "end_timestamp")
        if end_reason is not None and end_reason not in END_REASONS:
            raise ThrowReply(
                "service_error_invalid_value",
                f"end_reason must be one of {', '.join(END_REASONS)}, not {str(end_reason)[:60]!r}",
            )
        end = sql.Identifier(self.end_column)
        params: list[Any] = [end_at]
        reason = sql.SQL("")
        if end_reason is not None and await self._has_reason_column():
            reason = sql.SQL(", {} = %s").format(sql.Identifier(self.end_reason_column))
            params.append(end_reason)
        query = sql.SQL(
            "UPDATE {table} SET {end} = GREATEST("
            "coalesce(%s::timestamp, now() AT TIME ZONE 'UTC'), {start}){reason} "
            "WHERE {id} = %s AND {end} IS NULL RETURNING *"
        ).format(
            table=self.table_sql,
            end=end,
            start=sql.Identifier(self.start_column),
            reason=reason,
            id=sql.Identifier(self.id_column),
        )
        rows = await self._execute(query, [*params, run], "ending a run in")
        if rows:
            self.log.info(
                "run %d ended at %s (%s)", run, rows[0][self.end_column], end_reason or "-"
            )
            keep = {self.id_column, self.end_column, self.end_reason_column}
            return {k: v for k, v in rows[0].items() if k in keep}
        existing = await self.do_select(run_id=run)  # 304 if the run does not exist
        raise ThrowReply(
            "service_error_invalid_value",
            f"run {run} already ended at {existing[0].get(self.end_column)}",
        )

    async def _has_reason_column(self) -> bool:
        """Whether the table has ``end_reason_column`` (a database before migration 005 has
        not: the end is then recorded without its reason rather than not at all)."""
        if not self.end_reason_column:
            return False
        if not self._reason_column_seen:
            self._reason_column_seen = self.end_reason_column in await self._columns()
            if not self._reason_column_seen:
                self.log.warning(
                    "%s has no column %s (migration 005 not applied): end reasons not recorded",
                    self.where,
                    self.end_reason_column,
                )
        return self._reason_column_seen

    async def open_runs(self, daq_name: str | None = None) -> list[dict[str, Any]]:
        """Runs without an end (oldest first), of one DAQ if ``daq_name`` is given."""
        if not self.end_column:
            return []
        condition = sql.SQL("{} IS NULL").format(sql.Identifier(self.end_column))
        params: list[Any] = []
        if daq_name is not None:
            condition = sql.SQL("{} AND daq_name = %s").format(condition)
            params.append(str(daq_name))
        query = sql.SQL("SELECT * FROM {} WHERE {} ORDER BY {} LIMIT 100").format(
            self.table_sql, condition, sql.Identifier(self.id_column)
        )
        return await self._execute(query, params, "reading")


#: how a run can end (the database checks the same list, migration 005)
END_REASONS = ("completed", "ended", "stopped", "interrupted", "aborted")


def _seconds(value: Any, what: str) -> float:
    """A duration from a request: a finite, non-negative number of seconds (304 otherwise)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ThrowReply(
            "service_error_invalid_value", f"{what} must be a number of seconds, got {value!r:.60}"
        )
    number = float(value)
    if not math.isfinite(number) or not 0 <= number <= MAX_INTERVAL_S:
        raise ThrowReply(
            "service_error_invalid_value",
            f"{what} must be a finite number of seconds from 0 to {MAX_INTERVAL_S:g}, got {value}",
        )
    return number


def _run_id(value: Any) -> int:
    if isinstance(value, bool):
        value = None
    try:
        run = int(value)
    except (TypeError, ValueError):
        run = -1
    if run < 0:
        raise ThrowReply(
            "service_error_invalid_value", f"run_id must be a non-negative integer, got {value!r}"
        )
    return run
