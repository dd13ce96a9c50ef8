"""Small, dependency-free SVG time-series charts for run reports.

A report must open anywhere, forever, without a network or a script (an e-mail attachment, an
archive years later), and it is written by the DAQ process, which must stay small: so the plots
are plain SVG drawn here (a few kB each) rather than a JavaScript library inlined into every
report (plotly.js alone is 4.8 MB) or matplotlib loaded into the DAQ (tens of MB of memory).

:func:`time_chart` draws one endpoint: a line through the values (the mean per pixel column when
there are more values than columns) with a shaded min-max band, labelled axes with round tick
values, UTC time on the x axis.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from html import escape

#: (step in seconds, strftime for the labels)
TIME_STEPS: list[tuple[float, str]] = [
    (1, "%H:%M:%S"),
    (2, "%H:%M:%S"),
    (5, "%H:%M:%S"),
    (10, "%H:%M:%S"),
    (15, "%H:%M:%S"),
    (30, "%H:%M:%S"),
    (60, "%H:%M"),
    (120, "%H:%M"),
    (300, "%H:%M"),
    (600, "%H:%M"),
    (900, "%H:%M"),
    (1800, "%H:%M"),
    (3600, "%H:%M"),
    (7200, "%H:%M"),
    (3 * 3600, "%m-%d %H:%M"),
    (6 * 3600, "%m-%d %H:%M"),
    (12 * 3600, "%m-%d %H:%M"),
    (86400, "%Y-%m-%d"),
    (2 * 86400, "%Y-%m-%d"),
    (7 * 86400, "%Y-%m-%d"),
    (14 * 86400, "%Y-%m-%d"),
    (30 * 86400, "%Y-%m-%d"),
]


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About ``count`` round values (1, 2, 5 x 10^k steps) covering ``[lo, hi]``."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    if hi <= lo:
        pad = abs(lo) * 0.05 or 1.0
        lo, hi = lo - pad, hi + pad
    raw = (hi - lo) / max(1, count)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    ticks = []
    v = first
    while v <= hi + step * 1e-9:
        ticks.append(round(v, 12))
        v += step
    return ticks


def fmt_number(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1e5 or abs(v) < 1e-3:
        return f"{v:.3g}"
    return f"{v:.6g}"


def time_ticks(t0: float, t1: float, count: int = 6) -> tuple[list[float], str]:
    span = max(t1 - t0, 1e-6)
    step, fmt = next(
        ((s, f) for s, f in TIME_STEPS if span / s <= count), (span / count, "%Y-%m-%d")
    )
    first = math.ceil(t0 / step) * step
    ticks = []
    v = first
    while v <= t1:
        ticks.append(v)
        v += step
    return ticks, fmt


def _epoch(t: dt.datetime) -> float:
    return t.replace(tzinfo=dt.UTC).timestamp() if t.tzinfo is None else t.timestamp()


def downsample(
    points: Sequence[tuple[float, float]], t0: float, t1: float, columns: int
) -> list[tuple[float, float, float, float]]:
    """(t, mean, min, max) per pixel column that holds values (the input when it is short)."""
    if len(points) <= columns:
        return [(t, v, v, v) for t, v in points]
    width = (t1 - t0) / columns or 1.0
    buckets: dict[int, list[float]] = {}
    for t, v in points:
        buckets.setdefault(min(columns - 1, int((t - t0) / width)), []).append(v)
    return [
        (t0 + (i + 0.5) * width, sum(vs) / len(vs), min(vs), max(vs))
        for i, vs in sorted(buckets.items())
    ]


def time_chart(
    points: Sequence[tuple[dt.datetime, float]],
    *,
    title: str,
    y_label: str = "value",
    window: tuple[dt.datetime, dt.datetime] | None = None,
    width: int = 860,
    height: int = 230,
) -> str:
    """An ``<svg>`` element plotting ``points`` (naive UTC times) over ``window``."""
    left, right, top, bottom = 70, 16, 28, 38
    pw, ph = width - left - right, height - top - bottom
    pts = [(_epoch(t), float(v)) for t, v in points if v is not None and math.isfinite(float(v))]
    if window is not None:
        t0, t1 = _epoch(window[0]), _epoch(window[1])
    elif pts:
        t0, t1 = pts[0][0], pts[-1][0]
    else:
        t0, t1 = 0.0, 1.0
    if t1 <= t0:
        t0, t1 = t0 - 1, t1 + 1
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" aria-label="{escape(title)}">',
        f'<text x="{left}" y="18" class="title">{escape(title)}</text>',
        f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" class="frame"/>',
    ]
    if not pts:
        parts.append(
            f'<text x="{left + pw / 2}" y="{top + ph / 2}" text-anchor="middle" class="empty">'
            "no numeric values in this window</text></svg>"
        )
        return "".join(parts)
    samples = downsample(pts, t0, t1, pw)
    lo = min(s[2] for s in samples)
    hi = max(s[3] for s in samples)
    yticks = nice_ticks(lo, hi)
    y0, y1 = (min(yticks[0], lo), max(yticks[-1], hi)) if yticks else (lo - 1, hi + 1)
    if y1 <= y0:
        y0, y1 = y0 - 1, y1 + 1

    def x(t: float) -> float:
        return left + (t - t0) / (t1 - t0) * pw

    def y(v: float) -> float:
        return top + ph - (v - y0) / (y1 - y0) * ph

    for v in yticks:
        parts.append(
            f'<line x1="{left}" x2="{left + pw}" y1="{y(v):.1f}" y2="{y(v):.1f}" class="grid"/>'
            f'<text x="{left - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{fmt_number(v)}</text>'
        )
    xticks, fmt = time_ticks(t0, t1)
    for t in xticks:
        label = dt.datetime.fromtimestamp(t, dt.UTC).strftime(fmt)
        parts.append(
            f'<line x1="{x(t):.1f}" x2="{x(t):.1f}" y1="{top}" y2="{top + ph}" class="grid"/>'
            f'<text x="{x(t):.1f}" y="{top + ph + 16}" text-anchor="middle">{label}</text>'
        )
    parts.append(
        f'<text x="{left + pw / 2}" y="{height - 4}" text-anchor="middle" class="axis">'
        "time (UTC)</text>"
        f'<text transform="translate(14 {top + ph / 2}) rotate(-90)" text-anchor="middle" '
        f'class="axis">{escape(y_label)}</text>'
    )
    if any(s[2] != s[3] for s in samples):
        upper = " ".join(f"{x(s[0]):.1f},{y(s[3]):.1f}" for s in samples)
        lower = " ".join(f"{x(s[0]):.1f},{y(s[2]):.1f}" for s in reversed(samples))
        parts.append(f'<polygon points="{upper} {lower}" class="band"/>')
    line = " ".join(f"{x(s[0]):.1f},{y(s[1]):.1f}" for s in samples)
    parts.append(f'<polyline points="{line}" class="line"/>')
    if len(samples) <= 120:
        parts.extend(
            f'<circle cx="{x(s[0]):.1f}" cy="{y(s[1]):.1f}" r="2.5" class="dot">'
            f"<title>{dt.datetime.fromtimestamp(s[0], dt.UTC):%Y-%m-%d %H:%M:%S} UTC: "
            f"{fmt_number(s[1])}</title></circle>"
            for s in samples
        )
    parts.append("</svg>")
    return "".join(parts)


CHART_CSS = """
svg.chart { font: 11px system-ui, sans-serif; background: #fff; }
svg.chart .title { font-size: 13px; font-weight: 600; fill: #1f2937; }
svg.chart .frame { fill: none; stroke: #9ca3af; }
svg.chart .grid { stroke: #e5e7eb; }
svg.chart text { fill: #4b5563; }
svg.chart .axis { fill: #374151; }
svg.chart .band { fill: #93c5fd; fill-opacity: 0.45; stroke: none; }
svg.chart .line { fill: none; stroke: #1d4ed8; stroke-width: 1.6; }
svg.chart .dot { fill: #1d4ed8; }
svg.chart .empty { fill: #9ca3af; font-size: 13px; }
"""
