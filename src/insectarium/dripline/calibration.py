"""Safe evaluation of calibration expressions such as ``'2*{}'`` or ``'times3({})+0.5'``.

dripline-python formats the raw value into the expression string and evaluates it with asteval.
We do the same substitution, then evaluate with a small AST walker that only knows arithmetic,
comparisons, conditionals, constants and an allow-list of functions: no attribute access, no
imports, no comprehensions, no lambdas — nothing a config file or a ``set`` value could use to
reach the interpreter.  Expressions that would eat the machine (huge powers or repetitions) are
refused.
"""

from __future__ import annotations

import ast
import functools
import math
import operator
from collections.abc import Callable, Mapping
from typing import Any

_MAX_POWER_EXPONENT = 1000
_MAX_SEQUENCE = 100_000


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


@functools.lru_cache(maxsize=1024)
def _parse(expression: str) -> ast.expr:
    """Parsed expressions are cached: a calibration is evaluated on every get and log."""
    return ast.parse(expression, mode="eval").body


class SafeEvaluator:
    def __init__(self, names: Mapping[str, Any] | None = None) -> None:
        self.names = {**DEFAULT_FUNCTIONS, **(names or {})}

    def evaluate(self, expression: str) -> Any:
        try:
            body = _parse(expression.strip())
        except SyntaxError as exc:
            raise CalibrationError(f"cannot parse {expression!r}: {exc.msg}") from None
        try:
            return self._eval(body)
        except CalibrationError:
            raise
        except OverflowError:
            raise
        except (ArithmeticError, TypeError, ValueError) as exc:
            raise CalibrationError(f"{expression!r}: {exc}") from None

    def _eval(self, node: ast.AST) -> Any:
        if isinstance(node, ast.Constant):
            if isinstance(node.value, int | float | complex | str | bool) or node.value is None:
                return node.value
            raise CalibrationError(f"constant {node.value!r} not allowed")
        if isinstance(node, ast.Name):
            if node.id in self.names:
                return self.names[node.id]
            raise CalibrationError(f"unknown name {node.id!r}")
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            left, right = self._eval(node.left), self._eval(node.right)
            self._check_size(node.op, left, right)
            return _BINOPS[type(node.op)](left, right)
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
            return func(*[self._eval(a) for a in node.args])
        raise CalibrationError(f"{type(node).__name__} is not allowed in a calibration")

    @staticmethod
    def _check_size(op: ast.operator, left: Any, right: Any) -> None:
        if (
            isinstance(op, ast.Pow)
            and isinstance(right, int | float)
            and abs(right) > _MAX_POWER_EXPONENT
        ):
            raise CalibrationError(f"exponent {right} too large")
        if isinstance(op, ast.Mult):
            for seq, n in ((left, right), (right, left)):
                if (
                    isinstance(seq, str | list)
                    and isinstance(n, int)
                    and len(seq) * n > _MAX_SEQUENCE
                ):
                    raise CalibrationError("result too large")


def evaluate(expression: str, names: Mapping[str, Any] | None = None) -> Any:
    return SafeEvaluator(names).evaluate(expression)


def apply_calibration(
    calibration: str | Mapping[Any, Any], raw: Any, names: Mapping[str, Any] | None = None
) -> Any:
    """Calibrated value of ``raw``: ``expression.format(raw)`` evaluated, or a dict lookup.

    Raises :class:`CalibrationError` (→ reply 304) when the value cannot be calibrated, and
    ``OverflowError`` (→ 303) for numeric overflow, as dripline-python does.
    """
    if isinstance(calibration, Mapping):
        key = raw
        if key not in calibration:
            key = str(raw)
        if key not in calibration:
            raise CalibrationError(f"raw value {raw!r} not in calibration dict")
        return calibration[key]
    text = raw.strip() if isinstance(raw, str) else raw
    try:
        expression = calibration.format(text)
    except (IndexError, KeyError, ValueError) as exc:
        raise CalibrationError(f"bad calibration string {calibration!r}: {exc}") from None
    return evaluate(expression, names)
