"""Endpoints: the objects a dripline request is addressed to.

The request semantics follow dripline-python 5 (which follows dripline-cpp) so that ``dl-agent``
behaves the same against our services:

* **get** without specifier → ``on_get()``; with specifier → the attribute of that name, replied
  as ``{"values": [value]}``; ``is-locked`` → lock status.
* **set** needs ``values``; with specifier → set that attribute (null reply); otherwise
  ``on_set(values[0])``.
* **cmd** needs a specifier naming a method: ``method(*values, **other_payload_keys)``; the
  built-ins ``lock``, ``unlock``, ``ping`` and ``set_condition`` come first.
* lockout: a locked endpoint refuses set and cmd without its key (307), get never.

Handlers may be plain or ``async`` functions.  They report problems by raising
:class:`~insectarium.dripline.return_codes.ThrowReply`; any other exception becomes a 999 reply
and is logged with its traceback — the service keeps running either way.
"""

from __future__ import annotations

import contextvars
import inspect
import logging
import math
import uuid
from typing import TYPE_CHECKING, Any

from .constants import NIL_UUID, MsgOp
from .limits import clip
from .message import Message
from .return_codes import ThrowReply

if TYPE_CHECKING:
    from .service import Service

log = logging.getLogger(__name__)

current_request: contextvars.ContextVar[Message | None] = contextvars.ContextVar(
    "current_request", default=None
)
"""The request being handled, for handlers that want its sender or timestamp."""

BUILTIN_COMMANDS = ("lock", "unlock", "ping", "set_condition")
ALWAYS_ALLOWED_WHEN_LOCKED = ("unlock", "ping", "set_condition")


class Reply:
    """What a handler produced: return code, message and payload."""

    __slots__ = ("code", "message", "payload")

    def __init__(self, code: int = 0, message: str = "", payload: Any = None) -> None:
        self.code, self.message, self.payload = int(code), message, payload

    def __repr__(self) -> str:
        return f"Reply({self.code}, {self.message!r}, {self.payload!r})"


def parse_lockout_key(text: str | None) -> str | None:
    """Normalise a lockout key; ``None`` for "no key"; ``ValueError`` if it is not a UUID."""
    if text in (None, "", NIL_UUID):
        return None
    value = str(uuid.UUID(text.strip().strip("{}")))
    return None if value == NIL_UUID else value


async def maybe_await(value: Any) -> Any:
    if inspect.isawaitable(value):
        return await value
    return value


class Endpoint:
    """Something with a name that answers get/set/cmd requests.

    Subclasses override :meth:`on_get` / :meth:`on_set` and add public methods, which become
    ``cmd`` targets.  Framework methods (those defined on the base classes) are not callable
    through ``cmd``, except the documented built-ins.
    """

    #: public method names of the framework classes that ``cmd`` may still call
    command_allow_list: tuple[str, ...] = ("on_get", "on_set", *BUILTIN_COMMANDS)
    #: attributes that ``set <endpoint> -s <attr>`` must not replace
    protected_attributes: frozenset[str] = frozenset({"name", "service", "log", "is_locked"})

    def __init__(self, name: str, **kwargs: Any) -> None:
        if not name or any(c in name for c in ".#* "):
            raise ValueError(
                f"endpoint name {name!r} must be non-empty without '.', '#', '*' or spaces"
            )
        self.name = name
        self.service: Service | None = None
        self._lock_key: str | None = None
        self._lock_tag: dict[str, Any] | None = None
        self.log = logging.getLogger(f"insectarium.{type(self).__name__}.{name}")
        if kwargs:
            self.log.debug("ignoring unused configuration keys %s", sorted(kwargs))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"

    # ----------------------------------------------------------------- overridables
    def on_get(self) -> Any:
        raise ThrowReply(
            "service_error_invalid_method", f"{type(self).__name__} does not implement on_get"
        )

    def on_set(self, value: Any) -> Any:
        raise ThrowReply(
            "service_error_invalid_method", f"{type(self).__name__} does not implement on_set"
        )

    def on_set_condition(self, condition: int) -> Reply | None:
        """React to ``set_condition``; return ``None`` for "no action taken"."""
        return None

    # ----------------------------------------------------------------- lock state
    @property
    def is_locked(self) -> bool:
        return self._lock_key is not None

    def check_key(self, key: str | None) -> bool:
        return self._lock_key is None or key == self._lock_key

    # ----------------------------------------------------------------- dispatch
    async def handle_request(self, msg: Message) -> Reply:
        """Answer one request addressed to this endpoint (never raises)."""
        token = current_request.set(msg)
        try:
            return await self._dispatch(msg)
        except ThrowReply as exc:
            return Reply(exc.return_code.value, exc.message, exc.payload)
        except Exception as exc:
            self.log.exception("unhandled exception while handling %s", describe(msg))
            return Reply(999, f"{type(exc).__name__}: {exc}")
        finally:
            current_request.reset(token)

    async def _dispatch(self, msg: Message) -> Reply:
        if not msg.is_valid:
            return Reply(302, f"Decoding Failed: {msg.error}", msg.payload)
        try:
            key = parse_lockout_key(msg.lockout_key)
        except ValueError:
            return Reply(308, f"Invalid lockout key: {msg.lockout_key!r}")
        tokens = [t for t in msg.specifier.split(".") if t] if msg.specifier else []
        op = msg.message_operation
        if op == MsgOp.GET:
            if tokens and tokens[0] == "is-locked":
                # the shape dripline-cpp replies with: the tag only while locked
                status: dict[str, Any] = {"is_locked": self.is_locked}
                if self.is_locked:
                    status["tag"] = self._lock_tag
                return Reply(0, "Checked lock status", status)
            return await self.do_get_request(msg, ".".join(tokens))
        if op == MsgOp.SET:
            if not self.check_key(key):
                return self._denied(msg)
            return await self.do_set_request(msg, ".".join(tokens))
        if op == MsgOp.CMD:
            instruction = tokens[0] if tokens else ""
            if not self.check_key(key) and instruction not in ALWAYS_ALLOWED_WHEN_LOCKED:
                return self._denied(msg)
            if instruction in BUILTIN_COMMANDS:
                return await self._builtin(instruction, msg, key)
            return await self.do_cmd_request(msg, ".".join(tokens))
        return Reply(306, f"Unknown message operation {op!r}")

    def _denied(self, msg: Message) -> Reply:
        return Reply(
            307, f"Request denied due to lockout (key used: {msg.lockout_key or NIL_UUID})"
        )

    # ----------------------------------------------------------------- get / set / cmd
    @staticmethod
    def _values(msg: Message) -> tuple[list[Any], dict[str, Any]]:
        payload = msg.payload
        if payload is None:
            return [], {}
        if not isinstance(payload, dict):
            raise ThrowReply("service_error_bad_payload", "payload must be a JSON object (or null)")
        values = payload.get("values", [])
        if not isinstance(values, list):
            values = [values]
        kwargs = {str(k): v for k, v in payload.items() if k != "values"}
        return values, kwargs

    def _attribute_name(self, specifier: str, verb: str) -> str:
        name = specifier.replace("-", "_")
        if name.startswith("_") or not name.isidentifier():
            raise ThrowReply(
                "service_error_invalid_specifier",
                f"endpoint {self.name} has no attribute {specifier}, unable to {verb}",
            )
        return name

    async def do_get_request(self, msg: Message, specifier: str) -> Reply:
        if not specifier:
            return Reply(0, "", await maybe_await(self.on_get()))
        name = self._attribute_name(specifier, "get")
        if not hasattr(self, name) or callable(getattr(self, name)):
            raise ThrowReply(
                "service_error_invalid_specifier",
                f"endpoint {self.name} has no attribute {specifier}, unable to get",
            )
        return Reply(0, "", {"values": [getattr(self, name)]})

    async def do_set_request(self, msg: Message, specifier: str) -> Reply:
        values, _kwargs = self._values(msg)
        if not values:
            raise ThrowReply("service_error_bad_payload", "set requires a value in 'values'")
        new_value = values[0]
        if specifier:
            name = self._attribute_name(specifier, "set")
            if (
                name in self.protected_attributes
                or not hasattr(self, name)
                or callable(getattr(self, name))
            ):
                raise ThrowReply(
                    "service_error_invalid_specifier",
                    f"endpoint {self.name} has no attribute {specifier}, unable to set",
                )
            self._check_attribute_type(name, specifier, new_value)
            try:
                setattr(self, name, new_value)
            except (TypeError, ValueError) as exc:
                raise ThrowReply(
                    "service_error_invalid_value", f"cannot set {specifier}: {exc}"
                ) from None
            return Reply(0, "", None)
        return Reply(0, "", await maybe_await(self.on_set(new_value)))

    def _check_attribute_type(self, name: str, specifier: str, value: Any) -> None:
        """``set -s <attribute>`` keeps the attribute's kind of value (a threshold stays a
        number, a name a string): a peer must not turn a service's configuration into values its
        own code then fails on at every use.  Attributes defined as properties validate in their
        setter; attributes that are ``None`` take anything JSON can carry."""
        if isinstance(getattr(type(self), name, None), property):
            return
        current = getattr(self, name)
        if current is None:
            return
        kinds: tuple[type, ...]
        if isinstance(current, bool):
            kinds = (bool,)
        elif isinstance(current, int | float):
            kinds = (int, float)
        elif isinstance(current, str | list | dict):
            kinds = (type(current),)
        else:
            return
        if not isinstance(value, kinds) or (kinds != (bool,) and isinstance(value, bool)):
            raise ThrowReply(
                "service_error_invalid_value",
                f"cannot set {specifier}: expected {' or '.join(k.__name__ for k in kinds)}, "
                f"got {type(value).__name__}",
            )
        if isinstance(value, float) and not math.isfinite(value):
            raise ThrowReply(
                "service_error_invalid_value", f"cannot set {specifier}: {value} is not finite"
            )

    def is_command(self, name: str) -> bool:
        """Whether ``cmd <endpoint> -s name`` may call ``self.name``."""
        if name.startswith("_") or not name.isidentifier():
            return False
        attr = getattr(type(self), name, None)
        if attr is None or not callable(getattr(self, name, None)):
            return False
        if name in self.command_allow_list:
            return True
        # a framework hook stays a hook even when a subclass overrides it (on_stop, on_start …)
        framework = _framework_classes()
        if any(name in vars(cls) for cls in type(self).__mro__ if cls in framework):
            return False
        return any(name in vars(cls) for cls in type(self).__mro__)

    async def do_cmd_request(self, msg: Message, specifier: str) -> Reply:
        if not specifier:
            raise ThrowReply(
                "service_error_invalid_method", "cmd requires a specifier naming a method"
            )
        name = specifier.replace("-", "_")
        if not self.is_command(name):
            raise ThrowReply(
                "service_error_invalid_method",
                f"endpoint {self.name} has no command {specifier}",
            )
        method = getattr(self, name)
        values, kwargs = self._values(msg)
        try:
            inspect.signature(method).bind(*values, **kwargs)
        except TypeError as exc:
            raise ThrowReply(
                "service_error_invalid_value", f"bad arguments for {specifier}: {exc}"
            ) from None
        return Reply(0, "", await maybe_await(method(*values, **kwargs)))

    # ----------------------------------------------------------------- built-ins
    async def _builtin(self, instruction: str, msg: Message, key: str | None) -> Reply:
        if instruction == "ping":
            return Reply(0, f"Hello, {msg.sender_info.get('exe', 'unknown')}")
        if instruction == "lock":
            return self.lock(key, msg.sender_info)
        if instruction == "unlock":
            _values, kwargs = self._values(msg)
            return self.unlock(key, force=bool(kwargs.get("force", False)))
        values, _kwargs = self._values(msg)
        if len(values) != 1 or isinstance(values[0], bool) or not isinstance(values[0], int):
            raise ThrowReply(
                "service_error_invalid_value", "set_condition takes exactly one integer"
            )
        return await self.set_condition(values[0])

    def lock(self, key: str | None = None, tag: dict[str, Any] | None = None) -> Reply:
        if self.is_locked:
            return Reply(200, "Unable to lock server")
        self._lock_key = key or str(uuid.uuid4())
        self._lock_tag = tag or {}
        self.log.info("locked by %s", (tag or {}).get("username", "?"))
        return Reply(0, "Server is now locked", {"key": self._lock_key})

    def unlock(self, key: str | None = None, force: bool = False) -> Reply:
        if not self.is_locked:
            return Reply(1, "Already unlocked")
        if force or key == self._lock_key:
            self._lock_key = self._lock_tag = None
            self.log.info("unlocked%s", " (forced)" if force else "")
            return Reply(0, "Server unlocked")
        return Reply(200, "Failed to unlock server")

    async def set_condition(self, condition: int) -> Reply:
        result = await maybe_await(self.on_set_condition(condition))
        if result is None:
            return Reply(0, "No action taken (this is the default method)")
        return result


def describe(msg: Message) -> str:
    """``get peaches -s log_interval from lab@glenlivet`` for log lines; peer-controlled parts
    are cut to a few hundred characters."""
    op_num = -1 if msg.message_operation is None else msg.message_operation
    op = {0: "set", 1: "get", 9: "cmd"}.get(op_num, op_num)
    spec = f" -s {clip(msg.specifier, 200)}" if msg.specifier else ""
    who = f"{msg.sender_info.get('username', '?')}@{msg.sender_info.get('hostname', '?')}"
    return f"{op} {msg.routing_key}{spec} from {clip(who, 200)}"


def _framework_classes() -> set[type]:
    from . import alert_consumer, entity, service  # local import: they import this module

    return {Endpoint, entity.Entity, service.Service, alert_consumer.AlertConsumer}
