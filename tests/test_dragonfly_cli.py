"""`dragonfly` as a process against a running key-value store: translation, output, exit status."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from insectarium.cli.dragonfly import cast, format_reply, parse, split_target, split_values
from insectarium.dripline.message import Message

from .runtime_support import REPO, prefixed_kv_store, run_cli, unique


def dragonfly(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return run_cli("dragonfly", *args, timeout=timeout)


@pytest.fixture(scope="module")
def kv(broker_args: list[str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The tutorial key-value store as a dl-serve process, under a unique name and prefix."""
    prefix = unique("df")

    def answers_ping() -> bool:
        ping = dragonfly(*broker_args, "--strict", "--timeout", "1", "cmd", f"{prefix}.ping")
        return ping.returncode == 0

    with prefixed_kv_store(broker_args, tmp_path_factory.mktemp("kv"), prefix, answers_ping):
        yield prefix


def test_get_prints_dragonfly_line(kv, broker_args) -> None:
    out = dragonfly("get", f"{kv}_peaches", *broker_args)
    assert out.returncode == 0, out.stderr
    assert out.stdout == f"{kv}_peaches(ret:0): [{kv}]-> {{'value_raw': 0.75, 'value_cal': 1.5}}\n"


def test_target_specifier_becomes_the_specifier_header(kv, broker_args) -> None:
    out = dragonfly("set", f"{kv}_waffles.log_interval", "5", *broker_args)
    assert out.stdout == f"{kv}_waffles.log_interval->5(ret:0): [{kv}]-> None\n", out.stderr
    out = dragonfly(*broker_args, "get", f"{kv}_waffles.log_interval")
    # dripline-python's form: its log_interval is a timedelta, replied as text
    assert out.stdout == f"{kv}_waffles.log_interval(ret:0): [{kv}]-> {{'values': ['0:00:05']}}\n"


def test_the_seed_invocation_style(kv, broker_args) -> None:
    """Options after the subcommand, -vv, and -b with a value, as in the seed README."""
    out = dragonfly("cmd", "-vv", *broker_args, f"{kv}_chips.ping")
    assert out.returncode == 0
    assert out.stdout.startswith(f"{kv}_chips.ping(ret:0): [{kv}]-> None\n")
    assert "return message: Hello" in out.stdout  # -v shows the return message


def test_values_are_cast_like_dragonfly(kv, broker_args) -> None:
    cheese = f"{kv}_cheese"
    cases = [
        ("TRUE", "True"),
        ("null", "None"),
        ("brie", "'brie'"),
        ("'42'", "'42'"),
        ("{'a': 1.5}", "{'a': 1.5}"),
        ("-3", "-3"),
    ]
    for word, shown in cases:
        assert dragonfly("set", cheese, word, *broker_args).returncode == 0
        out = dragonfly("get", cheese, *broker_args)
        assert out.stdout == f"{cheese}(ret:0): [{kv}]-> {{'value_raw': {shown}}}\n", word


def test_errors_exit_0_unless_strict(kv, broker_args) -> None:
    target = f"{kv}_peaches.no_such_command"
    out = dragonfly("cmd", target, "1", "x=2", *broker_args)
    assert out.returncode == 0
    lines = out.stdout.splitlines()
    assert lines[0] == f"{target}->1(ret:306): [{kv}]-> None"
    assert lines[1] == f"return message: endpoint {kv}_peaches has no command no_such_command"
    assert dragonfly("cmd", target, *broker_args, "--strict").returncode == 3


def test_unroutable_target(broker_args) -> None:
    target = unique("nobody")
    out = dragonfly("get", target, *broker_args, "--timeout", "3")
    assert out.returncode == 0
    assert out.stdout.startswith(f"{target}(ret:403): []-> None\n")
    assert dragonfly("get", target, *broker_args, "--strict").returncode == 4


def test_values_may_follow_options(kv, broker_args) -> None:
    target = f"{kv}_peaches.nope"
    out = dragonfly("cmd", target, "1", "--timeout", "5", "2", *broker_args)
    assert out.stdout.startswith(f"{target}->1->2(ret:306)")


def test_pretty_print_shows_value_cal(kv, broker_args) -> None:
    out = dragonfly("get", f"{kv}_waffles", "--pretty-print", *broker_args)
    assert out.stdout.strip() == "277.15"


def test_broadcast_collects_replies(kv, broker_args) -> None:
    out = dragonfly("cmd", "broadcast.ping", "--timeout", "2", *broker_args)
    assert out.returncode == 0
    assert f"broadcast.ping(ret:0): [{kv}]-> None" in out.stdout.splitlines()


def test_bare_b_means_localhost(kv, broker_args) -> None:
    if broker_args[1] not in ("localhost", "127.0.0.1"):
        pytest.skip("the test broker is not on localhost")
    rest = broker_args[2:]
    out = dragonfly("get", f"{kv}_chips", *rest, "-b")
    assert out.stdout.startswith(f"{kv}_chips(ret:0): [{kv}]"), out.stderr


def test_serve_and_monitor_delegate() -> None:
    out = dragonfly("serve", "--check", "-c", str(REPO / "files/configs/status_multigets.yaml"))
    assert out.returncode == 0, out.stderr
    assert "not-status_multido" in out.stdout
    out = dragonfly("monitor", "--help")
    assert out.returncode == 0
    assert out.stdout.startswith("usage: dl-mon")


# ------------------------------------------------------------------ without a broker
def test_cast() -> None:
    assert cast("1") == 1 and cast("1.5") == 1.5 and cast("-2") == -2
    assert cast("True") is True and cast("false") is False and cast("FALSE") is False
    assert cast("None") is None and cast("nil") is None and cast("NULL") is None
    assert cast("virtual_run") == "virtual_run"
    assert cast("[1, 2]") == [1, 2]


def test_split_values_and_target() -> None:
    assert split_values(["virtual_run", "100", "run_name=x", "a.b=2"]) == (
        ["virtual_run", 100],
        {"run_name": "x", "a": {"b": 2}},
    )
    assert split_target("daq_interface.start_timed_run") == ("daq_interface", "start_timed_run")
    assert split_target("peaches") == ("peaches", "")
    assert split_target("a.b.c") == ("a", "b.c")


def test_parse_seed_command_line() -> None:
    args = parse(
        ["cmd", "-vv", "-b", "rabbit_broker", "daq_interface.start_timed_run", "virtual_run", "100"]
    )
    assert (args.operation, args.broker, args.verbose) == ("cmd", "rabbit_broker", 2)
    assert args.target == "daq_interface.start_timed_run"
    assert args.values == ["virtual_run", "100"]
    assert parse(["get", "-b", "--", "peaches"]).broker == "localhost"
    with pytest.raises(SystemExit):
        parse(["get", "peaches", "--no-such-option"])


def test_format_reply() -> None:
    request = Message.request("peaches2", 0, {"values": [1.234]})
    reply = request.make_reply(0, "", {"value_raw": 1.23, "value_cal": 2.46}, sender="my_store2")
    assert (
        format_reply("peaches2", [1.234], reply)
        == "peaches2->1.234(ret:0): [my_store2]-> {'value_raw': 1.23, 'value_cal': 2.46}"
    )
