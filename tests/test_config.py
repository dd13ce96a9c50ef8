"""Configuration and authentication precedence, calibration safety, CLI value typing."""

from __future__ import annotations

from pathlib import Path

import pytest

from insectarium.cli.common import parse_scalar, split_arguments
from insectarium.dripline.calibration import CalibrationError, apply_calibration, evaluate
from insectarium.dripline.config import (
    Authentication,
    ConfigError,
    load_file,
    load_mesh,
    substitute_env,
)
from insectarium.dripline.factory import create_service


def test_auth_precedence(tmp_path: Path) -> None:
    f = tmp_path / "auth.yaml"
    f.write_text(
        "dripline:\n  username: from_file\n  password: file_pw\npostgres:\n  username: pg\n"
    )
    env = {"DRIPLINE_PASSWORD": "env_pw"}
    a = Authentication.load(f, environ=env)
    assert (a.dripline.username, a.dripline.password) == ("from_file", "env_pw")
    pw = tmp_path / "pw"
    pw.write_text("pwfile_pw\n")
    a = Authentication.load(f, environ=env, password_file=pw)
    assert a.dripline.password == "pwfile_pw"
    a = Authentication.load(f, environ=env, password_file=pw, username="cli", password="cli_pw")
    assert (a.dripline.username, a.dripline.password) == ("cli", "cli_pw")
    assert a.postgres.username == "pg" and a.postgres.password == "postgres"
    assert "cli_pw" not in repr(a) and "cli_pw" not in repr(a.dripline)


def test_auth_defaults_and_legacy_groups(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    a = Authentication.load(environ={})
    assert (a.dripline.username, a.dripline.password) == ("guest", "guest")
    legacy = tmp_path / "old.json"
    legacy.write_text(
        '{"amqp": {"username": "u4", "password": "p4"}, "postgresql": {"username": "pgu"}}'
    )
    a = Authentication.load(legacy, environ={})
    assert a.dripline.username == "u4" and a.postgres.username == "pgu"


def test_auth_file_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        Authentication.load(tmp_path / "missing.yaml", environ={})
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match=str(bad)):
        Authentication.load(bad, environ={})


def test_mesh_layers_and_home_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".dripline_mesh.yaml").write_text("broker: home-broker\nbroker-port: 5673\n")
    mesh = load_mesh({"max_payload_size": 500}, {"broker": "cli-broker"})
    assert (mesh.broker, mesh.broker_port, mesh.max_payload_size) == ("cli-broker", 5673, 500)
    with pytest.raises(ConfigError, match="max_payload_size"):
        load_mesh({"max_payload_size": 0})
    with pytest.raises(ConfigError, match="unknown scheme"):
        load_mesh({"broker": "http://x"})


def test_env_substitution() -> None:
    env_cfg = {"a": ["ENV{INSECT_T1}/x", {"b": "ENV{INSECT_T1}"}]}
    import os

    os.environ["INSECT_T1"] = "val"
    try:
        assert substitute_env(env_cfg) == {"a": ["val/x", {"b": "val"}]}
    finally:
        del os.environ["INSECT_T1"]
    with pytest.raises(
        ConfigError, match=r"f.yaml: a\[0\]: environment variable INSECT_T1 is not set"
    ):
        substitute_env(env_cfg, source="f.yaml")


def test_factory_checks_types_and_required_keys() -> None:
    with pytest.raises(ConfigError, match=r"endpoints\[0\]\.name: required key missing"):
        create_service({"name": "s", "endpoints": [{"module": "KeyValueStore"}]})
    with pytest.raises(ConfigError, match="get_on_set"):
        create_service(
            {
                "name": "s",
                "endpoints": [{"name": "p", "module": "KeyValueStore", "get_on_set": "perhaps"}],
            }
        )
    with pytest.raises(ConfigError, match="duplicate endpoint name"):
        create_service(
            {
                "name": "s",
                "endpoints": [
                    {"name": "p", "module": "KeyValueStore"},
                    {"name": "p", "module": "KeyValueStore"},
                ],
            }
        )
    with pytest.raises(ConfigError, match="must be non-empty without"):
        create_service({"name": "s", "endpoints": [{"name": "a.b", "module": "KeyValueStore"}]})
    svc = create_service(
        {
            "name": "s",
            "endpoints": [{"name": "p", "module": "KeyValueStore", "log_interval": {"seconds": 5}}],
        }
    )
    assert svc.sync_children["p"].log_interval == 5


@pytest.mark.parametrize(
    ("calibration", "raw", "expected"),
    [
        ("2*{}", 0.75, 1.5),
        ("times3({})", "2", 6),
        ("{}+273.15", 1, 274.15),
        ("sqrt({})", 16, 4.0),
        ("1 if {} > 0 else -1", -3, -1),
        ("max({}, 3)", 2, 3),
    ],
)
def test_calibration_expressions(calibration: str, raw, expected) -> None:
    assert apply_calibration(calibration, raw) == pytest.approx(expected)


@pytest.mark.parametrize(
    "expression",
    [
        "__import__('os').system('true')",
        "().__class__.__bases__",
        "open('/etc/passwd')",
        "[x for x in (1,)]",
        "lambda: 1",
        "9**9**9",
        "'a'*10**9",
        "globals()",
        "x.y",
        "f(a=1)",
    ],
)
def test_calibration_refuses_unsafe_expressions(expression: str) -> None:
    with pytest.raises((CalibrationError, OverflowError)):
        evaluate(expression)


def test_dict_calibration() -> None:
    assert apply_calibration({"1": "on"}, 1) == "on"
    with pytest.raises(CalibrationError):
        apply_calibration({"1": "on"}, 2)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("", None),
        ("true", True),
        ("FALSE", False),
        ("5", 5),
        ("-5", -5),
        ("2.5", 2.5),
        ("1e3", 1000.0),
        ("abc", "abc"),
        ("1-2", "1-2"),
        ("-", "-"),
        ("0.1.2", "0.1.2"),
    ],
)
def test_scalar_typing_like_scarab(text: str, value) -> None:
    assert parse_scalar(text) == value


def test_keyword_addresses() -> None:
    values, kw = split_arguments(["run1", "10", "a.b.0=3", "a.c=x", "flag=true"])
    assert values == ["run1", 10]
    assert kw == {"a": {"b": [3], "c": "x"}, "flag": True}


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_a_file_nested_too_deeply_is_a_config_error_naming_the_file(tmp_path, suffix) -> None:
    """Both parsers recurse per level: 5 000 levels were a RecursionError traceback."""
    path = tmp_path / f"deep{suffix}"
    path.write_text('{"name": "s", "x": ' + "[" * 5000 + "]" * 5000 + "}")
    with pytest.raises(ConfigError) as exc:
        load_file(path)
    assert (
        str(exc.value)
        == f"{path}: nested too deeply (more levels of lists or mappings than can be read)"
    )


def test_a_long_wrong_value_is_shown_clipped() -> None:
    with pytest.raises(ConfigError) as exc:
        create_service({"name": "s", "prefetch_count": ["x" * 10] * 10_000, "endpoints": []})
    message = str(exc.value)
    assert message.startswith("prefetch_count: Input should be a valid integer (got ['xxxxxxxxxx'")
    assert message.endswith(" characters cut])") and len(message) < 300
