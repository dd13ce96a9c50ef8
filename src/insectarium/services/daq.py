"""Run control: the generic DAQ provider behind ``start_timed_run <run_name> <seconds>``.

Port of dragonfly v1.19.6 ``DAQProvider`` / ``TestingDAQProvider`` (dragonfly-services.md §7) to
dripline 3.  One run is:

1. refuse in safe mode (1101) or while a run is going (1102);
2. ``cmd <run_table_endpoint> -s do_insert run_name=… daq_name=… run_time_s=…`` → ``run_id``,
   ``start_timestamp``
   (failure → 304 ``… run "<name>" not started``);
3. ``get <metadata_state_target>`` (a MultiGet) and write ``<prefix><R:09d>_meta.json`` with
   ``{"DAQ", "run_time", "run_id", <its value_raw entries>, "DAQ_MODE"}`` through
   ``cmd <metadata_target> -s write_json``;
4. start data taking (the virtual DAQ writes ``<prefix><R:09d>.json`` describing the run), arm a
   timer, and reply with the run id (dripline 3: the bare number; dl2 wrapped it as
   ``{"values": [id]}``);
5. at the end: stop data taking, ask the snapshot service for ``<prefix><R:09d>_snapshot.json``
   (``take_snapshot [start, end, metadata_target, file]``), and mark the run ended in the run
   table (``end_run run_id end_timestamp end_reason``) when that service offers it.

Every ending goes through that one path (:meth:`GenericDAQProvider.finish_run`), with its reason:
``completed`` (the timer), ``ended`` (``cmd daq_interface -s end_run``), ``stopped`` (SIGTERM or
``supervisorctl stop`` during a run: the run is ended, snapshot included, before the process
exits), ``aborted`` (the run failed to start after its row was inserted) and ``interrupted``: a
run a crash left open (``kill -9``, a host lost) is found in the run table at the next start and
closed, its end being the earlier of that restart and its planned end.

Files live in ``<data_directory>/<R//10**6:03d>yyyxxx/<R//10**3:06d>xxx/<R:09d>/`` (the dl2 code
used Python 2's ``/``; ``//`` here).  ``data_directory`` is a **service-level** key of
:class:`DAQService` so that Ansible sets it with one ``dl-serve`` override; endpoints read it from
their service.

Deliberate differences from dl2, each fixing a documented problem: ``DAQ_MODE`` is a configured
string (dl2 crashed with 999); a run that fails half-way is ended (``aborted``) instead of leaving a
stale ``run_id`` and an open row; two concurrent starts cannot both pass the "is running" check (a
lock); an error in the timer-driven end of a run is no longer lost in a log — it is logged
CRITICAL and sent as alert ``status_message.<service>.critical``; and no run is left open by a
stop or a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..dripline import Endpoint, Reply, ReplyError, Service, ThrowReply
from ..dripline.limits import MAX_INTERVAL_S, MAX_NAME_LENGTH
from ..dripline.memory import release_soon
from ..dripline.message import format_timestamp, now_timestamp, parse_timestamp

if TYPE_CHECKING:
    from collections.abc import Mapping

log = logging.getLogger(__name__)

DATA_DIR_ENV = "INSECTARIUM_DATA_DIR"
DEFAULT_DATA_DIR = "~/insectarium-data"
#: framework hooks a subclass overrides; they must never become ``cmd`` targets
_HOOKS = frozenset({"start", "stop", "run", "request_stop", "on_start", "on_stopping", "on_stop"})


def default_data_directory() -> Path:
    """``$INSECTARIUM_DATA_DIR``, else ``~/insectarium-data``."""
    return Path(os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR).expanduser()


def data_directory_of(endpoint: Endpoint) -> Path:
    """The data directory an endpoint should use: its service's ``data_directory`` if it has one."""
    service = endpoint.service
    value = getattr(service, "data_directory", None) if service is not None else None
    return Path(value).expanduser() if value else default_data_directory()


def run_directory(root: str | os.PathLike[str], run_id: int) -> Path:
    """``<root>/<R//10**6:03d>yyyxxx/<R//10**3:06d>xxx/<R:09d>`` for run ``R``."""
    r = int(run_id)
    return Path(root) / f"{r // 10**6:03d}yyyxxx" / f"{r // 10**3:06d}xxx" / f"{r:09d}"


def run_file_base(prefix: str, run_id: int) -> str:
    return f"{prefix}{int(run_id):09d}"


class DAQService(Service):
    """A service hosting DAQ endpoints, owning the ``data_directory`` they write into."""

    def __init__(self, name: str, data_directory: str | None = None, **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        self.data_directory = str(
            Path(data_directory).expanduser() if data_directory else default_data_directory()
        )

    def is_command(self, name: str) -> bool:
        # The runtime would expose overridden life-cycle hooks (``cmd <service> -s stop``).
        return name not in _HOOKS and super().is_command(name)

    async def on_start(self) -> None:
        try:
            await asyncio.to_thread(Path(self.data_directory).mkdir, parents=True, exist_ok=True)
        except OSError as exc:  # the service still answers; runs will fail with a clear error
            log.error("data directory %s cannot be created: %s", self.data_directory, exc)
        log.info("data directory: %s", self.data_directory)
        for child in self.sync_children.values():
            if isinstance(child, GenericDAQProvider):
                self.spawn(child.close_interrupted_runs(), name=f"recover:{child.name}")

    async def on_stopping(self) -> None:
        """A stop during a run ends the run properly (snapshot, run-table row) before exiting."""
        for child in self.sync_children.values():
            if isinstance(child, GenericDAQProvider):
                await child.end_for_shutdown()

    async def on_stop(self) -> None:
        for child in self.sync_children.values():
            if isinstance(child, GenericDAQProvider):
                await child.interrupt()


#: seconds each request of the end of a run may take while the service stops (supervisord
#: kills a program that has not exited after ``stopwaitsecs``, 15 s in the lab)
SHUTDOWN_REQUEST_TIMEOUT_S = 5.0
#: how long a starting DAQ keeps looking for runs a crash left open (the run table may start later)
RECOVERY_PATIENCE_S = 300.0


@dataclass(frozen=True)
class RunRecord:
    """What the end of a run needs to know of it."""

    run_id: int
    run_name: str | None
    start_timestamp: str | None
    run_time: float | None = None


class GenericDAQProvider(Endpoint):
    """A hardware-free DAQ: timed runs that leave a run-table row and the run's files.

    Real DAQs override :meth:`do_checks`, :meth:`start_data_taking` and :meth:`stop_data_taking`.
    """

    protected_attributes = Endpoint.protected_attributes | {
        "is_running",
        "run_id",
        "run_name",
        "status",
        "safe_mode",
        "start_timestamp",
        "busy",
        "data_directory",
    }
    #: public methods for subclasses and the service, not for ``cmd``
    internal_methods = frozenset(
        {
            "do_checks",
            "start_data_taking",
            "stop_data_taking",
            "interrupt",
            "finish_run",
            "end_for_shutdown",
            "close_interrupted_runs",
            "on_set_condition",
            "run_directory",
            "run_path",
        }
    )

    def __init__(
        self,
        name: str,
        daq_name: str = "generic_daq",
        run_table_endpoint: str = "run_table",
        run_table_end_method: str | None = "end_run",
        metadata_state_target: str | None = None,
        metadata_target: str | None = "metadata",
        snapshot_state_target: str | None = None,
        filename_prefix: str = "",
        directory_path: str | None = None,
        set_condition_list: list[int] | None = None,
        daq_mode: str = "virtual",
        request_timeout_s: float = 30.0,
        write_report: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(name, **kwargs)
        self.write_report = bool(write_report)  # <prefix><R>_report.html + _values.csv at the end
        if any(sep in filename_prefix for sep in ("/", "\\", "..")):
            raise ValueError(f"{name}: filename_prefix must not contain path separators")
        self.daq_name = daq_name
        self.run_table_endpoint = run_table_endpoint
        self.run_table_end_method = run_table_end_method
        self.metadata_state_target = metadata_state_target
        self.metadata_target = metadata_target
        self.snapshot_state_target = snapshot_state_target
        self.filename_prefix = filename_prefix
        self.directory_path = directory_path
        self.set_condition_list = [int(c) for c in set_condition_list or []]
        self.daq_mode = daq_mode
        self.request_timeout_s = float(request_timeout_s)
        self._safe_mode: int | None = None
        self._running = False
        self._run_id: int | None = None
        self._run_name: str | None = None
        self._run_time: int | None = None
        self._start_timestamp: str | None = None
        self._started_at: float | None = None
        self._ends_at: float | None = None
        self._timer: asyncio.Task[None] | None = None
        self._start_lock = asyncio.Lock()
        self._end_lock = asyncio.Lock()
        self._own_runs: set[int] = set()  # runs started by this process (never "interrupted")

    # ----------------------------------------------------------------- read-only state
    @property
    def is_running(self) -> bool:
        return self._running

    @property
    def run_id(self) -> int | None:
        return self._run_id

    @property
    def run_name(self) -> str | None:
        return self._run_name

    @property
    def start_timestamp(self) -> str | None:
        return self._start_timestamp

    @property
    def safe_mode(self) -> bool:
        return self._safe_mode is not None

    @property
    def data_directory(self) -> Path:
        if self.directory_path:
            return Path(self.directory_path).expanduser()
        return data_directory_of(self)

    @property
    def status(self) -> dict[str, Any]:
        def stamp(t: float | None) -> str | None:
            return None if t is None else format_timestamp(dt.datetime.fromtimestamp(t, dt.UTC))

        return {
            "running": self._running,
            "run_id": self._run_id,
            "run_name": self._run_name,
            "run_time": self._run_time,
            "started": self._start_timestamp,
            "ends_at": stamp(self._ends_at),
            "safe_mode": self.safe_mode,
            "daq_mode": self.daq_mode,
        }

    @property
    def busy(self) -> bool:
        """A run is being started, is going, or is being ended (its snapshot may take a while)."""
        return (
            self._start_lock.locked()
            or self._end_lock.locked()
            or self._running
            or self._run_id is not None
        )

    def _busy_message(self) -> str:
        """Why a run cannot start now: dragonfly's words while a run is going, and what is
        happening when the DAQ is only finishing one (e.g. closing a run a crash left open)."""
        if self._end_lock.locked():
            return "DAQ is ending a run (snapshot, run table, report): try again in a few seconds"
        return "DAQ is already running: aborting run"

    def on_get(self) -> dict[str, Any]:
        return self.status

    def is_command(self, name: str) -> bool:
        return name not in self.internal_methods and super().is_command(name)

    def run_directory(self, run_id: int) -> Path:
        return run_directory(self.data_directory, run_id)

    def run_path(self, run_id: int, suffix: str) -> Path:
        """``<run dir>/<prefix><R:09d><suffix>``."""
        return self.run_directory(run_id) / f"{run_file_base(self.filename_prefix, run_id)}{suffix}"

    # ----------------------------------------------------------------- overridables (real DAQs)
    async def do_checks(self) -> None:
        """DAQ-specific checks before a run (raise ThrowReply to refuse); the virtual DAQ: none."""

    async def start_data_taking(self, directory: Path, filebase: str) -> None:
        """Begin acquiring into ``directory/filebase*``: the virtual DAQ writes a description."""
        started = time.time()
        record = {
            "daq": self.daq_name,
            "daq_mode": self.daq_mode,
            "run_id": self._run_id,
            "run_name": self._run_name,
            "run_time": self._run_time,
            "start_timestamp": self._start_timestamp,
            "data_start": format_timestamp(dt.datetime.fromtimestamp(started, dt.UTC)),
            "data_end": None,
        }
        await asyncio.to_thread(_write_json, directory / f"{filebase}.json", record)
        self._running = True

    async def stop_data_taking(self) -> None:
        """Stop acquiring: the virtual DAQ records the end time in its file."""
        if not self._running:
            return
        self._running = False
        if self._run_id is None:
            return
        path = self.run_path(self._run_id, ".json")
        try:
            record = json.loads(await asyncio.to_thread(path.read_text, encoding="utf-8"))
            record["data_end"] = now_timestamp()
            await asyncio.to_thread(_write_json, path, record)
        except (OSError, ValueError) as exc:
            self.log.error("run %s: could not complete data file %s: %s", self._run_id, path, exc)

    # ----------------------------------------------------------------- commands
    async def start_timed_run(self, run_name: str, run_time: int) -> int:
        """Start run ``run_name`` for ``run_time`` seconds; returns the new run id."""
        if isinstance(run_time, float) and not math.isfinite(run_time):
            raise ThrowReply(
                "service_error_invalid_value", f"run_time must be a finite number, not {run_time}"
            )
        try:
            seconds = int(run_time)
        except (TypeError, ValueError, OverflowError):
            raise ThrowReply(
                "service_error_invalid_value",
                f"run_time must be an integer, not {str(run_time)[:60]!r}",
            ) from None
        if seconds <= 0:
            raise ThrowReply("service_error_invalid_value", "run_time must be positive")
        if seconds > MAX_INTERVAL_S:
            raise ThrowReply(
                "service_error_invalid_value",
                f"run_time of {seconds} s exceeds the limit of {MAX_INTERVAL_S:g} s",
            )
        if not isinstance(run_name, str) or not run_name.strip():
            raise ThrowReply("service_error_invalid_value", "run_name must be a non-empty string")
        if len(run_name) > MAX_NAME_LENGTH:
            raise ThrowReply(
                "service_error_invalid_value",
                f"run_name is {len(run_name)} characters long; the limit is {MAX_NAME_LENGTH}",
            )
        if self.service is not None and not self.service.is_running:
            raise ThrowReply("daq_error", f"{self.name} is stopping: run not started")
        if self._safe_mode is not None:
            raise ThrowReply(
                "daq_not_enabled",
                f"{self.name} is in safe mode (condition {self._safe_mode}): run not started",
            )
        if self.busy:
            raise ThrowReply("daq_running", self._busy_message())
        async with self._start_lock:
            await self.do_checks()
            return await self._start_run(run_name, seconds)

    async def _start_run(self, run_name: str, seconds: int) -> int:
        assert self.service is not None
        try:
            row = await self.service.cmd(
                self.run_table_endpoint,
                "do_insert",
                [],
                # dragonfly sent run_name only; a run table drops keys it is not configured for
                {"run_name": run_name, "daq_name": self.daq_name, "run_time_s": seconds},
                timeout_s=self.request_timeout_s,
            )
            run_id = int(row["run_id"])
            start_timestamp = normalise_timestamp(row["start_timestamp"])
        except Exception as exc:
            raise ThrowReply(
                "service_error_invalid_value",
                "failed to insert run_name to the db, obtain run_id, and start_timestamp. "
                f'run "{run_name}" not started ({describe_error(exc)})',
            ) from None
        self._run_id, self._run_name, self._run_time = run_id, run_name, seconds
        self._start_timestamp = start_timestamp
        self._own_runs.add(run_id)
        try:
            run_meta = await self._collect_metadata(run_id, seconds)
            directory = self.run_directory(run_id)
            if self.metadata_target:
                await self.service.cmd(
                    self.metadata_target,
                    "write_json",
                    [],
                    {"contents": run_meta, "filename": str(self.run_path(run_id, "_meta.json"))},
                    timeout_s=self.request_timeout_s,
                )
            await asyncio.to_thread(directory.mkdir, parents=True, exist_ok=True)
            await self.start_data_taking(directory, run_file_base(self.filename_prefix, run_id))
        except BaseException as exc:
            # No rollback of the run-table row (as in dl2): it is ended as "aborted", through
            # the same path as every other end, so no half-started run stays open anywhere.
            self.log.error("run %d (%s) not started: %s", run_id, run_name, describe_error(exc))
            with contextlib.suppress(Exception):
                await self.finish_run("aborted", snapshot=False)
            self._clear()
            raise
        self._started_at = time.time()
        self._ends_at = self._started_at + seconds
        self._timer = self.service.spawn(self._run_timer(run_id, seconds), name=f"run{run_id}")
        self.log.info("run %d (%s) started for %d s", run_id, run_name, seconds)
        return run_id

    async def _collect_metadata(self, run_id: int, seconds: int) -> dict[str, Any]:
        assert self.service is not None
        meta: dict[str, Any] = {"DAQ": self.daq_name, "run_time": seconds, "run_id": run_id}
        if self.metadata_state_target:
            state = await self.service.get(
                self.metadata_state_target, timeout_s=self.request_timeout_s
            )
            values = state.get("value_raw") if isinstance(state, dict) else None
            if isinstance(values, dict):
                meta.update(values)
            else:
                self.log.warning(
                    "%s gave no value_raw mapping; metadata without it", self.metadata_state_target
                )
        meta["DAQ_MODE"] = self.daq_mode
        return meta

    async def end_run(self) -> dict[str, Any]:
        """End the current run now: stop data, take the snapshot, close the run-table row."""
        return await self.finish_run("ended")

    async def finish_run(
        self,
        reason: str,
        *,
        run: RunRecord | None = None,
        end: str | None = None,
        snapshot: bool = True,
        timeout_s: float | None = None,
    ) -> dict[str, Any]:
        """The one end-of-run path: every ending of a run goes through here.

        ``reason`` is recorded in the run table (``completed``, ``ended``, ``stopped``,
        ``aborted``, ``interrupted``).  Without ``run`` it ends the current run (stopping data
        taking and clearing the DAQ's state); with one it closes a run of the run table that
        this process is not running (found open after a crash).  The snapshot and the run-table
        update are both attempted; their failures are reported together after the run is ended.
        """
        async with self._end_lock:
            current = run is None
            if current:
                timer = self._timer
                if timer is not None and timer is not asyncio.current_task():
                    timer.cancel()
                self._timer = None
                await self.stop_data_taking()
                if self._run_id is None:
                    raise ThrowReply("service_error_invalid_value", "No run to end")
                run = RunRecord(self._run_id, self._run_name, self._start_timestamp, self._run_time)
            assert run is not None
            end = end or now_timestamp()
            timeout = self.request_timeout_s if timeout_s is None else timeout_s
            problems: list[ThrowReply] = []
            if snapshot:
                try:
                    await self._take_snapshot(run.run_id, run.start_timestamp, end, timeout)
                except Exception as exc:
                    problems.append(as_reply_error(exc, "snapshot failed"))
            try:
                await self._close_run_row(run.run_id, end, reason, timeout)
            except Exception as exc:
                problems.append(as_reply_error(exc, "run table not updated"))
            if snapshot:
                await self._write_report(run.run_id, run.run_name, run.start_timestamp, end)
                release_soon()  # the report was rendered in a worker thread: hand it back
            if current:
                self._clear()
        outcome = {
            "run_id": run.run_id,
            "run_name": run.run_name,
            "start": run.start_timestamp,
            "end": end,
            "end_reason": reason,
        }
        if problems:
            first = problems[0]
            raise ThrowReply(
                first.return_code,
                f"run {run.run_id} ended, but: " + "; ".join(p.message for p in problems),
            )
        self.log.info("run %d (%s) %s", run.run_id, run.run_name, reason)
        return outcome

    async def end_for_shutdown(self) -> None:
        """The service is stopping: end the current run (reason ``stopped``) within a bounded
        time, waiting first for a start or an end in progress."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2 * SHUTDOWN_REQUEST_TIMEOUT_S):
                async with self._start_lock:
                    pass
        if self._run_id is None and not self._end_lock.locked():
            return
        timeout = min(self.request_timeout_s, SHUTDOWN_REQUEST_TIMEOUT_S)
        try:
            await self.finish_run("stopped", timeout_s=timeout)
        except ThrowReply as exc:
            if exc.message != "No run to end":  # an end in progress has just finished it
                self.log.error("while stopping: %s", exc.message)

    async def close_interrupted_runs(self) -> int:
        """Close the runs of this DAQ that a crash left open (reason ``interrupted``).

        Asks the run table for its open runs (``open_runs daq_name=…``), skipping those this
        process started; retries while the run table is not there yet.  Returns how many runs
        were closed.
        """
        assert self.service is not None
        deadline = time.monotonic() + RECOVERY_PATIENCE_S
        waiting_said = False
        while True:
            try:
                rows = await self.service.cmd(
                    self.run_table_endpoint,
                    "open_runs",
                    [],
                    {"daq_name": self.daq_name},
                    timeout_s=self.request_timeout_s,
                )
                break
            except ReplyError as exc:
                code = exc.return_code.value
                if code == 306:
                    self.log.info("%s offers no open_runs", self.run_table_endpoint)
                    return 0
                if (code not in (403, 404) and code < 1000) or time.monotonic() > deadline:
                    self.log.error("cannot look for interrupted runs: %s", exc.message)
                    return 0
                if not waiting_said:
                    self.log.info("waiting for %s to look for interrupted runs", exc.message)
                    waiting_said = True
                await asyncio.sleep(5)
        closed = 0
        for row in rows if isinstance(rows, list) else []:
            record = interrupted_run(row)
            if record is None or record.run_id in self._own_runs:
                continue
            end = planned_or_now(record)
            self.log.warning(
                "run %d (%s) was left open (the DAQ stopped without ending it): closing it as "
                "interrupted at %s",
                record.run_id,
                record.run_name,
                end,
            )
            try:
                await self.finish_run("interrupted", run=record, end=end)
            except ThrowReply as exc:
                self.log.error("%s", exc.message)
            closed += 1
        return closed

    async def _take_snapshot(
        self, run_id: int, start: str | None, end: str, timeout_s: float
    ) -> None:
        assert self.service is not None
        if not self.snapshot_state_target:
            return
        await self.service.cmd(
            self.snapshot_state_target,
            "take_snapshot",
            [start, end, self.metadata_target, str(self.run_path(run_id, "_snapshot.json"))],
            timeout_s=timeout_s,
        )

    async def _write_report(self, run_id: int, name: str | None, start: Any, end: str) -> None:
        """The run report (HTML + CSV) from the snapshot just written; never fails the run."""
        if not self.write_report:
            return
        from ..report import write_run_report  # lazy: only at the end of a run

        base = run_file_base(self.filename_prefix, run_id)
        try:
            await asyncio.to_thread(
                write_run_report, self.run_directory(run_id), run_id, base,
                run_name=name, start=start, end=end,
            )  # fmt: skip
        except Exception as exc:
            self.log.error("run %d: report not written: %s", run_id, describe_error(exc))

    async def _close_run_row(self, run_id: int, end: str, reason: str, timeout_s: float) -> None:
        """``cmd <run_table> -s <end method> run_id=… end_timestamp=… end_reason=…``; 306
        (a run table without that method) is fine."""
        assert self.service is not None
        if not self.run_table_end_method:
            return
        try:
            await self.service.cmd(
                self.run_table_endpoint,
                self.run_table_end_method,
                [],
                {"run_id": run_id, "end_timestamp": end, "end_reason": reason},
                timeout_s=timeout_s,
            )
        except ReplyError as exc:
            if exc.return_code.value != 306:
                raise
            self.log.debug("%s offers no %s", self.run_table_endpoint, self.run_table_end_method)

    async def _run_timer(self, run_id: int, seconds: int) -> None:
        await asyncio.sleep(seconds)
        if self._run_id != run_id:
            return
        try:
            await self.finish_run("completed")
        except Exception as exc:
            await self._report_critical(f"run {run_id}: timed end_run failed: {exc}")

    async def _report_critical(self, text: str) -> None:
        self.log.critical("%s", text)
        if self.service is None:
            return
        key = f"status_message.{self.service.name}.critical"
        try:
            await self.service.send_alert(key, {"message": text, "origin": self.name})
        except Exception as exc:
            self.log.error("alert %s not sent: %s", key, exc)

    async def interrupt(self) -> None:
        """Last resort when the service stops without :meth:`end_for_shutdown` having ended
        the run: stop data taking (the run-table row stays open; the next start closes it)."""
        if self._run_id is None:
            return
        self.log.warning(
            "service stopping during run %d (%s): data taking stopped; the run will be closed "
            "as interrupted at the next start",
            self._run_id,
            self._run_name,
        )
        await self.stop_data_taking()
        self._clear()

    def _clear(self) -> None:
        self._run_id = self._run_name = self._run_time = self._start_timestamp = None
        self._started_at = self._ends_at = None
        self._timer = None

    # ----------------------------------------------------------------- safe mode
    def on_set_condition(self, condition: int) -> Reply | None:
        if condition in self.set_condition_list:
            self._safe_mode = condition
            self.log.warning("condition %d: safe mode, runs refused", condition)
            return Reply(0, f"{self.name}: safe mode (condition {condition}); runs refused")
        if condition == 0 and self._safe_mode is not None:
            self._safe_mode = None
            self.log.warning("condition 0: safe mode left")
            return Reply(0, f"{self.name}: safe mode left")
        return None


#: dragonfly's name for the hardware-free provider
TestingDAQProvider = GenericDAQProvider


def interrupted_run(row: Any) -> RunRecord | None:
    """A run-table row (``open_runs``) as a :class:`RunRecord`; ``None`` if it is not one."""
    if not isinstance(row, dict):
        return None
    try:
        run_id = int(row["run_id"])
        start = normalise_timestamp(row["start_timestamp"])
    except (KeyError, TypeError, ValueError):
        return None
    run_time = row.get("run_time_s")
    finite = isinstance(run_time, int | float) and math.isfinite(run_time) and run_time >= 0
    return RunRecord(run_id, row.get("run_name"), start, float(run_time) if finite else None)


def planned_or_now(run: RunRecord) -> str:
    """End of an interrupted run: its planned end if that has passed, else now."""
    now = dt.datetime.now(dt.UTC)
    if run.start_timestamp is None or run.run_time is None:
        return format_timestamp(now)
    planned = parse_timestamp(run.start_timestamp) + dt.timedelta(seconds=run.run_time)
    return format_timestamp(min(now, planned))


def normalise_timestamp(value: Any) -> str:
    """A run-table start time as a dripline timestamp (dl3 peers may send other ISO forms)."""
    if isinstance(value, str):
        try:
            return format_timestamp(parse_timestamp(value))
        except ValueError:
            parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    elif isinstance(value, dt.datetime):
        parsed = value
    else:
        raise ValueError(f"start_timestamp {value!r} is not a timestamp")
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return format_timestamp(parsed)


def describe_error(exc: BaseException) -> str:
    if isinstance(exc, ThrowReply):
        return f"{exc.return_code.value} {exc.message}"
    if isinstance(exc, KeyError | TypeError):
        return f"unexpected reply ({type(exc).__name__}: {exc})"
    return f"{type(exc).__name__}: {exc}"


def as_reply_error(exc: Exception, what: str) -> ThrowReply:
    if isinstance(exc, ThrowReply):
        return ThrowReply(exc.return_code, f"{what}: {exc.message}")
    return ThrowReply("daq_error", f"{what}: {type(exc).__name__}: {exc}")


def _write_json(path: Path, record: Mapping[str, Any]) -> None:
    """Replace ``path`` atomically with ``record`` as indented JSON."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(record, indent=4, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)
