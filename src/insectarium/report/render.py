"""A run report as one self-contained HTML file (inline CSS and SVG, no script, no network) and
a CSV of every value (long format: ``endpoint,type,timestamp,value_raw,value_cal``)."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
from html import escape
from pathlib import Path
from typing import Any

from .model import EndpointValues, RunReport
from .svg import CHART_CSS, fmt_number, time_chart

#: rows shown per string/JSON endpoint in the HTML (the CSV has them all)
MAX_TEXT_ROWS = 200

PAGE_CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #111827;
       margin: 0; background: #f3f4f6; }
header { background: #1e293b; color: #f8fafc; padding: 14px 28px; }
header h1 { margin: 0; font-size: 20px; }
header p { margin: 4px 0 0; color: #cbd5e1; }
main { padding: 18px 28px 40px; max-width: 1100px; }
section { background: #fff; border: 1px solid #e5e7eb; border-radius: 6px; padding: 12px 16px;
          margin-bottom: 16px; }
h2 { font-size: 16px; margin: 0 0 10px; }
table { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; }
th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid #e5e7eb;
         vertical-align: top; }
th { background: #f9fafb; font-weight: 600; }
td.num { text-align: right; }
.kv th { width: 220px; }
.note { color: #92400e; background: #fffbeb; border: 1px solid #fde68a; padding: 6px 10px;
        border-radius: 4px; margin: 6px 0; }
code, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 12.5px; }
.muted { color: #6b7280; }
"""


def fmt_time(t: dt.datetime | None) -> str:
    return "—" if t is None else t.strftime("%Y-%m-%d %H:%M:%S") + " UTC"


def fmt_value(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return fmt_number(v)
    if isinstance(v, dict | list):
        return json.dumps(v, sort_keys=True, separators=(", ", ": "))
    return str(v)


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 120:
        return f"{seconds:.1f} s"
    minutes, s = divmod(round(seconds), 60)
    h, m = divmod(minutes, 60)
    return f"{h} h {m:02d} min {s:02d} s" if h else f"{m} min {s:02d} s"


def _summary_table(endpoints: list[EndpointValues]) -> str:
    head = (
        "<tr><th>endpoint</th><th>type</th><th>values</th><th>min</th><th>max</th>"
        "<th>mean</th><th>first</th><th>last</th><th>value at start</th></tr>"
    )
    rows = []
    for e in endpoints:
        s = e.summary()
        first = s.get("first", {}).get("value")
        last = s.get("last", {}).get("value")
        at_start = s.get("at_start", {}).get("value")
        rows.append(
            f"<tr><td><a href='#ep-{escape(e.name)}'>{escape(e.name)}</a></td>"
            f"<td>{e.type}</td><td class='num'>{s['count']}</td>"
            f"<td class='num'>{fmt_value(s.get('min'))}</td>"
            f"<td class='num'>{fmt_value(s.get('max'))}</td>"
            f"<td class='num'>{fmt_value(s.get('mean'))}</td>"
            f"<td class='mono'>{escape(fmt_value(first))}</td>"
            f"<td class='mono'>{escape(fmt_value(last))}</td>"
            f"<td class='mono'>{escape(fmt_value(at_start))}</td></tr>"
        )
    if not rows:
        return "<p class='muted'>No endpoint logged a value during this run.</p>"
    return f"<table>{head}{''.join(rows)}</table>"


def _endpoint_section(e: EndpointValues, report: RunReport) -> str:
    s = e.summary()
    window = None
    if report.run.start and report.run.end:
        window = (report.run.start, report.run.end)
    title = f"{e.name} — {s['count']} values"
    if e.type == "numeric":
        uses_cal = any(p.cal is not None for p in e.points)
        label = "value_cal" if uses_cal else "value_raw"
        body = time_chart(
            [(p.t, p.value) for p in e.points], title=title, y_label=label, window=window
        )
    else:
        shown = e.points[-MAX_TEXT_ROWS:]
        rows = "".join(
            f"<tr><td class='mono'>{fmt_time(p.t)}</td><td class='mono'>"
            f"{escape(fmt_value(p.raw))}</td><td class='mono'>{escape(fmt_value(p.cal))}</td></tr>"
            for p in shown
        )
        more = (
            f"<p class='muted'>the last {MAX_TEXT_ROWS} of {len(e.points)} values; "
            "the CSV has them all</p>"
            if len(e.points) > MAX_TEXT_ROWS
            else ""
        )
        body = (
            f"<h3>{escape(title)}</h3>{more}<table><tr><th>time</th><th>value_raw</th>"
            f"<th>value_cal</th></tr>{rows}</table>"
            if shown
            else f"<h3>{escape(title)}</h3><p class='muted'>no values during the run</p>"
        )
    return f"<div id='ep-{escape(e.name)}'>{body}</div>"


def render_html(report: RunReport, csv_name: str | None = None) -> str:
    run = report.run
    name = run.run_name or "(no name)"
    kv = [
        ("run id", str(run.run_id)),
        ("name", name),
        ("start", fmt_time(run.start)),
        ("end", fmt_time(run.end) if run.end else "— (no end recorded)"),
        ("duration", fmt_duration(run.duration_s)),
    ]
    for key, value in run.row.items():
        if key in ("run_id", "run_name", "start_timestamp", "end_timestamp") or value is None:
            continue
        shown = fmt_time(value) if isinstance(value, dt.datetime) else fmt_value(value)
        kv.append((key, shown))
    kv.append(("values from", report.source))
    kv.append(("report written", fmt_time(report.generated)))
    if csv_name:
        kv.append(("all values (CSV)", f"<a href='{escape(csv_name)}'>{escape(csv_name)}</a>"))
    info = "".join(
        f"<tr><th>{escape(k)}</th><td>{v if k == 'all values (CSV)' else escape(v)}</td></tr>"
        for k, v in kv
    )
    notes = "".join(f"<p class='note'>{escape(n)}</p>" for n in report.notes)
    meta = ""
    if report.metadata:
        meta_rows = "".join(
            f"<tr><th>{escape(str(k))}</th><td class='mono'>{escape(fmt_value(v))}</td></tr>"
            for k, v in sorted(report.metadata.items())
        )
        meta = (
            "<section><h2>Metadata at run start</h2>"
            f"<table class='kv'>{meta_rows}</table></section>"
        )
    files = ""
    if report.files:
        file_rows = "".join(
            f"<tr><td class='mono'>{escape(n)}</td><td class='num'>{size:,}</td></tr>"
            for n, size in report.files
        )
        files = (
            "<section><h2>Files in the run directory</h2><table><tr><th>file</th>"
            f"<th>bytes</th></tr>{file_rows}</table></section>"
        )
    charts = "".join(_endpoint_section(e, report) for e in report.endpoints)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Run {run.run_id} ({escape(name)}) — insectarium run report</title>
<style>{PAGE_CSS}{CHART_CSS}</style></head>
<body><header><h1>Run {run.run_id}: {escape(name)}</h1>
<p>{fmt_time(run.start)} → {fmt_time(run.end) if run.end else "no end recorded"}
 · {fmt_duration(run.duration_s)} · {len(report.endpoints)} endpoints</p></header>
<main>{notes}
<section><h2>Run</h2><table class="kv">{info}</table></section>
<section><h2>Summary over the run</h2>{_summary_table(report.endpoints)}
<p class="muted">Numbers are calibrated values (value_cal) where the endpoint has them, raw
values otherwise. "value at start" is the latest value logged before the run started.</p></section>
<section><h2>Values during the run</h2>{charts or "<p class='muted'>no values</p>"}</section>
{meta}{files}
</main></body></html>
"""


def render_csv(report: RunReport) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["endpoint", "type", "timestamp", "value_raw", "value_cal", "in_run"])

    def cell(v: Any) -> Any:
        if isinstance(v, dict | list):
            return json.dumps(v, sort_keys=True)
        return "" if v is None else v

    for e in report.endpoints:
        rows = ([(e.before, 0)] if e.before else []) + [(p, 1) for p in e.points]
        for p, in_run in rows:
            writer.writerow(
                [
                    e.name,
                    e.type,
                    p.t.isoformat(timespec="microseconds") + "Z",
                    cell(p.raw),
                    cell(p.cal),
                    in_run,
                ]
            )
    return out.getvalue()


def _replace(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_report(report: RunReport, directory: str | os.PathLike[str], base: str) -> list[Path]:
    """Write ``<base>_report.html`` and ``<base>_values.csv`` into ``directory`` (atomically)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    html_path, csv_path = d / f"{base}_report.html", d / f"{base}_values.csv"
    _replace(csv_path, render_csv(report))
    _replace(html_path, render_html(report, csv_path.name))
    return [html_path, csv_path]
