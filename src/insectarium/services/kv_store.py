"""Key-value store: the lab's stand-in for sensors (dripline-python 5 ``KeyValueStore``)."""

from __future__ import annotations

from typing import Any

from ..dripline import Entity


class KeyValueStore(Entity):
    """An entity whose value is whatever was last set; ``get`` reports it calibrated.

    As in dripline 3 (not dragonfly 1), the value keeps its JSON type: no rounding to 0.01 and no
    conversion to a string.  A value whose calibration fails is not stored.
    """

    def __init__(self, name: str, initial_value: Any = None, **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        self._value = initial_value

    def on_get(self) -> Any:
        return self._value

    def on_set(self, value: Any) -> Any:
        """Keep ``value``; one the calibration cannot handle is refused (304, or 303 for an
        overflow) and the previous value kept — dripline-python stores it and fails every get
        afterwards."""
        if self.calibration is not None:
            self.calibrate(value)
        self._value = value
        return None
