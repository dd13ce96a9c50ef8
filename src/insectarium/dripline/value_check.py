"""Checking a configuration value against the type hint of the constructor that takes it.

pydantic (``TypeAdapter``) is the one authority on what a hint accepts and how a value is
converted, and the one source of the error message.  But importing it, with the schemas it
builds, costs a service about 9 MiB of its resident memory (measured on Debian's Python 3.11:
``import pydantic`` +3.8 MiB, the first models +5.6), a sixth of the 50 MiB a lab service may
take (issue 14).  Nearly every value in a lab configuration is already exactly of the hinted
type: an ``int`` for an ``int``, a list of strings for ``list[str] | None``.

So :func:`check_value` first tries :func:`plain_value`, which decides only those plain cases,
returning what pydantic would return, and hands everything else (a string to coerce, a bool
where an int is hinted, a constrained or unknown type, any error) to pydantic.
``tests/test_value_check.py`` checks, over generated hints and values, that every value the
plain path takes is one pydantic takes, converted the same way.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping
from typing import Any, Literal

#: returned by :func:`plain_value` when pydantic must decide
UNDECIDED: Any = object()

_SCALARS = (str, int, bool)
_UNIONS = (typing.Union, types.UnionType)
_LISTS = (list,)
_DICTS = (dict, Mapping)


def check_value(value: Any, hint: Any) -> Any:
    """``value`` checked (and converted, e.g. ``1`` to ``1.0`` for a float) as ``hint`` says.

    Raises :class:`ValueError` with pydantic's message for the first problem.  Hints pydantic
    cannot build a validator for (classes it does not know) are not checked.
    """
    plain = plain_value(value, hint)
    if plain is not UNDECIDED:
        return plain
    from pydantic import TypeAdapter, ValidationError

    try:
        adapter = TypeAdapter(hint)
    except Exception:  # a hint naming a type pydantic has no schema for: not checked
        return value
    try:
        return adapter.validate_python(value)
    except ValidationError as exc:
        raise ValueError(exc.errors()[0]["msg"]) from None


def plain_value(value: Any, hint: Any) -> Any:
    """What pydantic's lax validation returns for ``value`` as ``hint``, when that is plain
    (see the module's docstring); :data:`UNDECIDED` otherwise."""
    if hint is Any:
        return value
    if hint is None or hint is type(None):
        return value if value is None else UNDECIDED
    if hint in _SCALARS:
        return value if type(value) is hint else UNDECIDED
    if hint is float:
        return _as_float(value)
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in _UNIONS:
        return _union(value, args)
    if origin is Literal:
        return value if any(type(value) is type(a) and value == a for a in args) else UNDECIDED
    if hint in _LISTS or origin in _LISTS:
        return _list(value, args[0] if args else Any)
    if hint in _DICTS or origin in _DICTS:
        return _dict(value, *(args or (Any, Any)))
    return UNDECIDED


def _as_float(value: Any) -> Any:
    if type(value) is float:
        return value
    if type(value) is int:  # pydantic's lax mode converts, as float() does (not a bool)
        try:
            return float(value)
        except OverflowError:
            return UNDECIDED
    return UNDECIDED


def _union(value: Any, members: tuple[Any, ...]) -> Any:
    """pydantic's union, when only one member can take a value of this type at all.

    A member that could also take it (with a conversion, e.g. ``1`` as ``1.0`` or as a
    ``Literal[True]``) would make pydantic choose by rules of its own ("smart" mode ranks strict
    and lax matches): those cases are left to it.  So ``X | None`` takes ``None`` as ``None``
    and anything else as ``X`` does.
    """
    candidates = [m for m in members if _may_take(m, value)]
    if len(candidates) != 1:
        return UNDECIDED
    return plain_value(value, candidates[0])


#: the Python types that a member of each kind may take in pydantic's lax mode (a superset)
_TAKES: dict[Any, tuple[type, ...]] = {
    type(None): (type(None),),
    str: (str, bytes, bytearray),
    int: (int, bool, float, str, bytes),
    float: (int, bool, float, str, bytes),
    bool: (int, bool, float, str, bytes),
    list: (list, tuple, set, frozenset, dict),
    dict: (dict, Mapping),
    Mapping: (dict, Mapping),
}


def _may_take(member: Any, value: Any) -> bool:
    """Could pydantic take ``value`` as ``member``?  ``True`` when in doubt."""
    kind = typing.get_origin(member) or member
    if kind is None:
        kind = type(None)
    takes = _TAKES.get(kind)
    return takes is None or isinstance(value, takes)


def _exactly(value: Any, hint: Any) -> bool:
    """``value`` is of the scalar ``hint`` as it is (a dictionary key: nothing to convert)."""
    if hint is Any:
        return True
    return hint in (*_SCALARS, float) and type(value) is hint


def _list(value: Any, item: Any) -> Any:
    if type(value) is not list:
        return UNDECIDED
    out = []
    for v in value:
        checked = plain_value(v, item)
        if checked is UNDECIDED:
            return UNDECIDED
        out.append(checked)
    return out


def _dict(value: Any, key: Any, val: Any) -> Any:
    if type(value) is not dict:
        return UNDECIDED
    out = {}
    for k, v in value.items():
        if not _exactly(k, key):  # converted keys could collide: pydantic's business
            return UNDECIDED
        checked = plain_value(v, val)
        if checked is UNDECIDED:
            return UNDECIDED
        out[k] = checked
    return out
