"""dl-agent, dl-serve and dl-mon as processes: arguments, output and exit status."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .runtime_support import REPO, dl_mon_one_alert, prefixed_kv_store, run_cli, unique


def tool(name: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    module = {"dl-agent": "agent", "dl-serve": "serve", "dl-mon": "mon"}[name]
    return run_cli(module, *args, timeout=timeout)


@pytest.fixture(scope="module")
def kv_service(broker_args: list[str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The tutorial key-value store under a unique name (endpoints are prefixed too)."""
    prefix = unique("cli")

    def answers_ping() -> bool:
        return (
            tool("dl-agent", *broker_args, "-t", "1", "cmd", prefix, "-s", "ping").returncode == 0
        )

    with prefixed_kv_store(broker_args, tmp_path_factory.mktemp("kv"), prefix, answers_ping):
        yield prefix


def test_get_prints_reply_and_exits_0(kv_service: str, broker_args: list[str]) -> None:
    r = tool("dl-agent", *broker_args, "get", f"{kv_service}_peaches")
    assert r.returncode == 0, r.stderr
    assert "Return Code: 0" in r.stdout
    assert '"value_cal": 1.5' in r.stdout


def test_json_print_and_scalar_typing(kv_service: str, broker_args: list[str]) -> None:
    # keywords alone are no value: set is refused before anything is sent
    r = tool("dl-agent", *broker_args, "set", f"{kv_service}_recipe", "eggs=3", "vegan=false")
    assert r.returncode == 4 and "401" in r.stderr
    r = tool("dl-agent", *broker_args, "--json-print", "set", f"{kv_service}_cheese", "-5")
    reply = json.loads(r.stdout)
    assert reply["payload"] == {"value_raw": -5}
    r = tool("dl-agent", *broker_args, "--pretty-print", "get", f"{kv_service}_cheese")
    assert json.loads(r.stdout)["payload"]["value_raw"] == -5


@pytest.mark.parametrize(
    ("args", "status"),
    [
        (["cmd", "{svc}_peaches", "-s", "no_such_method"], 3),  # 306
        (["get", "{svc}_peaches", "-s", "no_such_attr"], 3),  # 310
        (["-k", "zzz", "get", "{svc}_peaches"], 3),  # 308
        (["get", "nobody_listens_here_x1"], 4),  # 403
        (["cmd", "broadcast", "-s", "ping"], 0),
    ],
)
def test_exit_status_is_return_code_div_100(kv_service, broker_args, args, status) -> None:
    r = tool("dl-agent", *broker_args, *[a.format(svc=kv_service) for a in args])
    assert r.returncode == status, r.stdout + r.stderr


def test_timeout_is_404_exit_4(kv_service: str, broker_args: list[str], amqp_url: str) -> None:
    # a queue bound but never answering: the request is routed, then times out
    from .rawamqp import RawClient

    raw = RawClient(amqp_url)
    q = raw.declare_queue()
    raw.bind(q, "requests", "silent_endpoint_x2.#")
    try:
        r = tool("dl-agent", *broker_args, "-t", "0.5", "get", "silent_endpoint_x2")
    finally:
        raw.close()
    assert r.returncode == 4 and "404" in r.stdout


def test_values_may_follow_options(kv_service: str, broker_args: list[str]) -> None:
    """dl-agent habit: `cmd daq_interface -s start_timed_run run1 60` (values after -s)."""
    r = tool(
        "dl-agent",
        *broker_args,
        "--json-print",
        "cmd",
        f"{kv_service}_cheese",
        "-s",
        "on_set",
        "-2.5",
    )
    assert r.returncode == 0, r.stderr
    r = tool("dl-agent", *broker_args, "--json-print", "get", f"{kv_service}_cheese")
    assert json.loads(r.stdout)["payload"] == {"value_raw": -2.5}
    r = tool("dl-agent", *broker_args, "get", f"{kv_service}_peaches", "--no-such-option")
    assert r.returncode == 2 and "unrecognized arguments: --no-such-option" in r.stderr


def test_save_writes_payload(kv_service: str, broker_args: list[str], tmp_path: Path) -> None:
    out = tmp_path / "peaches.json"
    r = tool(
        "dl-agent", *broker_args, "--suppress-output", "get", f"{kv_service}_peaches", f"save={out}"
    )
    assert r.returncode == 0 and r.stdout == ""
    assert json.loads(out.read_text())["value_raw"] == 0.75


@pytest.mark.parametrize(
    ("command", "timeout_flag"),
    [(["-m", "insectarium.cli.agent"], "-t"), (["-m", "insectarium.cli.dragonfly"], "--timeout")],
    ids=["dl-agent", "dragonfly"],
)
def test_unreachable_broker_fails_within_the_timeout_in_one_line(
    command: list[str], timeout_flag: str
) -> None:
    """With the broker unreachable a client honours -t and says so in one line (it waited
    56 s and printed a page of ERROR/WARNING lines)."""
    from insectarium.testing.servers import free_port

    port = free_port()  # nothing listens there
    started = time.monotonic()
    r = subprocess.run(
        [
            sys.executable,
            *command,
            "-b",
            "127.0.0.1",
            "-p",
            str(port),
            timeout_flag,
            "2",
            "get",
            "peaches",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    elapsed = time.monotonic() - started
    assert r.returncode == 1  # 101 amqp_error_broker_connection // 100, as dripline-cpp's agent
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert f"127.0.0.1:{port}" in lines[0] and "Connection refused" in lines[0]
    assert r.stdout == ""
    assert elapsed < 15  # 2 s asked; generous for a loaded machine, far below the old 56 s


async def test_interface_honours_its_timeout_when_the_broker_is_unreachable() -> None:
    from insectarium.dripline import BlockingInterface, Interface
    from insectarium.dripline.connection import BrokerUnavailable
    from insectarium.testing.servers import free_port

    mesh = {"broker": "127.0.0.1", "broker_port": free_port()}
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable, match="Connection refused"):
        async with Interface(dripline_mesh=mesh, username="u", password="p", timeout_s=1.5):
            pass
    assert time.monotonic() - started < 15

    def blocking() -> None:
        with BlockingInterface(dripline_mesh=mesh, username="u", password="p", timeout_s=1.5) as dl:
            dl.get("peaches")

    started = time.monotonic()
    with pytest.raises(BrokerUnavailable, match="cannot reach broker"):
        await asyncio.to_thread(blocking)
    assert time.monotonic() - started < 15


async def test_a_failed_connection_attempt_leaves_no_open_connection_behind(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each attempt's connection object is closed when the attempt fails: left to the garbage
    collector, its ``close()`` coroutine may never run (aio-pika's ``connect_robust`` dropped
    it open; pytest reported "coroutine 'RobustConnection.close' was never awaited")."""
    import aio_pika

    from insectarium.dripline.config import MeshConfig
    from insectarium.dripline.config_files import Credentials
    from insectarium.dripline.connection import BrokerUnavailable, Connection
    from insectarium.testing.servers import free_port

    made: list[aio_pika.RobustConnection] = []
    init = aio_pika.RobustConnection.__init__

    def remembering_init(self: aio_pika.RobustConnection, *args: object, **kw: object) -> None:
        init(self, *args, **kw)
        made.append(self)

    monkeypatch.setattr(aio_pika.RobustConnection, "__init__", remembering_init)
    mesh = MeshConfig(broker="127.0.0.1", broker_port=free_port(), max_connection_attempts=3)
    with pytest.raises(BrokerUnavailable, match="Connection refused"):
        await Connection(mesh, Credentials(username="u", password="p")).connect(timeout_s=5)
    assert len(made) == 3
    assert all(c.is_closed for c in made)


def test_help_everywhere() -> None:
    for name in ("dl-agent", "dl-serve", "dl-mon"):
        r = tool(name, "--help")
        assert r.returncode == 0 and "usage:" in r.stdout
    r = tool("dl-agent", "get", "--help")
    assert "--specifier" in r.stdout


def test_serve_rejects_bad_config_naming_file_and_key(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(
        "name: x\nendpoints:\n  - name: p\n    module: KeyValueStore\n    log_intervall: 3\n"
    )
    r = tool("dl-serve", "-c", str(cfg))
    assert r.returncode == 100
    assert (
        f"{cfg}: endpoints[0].log_intervall: unknown key for KeyValueStore "
        "(did you mean 'log_interval'?)" in r.stderr
    )
    cfg.write_text("name: x\nendpoints:\n  - name: p\n    module: KeyValueStor\n")
    r = tool("dl-serve", "-c", str(cfg))
    assert (
        "endpoints[0].module: unknown module 'KeyValueStor' (did you mean 'KeyValueStore'?)"
        in r.stderr
    )
    cfg.write_text("name: x\nheartbeat_interval_s: soon\n")
    r = tool("dl-serve", "-c", str(cfg))
    assert "heartbeat_interval_s:" in r.stderr and "number" in r.stderr
    cfg.write_text("name: [unclosed\n")
    r = tool("dl-serve", "-c", str(cfg))
    assert r.returncode == 100 and "invalid YAML at line" in r.stderr
    cfg.write_text("name: x\ndripline_mesh:\n  brokr: h\n")
    assert "dripline_mesh.brokr: unknown key" in tool("dl-serve", "-c", str(cfg)).stderr
    cfg.write_text("name: x\ndripline_mesh:\n  broker: ENV{INSECTARIUM_SURELY_UNSET}\n")
    assert "INSECTARIUM_SURELY_UNSET is not set" in tool("dl-serve", "-c", str(cfg)).stderr


def test_serve_check_validates_repo_config_without_password(tmp_path: Path) -> None:
    r = tool(
        "dl-serve",
        "-c",
        str(REPO / "files/configs/kv_store_tutorial.yaml"),
        "--check",
        "--password",
        "s3cret-value",
    )
    assert r.returncode == 0, r.stderr
    assert "not-glenlivet" in r.stdout and "peaches" in r.stdout
    assert "s3cret-value" not in r.stdout + r.stderr


def test_mon_shows_an_alert(broker_args: list[str]) -> None:
    key = f"sensor_value.{unique('mon')}"
    returncode, out, _said = dl_mon_one_alert(
        [*broker_args, "-a", key],
        lambda: tool("dl-agent", *broker_args, "alert", key, "value_raw=4.5"),
    )
    assert returncode == 0
    assert key in out and '"value_raw": 4.5' in out


def test_wire_text_is_printed_as_plain_text_by_every_tool() -> None:
    """Names and messages from the wire: no markup, no emoji codes, control characters escaped
    (dl-agent's dump, dragonfly's line, dl-mon's line)."""
    from rich.console import Console

    from insectarium.cli import agent, dragonfly, mon
    from insectarium.dripline.message import Message

    hostile = "[/bold] :smile: \x1b[2J\u202e\n"
    request = Message.request("peaches", 1, reply_to="amq_x")
    reply = request.make_reply(304, f"bad {hostile}", {"v": hostile}, sender=hostile)
    reply.routing_key = f"amq_{hostile}"

    dump = agent.text_dump(reply)
    line = dragonfly.format_reply("peaches", [hostile], reply)
    console = Console(width=400, record=True, color_system=None, file=open(os.devnull, "w"))  # noqa: SIM115
    console.print(mon.describe_line(reply, "requests"), soft_wrap=True)
    shown = console.export_text()
    for text in (dump, line, shown):
        assert "\x1b" not in text and "\u202e" not in text, text
        assert "\\x1b[2J" in text
        assert "[/bold] :smile:" in text  # shown as typed, not interpreted
    assert len(dump.splitlines()) == 5  # no line break smuggled in
