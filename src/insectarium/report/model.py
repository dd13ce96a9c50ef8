"""What a run report is made of: the run, its files and every endpoint's values over the run."""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Point:
    t: dt.datetime  # naive UTC
    raw: Any
    cal: Any

    @property
    def value(self) -> Any:
        """The calibrated value when there is one (what a shifter reads), else the raw one."""
        return self.raw if self.cal is None else self.cal


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    f = float(v)
    return f if math.isfinite(f) else None


@dataclass
class EndpointValues:
    """One endpoint's values during the run, and the one it had when the run started."""

    name: str
    type: str  # numeric | string | json
    points: list[Point] = field(default_factory=list)
    before: Point | None = None  # latest value logged before the run started

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "type": self.type, "count": len(self.points)}
        if self.points:
            out["first"] = {"timestamp": self.points[0].t, "value": self.points[0].value}
            out["last"] = {"timestamp": self.points[-1].t, "value": self.points[-1].value}
        numbers = [n for n in (_number(p.value) for p in self.points) if n is not None]
        if numbers:
            out.update(min=min(numbers), max=max(numbers), mean=sum(numbers) / len(numbers))
        if self.before is not None:
            out["at_start"] = {"timestamp": self.before.t, "value": self.before.value}
        return out


@dataclass
class RunInfo:
    run_id: int
    run_name: str | None
    start: dt.datetime | None
    end: dt.datetime | None
    row: dict[str, Any] = field(default_factory=dict)  # the run-table row, when known

    @property
    def duration_s(self) -> float | None:
        if self.start is None or self.end is None:
            return None
        return (self.end - self.start).total_seconds()


@dataclass
class RunReport:
    run: RunInfo
    endpoints: list[EndpointValues]
    source: str  # where the values came from, in words
    metadata: dict[str, Any] | None = None  # the run's _meta.json
    files: list[tuple[str, int]] = field(default_factory=list)  # name, bytes
    notes: list[str] = field(default_factory=list)
    generated: dt.datetime = field(
        default_factory=lambda: dt.datetime.now(dt.UTC).replace(tzinfo=None)
    )
