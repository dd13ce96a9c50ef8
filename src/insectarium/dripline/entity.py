"""Entities: endpoints that hold a value, calibrate it, and log it on a schedule.

An :class:`Entity` replies to ``get`` with ``{"value_raw": raw, "value_cal": calibrated}`` and can
publish that result as a ``sensor_value.<name>`` alert: after each set (``log_on_set``) and every
``log_interval`` seconds, skipping values that did not change enough (``max_absolute_change``,
``max_fractional_change``) unless ``max_interval`` has passed — the dripline-python 5 rules.

Two deliberate differences, neither visible on the wire: dripline-python compares ``check_field``
(default ``value_cal``) and never logs an uncalibrated entity (KeyError) — we fall back to
``value_raw`` when the field is absent; and a threshold left at 0 is "not used" when the other one
is set (dripline-python would then log on any change, making ``max_absolute_change`` alone
useless).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import time
from collections.abc import Mapping
from typing import Any

from .calibration import CalibrationError, apply_calibration
from .constants import DEFAULT_LOG_ROUTING_KEY_PREFIX
from .endpoint import Endpoint, Reply, maybe_await
from .limits import (
    MAX_CALIBRATION_EXPRESSION,
    MAX_INTERVAL_S,
    MIN_LOG_INTERVAL_S,
    SCHEDULED_ALERTS_IN_FLIGHT,
)
from .message import Message
from .return_codes import ThrowReply
from .throttle import LogThrottle


def to_seconds(value: float | int | Mapping[str, float] | None, what: str) -> float:
    """Interval config: seconds, or a dict of ``timedelta`` keywords (``{minutes: 5}``).

    Must be finite, not negative and at most :data:`~.limits.MAX_INTERVAL_S` (a NaN interval
    would make the logging loop spin, an infinite one overflow the event loop's clock).
    """
    if value is None:
        return 0.0
    if isinstance(value, Mapping):
        try:
            seconds = dt.timedelta(**value).total_seconds()
        except (TypeError, ValueError, OverflowError) as exc:
            raise ValueError(f"{what}: {exc}") from None
    elif isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{what} must be a number of seconds or a dict like {{minutes: 1}}")
    else:
        seconds = float(value)
    if not math.isfinite(seconds):
        raise ValueError(f"{what} must be a finite number of seconds, not {seconds}")
    if seconds < 0:
        raise ValueError(f"{what} must not be negative")
    if seconds > MAX_INTERVAL_S:
        raise ValueError(f"{what} of {seconds:g} s exceeds the limit of {MAX_INTERVAL_S:g} s")
    return seconds


_SKIP = object()  # a scheduled tick that logs nothing


def log_interval_seconds(value: float | int | Mapping[str, float] | None) -> float:
    """``log_interval`` in seconds: 0 (off) or from :data:`~.limits.MIN_LOG_INTERVAL_S` on."""
    seconds = to_seconds(value, "log_interval")
    if 0 < seconds < MIN_LOG_INTERVAL_S:
        raise ValueError(
            f"log_interval of {seconds:g} s is below the minimum of {MIN_LOG_INTERVAL_S:g} s"
        )
    return seconds


class Entity(Endpoint):
    """An endpoint with a calibrated value and scheduled logging."""

    def __init__(
        self,
        name: str,
        calibration: str | Mapping[Any, Any] | None = None,
        get_on_set: bool = False,
        log_on_set: bool = False,
        log_interval: float | Mapping[str, float] | None = 0,
        max_interval: float | Mapping[str, float] | None = 0,
        max_absolute_change: float = 0,
        max_fractional_change: float = 0,
        check_field: str = "value_cal",
        log_routing_key_prefix: str = DEFAULT_LOG_ROUTING_KEY_PREFIX,
        **kwargs: Any,
    ) -> None:
        super().__init__(name, **kwargs)
        self.calibration = calibration
        self.get_on_set = bool(get_on_set)
        self.log_on_set = bool(log_on_set)
        self._log_interval = log_interval_seconds(log_interval)
        self.max_interval = to_seconds(max_interval, "max_interval")
        self.max_absolute_change = float(max_absolute_change)
        self.max_fractional_change = float(max_fractional_change)
        self.check_field = check_field
        self.log_routing_key_prefix = log_routing_key_prefix
        self._last_log_value: Any = None
        self._last_log_time: float | None = None
        self._log_task: asyncio.Task[None] | None = None
        self._sending: set[asyncio.Task[None]] = set()  # scheduled values being published
        self._logging_paused = False
        self._log_failed = LogThrottle(self.log)
        if self.log_on_set and not self.get_on_set:
            self.log.warning("log_on_set needs get_on_set; enabling get_on_set")
            self.get_on_set = True

    # ----------------------------------------------------------------- value
    @property
    def calibration(self) -> str | Mapping[Any, Any] | None:
        """An expression such as ``'2*{}'``, a mapping of raw to calibrated values, or None."""
        return self._calibration

    @calibration.setter
    def calibration(self, value: str | Mapping[Any, Any] | None) -> None:
        if value is not None and not isinstance(value, str | Mapping):
            raise ValueError("calibration must be an expression string like '2*{}' or a mapping")
        if isinstance(value, str) and len(value) > MAX_CALIBRATION_EXPRESSION:
            raise ValueError(
                f"calibration of {len(value)} characters exceeds the limit of "
                f"{MAX_CALIBRATION_EXPRESSION}"
            )
        self._calibration = value

    def calibrate(self, raw: Any) -> dict[str, Any]:
        """``{"value_raw", "value_cal"}`` for a raw reading (304 when it cannot be calibrated)."""
        if isinstance(raw, list | tuple) and raw:
            raw = raw[0]
        if raw is None:
            return {"value_raw": None}
        result = {"value_raw": raw}
        if self.calibration is not None:
            try:
                result["value_cal"] = apply_calibration(self.calibration, raw)
            except CalibrationError as exc:
                raise ThrowReply(
                    "service_error_invalid_value", f"calibration failed: {exc}"
                ) from None
            except OverflowError as exc:
                raise ThrowReply(
                    "service_error_bad_payload", f"calibration overflow: {exc}"
                ) from None
        return result

    async def get_calibrated(self) -> Any:
        raw = await maybe_await(self.on_get())
        return self.calibrate(raw)

    async def do_get_request(self, msg: Message, specifier: str) -> Reply:
        if specifier == "log_interval":
            # dripline-python keeps the interval as a timedelta, which its reply turns into text
            return Reply(0, "", {"values": [str(dt.timedelta(seconds=self._log_interval))]})
        if specifier:
            return await super().do_get_request(msg, specifier)
        return Reply(0, "", await self.get_calibrated())

    async def do_set_request(self, msg: Message, specifier: str) -> Reply:
        if specifier:
            return await super().do_set_request(msg, specifier)
        values, _kwargs = self._values(msg)
        if not values:
            raise ThrowReply("service_error_bad_payload", "set requires a value in 'values'")
        return await self.set_value(values[0])

    async def do_cmd_request(self, msg: Message, specifier: str) -> Reply:
        if specifier != "on_set":
            return await super().do_cmd_request(msg, specifier)
        # ``cmd <entity> -s on_set V`` calls dripline-python's decorated on_set: the same as a set
        values, kwargs = self._values(msg)
        if len(values) != 1 or kwargs:
            raise ThrowReply(
                "service_error_invalid_value", "on_set takes exactly one value and no keywords"
            )
        return await self.set_value(values[0])

    async def set_value(self, value: Any) -> Reply:
        """``on_set(value)``, then (``get_on_set``) read back, calibrated, and (``log_on_set``)
        logged: what a set request and ``cmd -s on_set`` reply."""
        result = await maybe_await(self.on_set(value))
        if not self.get_on_set:
            return Reply(0, "", result)
        result = await self.get_calibrated()
        if self.log_on_set:
            await self.log_a_value(result)
        return Reply(0, "", result)

    # ----------------------------------------------------------------- logging
    @property
    def log_interval(self) -> float:
        return self._log_interval

    @log_interval.setter
    def log_interval(self, value: float | Mapping[str, float]) -> None:
        self._log_interval = log_interval_seconds(value)
        if self.service is not None and self.service.is_running:
            self.stop_logging()
            if self._log_interval > 0:
                self.start_logging()

    async def log_a_value(self, value: Any) -> None:
        """Publish ``value`` as alert ``<prefix>.<name>``."""
        if self.service is None:
            raise RuntimeError(f"{self!r} is not part of a running service")
        # marked before the publish: the next tick compares with it while this one may still
        # wait for the broker's confirm
        self._last_log_value = value
        self._last_log_time = time.monotonic()
        await self.service.send_alert(f"{self.log_routing_key_prefix}.{self.name}", value)

    def _should_log(self, result: Any) -> bool:
        if self._last_log_time is None:
            return True
        if self.max_interval > 0 and time.monotonic() - self._last_log_time > self.max_interval:
            return True
        field = self.check_field
        if isinstance(result, Mapping) and field not in result:
            field = "value_raw"
        new = result.get(field) if isinstance(result, Mapping) else result
        old = self._last_log_value
        old = old.get(field) if isinstance(old, Mapping) else old
        if isinstance(new, bool) or isinstance(old, bool):
            return new != old
        if not isinstance(new, int | float) or not isinstance(old, int | float):
            return new != old or (self.max_absolute_change == 0 and self.max_fractional_change == 0)
        delta = abs(new - old)
        if math.isnan(delta) or (self.max_absolute_change == 0 and self.max_fractional_change == 0):
            return True
        if self.max_absolute_change > 0 and delta > self.max_absolute_change:
            return True
        return self.max_fractional_change > 0 and 2 * delta > self.max_fractional_change * abs(
            new + old
        )

    async def scheduled_log(self) -> None:
        """One tick of scheduled logging, publish included (errors are logged, never fatal)."""
        value = await self._scheduled_value()
        if value is not _SKIP:
            await self._send_scheduled(value)

    async def _scheduled_value(self) -> Any:
        """What this tick logs, or ``_SKIP`` (the get failed, logged; or nothing changed enough)."""
        try:
            result = await self.get_calibrated()
        except ThrowReply as exc:
            self._log_failed("scheduled log of %s: get failed with %s", self.name, exc)
            return _SKIP
        return result if self._should_log(result) else _SKIP

    async def _send_scheduled(self, value: Any) -> None:
        try:
            await self.log_a_value(value)
            self._logging_paused = False
        except asyncio.CancelledError:
            raise
        except ConnectionError as exc:  # broker away: say it once per outage
            if not self._logging_paused:
                self.log.warning("scheduled logging paused: %s", exc)
            self._logging_paused = True
        except Exception as exc:  # at most one line a minute, however short the interval
            self._log_failed("scheduled log of %s failed: %s", self.name, repr(exc)[:300])

    def start_logging(self) -> None:
        if self.service is None or self._log_interval <= 0:
            return
        self.stop_logging()
        self._log_task = asyncio.get_running_loop().create_task(
            self._log_loop(), name=f"log:{self.name}"
        )

    def stop_logging(self) -> None:
        if self._log_task is not None:
            self._log_task.cancel()
            self._log_task = None

    @property
    def logging_status(self) -> str:
        return "on" if self._log_task is not None and not self._log_task.done() else "off"

    @logging_status.setter
    def logging_status(self, value: str) -> None:
        """dragonfly habit: ``set peaches.logging_status on|off|start|stop|restart``."""
        v = str(value).lower()
        if v in ("on", "start", "restart", "true", "1"):
            self.start_logging()
        elif v in ("off", "stop", "false", "0"):
            self.stop_logging()
        else:
            raise ValueError(f"logging_status must be on/off, not {value!r}")

    async def _log_loop(self) -> None:
        """Tick every ``log_interval``: the get is awaited (an instrument answers one question at
        a time), the publish runs beside the loop. A broker that is shutting down may hold a
        confirm for seconds; awaiting it here skipped the ticks of those seconds (values never
        taken), while a publish that fails is kept by the service's outbox anyway."""
        interval = self._log_interval
        loop = asyncio.get_running_loop()
        while True:
            started = time.monotonic()
            try:
                value = await self._scheduled_value()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # at most one line a minute, however short the interval
                self._log_failed("scheduled log of %s failed: %s", self.name, repr(exc)[:300])
                value = _SKIP
            if value is not _SKIP:
                if len(self._sending) >= SCHEDULED_ALERTS_IN_FLIGHT:
                    await asyncio.wait(self._sending, return_when=asyncio.FIRST_COMPLETED)
                task = loop.create_task(self._send_scheduled(value), name=f"log-send:{self.name}")
                self._sending.add(task)  # a strong reference until it is done
                task.add_done_callback(self._sending.discard)
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))
