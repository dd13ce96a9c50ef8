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
5. at the end (timer, or ``cmd daq_interface -s end_run``): stop data taking, ask the snapshot
   service for ``<prefix><R:09d>_snapshot.json`` (``take_snapshot [start, now, metadata_target,
   file]``), and mark the run ended in the run table when that service offers ``end_run``.

Files live in ``<data_directory>/<R//10**6:03d>yyyxxx/<R//10**3:06d>xxx/<R:09d>/`` (the dl2 code
used Python 2's ``/``; ``//`` here).  ``data_directory`` is a **service-level** key of
:class:`DAQService` so that Ansible sets it with one ``dl-serve`` override; endpoints read it from
their service.

Deliberate differences from dl2, each fixing a documented problem: ``DAQ_MODE`` is a configured
string (dl2 crashed with 999); a run that fails half-way is cleaned up instead of leaving a stale
``run_id``; two concurrent starts cannot both pass the "is running" check (a lock); and an error
in the timer-driven end of a run is no longer lost in a log — it is logged CRITICAL and sent as
alert ``status_message.<service>.critical``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..dripline import Endpoint, Reply, ReplyError, Service, ThrowReply
from ..dripline.message import format_timestamp, now_timestamp, parse_timestamp

if TYPE_CHECKING:
    from collections.abc import Mapping

log = logging.getLogger(__name__)

DATA_DIR_ENV = "INSECTARIUM_DATA_DIR"
DEFAULT_DATA_DIR = "~/insectarium-data"
#: framework hooks a subclass overrides; they must never become ``cmd`` targets
_HOOKS = frozenset({"start", "stop", "run", "request_stop", "on_start", "on_stop"})


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

    async def on_stop(self) -> None:
        for child in self.sync_children.values():
            if isinstance(child, GenericDAQProvider):
                await child.interrupt()


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
        try:
            seconds = int(run_time)
        except (TypeError, ValueError):
            raise ThrowReply(
                "service_error_invalid_value", f"run_time must be an integer, not {run_time!r}"
            ) from None
        if seconds <= 0:
            raise ThrowReply("service_error_invalid_value", "run_time must be positive")
        if not isinstance(run_name, str) or not run_name.strip():
            raise ThrowReply("service_error_invalid_value", "run_name must be a non-empty string")
        if self._safe_mode is not None:
            raise ThrowReply(
                "daq_not_enabled",
                f"{self.name} is in safe mode (condition {self._safe_mode}): run not started",
            )
        if self.busy:
            raise ThrowReply("daq_running", "DAQ is already running: aborting run")
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
            # No rollback of the run-table row (as in dl2), but no half-started run either.
            self.log.error("run %d (%s) not started: %s", run_id, run_name, describe_error(exc))
            await self.stop_data_taking()
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
        async with self._end_lock:
            timer = self._timer
            if timer is not None and timer is not asyncio.current_task():
                timer.cancel()
            self._timer = None
            await self.stop_data_taking()
            if self._run_id is None:
                raise ThrowReply("service_error_invalid_value", "No run to end")
            run_id, run_name, start = self._run_id, self._run_name, self._start_timestamp
            end = now_timestamp()
            problems: list[ThrowReply] = []
            try:
                await self._take_snapshot(run_id, start, end)
            except Exception as exc:
                problems.append(as_reply_error(exc, "snapshot failed"))
            try:
                await self._close_run_row(run_id, end)
            except Exception as exc:
                problems.append(as_reply_error(exc, "run table not updated"))
            await self._write_report(run_id, run_name, start, end)
            self._clear()
        if problems:
            first = problems[0]
            raise ThrowReply(
                first.return_code,
                f"run {run_id} ended, but: " + "; ".join(p.message for p in problems),
            )
        self.log.info("run %d (%s) ended", run_id, run_name)
        return {"run_id": run_id, "run_name": run_name, "start": start, "end": end}

    async def _take_snapshot(self, run_id: int, start: str | None, end: str) -> None:
        assert self.service is not None
        if not self.snapshot_state_target:
            return
        await self.service.cmd(
            self.snapshot_state_target,
            "take_snapshot",
            [start, end, self.metadata_target, str(self.run_path(run_id, "_snapshot.json"))],
            timeout_s=self.request_timeout_s,
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

    async def _close_run_row(self, run_id: int, end: str) -> None:
        """``cmd <run_table> -s <end method> run_id=… end_timestamp=…``; 306 (absent) is fine."""
        assert self.service is not None
        if not self.run_table_end_method:
            return
        try:
            await self.service.cmd(
                self.run_table_endpoint,
                self.run_table_end_method,
                [],
                {"run_id": run_id, "end_timestamp": end},
                timeout_s=self.request_timeout_s,
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
            await self.end_run()
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
        """The service is stopping during a run: stop data taking and say so (no snapshot)."""
        if self._run_id is None:
            return
        self.log.warning(
            "service stopping during run %d (%s): data taking stopped, no snapshot taken",
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
