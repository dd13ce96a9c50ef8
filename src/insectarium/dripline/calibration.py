"""Safe evaluation of calibration expressions such as ``'2*{}'`` or ``'times3({})+0.5'``.

dripline-python formats the raw value into the expression string and evaluates it with asteval.
We do the same substitution, then evaluate with a small AST walker that only knows arithmetic,
comparisons, conditionals, constants and an allow-list of functions: no attribute access, no
imports, no comprehensions, no lambdas — nothing a config file or a ``set`` value could use to
reach the interpreter.

A ``set`` value is formatted into the expression, so its cost is the peer's to choose: the
expression's length and number of nodes are bounded, and so is every intermediate result
(integers to :data:`~.limits.MAX_CALIBRATION_INT_BITS` bits, strings and lists to
:data:`~.limits.MAX_CALIBRATION_SEQUENCE` items).  ``((9**999)**999)**4`` is refused at the
second power instead of computing a number of three million digits on the event loop, and every
evaluation stays in the microsecond-to-millisecond range.

A number (the common case: every scheduled log of a sensor) is not formatted into the text at
all: the expression is parsed once with a name in place of ``{}`` and evaluated with the number
bound to it, which gives the same result without a parse per value.
"""

from __future__ import annotations

import ast
import functools
import math
import operator
from collections.abc import Callable, Mapping
from typing import Any

from .limits import (
    MAX_CALIBRATION_EXPRESSION,
    MAX_CALIBRATION_INT_BITS,
    MAX_CALIBRATION_NODES,
    MAX_CALIBRATION_SEQUENCE,
)

_RAW = "__raw_value__"
"""Name the raw value is bound to when a numeric value is calibrated without re-parsing."""
_CACHE_EXPRESSION = 200
"""Expressions up to this length are cached once parsed (string values, formatted in)."""


class CalibrationError(ValueError):
    """The expression is not allowed, or failed to evaluate."""


def times2(x: float) -> float:
    return 2 * x


def times3(x: float) -> float:
    return 3 * x


DEFAULT_FUNCTIONS: dict[str, Any] = {
    "abs": abs,
    "min": min,
    "max": max,
    "round": round,
    "int": int,
    "float": float,
    "str": str,
    "bool": bool,
    "len": len,
    "pi": math.pi,
    "e": math.e,
    "times2": times2,
    "times3": times3,
    **{
        name: getattr(math, name)
        for name in (
            *("sqrt", "exp", "log", "log10", "log2", "sin", "cos", "tan", "asin", "acos"),
            *("atan", "atan2", "sinh", "cosh", "tanh", "floor", "ceil", "fabs", "hypot"),
            *("degrees", "radians", "isnan", "isinf"),
        )
    },
}

_BINOPS: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {
    ast.UAdd: operator.pos,
    ast.USub: operator.neg,
    ast.Not: operator.not_,
}
_COMPARE: dict[type[ast.cmpop], Callable[[Any, Any], Any]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
}


def _parse(expression: str) -> ast.expr:
    """The syntax tree of a bounded expression (``CalibrationError`` when over the bounds)."""
    if len(expression) > MAX_CALIBRATION_EXPRESSION:
        raise CalibrationError(
            f"calibration input of {len(expression)} characters exceeds the limit of "
            f"{MAX_CALIBRATION_EXPRESSION}"
        )
    if len(expression) <= _CACHE_EXPRESSION:
        return _parse_cached(expression)
    return _parse_uncached(expression)


@functools.lru_cache(maxsize=512)
def _parse_cached(expression: str) -> ast.expr:
    return _parse_uncached(expression)


def _parse_uncached(expression: str) -> ast.expr:
    try:
        body = ast.parse(expression.strip(), mode="eval").body
    except SyntaxError as exc:
        raise CalibrationError(f"cannot parse {expression!r}: {exc.msg}") from None
    except (ValueError, RecursionError, MemoryError) as exc:  # e.g. null bytes, deep nesting
        raise CalibrationError(f"cannot parse the calibration input: {exc}") from None
    nodes = sum(1 for _ in ast.walk(body))
    if nodes > MAX_CALIBRATION_NODES:
        raise CalibrationError(
            f"calibration expression has {nodes} terms; the limit is {MAX_CALIBRATION_NODES}"
        )
    return body


@functools.lru_cache(maxsize=256)
def _template(calibration: str) -> ast.expr | None:
    """The configured expression parsed once with a name for ``{}``; ``None`` when it cannot
    be (format specs, several fields): such calibrations are formatted as text every time."""
    try:
        text = calibration.format(_RAW)
    except (IndexError, KeyError, ValueError):
        return None
    if _RAW not in text:
        return None
    try:
        return _parse(text)
    except CalibrationError:
        return None


class SafeEvaluator:
    def __init__(self, names: Mapping[str, Any] | None = None) -> None:
        self.names = {**DEFAULT_FUNCTIONS, **(names or {})}

    def evaluate(self, expression: str | ast.expr) -> Any:
        """Value of ``expression`` (text, or a tree from :func:`_parse`)."""
        body = _parse(expression) if isinstance(expression, str) else expression
        try:
            return self._eval(body)
        except CalibrationError:
            raise
        except OverflowError:
            raise
        except (ArithmeticError, TypeError, ValueError) as exc:
            shown = expression if isinstance(expression, str) else ast.unparse(expression)
            raise CalibrationError(f"{shown[:200]!r}: {exc}") from None

    def _eval(self, node: ast.AST) -> Any:
        if isinstance(node, ast.Constant):
            if isinstance(node.value, int | float | complex | str | bool) or node.value is None:
                return _bounded(node.value)
            raise CalibrationError(f"constant {node.value!r} not allowed")
        if isinstance(node, ast.Name):
            if node.id in self.names:
                return self.names[node.id]
            raise CalibrationError(f"unknown name {node.id[:100]!r}")
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            left, right = self._eval(node.left), self._eval(node.right)
            _check_operands(node.op, left, right)
            return _bounded(_BINOPS[type(node.op)](left, right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            return _UNARY[type(node.op)](self._eval(node.operand))
        if isinstance(node, ast.BoolOp):
            values = [self._eval(v) for v in node.values]
            if isinstance(node.op, ast.And):
                return all(values)
            return any(values)
        if isinstance(node, ast.Compare):
            left = self._eval(node.left)
            for op, comparator in zip(node.ops, node.comparators, strict=True):
                if type(op) not in _COMPARE:
                    raise CalibrationError(f"comparison {type(op).__name__} not allowed")
                right = self._eval(comparator)
                if not _COMPARE[type(op)](left, right):
                    return False
                left = right
            return True
        if isinstance(node, ast.IfExp):
            return self._eval(node.body) if self._eval(node.test) else self._eval(node.orelse)
        if isinstance(node, ast.Tuple | ast.List):
            return [self._eval(e) for e in node.elts]
        if isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.keywords:
                raise CalibrationError("only plain calls of allowed functions")
            func = self._eval(node.func)
            if not callable(func):
                raise CalibrationError(f"{node.func.id!r} is not a function")
            return _bounded(func(*[self._eval(a) for a in node.args]))
        raise CalibrationError(f"{type(node).__name__} is not allowed in a calibration")


def _check_operands(op: ast.operator, left: Any, right: Any) -> None:
    """Refuse an operation whose result would be too large *before* computing it."""
    if isinstance(op, ast.Pow):
        if (
            _is_int(left)
            and _is_int(right)
            and right > 0
            and abs(left) > 1
            and left.bit_length() * right > MAX_CALIBRATION_INT_BITS
        ):
            raise CalibrationError(
                f"power too large: the result would exceed {MAX_CALIBRATION_INT_BITS} bits"
            )
    elif isinstance(op, ast.Mod) and isinstance(left, str):
        # printf-style formatting: '%01000000000d' % 1 would allocate a gigabyte
        raise CalibrationError("string formatting with % is not allowed in a calibration")
    elif isinstance(op, ast.Mult):
        if _is_int(left) and _is_int(right):
            if left.bit_length() + right.bit_length() > MAX_CALIBRATION_INT_BITS + 1:
                raise CalibrationError(
                    f"product too large: the result would exceed {MAX_CALIBRATION_INT_BITS} bits"
                )
            return
        for seq, n in ((left, right), (right, left)):
            if (
                isinstance(seq, str | list)
                and _is_int(n)
                and len(seq) * n > MAX_CALIBRATION_SEQUENCE
            ):
                raise CalibrationError(
                    f"result too large: more than {MAX_CALIBRATION_SEQUENCE} items"
                )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _bounded(value: Any) -> Any:
    """``value`` if it is within the size bounds (results of calls and operators)."""
    if _is_int(value):
        if value.bit_length() > MAX_CALIBRATION_INT_BITS:
            raise CalibrationError(f"integer larger than {MAX_CALIBRATION_INT_BITS} bits")
    elif isinstance(value, str | list) and len(value) > MAX_CALIBRATION_SEQUENCE:
        raise CalibrationError(f"result too large: more than {MAX_CALIBRATION_SEQUENCE} items")
    return value


def evaluate(expression: str, names: Mapping[str, Any] | None = None) -> Any:
    return SafeEvaluator(names).evaluate(expression)


_DEFAULT_EVALUATOR = SafeEvaluator()


def apply_calibration(
    calibration: str | Mapping[Any, Any], raw: Any, names: Mapping[str, Any] | None = None
) -> Any:
    """Calibrated value of ``raw``: ``expression.format(raw)`` evaluated, or a dict lookup.

    Raises :class:`CalibrationError` (→ reply 304) when the value cannot be calibrated, and
    ``OverflowError`` (→ 303) for numeric overflow, as dripline-python does.
    """
    if isinstance(calibration, Mapping):
        try:
            key = raw if raw in calibration else str(raw)
            if key not in calibration:
                raise CalibrationError(f"raw value {str(raw)[:100]!r} not in calibration dict")
        except TypeError:  # an unhashable raw value (a list or an object)
            raise CalibrationError(
                "raw value cannot be looked up in the calibration dict"
            ) from None
        return calibration[key]
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        tree = _template(calibration)
        if tree is not None:
            evaluator = SafeEvaluator({**(names or {}), _RAW: raw})
            return evaluator.evaluate(tree)
    text = raw.strip() if isinstance(raw, str) else raw
    try:
        expression = calibration.format(text)
    except (IndexError, KeyError, ValueError, TypeError) as exc:
        raise CalibrationError(f"bad calibration string {calibration!r}: {exc}") from None
    evaluator = SafeEvaluator(names) if names else _DEFAULT_EVALUATOR
    return evaluator.evaluate(expression)
