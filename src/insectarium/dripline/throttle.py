"""Log lines for events a peer can repeat at will, at most once per interval.

A service must say that it dropped a malformed message, but not 50 000 times: a flood of bad
messages would otherwise fill the disk with its log.  A :class:`LogThrottle` logs the first
occurrence at once, then at most one line per interval carrying the count of those not shown.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from .limits import REPORT_INTERVAL_S


class LogThrottle:
    """``throttle("dropped %s", name)``: logs now, or counts until the interval has passed."""

    __slots__ = ("_logger", "_next", "interval", "level", "suppressed", "total")

    def __init__(
        self, logger: logging.Logger, level: int = logging.WARNING, interval: float | None = None
    ) -> None:
        self._logger = logger
        self.level = level
        self.interval = REPORT_INTERVAL_S if interval is None else interval
        self._next = 0.0
        self.suppressed = 0
        self.total = 0

    def __call__(self, fmt: str, *args: Any) -> bool:
        """Count one event; log it if the interval allows.  Returns whether it was logged."""
        self.total += 1
        now = time.monotonic()
        if now < self._next:
            self.suppressed += 1
            return False
        if self.suppressed:
            fmt = f"{fmt} (and {self.suppressed} more like it in the last {self.interval:g} s)"
        self._logger.log(self.level, fmt, *args)
        self.suppressed = 0
        self._next = now + self.interval
        return True
