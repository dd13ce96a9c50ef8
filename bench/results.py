"""Measured figures, their verdicts, the printed table and the JSON file.

Targets live here and only here: a row compares the MEDIAN of its repetitions with its target and
says PASS or MISS; nothing in the test suite asserts a timing.  Spread is shown as min-max over the
repetitions (few repetitions make an IQR meaningless) and kept raw in the JSON file.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import socket
import statistics
import subprocess
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil
from rich.console import Console
from rich.table import Table

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def percentile(values: Sequence[float], p: float) -> float:
    """Linear-interpolated percentile (``p`` in 0..100) of unsorted ``values``."""
    if not values:
        raise ValueError("no values")
    data = sorted(values)
    k = (len(data) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (k - lo)


@dataclass
class Target:
    """``value <op> limit``; ``text`` is how the report states it (e.g. ``>= 20 000 values/s``)."""

    op: str
    limit: float
    text: str

    def met(self, value: float) -> bool:
        return value >= self.limit if self.op == ">=" else value <= self.limit


def at_least(limit: float, text: str) -> Target:
    return Target(">=", limit, text)


def at_most(limit: float, text: str) -> Target:
    return Target("<=", limit, text)


@dataclass
class Row:
    """One reported figure: samples over repetitions, and a verdict if it has a target."""

    benchmark: str
    metric: str
    unit: str
    samples: list[float] = field(default_factory=list)
    target: Target | None = None
    note: str = ""
    not_run: str = ""
    digits: int = 1
    #: the operation ran but failed (some or all repetitions): a MISS whatever the figures
    failed: str = ""

    @property
    def median(self) -> float | None:
        return statistics.median(self.samples) if self.samples else None

    @property
    def verdict(self) -> str:
        if self.not_run:
            return "NOT RUN"
        if self.failed and self.target is not None:
            return "MISS"
        if self.target is None or self.median is None:
            return "info"
        return "PASS" if self.target.met(self.median) else "MISS"

    def fmt(self, value: float | None) -> str:
        if value is None:
            return "-"
        if abs(value) >= 1000:
            return f"{value:,.0f}".replace(",", " ")
        return f"{value:.{self.digits}f}"

    def spread(self) -> str:
        if len(self.samples) < 2:
            return ""
        return f"{self.fmt(min(self.samples))} - {self.fmt(max(self.samples))}"

    def to_json(self) -> dict[str, Any]:
        out = {
            "benchmark": self.benchmark,
            "metric": self.metric,
            "unit": self.unit,
            "samples": self.samples,
            "median": self.median,
            "min": min(self.samples) if self.samples else None,
            "max": max(self.samples) if self.samples else None,
            "target": asdict(self.target) if self.target else None,
            "verdict": self.verdict,
            "note": self.note,
        }
        if self.not_run:
            out["not_run"] = self.not_run
        if self.failed:
            out["failed"] = self.failed
        return out


class Report:
    def __init__(self) -> None:
        self.rows: list[Row] = []
        self.extra: dict[str, Any] = {}

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        return row

    def not_run(self, benchmark: str, reason: str) -> None:
        self.rows.append(Row(benchmark, "(benchmark)", "", not_run=reason))

    @property
    def any_not_run(self) -> bool:
        return any(r.not_run for r in self.rows)

    def table(self, title: str) -> Table:
        table = Table(title=title, show_lines=False)
        table.add_column("benchmark")
        table.add_column("metric")
        table.add_column("median", justify="right")
        table.add_column("spread (min - max)", justify="right")
        table.add_column("n", justify="right")
        table.add_column("unit")
        table.add_column("target")
        table.add_column("verdict")
        table.add_column("note", overflow="fold", max_width=60)
        styles = {"PASS": "green", "MISS": "bold red", "NOT RUN": "yellow", "info": "dim"}
        for r in self.rows:
            verdict = r.verdict
            shown = verdict if verdict in ("info", "NOT RUN") else f"{verdict} {r.fmt(r.median)}"
            if r.failed and r.median is None:
                shown = f"{verdict} (failed)"
            table.add_row(
                r.benchmark,
                r.metric,
                r.fmt(r.median),
                r.spread(),
                str(len(r.samples)) if r.samples else "",
                r.unit,
                r.target.text if r.target else "",
                f"[{styles[verdict]}]{shown}[/]",
                "; ".join(x for x in (r.not_run, r.failed, r.note) if x),
            )
        return table

    def print(self, console: Console, title: str) -> None:
        console.print(self.table(title))

    def write_json(self, meta: dict[str, Any]) -> Path:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        path = RESULTS_DIR / f"{stamp}.json"
        data = {**meta, "results": [r.to_json() for r in self.rows], **self.extra}
        path.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
        return path


def machine_info() -> dict[str, Any]:
    cpu_model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": cpu_model,
        "cpu_count": os.cpu_count(),
        "memory_total_mb": round(psutil.virtual_memory().total / 2**20),
    }


def git_info(repo: Path) -> dict[str, Any]:
    def git(*args: str) -> str:
        try:
            out = subprocess.run(
                ["git", "-C", str(repo), *args],
                check=False,
                capture_output=True,
                text=True,
                timeout=10,
            )
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return out.stdout.strip() if out.returncode == 0 else ""

    return {
        "commit": git("rev-parse", "HEAD"),
        "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
    }
