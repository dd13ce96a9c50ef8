"""Building services and endpoints from configuration (what ``dl-serve -c`` does).

``module`` names a class, looked up as dripline-python 5 does: a file given by ``module_path``,
then the lab's services (``insectarium.services``), then the runtime (``insectarium.dripline``);
``package.module:Class`` or ``package.module.Class`` also work.  Keys are checked against the
class's constructor before anything starts, so a typo fails with the file, the key and a
suggestion instead of being silently ignored.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .config_files import ConfigError, suggest
from .endpoint import Endpoint
from .limits import clip
from .value_check import check_value

SEARCH_MODULES = ("insectarium.services", "insectarium.dripline")
# Keys dl-serve consumes itself; they are never passed to a constructor.
RESERVED_KEYS = frozenset({"module", "module_path", "endpoints", "auth_file", "runtime_config"})


def find_class(
    module: str, module_path: str | None = None, *, source: str = "", key: str = "module"
) -> type:
    if module_path:
        path = Path(module_path).expanduser()
        if not path.is_file():
            raise ConfigError(
                f"module_path {module_path} does not exist", source=source, key="module_path"
            )
        spec = importlib.util.spec_from_file_location(f"_dl_plugin_{path.stem}", path)
        if spec is None or spec.loader is None:
            raise ConfigError(f"cannot import {module_path}", source=source, key="module_path")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod
        spec.loader.exec_module(mod)
        if hasattr(mod, module):
            return getattr(mod, module)
    if ":" in module or "." in module:
        mod_name, _, cls_name = module.replace(":", ".").rpartition(".")
        try:
            return getattr(importlib.import_module(mod_name), cls_name)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(
                f"cannot load class {module!r}: {exc}", source=source, key=key
            ) from None
    known: list[str] = []
    for name in SEARCH_MODULES:
        mod = importlib.import_module(name)
        if hasattr(mod, module) and inspect.isclass(getattr(mod, module)):
            return getattr(mod, module)
        known.extend(getattr(mod, "__all__", []))
    raise ConfigError(f"unknown module {module!r}{suggest(module, known)}", source=source, key=key)


def constructor_parameters(cls: type) -> tuple[dict[str, inspect.Parameter], dict[str, Any], bool]:
    """Keyword parameters accepted along the class's ``__init__`` chain, their type hints,
    and whether some class in the chain accepts arbitrary keywords without passing them on."""
    params: dict[str, inspect.Parameter] = {}
    hints: dict[str, Any] = {}
    open_ended = True
    for klass in cls.__mro__:
        init = vars(klass).get("__init__")
        if init is None or klass is object:
            continue
        sig = inspect.signature(init)
        klass_hints = _type_hints(init)
        has_var_kw = False
        for p in list(sig.parameters.values())[1:]:
            if p.kind is p.VAR_KEYWORD:
                has_var_kw = True
            elif p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in params:
                params[p.name] = p
                if p.name in klass_hints:
                    hints[p.name] = klass_hints[p.name]
        if not has_var_kw:
            open_ended = False
            break
        if klass is Endpoint:
            # Endpoint takes **kwargs only to log leftovers; the chain ends here.
            open_ended = False
            break
    return params, hints, open_ended


def _type_hints(function: Any) -> dict[str, Any]:
    """The resolvable type hints of ``function``'s parameters.

    A hint that names a type imported only for type checkers (``MeshConfig``, which would
    import pydantic) cannot be resolved; it is left out and the others are kept, one by one.
    """
    try:
        return typing.get_type_hints(function)
    except Exception:  # noqa: S110 - resolved one by one below
        pass
    hints: dict[str, Any] = {}
    for name, annotation in getattr(function, "__annotations__", {}).items():
        probe = _probe_function()
        probe.__annotations__ = {name: annotation}
        try:
            hints.update(typing.get_type_hints(probe, globalns=function.__globals__))
        except Exception:  # noqa: S112 - a hint that cannot be resolved is not checked
            continue
    return hints


def _probe_function() -> Any:
    def probe() -> None:
        """Carries one annotation for :func:`typing.get_type_hints`."""

    return probe


def check_keys(
    cls: type,
    config: Mapping[str, Any],
    *,
    source: str,
    where: str,
    runtime: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Validate config keys against ``cls``'s constructor; returns converted values.

    ``runtime`` holds what ``dl-serve`` itself built (the mesh, the credentials): passed on
    unchecked, and counted as given.
    """
    params, hints, open_ended = constructor_parameters(cls)
    out: dict[str, Any] = {}
    problems: list[str] = []
    for key, value in config.items():
        if key in RESERVED_KEYS:
            continue
        if key not in params:
            if open_ended:
                out[key] = value
                continue
            problems.append(f"{where}{key}: unknown key for {cls.__name__}{suggest(key, params)}")
            continue
        hint = hints.get(key)
        checked = value
        if hint is not None and value is not None:
            try:
                checked = check_value(value, hint)
            except ValueError as exc:
                problems.append(f"{where}{key}: {exc} (got {clip(repr(value), 200)})")
                continue
        out[key] = checked
    given = {**config, **(runtime or {})}
    out.update(runtime or {})
    for name, p in params.items():
        if p.default is p.empty and name not in given and name not in ("authentication",):
            problems.append(f"{where}{name}: required key missing for {cls.__name__}")
    if problems:
        raise ConfigError("\n".join(f"{source}: {p}" if source else p for p in problems))
    return out


def create_endpoint(config: Mapping[str, Any], *, source: str = "", where: str = "") -> Endpoint:
    if not isinstance(config, Mapping):
        raise ConfigError("each endpoint must be a mapping", source=source, key=where.rstrip("."))
    module = str(config.get("module", "Endpoint"))
    cls = find_class(module, config.get("module_path"), source=source, key=f"{where}module")
    if not (inspect.isclass(cls) and issubclass(cls, Endpoint)):
        raise ConfigError(f"{module} is not an Endpoint class", source=source, key=f"{where}module")
    kwargs = check_keys(cls, config, source=source, where=where)
    try:
        endpoint = cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            str(exc), source=source, key=f"{where}{config.get('name', '?')}"
        ) from None
    children = config.get("endpoints")
    if children:
        raise ConfigError(
            "nested endpoints are only allowed at the service level",
            source=source,
            key=f"{where}endpoints",
        )
    return endpoint


def create_service(config: Mapping[str, Any], *, source: str = "", **runtime: Any) -> Any:
    """Build the service described by ``config`` (plus ``runtime`` keys such as authentication)."""
    from .service import Service

    module = str(config.get("module", "Service"))
    cls = find_class(module, config.get("module_path"), source=source)
    if not (inspect.isclass(cls) and issubclass(cls, Service)):
        raise ConfigError(f"{module} is not a Service class", source=source, key="module")
    kwargs = check_keys(cls, config, source=source, where="", runtime=runtime)
    endpoints_cfg = config.get("endpoints") or []
    if not isinstance(endpoints_cfg, list):
        raise ConfigError("must be a list of endpoint mappings", source=source, key="endpoints")
    endpoints = [
        create_endpoint(ep, source=source, where=f"endpoints[{i}].")
        for i, ep in enumerate(endpoints_cfg)
    ]
    try:
        service = cls(**kwargs)
        for endpoint in endpoints:
            service.add_endpoint(endpoint)
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc), source=source) from None
    return service
