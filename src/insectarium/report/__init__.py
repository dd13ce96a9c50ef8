"""Run reports: one self-contained HTML page (plots, summary, metadata, files) and a CSV of every
value, written into the run's directory.

* At the end of every run the DAQ calls :func:`write_run_report` with what it knows; the values
  come from the end-of-run snapshot file it has just written (no database access).
* ``insectarium report <run_id>`` builds the same report on demand, from the database (a
  read-only role is enough) or, with ``--from-files``, from the run directory alone.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

from .model import EndpointValues, Point, RunInfo, RunReport
from .render import render_csv, render_html, write_report
from .sources import from_database, from_run_directory, run_directory

__all__ = [
    "EndpointValues",
    "Point",
    "RunInfo",
    "RunReport",
    "from_database",
    "from_run_directory",
    "render_csv",
    "render_html",
    "run_directory",
    "write_report",
    "write_run_report",
]


def write_run_report(
    directory: str | os.PathLike[str],
    run_id: int,
    base: str,
    *,
    run_name: str | None = None,
    start: dt.datetime | str | None = None,
    end: dt.datetime | str | None = None,
) -> list[Path]:
    """Report on a run from its directory's files: ``<base>_report.html`` and ``_values.csv``."""
    report = from_run_directory(directory, run_id, run_name=run_name, start=start, end=end)
    return write_report(report, directory, base)
