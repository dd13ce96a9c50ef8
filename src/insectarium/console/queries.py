"""What the console reads from the slow-control database (read-only role), and how.

* :func:`endpoints` — every endpoint of ``endpoint_id_map`` with its latest value (one indexed
  ``LATERAL … ORDER BY timestamp DESC LIMIT 1`` per endpoint, ~1 ms each).
* :func:`series` — values of some endpoints over a window, never more than ``max_points`` per
  endpoint.  Short windows come as the raw rows; longer ones as buckets (mean, min, max, count):
  from the raw rows while a bucket is shorter than a minute, from the per-minute rollup up to an
  hour, from the per-hour rollup beyond (``files/sql/007_numeric_rollups.sql``).  30 days are
  then 720 hour rows per endpoint instead of 2.6 M raw rows; ``bench/console.py`` measures both.
* :func:`runs`, :func:`run` — the run table, newest first.
* :func:`run_summary` — count, min, max, mean, first and last value of every endpoint over a
  window: whole minutes from the rollup, the partial minutes at both ends from the raw rows.

All timestamps are naive UTC ``datetime`` (the lab's convention).  Values that JSON cannot carry
(NaN, ±inf) become ``None``.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from typing import Any, Literal

from psycopg import AsyncConnection, sql

DATA_TABLES = {
    "numeric": "endpoint_numeric_data",
    "string": "endpoint_string_data",
    "json": "endpoint_json_data",
}
ROLLUPS = {60: "endpoint_numeric_rollup_1m", 3600: "endpoint_numeric_rollup_1h"}
#: buckets are aligned to this instant (date_bin origin), so a plot does not shimmer on reload
ORIGIN = dt.datetime(2000, 1, 1)
#: the most endpoints one series request may ask for
MAX_ENDPOINTS = 24
Field = Literal["cal", "raw"]


class QueryError(ValueError):
    """A request the database cannot answer as asked (unknown endpoint, bad window)."""


@dataclass(frozen=True)
class EndpointInfo:
    id: int
    name: str
    type: str


def finite(value: Any) -> Any:
    """``value`` unless it is a float JSON cannot represent."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def iso(t: dt.datetime | None) -> str | None:
    return None if t is None else t.isoformat(timespec="microseconds")


async def endpoint_map(conn: AsyncConnection[Any]) -> dict[str, EndpointInfo]:
    cur = await conn.execute(
        "SELECT endpoint_id, endpoint_name, type::text FROM public.endpoint_id_map "
        "ORDER BY endpoint_name"
    )
    return {n: EndpointInfo(int(i), str(n), str(t)) for i, n, t in await cur.fetchall()}


async def endpoints(conn: AsyncConnection[Any]) -> list[dict[str, Any]]:
    """Every mapped endpoint with its latest logged value (``None`` if it never logged)."""
    out: list[dict[str, Any]] = []
    for kind, table in DATA_TABLES.items():
        query = sql.SQL(
            "SELECT m.endpoint_id, m.endpoint_name, l.ts, l.value_raw, l.value_cal "
            "FROM public.endpoint_id_map AS m LEFT JOIN LATERAL ("
            '  SELECT "timestamp" AS ts, value_raw, value_cal FROM {} AS d '
            '  WHERE d.endpoint_id = m.endpoint_id ORDER BY "timestamp" DESC LIMIT 1'
            ") AS l ON true WHERE m.type = %s"
        ).format(sql.Identifier("public", table))
        cur = await conn.execute(query, (kind,))
        for eid, name, ts, raw, cal in await cur.fetchall():
            out.append(
                {
                    "id": eid,
                    "name": name,
                    "type": kind,
                    "timestamp": iso(ts),
                    "value_raw": finite(raw),
                    "value_cal": finite(cal),
                }
            )
    out.sort(key=lambda e: e["name"])
    return out


def bucket_seconds(start: dt.datetime, end: dt.datetime, max_points: int) -> int:
    """The bucket width that keeps a window under ``max_points`` points.

    Up to 30 s the raw rows are bucketed; beyond, whole minutes (the minute rollup), and beyond
    half an hour whole hours (the hour rollup): a plot then has between half and all of
    ``max_points`` points, read from 60 or 3600 times fewer rows.
    """
    width = max(1, math.ceil((end - start).total_seconds() / max_points))
    if width <= 30:
        return width
    if width <= 1800:
        return math.ceil(width / 60) * 60
    return math.ceil(width / 3600) * 3600


def check_window(start: dt.datetime, end: dt.datetime) -> None:
    if end <= start:
        raise QueryError(f"the window must end after it starts ({iso(start)} .. {iso(end)})")
    if end - start > dt.timedelta(days=3660):
        raise QueryError("the window may span at most ten years")


async def _raw_numeric(
    conn: AsyncConnection[Any], eid: int, start: dt.datetime, end: dt.datetime, limit: int
) -> list[tuple[Any, ...]]:
    cur = await conn.execute(
        'SELECT "timestamp", value_raw, value_cal FROM public.endpoint_numeric_data '
        'WHERE endpoint_id = %s AND "timestamp" >= %s AND "timestamp" <= %s '
        'ORDER BY "timestamp" LIMIT %s',
        (eid, start, end, limit),
    )
    return await cur.fetchall()


_AGG_RAW = sql.SQL(
    'SELECT date_bin(%(width)s, "timestamp", %(origin)s) AS b, count(*), '
    "count(value_raw), min(value_raw), max(value_raw), avg(value_raw), "
    "count(value_cal), min(value_cal), max(value_cal), avg(value_cal) "
    "FROM public.endpoint_numeric_data "
    'WHERE endpoint_id = %(eid)s AND "timestamp" >= %(start)s AND "timestamp" <= %(end)s '
    "GROUP BY b ORDER BY b"
)

_AGG_ROLLUP = sql.SQL(
    "SELECT date_bin(%(width)s, bucket, %(origin)s) AS b, sum(n), "
    "sum(raw_n), min(raw_min), max(raw_max), sum(raw_sum) / nullif(sum(raw_n), 0), "
    "sum(cal_n), min(cal_min), max(cal_max), sum(cal_sum) / nullif(sum(cal_n), 0) "
    "FROM {table} "
    "WHERE endpoint_id = %(eid)s AND bucket >= date_trunc(%(unit)s, %(start)s) "
    "AND bucket <= %(end)s GROUP BY b ORDER BY b"
)


async def aggregated_numeric(
    conn: AsyncConnection[Any],
    eid: int,
    start: dt.datetime,
    end: dt.datetime,
    width_s: int,
    *,
    source: Literal["raw", "rollup"] = "rollup",
) -> tuple[str, list[tuple[Any, ...]]]:
    """Buckets of ``width_s`` seconds: ``(mode, rows of (bucket, n, raw n/min/max/mean,
    cal n/min/max/mean))``.  ``source="raw"`` forces the raw table (the benchmark's baseline)."""
    params = {
        "width": dt.timedelta(seconds=width_s),
        "origin": ORIGIN,
        "eid": eid,
        "start": start,
        "end": end,
    }
    if source == "raw" or width_s < 60:
        cur = await conn.execute(_AGG_RAW, params)
        return "raw-buckets", await cur.fetchall()
    unit, table = ("hour", ROLLUPS[3600]) if width_s >= 3600 else ("minute", ROLLUPS[60])
    query = _AGG_ROLLUP.format(table=sql.Identifier("public", table))
    cur = await conn.execute(query, {**params, "unit": unit})
    return ("1h" if unit == "hour" else "1m"), await cur.fetchall()


def _pick(field: Field, row: tuple[Any, ...]) -> tuple[Any, Any, Any]:
    """(mean, min, max) of the calibrated values, or of the raw ones (asked for, or no cal)."""
    _b, _n, _raw_n, raw_min, raw_max, raw_mean, cal_n, cal_min, cal_max, cal_mean = row
    if field == "cal" and cal_n:
        return cal_mean, cal_min, cal_max
    return raw_mean, raw_min, raw_max


async def numeric_series(
    conn: AsyncConnection[Any],
    endpoint: EndpointInfo,
    start: dt.datetime,
    end: dt.datetime,
    max_points: int,
    field: Field = "cal",
) -> dict[str, Any]:
    width = bucket_seconds(start, end, max_points)
    out: dict[str, Any] = {"name": endpoint.name, "type": endpoint.type, "field": field}
    if width < 60:
        rows = await _raw_numeric(conn, endpoint.id, start, end, 2 * max_points + 1)
        if len(rows) <= 2 * max_points:
            values = [
                finite(raw if field == "raw" or cal is None else cal) for _t, raw, cal in rows
            ]
            out.update(
                mode="raw",
                bucket_s=0,
                t=[iso(t) for t, _r, _c in rows],
                value=values,
                raw=[finite(r) for _t, r, _c in rows],
                cal=[finite(c) for _t, _r, c in rows],
            )
            return out
    mode, rows = await aggregated_numeric(conn, endpoint.id, start, end, width)
    half = dt.timedelta(seconds=width / 2)
    picked = [_pick(field, r) for r in rows]
    out.update(
        mode=mode,
        bucket_s=width,
        t=[iso(r[0] + half) for r in rows],
        value=[finite(p[0]) for p in picked],
        min=[finite(p[1]) for p in picked],
        max=[finite(p[2]) for p in picked],
        n=[int(r[1]) for r in rows],
    )
    return out


async def text_series(
    conn: AsyncConnection[Any],
    endpoint: EndpointInfo,
    start: dt.datetime,
    end: dt.datetime,
    max_points: int,
) -> dict[str, Any]:
    """String and JSON endpoints: the newest ``max_points`` values of the window, in time order."""
    query = sql.SQL(
        'SELECT "timestamp", value_raw, value_cal FROM {} WHERE endpoint_id = %s '
        'AND "timestamp" >= %s AND "timestamp" <= %s ORDER BY "timestamp" DESC LIMIT %s'
    ).format(sql.Identifier("public", DATA_TABLES[endpoint.type]))
    cur = await conn.execute(query, (endpoint.id, start, end, max_points + 1))
    rows = await cur.fetchall()
    truncated = len(rows) > max_points
    rows = list(reversed(rows[:max_points]))
    return {
        "name": endpoint.name,
        "type": endpoint.type,
        "mode": "raw",
        "bucket_s": 0,
        "truncated": truncated,
        "t": [iso(t) for t, _r, _c in rows],
        "raw": [r for _t, r, _c in rows],
        "cal": [c for _t, _r, c in rows],
    }


async def series(
    conn: AsyncConnection[Any],
    names: list[str],
    start: dt.datetime,
    end: dt.datetime,
    *,
    max_points: int = 1200,
    field: Field = "cal",
) -> list[dict[str, Any]]:
    """The values of ``names`` over ``[start, end]``, at most ``max_points`` per endpoint."""
    check_window(start, end)
    if not names:
        return []
    if len(names) > MAX_ENDPOINTS:
        raise QueryError(f"at most {MAX_ENDPOINTS} endpoints per plot ({len(names)} asked)")
    known = await endpoint_map(conn)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise QueryError(f"not in endpoint_id_map: {', '.join(sorted(unknown))}")
    out = []
    for name in dict.fromkeys(names):
        endpoint = known[name]
        if endpoint.type == "numeric":
            out.append(await numeric_series(conn, endpoint, start, end, max_points, field))
        else:
            out.append(await text_series(conn, endpoint, start, end, max_points))
    return out


# --------------------------------------------------------------------------- runs
async def runs(conn: AsyncConnection[Any], limit: int = 50, offset: int = 0) -> list[dict]:
    """Rows of ``runs.run_table``, newest first (every column the table has)."""
    from psycopg.rows import dict_row

    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT * FROM runs.run_table ORDER BY run_id DESC LIMIT %s OFFSET %s",
            (max(1, min(limit, 1000)), max(0, offset)),
        )
        return list(await cur.fetchall())


async def run(conn: AsyncConnection[Any], run_id: int) -> dict[str, Any] | None:
    from psycopg.rows import dict_row

    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute("SELECT * FROM runs.run_table WHERE run_id = %s", (run_id,))
        return await cur.fetchone()


async def newest_run_id(conn: AsyncConnection[Any]) -> int | None:
    cur = await conn.execute("SELECT max(run_id) FROM runs.run_table")
    row = await cur.fetchone()
    return None if row is None or row[0] is None else int(row[0])


def run_state(row: dict[str, Any], newest_id: int | None) -> str:
    """``ended``, ``running`` (no end yet, newest run), or ``no end recorded`` (an older run
    whose DAQ never closed it: a crash, or a DAQ without ``end_run``)."""
    if row.get("end_timestamp") is not None:
        return "ended"
    return "running" if row.get("run_id") == newest_id else "no end recorded"


# --------------------------------------------------------------------------- summaries
_SUMMARY_NUMERIC = sql.SQL(
    """
    WITH parts AS (
        SELECT endpoint_id, sum(n) AS n, sum(raw_n) AS raw_n, min(raw_min) AS raw_min,
               max(raw_max) AS raw_max, sum(raw_sum) AS raw_sum, sum(cal_n) AS cal_n,
               min(cal_min) AS cal_min, max(cal_max) AS cal_max, sum(cal_sum) AS cal_sum
        FROM public.endpoint_numeric_rollup_1m
        WHERE bucket >= %(a)s AND bucket < %(b)s
        GROUP BY endpoint_id
        UNION ALL
        SELECT m.endpoint_id, e.*
        FROM public.endpoint_id_map AS m CROSS JOIN LATERAL (
            SELECT count(*), count(value_raw), min(value_raw), max(value_raw), sum(value_raw),
                   count(value_cal), min(value_cal), max(value_cal), sum(value_cal)
            FROM public.endpoint_numeric_data AS d
            WHERE d.endpoint_id = m.endpoint_id
              AND (("timestamp" >= %(start)s AND "timestamp" < %(a)s)
                   OR ("timestamp" >= %(b)s AND "timestamp" <= %(end)s))
        ) AS e
        WHERE m.type = 'numeric'
    )
    SELECT endpoint_id, sum(n), sum(raw_n), min(raw_min), max(raw_max),
           sum(raw_sum) / nullif(sum(raw_n), 0), sum(cal_n), min(cal_min), max(cal_max),
           sum(cal_sum) / nullif(sum(cal_n), 0)
    FROM parts GROUP BY endpoint_id
    """
)


def _minute_floor(t: dt.datetime) -> dt.datetime:
    return t.replace(second=0, microsecond=0)


async def run_summary(
    conn: AsyncConnection[Any], start: dt.datetime, end: dt.datetime
) -> list[dict[str, Any]]:
    """Per endpoint that logged in ``[start, end]``: count, min, max, mean, first and last.

    Numeric statistics come for the calibrated values when there are any (``field: cal``),
    else for the raw ones; string and JSON endpoints get count, first and last.
    """
    check_window(start, end)
    known = {e.id: e for e in (await endpoint_map(conn)).values()}
    a = _minute_floor(start)
    if a < start:
        a += dt.timedelta(minutes=1)
    b = _minute_floor(end)
    if a >= b:  # inside one minute: everything from the raw rows
        a = b = start
    cur = await conn.execute(_SUMMARY_NUMERIC, {"a": a, "b": b, "start": start, "end": end})
    stats: dict[int, dict[str, Any]] = {}
    for eid, n, _raw_n, rmin, rmax, rmean, cal_n, cmin, cmax, cmean in await cur.fetchall():
        use_cal = bool(cal_n)
        stats[eid] = {
            "count": int(n),
            "field": "value_cal" if use_cal else "value_raw",
            "min": finite(cmin if use_cal else rmin),
            "max": finite(cmax if use_cal else rmax),
            "mean": finite(cmean if use_cal else rmean),
        }
    for kind in ("string", "json"):
        query = sql.SQL(
            'SELECT endpoint_id, count(*) FROM {} WHERE "timestamp" >= %s AND "timestamp" <= %s '
            "GROUP BY endpoint_id"
        ).format(sql.Identifier("public", DATA_TABLES[kind]))
        cur = await conn.execute(query, (start, end))
        for eid, n in await cur.fetchall():
            stats[eid] = {"count": int(n), "field": "value_raw"}
    stats = {eid: st for eid, st in stats.items() if st["count"] and eid in known}
    ends: dict[int, dict[str, Any]] = {}
    for kind, table in DATA_TABLES.items():
        ids = [eid for eid in stats if known[eid].type == kind]
        if not ids:
            continue
        # first and last value of each endpoint: two index probes per endpoint, one statement
        query = sql.SQL(
            'SELECT e.id, f."timestamp", f.value_raw, f.value_cal, '
            'l."timestamp", l.value_raw, l.value_cal '
            "FROM unnest(%(ids)s::int[]) AS e(id) "
            "CROSS JOIN LATERAL (SELECT * FROM {t} AS d WHERE d.endpoint_id = e.id "
            'AND "timestamp" >= %(start)s AND "timestamp" <= %(end)s '
            'ORDER BY "timestamp" LIMIT 1) AS f '
            "CROSS JOIN LATERAL (SELECT * FROM {t} AS d WHERE d.endpoint_id = e.id "
            'AND "timestamp" >= %(start)s AND "timestamp" <= %(end)s '
            'ORDER BY "timestamp" DESC LIMIT 1) AS l'
        ).format(t=sql.Identifier("public", table))
        cur = await conn.execute(query, {"ids": ids, "start": start, "end": end})
        for eid, ft, fraw, fcal, lt, lraw, lcal in await cur.fetchall():
            cal = stats[eid]["field"] == "value_cal"
            ends[eid] = {
                "first": {"timestamp": iso(ft), "value": finite(fcal if cal else fraw)},
                "last": {"timestamp": iso(lt), "value": finite(lcal if cal else lraw)},
            }
    out = [
        {"name": known[eid].name, "type": known[eid].type, **st, **ends.get(eid, {})}
        for eid, st in stats.items()
    ]
    out.sort(key=lambda s: s["name"])
    return out
