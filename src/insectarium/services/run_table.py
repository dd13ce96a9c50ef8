"""``run_table``: run registration (dragonfly's ``RunDBInterface`` + ``InsertDBEndpoint``).

The DAQ provider calls ``cmd run_table -s do_insert run_name=<name>`` at the start of a run and
gets ``{"run_id": …, "start_timestamp": "…Z"}`` back: the id names the run's directory and files,
the timestamp opens the snapshot window.  On top of dragonfly:

* ``do_select(run_id=None, last=10)`` — one run, or the most recent ones (newest first);
* ``end_run(run_id)`` — stamps ``end_column`` (default ``end_timestamp``) with the database clock
  in UTC, once; the run's snapshot window then has a recorded end.
"""

from __future__ import annotations

from typing import Any

from psycopg import sql

from ..dripline import ThrowReply
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

    async def end_run(self, run_id: int, end_timestamp: str | None = None) -> dict[str, Any]:
        """Record the end of run ``run_id``: ``end_timestamp`` (dripline format) or now (UTC).

        Never earlier than the run's start (a DAQ clock slightly behind the database's would
        otherwise violate the table's check).  304 for an unknown or already ended run.
        """
        if not self.end_column:
            raise ThrowReply("service_error_invalid_method", f"{self.name} has no end_column")
        run = _run_id(run_id)
        end_at = None if end_timestamp is None else exact_timestamp(end_timestamp, "end_timestamp")
        end = sql.Identifier(self.end_column)
        query = sql.SQL(
            "UPDATE {table} SET {end} = GREATEST("
            "coalesce(%s::timestamp, now() AT TIME ZONE 'UTC'), {start}) "
            "WHERE {id} = %s AND {end} IS NULL RETURNING {id}, {end}"
        ).format(
            table=self.table_sql,
            end=end,
            start=sql.Identifier(self.start_column),
            id=sql.Identifier(self.id_column),
        )
        rows = await self._execute(query, [end_at, run], "ending a run in")
        if rows:
            self.log.info("run %d ended at %s", run, rows[0][self.end_column])
            return rows[0]
        existing = await self.do_select(run_id=run)  # 304 if the run does not exist
        raise ThrowReply(
            "service_error_invalid_value",
            f"run {run} already ended at {existing[0].get(self.end_column)}",
        )


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
