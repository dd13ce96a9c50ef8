"""Config values checked without pydantic where plain (insectarium.dripline.value_check).

The plain path must never take a value pydantic refuses, nor convert one differently; and a
lab service built from its configuration must not import pydantic at all (its ~9 MiB are a
sixth of a service's memory budget).
"""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Union

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from insectarium.dripline.config_files import ConfigError
from insectarium.dripline.factory import create_service
from insectarium.dripline.value_check import UNDECIDED, check_value, plain_value

ROOT = Path(__file__).resolve().parents[1]

SCALAR_HINTS = [int, float, str, bool, Any, type(None)]
LITERALS = [Literal["error", "skip"], Literal[1, 2], Literal[True], Literal["1", 1]]


def hints() -> st.SearchStrategy[Any]:
    """Hints of the shapes lab constructors use, nested a little."""
    base = st.sampled_from(SCALAR_HINTS + LITERALS)

    def extend(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        return st.one_of(
            inner.map(lambda h: list[h]),
            st.tuples(st.sampled_from([str, int, Any]), inner).map(lambda kv: dict[kv[0], kv[1]]),
            st.tuples(st.sampled_from([str, Any]), inner).map(lambda kv: Mapping[kv[0], kv[1]]),
            st.lists(inner, min_size=2, max_size=3).map(_union),
            st.just(list),
            st.just(dict),
        )

    return st.recursive(base, extend, max_leaves=4)


def _union(members: list[Any]) -> Any:
    return Union[tuple(members)]  # noqa: UP007 - built from a list; typing.Union takes a tuple


values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.integers(min_value=-(10**400), max_value=10**400),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=5),
        st.sampled_from(["error", "skip", "1", "0", "true"]),
        st.sampled_from([0, 1, 2, 1.0, 2.0]),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.one_of(st.text(max_size=3), st.integers(0, 3)), inner, max_size=3),
    ),
    max_leaves=6,
)


def same(a: Any, b: Any) -> bool:
    """Equal, of the same types all the way down (NaN equal to NaN)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    return a == b


@settings(max_examples=3000, deadline=None)
@given(hint=hints(), value=values)
# unions that pydantic resolves by its own ranking, found by this test in longer runs
@example(hint=Union[Any, Literal[1, 2]], value=True)  # noqa: UP007
@example(hint=Union[dict[str, Literal[True]], dict[str, int]], value={"": 1})  # noqa: UP007
@example(hint=Union[dict[str, float], dict], value={"": 0})  # noqa: UP007
def test_the_plain_path_takes_only_what_pydantic_takes_and_converts_alike(hint, value) -> None:
    plain = plain_value(value, hint)
    if plain is UNDECIDED:
        return
    try:
        expected = TypeAdapter(hint).validate_python(value)
    except ValidationError as exc:
        pytest.fail(f"plain path took {value!r} as {hint}, pydantic refuses: {exc}")
    assert same(plain, expected), (hint, value, plain, expected)


@pytest.mark.parametrize(
    ("hint", "value", "expected"),
    [
        (int, 5, 5),
        (float, 5, 5.0),
        (float | Mapping[str, float] | None, 5, 5.0),
        (list[str] | None, ["a", "b"], ["a", "b"]),
        (dict[str, Any] | None, {"a": [1]}, {"a": [1]}),
        (Literal["error", "skip"], "skip", "skip"),
        (str | None, None, None),
    ],
)
def test_the_values_of_the_lab_configs_are_plain(hint, value, expected) -> None:
    assert same(plain_value(value, hint), expected)


@pytest.mark.parametrize(
    ("hint", "value"),
    [
        (int, True),  # pydantic's lax mode: 1
        (int, "5"),  # pydantic converts
        (float, 10**400),  # too big for a float: pydantic's error
        (dict[int, Any], {"1": 2}),  # a key to convert
        (list[int], [1.0]),
        (Literal[1], True),
        (bool | float, 1),
    ],
)
def test_anything_else_goes_to_pydantic(hint, value) -> None:
    assert plain_value(value, hint) is UNDECIDED
    try:
        expected = TypeAdapter(hint).validate_python(value)
    except ValidationError as exc:
        with pytest.raises(ValueError, match="Input should be") as err:
            check_value(value, hint)
        assert str(err.value) == exc.errors()[0]["msg"]
    else:
        assert same(check_value(value, hint), expected)


def test_a_bad_value_is_still_reported_with_file_key_and_pydantic_message() -> None:
    with pytest.raises(ConfigError) as exc:
        create_service({"name": "s", "prefetch_count": "many", "endpoints": []}, source="svc.yaml")
    assert str(exc.value) == (
        "svc.yaml: prefetch_count: Input should be a valid integer, unable to parse string as "
        "an integer (got 'many')"
    )


@pytest.mark.parametrize("config", sorted(p.name for p in (ROOT / "files/configs").glob("*.yaml")))
def test_a_lab_service_is_built_without_importing_pydantic(config: str) -> None:
    """``dl-serve --check`` builds the service as under supervisord, in a fresh interpreter."""
    script = textwrap.dedent(
        f"""
        import sys
        from insectarium.cli.serve import main
        status = main(["-c", {str(ROOT / "files/configs" / config)!r}, "-u", "u",
                       "--password", "p", "--check"])
        assert status == 0, status
        loaded = sorted(m for m in sys.modules if m.split(".")[0] == "pydantic")
        print("pydantic modules:", loaded)
        sys.exit(1 if loaded else 0)
        """
    )
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "OK" in run.stdout
