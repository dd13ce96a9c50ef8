"""Where a report's values come from: the run directory's snapshot, or the database.

* :func:`from_run_directory` reads what the DAQ left in the run's directory: the end-of-run
  ``…_snapshot.json`` (every mapped endpoint's values over the run, the latest value before the
  start first), ``…_meta.json`` and the virtual DAQ's ``<base>.json``.  No database needed: this
  is what the DAQ uses at the end of a run, and what ``insectarium report --from-files`` uses.
* :func:`from_database` reads the run-table row and the values logged in the run's window (a
  read-only role is enough), plus the run directory's files when it is readable.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

from .model import EndpointValues, Point, RunInfo, RunReport

DATA_TABLES = {
    "numeric": "endpoint_numeric_data",
    "string": "endpoint_string_data",
    "json": "endpoint_json_data",
}
#: values per endpoint read from the database for one report (a longer run is noted as cut)
MAX_POINTS_PER_ENDPOINT = 200_000
#: the largest snapshot file a report reads (bigger ones are skipped with a note)
MAX_SNAPSHOT_BYTES = 512 * 2**20


def parse_time(value: Any) -> dt.datetime | None:
    """A dripline / ISO timestamp as naive UTC (None if it is not one)."""
    if isinstance(value, dt.datetime):
        t = value
    elif isinstance(value, str) and value:
        try:
            t = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    else:
        return None
    return t.astimezone(dt.UTC).replace(tzinfo=None) if t.tzinfo else t


def run_directory(root: str | os.PathLike[str], run_id: int) -> Path:
    """``<root>/<R//10**6:03d>yyyxxx/<R//10**3:06d>xxx/<R:09d>`` (the DAQ's layout)."""
    r = int(run_id)
    return Path(root) / f"{r // 10**6:03d}yyyxxx" / f"{r // 10**3:06d}xxx" / f"{r:09d}"


def list_files(directory: Path) -> list[tuple[str, int]]:
    try:
        return sorted((p.name, p.stat().st_size) for p in directory.iterdir() if p.is_file())
    except OSError:
        return []


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _kind(values: list[Any]) -> str:
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, int | float) and not isinstance(v, bool) for v in present):
        return "numeric"
    if any(isinstance(v, dict | list) for v in present):
        return "json"
    return "string"


def find_file(directory: Path, suffix: str, run_id: int) -> Path | None:
    """``<prefix><R:09d><suffix>`` in ``directory`` (whatever the DAQ's filename prefix)."""
    wanted = f"{int(run_id):09d}{suffix}"
    try:
        matches = sorted(p for p in directory.iterdir() if p.name.endswith(wanted))
    except OSError:
        return None
    return matches[0] if matches else None


def snapshot_endpoints(snapshot: dict[str, Any], start: dt.datetime | None) -> list[EndpointValues]:
    """The snapshot's ``{endpoint: [{timestamp, value_raw, value_cal}, …]}`` as endpoint values;
    entries before ``start`` are the value the endpoint had when the run started."""
    out = []
    for name, entries in sorted(snapshot.items()):
        if not isinstance(entries, list):
            continue
        points = []
        for e in entries:
            if not isinstance(e, dict) or (t := parse_time(e.get("timestamp"))) is None:
                continue
            points.append(Point(t, e.get("value_raw"), e.get("value_cal")))
        points.sort(key=lambda p: p.t)
        before = None
        if start is not None:
            earlier = [p for p in points if p.t < start]
            before = earlier[-1] if earlier else None
            points = [p for p in points if p.t >= start]
        kind = _kind([p.value for p in points] or ([before.value] if before else []))
        out.append(EndpointValues(name, kind, points, before))
    return out


def from_run_directory(
    directory: str | os.PathLike[str],
    run_id: int,
    *,
    run_name: str | None = None,
    start: dt.datetime | str | None = None,
    end: dt.datetime | str | None = None,
    row: dict[str, Any] | None = None,
) -> RunReport:
    """A report from the files the DAQ wrote; explicit arguments win over what the files say."""
    d = Path(directory)
    notes: list[str] = []
    data_file = find_file(d, ".json", run_id)
    record: dict[str, Any] = {}
    if data_file is not None:
        try:
            loaded = _read_json(data_file)
            record = loaded if isinstance(loaded, dict) else {}
        except (OSError, ValueError) as exc:
            notes.append(f"{data_file.name} unreadable: {exc}")
    metadata = None
    meta_file = find_file(d, "_meta.json", run_id)
    if meta_file is not None:
        try:
            metadata = _read_json(meta_file)
        except (OSError, ValueError) as exc:
            notes.append(f"{meta_file.name} unreadable: {exc}")
    t_start = parse_time(start) or parse_time(record.get("start_timestamp"))
    t_end = parse_time(end) or parse_time(record.get("data_end"))
    info = RunInfo(
        int(run_id),
        run_name or record.get("run_name") or (row or {}).get("run_name"),
        t_start,
        t_end,
        dict(row or {}),
    )
    endpoints: list[EndpointValues] = []
    snap_file = find_file(d, "_snapshot.json", run_id)
    if snap_file is None:
        notes.append("no snapshot file in the run directory: no values")
    elif snap_file.stat().st_size > MAX_SNAPSHOT_BYTES:
        notes.append(f"{snap_file.name} is larger than {MAX_SNAPSHOT_BYTES >> 20} MB: not read")
    else:
        try:
            snapshot = _read_json(snap_file)
        except (OSError, ValueError) as exc:
            notes.append(f"{snap_file.name} unreadable: {exc}")
        else:
            if isinstance(snapshot, dict):
                endpoints = snapshot_endpoints(snapshot, t_start)
            else:
                notes.append(f"{snap_file.name} is not an object of endpoints")
    return RunReport(
        info,
        endpoints,
        source=f"run directory {d} (snapshot written at the end of the run)",
        metadata=metadata if isinstance(metadata, dict) else None,
        files=list_files(d),
        notes=notes,
    )


def from_database(
    conn: Any, run_id: int, *, data_directory: str | os.PathLike[str] | None = None
) -> RunReport:
    """A report from the run table and the data tables (a sync psycopg connection).

    Raises ``LookupError`` when there is no such run.
    """
    from psycopg import sql
    from psycopg.rows import dict_row

    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute("SELECT * FROM runs.run_table WHERE run_id = %s", (run_id,))
        row = cur.fetchone()
    if row is None:
        raise LookupError(f"there is no run {run_id}")
    start = row.get("start_timestamp")
    end = row.get("end_timestamp")
    notes = []
    window_end = end
    if window_end is None:
        window_end = dt.datetime.now(dt.UTC).replace(tzinfo=None)
        notes.append("the run has no end time (still running, or never closed): values up to now")
    info = RunInfo(int(run_id), row.get("run_name"), start, end, dict(row))
    mapped = conn.execute(
        "SELECT endpoint_id, endpoint_name, type::text FROM public.endpoint_id_map "
        "ORDER BY endpoint_name"
    ).fetchall()
    endpoints = []
    for eid, name, kind in mapped:
        table = sql.Identifier("public", DATA_TABLES[kind])
        rows = conn.execute(
            sql.SQL(
                'SELECT "timestamp", value_raw, value_cal FROM {} WHERE endpoint_id = %s '
                'AND "timestamp" >= %s AND "timestamp" <= %s ORDER BY "timestamp" LIMIT %s'
            ).format(table),
            (eid, start, window_end, MAX_POINTS_PER_ENDPOINT + 1),
        ).fetchall()
        if len(rows) > MAX_POINTS_PER_ENDPOINT:
            rows = rows[:MAX_POINTS_PER_ENDPOINT]
            notes.append(f"{name}: only the first {MAX_POINTS_PER_ENDPOINT} values are included")
        before_row = conn.execute(
            sql.SQL(
                'SELECT "timestamp", value_raw, value_cal FROM {} WHERE endpoint_id = %s '
                'AND "timestamp" < %s ORDER BY "timestamp" DESC LIMIT 1'
            ).format(table),
            (eid, start),
        ).fetchone()
        if not rows and before_row is None:
            continue
        endpoints.append(
            EndpointValues(
                name,
                kind,
                [Point(t, r, c) for t, r, c in rows],
                Point(*before_row) if before_row else None,
            )
        )
    metadata = None
    files: list[tuple[str, int]] = []
    if data_directory:
        d = run_directory(data_directory, run_id)
        files = list_files(d)
        meta_file = find_file(d, "_meta.json", run_id)
        if meta_file is not None:
            try:
                loaded = _read_json(meta_file)
                metadata = loaded if isinstance(loaded, dict) else None
            except (OSError, ValueError) as exc:
                notes.append(f"{meta_file.name} unreadable: {exc}")
    return RunReport(
        info,
        endpoints,
        source="database (run table and data tables)",
        metadata=metadata,
        files=files,
        notes=notes,
    )
