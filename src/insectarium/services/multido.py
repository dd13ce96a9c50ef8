"""One endpoint standing for several: dragonfly's ``MultiGet`` / ``MultiDo`` / ``MultiSet``.

The DAQ reads the lab's state at run start through one ``get`` of a :class:`MultiGet`
(``run_metadata``) instead of knowing every sensor; operators set a group of endpoints with one
``set`` of a :class:`MultiDo` and get each value checked back.

Behaviour follows dragonfly v1.19.6 ``multido.py`` (dragonfly-services.md §4), on dripline 3:

* **get** → ``{"value_raw": {target: value | None, …}, "value_cal": "<one line per target>"}``.
  Targets are read concurrently (the slowest one sets the latency, not their sum) but reported in
  configuration order.  A failing target gives ``None`` and the line
  ``"<target> -> returned error <code>:<message>"`` — the get itself still succeeds, so one dead
  sensor does not stop a run from starting.
* **set** (MultiDo, MultiSet) → sequentially, for each target that is not ``get_only``: set
  ``default_set`` or the given value, then unless ``no_check`` wait ``delay_check`` s, get
  ``get_target`` (default: the target) and compare ``check_field`` with ``target_value`` /
  ``default_set`` / the value; a mismatch stops with 304.  Sets stay sequential on purpose: order
  matters for hardware, and a failed check must stop the ones after it.
* ``set_condition N`` with N in ``set_condition_dict`` applies ``set(set_condition_dict[N])``.

A target may be ``endpoint.specifier`` (dl2 routing-key habit): the specifier goes in the header.
Two dl2 quirks are kept because users rely on them: a numeric ``tolerance`` of 0 means 1, and the
default tolerance is 0.99.  One is fixed: booleans are compared as booleans (Python 3 would have
treated them as numbers).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..dripline import Endpoint, Reply, ThrowReply

_UNSET: Any = object()
_ON_WORDS = frozenset({"on", "enable", "enabled", "positive"})
_OFF_WORDS = frozenset({"off", "disable", "disabled", "negative"})
_NUMBER = re.compile(r"-?\s*[0-9]+\.?[0-9]*(?:[Ee]\s*-?\s*[0-9]+)?")


@dataclass
class Target:
    """One configured target of a multi-endpoint (the keys of a ``targets:`` entry)."""

    target: str
    payload_field: str | None = "value_cal"
    units: str | None = None
    formatter: str | None = None
    default_set: Any = _UNSET
    tolerance: float | str = 0.99
    no_check: bool = False
    get_target: str | None = None
    target_value: Any = _UNSET
    delay_check: float = 0.0
    get_only: bool = False
    check_field: str | None = None

    KEYS = (
        "target",
        "payload_field",
        "units",
        "formatter",
        "default_set",
        "tolerance",
        "no_check",
        "get_target",
        "target_value",
        "delay_check",
        "get_only",
        "check_field",
    )

    @classmethod
    def from_config(cls, index: int, entry: Any) -> Target:
        """Validate one ``targets:`` entry; errors name the entry so a YAML typo is easy to find."""
        where = f"targets[{index}]"
        if isinstance(entry, str):
            entry = {"target": entry}
        if not isinstance(entry, Mapping):
            raise ValueError(f"{where} must be a mapping with at least 'target'")
        unknown = sorted(set(entry) - set(cls.KEYS))
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}; known: {list(cls.KEYS)}")
        if not isinstance(entry.get("target"), str) or not entry["target"]:
            raise ValueError(f"{where}: 'target' (an endpoint name) is required")
        if "units" in entry and "formatter" in entry:
            raise ValueError(f"{where}: may not specify both 'units' and 'formatter'")
        tolerance = entry.get("tolerance", 0.99)
        if isinstance(tolerance, bool) or not isinstance(tolerance, int | float | str):
            raise ValueError(f"{where}: tolerance must be a number or a string like '5%'")
        if isinstance(tolerance, str) and not _NUMBER.search(tolerance):
            raise ValueError(f"{where}: tolerance {tolerance!r} holds no number")
        delay = entry.get("delay_check", 0) or 0
        if isinstance(delay, bool) or not isinstance(delay, int | float) or delay < 0:
            raise ValueError(f"{where}: delay_check must be a non-negative number of seconds")
        return cls(**{k: v for k, v in entry.items() if k in cls.KEYS})

    def line(self, value: Any) -> str:
        """The ``value_cal`` line for a value (dragonfly's formatter rules)."""
        if self.formatter is not None:
            return self.formatter.format(value)
        if self.units is not None:
            return f"{self.target} -> {value} [{self.units}]"
        return f"{self.target} -> {value}"

    @property
    def field_to_check(self) -> str | None:
        return self.check_field if self.check_field is not None else self.payload_field


def split_target(target: str) -> tuple[str, str | None]:
    """``peaches.log_interval`` → (``peaches``, ``log_interval``): dl2 put the specifier there."""
    endpoint, _, specifier = target.partition(".")
    return endpoint, specifier or None


def pick(payload: Any, name: str | None) -> Any:
    """The field ``name`` of a reply payload (empty name: the whole payload); KeyError if absent."""
    if not name:
        return payload
    if isinstance(payload, Mapping):
        return payload[name]
    if name == "values" and isinstance(payload, list):
        return payload
    raise KeyError(name)


def keys_of(payload: Any) -> list[str]:
    return list(payload) if isinstance(payload, Mapping) else [type(payload).__name__]


class MultiDo(Endpoint):
    """get and set a group of endpoints through one name."""

    def __init__(
        self,
        name: str,
        targets: list[Any],
        set_condition_dict: dict[int, Any] | None = None,
        get_timeout_s: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(name, **kwargs)
        if not isinstance(targets, list) or not targets:
            raise ValueError(f"{name}: 'targets' must be a non-empty list")
        self._targets = [Target.from_config(i, t) for i, t in enumerate(targets)]
        self.set_condition_dict = {int(k): v for k, v in (set_condition_dict or {}).items()}
        self.get_timeout_s = get_timeout_s

    @property
    def target_names(self) -> list[str]:
        """The targets, in configuration (and reply) order."""
        return [t.target for t in self._targets]

    def is_command(self, name: str) -> bool:
        # on_set_condition is overridden here, which would make it a cmd target for the runtime
        return name != "on_set_condition" and super().is_command(name)

    # ----------------------------------------------------------------- broker helpers
    async def _get(self, target: str) -> Any:
        assert self.service is not None
        endpoint, specifier = split_target(target)
        return await self.service.get(endpoint, specifier, timeout_s=self.get_timeout_s)

    async def _set(self, target: str, value: Any) -> Any:
        assert self.service is not None
        endpoint, specifier = split_target(target)
        return await self.service.set(endpoint, value, specifier, timeout_s=self.get_timeout_s)

    # ----------------------------------------------------------------- get
    async def _read_one(self, target: Target) -> tuple[Any, str]:
        try:
            payload = await self._get(target.target)
        except ThrowReply as exc:
            return (
                None,
                f"{target.target} -> returned error <{exc.return_code.value}>:{exc.message}",
            )
        try:
            value = pick(payload, target.payload_field)
        except KeyError:
            return (
                None,
                f"{target.target} -> returned error <KeyError>:{target.payload_field} "
                f"not in {keys_of(payload)}",
            )
        try:
            return value, target.line(value)
        except (IndexError, KeyError, ValueError) as exc:  # a formatter that does not fit
            return value, f"{target.target} -> {value} (formatter failed: {exc})"

    async def on_get(self) -> dict[str, Any]:
        results = await asyncio.gather(*(self._read_one(t) for t in self._targets))
        return {
            "value_raw": {
                t.target: value for t, (value, _line) in zip(self._targets, results, strict=True)
            },
            "value_cal": "\n".join(line for _value, line in results),
        }

    # ----------------------------------------------------------------- set
    async def on_set(self, value: Any) -> str:
        for target in self._targets:
            if target.get_only:
                continue
            to_set = value if target.default_set is _UNSET else target.default_set
            self.log.info("setting %s to %r", target.target, to_set)
            await self._set(target.target, to_set)
            if target.no_check:
                continue
            if target.delay_check:
                await asyncio.sleep(target.delay_check)
            got_payload = await self._get(target.get_target or target.target)
            try:
                got = pick(got_payload, target.field_to_check)
            except KeyError:
                raise ThrowReply(
                    "service_error_invalid_value",
                    f"cannot check {target.target}: {target.field_to_check} not in "
                    f"{keys_of(got_payload)}: stopping here!",
                ) from None
            if target.target_value is not _UNSET:
                expected = target.target_value
            elif target.default_set is not _UNSET:
                expected = target.default_set
            else:
                expected = value
            check_value(target, got, expected)
            self.log.info("%s set to %r (checked)", target.target, got)
        return "set and check successful"

    async def on_set_condition(self, condition: int) -> Reply | None:
        if condition not in self.set_condition_dict:
            return None
        value = self.set_condition_dict[condition]
        self.log.warning(
            "condition %d reached: applying set of %r to %s", condition, value, self.name
        )
        await self.on_set(value)
        return Reply(0, f"{self.name}: condition {condition} applied (set to {value!r})")


def check_value(target: Target, got: Any, expected: Any) -> None:
    """Raise 304 when ``got`` does not match ``expected`` (dragonfly's set-and-check rules)."""
    name = target.target
    if got is None:
        raise ThrowReply("service_error_invalid_value", f"value get of <{name}> is None")
    if isinstance(got, str) and got.strip().lower() not in _ON_WORDS | _OFF_WORDS:
        with contextlib.suppress(ValueError):
            got = float(got)
    if isinstance(got, bool):
        if isinstance(expected, bool) and expected == got:
            return
        raise ThrowReply(
            "service_error_invalid_value",
            f"value get <{name}> ({got}) DOES NOT correspond to the target ({expected!r}): "
            "stopping here!",
        )
    if isinstance(got, int | float):
        if isinstance(expected, bool) or not isinstance(expected, int | float):
            try:
                expected = float(expected)
            except (TypeError, ValueError):
                raise ThrowReply(
                    "service_error_invalid_value",
                    f"cannot check <{name}>: target value {expected!r} is not a number like the "
                    f"value get ({got}): stopping here!",
                ) from None
        tolerance = tolerance_for(target.tolerance, expected)
        if not expected - tolerance <= got <= expected + tolerance:
            raise ThrowReply(
                "service_error_invalid_value",
                f"the value get <{name}> ({got}) is NOT included in the target_value "
                f"({expected}) +- tolerance ({tolerance}): stopping here!",
            )
        return
    if isinstance(got, str):
        if as_switch(got) == as_switch(expected):
            return
        raise ThrowReply(
            "service_error_invalid_value",
            f"value get ({got}) DOES NOT correspond to the target_value ({expected!r}): "
            "stopping here!",
        )
    if got == expected:  # lists, dicts: only equality makes sense
        return
    raise ThrowReply(
        "service_error_invalid_value",
        f"value get <{name}> ({got!r}) DOES NOT correspond to the target ({expected!r}): "
        "stopping here!",
    )


def tolerance_for(tolerance: float | str, expected: float) -> float:
    """Absolute tolerance: a number, ``"0.5"``, or ``"5%"`` of the expected value; 0 means 1."""
    if isinstance(tolerance, str):
        number = float(_NUMBER.findall(tolerance)[0].replace(" ", ""))
        value = abs(number * expected / 100.0) if "%" in tolerance else number
    else:
        value = float(tolerance)
    return 1.0 if value == 0 else abs(value)


def as_switch(value: Any) -> Any:
    """on/enable/enabled/positive ≡ 1, off/disable/disabled/negative ≡ 0; anything else as is."""
    if isinstance(value, str):
        low = value.strip().lower()
        if low in _ON_WORDS:
            return 1
        if low in _OFF_WORDS:
            return 0
    if isinstance(value, bool):
        return int(value)
    return value


class MultiGet(MultiDo):
    """A :class:`MultiDo` that only reads: ``set`` answers 306."""

    def on_set(self, value: Any) -> Any:  # type: ignore[override]
        raise ThrowReply("service_error_invalid_method", f"setting not available for {self.name}")


class MultiSet(MultiDo):
    """A :class:`MultiDo` that only writes, without checks: ``get`` answers 306."""

    def __init__(self, name: str, targets: list[Any], **kwargs: Any) -> None:
        super().__init__(name, targets, **kwargs)
        for target in self._targets:
            if not target.no_check and target.check_field is not None:
                self.log.warning("MultiSet forces no_check; check options of %s ignored", target)
            target.no_check = True

    def on_get(self) -> Any:  # type: ignore[override]
        raise ThrowReply("service_error_invalid_method", f"getting not available for {self.name}")
