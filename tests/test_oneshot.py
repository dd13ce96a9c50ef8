"""The one-shot blocking client (dl-agent, dragonfly) against real services on a real broker:
the same answers as :class:`Interface`, chunked replies within the size limits, 403/404, one-line
broker failures, and no async stack or pydantic loaded for a plain call."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from insectarium.dripline import Endpoint, MsgOp, Service
from insectarium.dripline.config import Authentication, MeshConfig, load_mesh
from insectarium.dripline.config_files import ConfigError
from insectarium.dripline.errors import BrokerUnavailable
from insectarium.dripline.message import Message
from insectarium.dripline.oneshot import OneShotClient
from insectarium.dripline.quick_mesh import QuickMesh, load_mesh_quick, quick_mesh

from .runtime_support import REPO, running, unique


class Big(Endpoint):
    """Answers with as many bytes as asked (a long snapshot, a config dump)."""

    def on_get(self) -> dict[str, Any]:
        return {"n": 3}

    def blob(self, size: int) -> str:
        return "x" * int(size)

    def add(self, a: float, b: float = 0, *, scale: float = 1) -> float:
        return (a + b) * scale

    def on_set(self, value: Any) -> Any:
        return {"stored": value}


@pytest.fixture
async def big(mesh: MeshConfig, auth: Authentication):
    name = unique("oneshot")
    svc = Service(name, dripline_mesh=mesh, authentication=auth, heartbeat_interval_s=0)
    svc.add_endpoint(Big(f"{name}_big"))
    async with running(svc):
        yield f"{name}_big"


def call(mesh: Any, auth: Authentication, msg: Message, **kw: Any) -> list[Message]:
    with OneShotClient(mesh, auth.dripline, timeout_s=kw.pop("timeout_s", 5)) as client:
        return client.send_request(msg, **kw)


async def test_get_set_cmd_answer_as_the_async_client(big, mesh, auth, client) -> None:
    for op, payload, spec in (
        (MsgOp.GET, {}, ""),
        (MsgOp.SET, {"values": [7]}, ""),
        (MsgOp.CMD, {"values": [1, 2], "scale": 3}, "add"),
    ):
        ours = await asyncio.to_thread(
            call, mesh, auth, Message.request(big, op, payload, specifier=spec)
        )
        theirs = await client.request(big, op, payload, specifier=spec)
        assert len(ours) == 1
        assert (ours[0].return_code, ours[0].payload) == (theirs.return_code, theirs.payload)
        assert ours[0].return_code == 0, ours[0].return_message
    assert ours[0].payload == 9


async def test_chunked_reply_is_reassembled(big, mesh, auth) -> None:
    size = 5 * mesh.max_payload_size + 123  # six chunks
    msg = Message.request(big, MsgOp.CMD, {"values": [size]}, specifier="blob")
    (reply,) = await asyncio.to_thread(call, mesh, auth, msg)
    assert reply.is_valid, reply.error
    assert reply.payload == "x" * size


async def test_reply_above_max_message_size_is_refused_invalid(big, mesh, auth) -> None:
    small = mesh.model_copy(update={"max_message_size": 3 * mesh.max_payload_size})
    size = 5 * mesh.max_payload_size
    msg = Message.request(big, MsgOp.CMD, {"values": [size]}, specifier="blob")
    (reply,) = await asyncio.to_thread(call, small, auth, msg)
    assert not reply.is_valid
    assert "chunks" in reply.error and str(small.max_message_size) in reply.error
    assert len(str(reply.payload)) < 2 * 4096  # only the start is echoed, never the body


async def test_unroutable_is_403_and_silence_is_404(mesh, auth, amqp_url) -> None:
    msg = Message.request(unique("nobody"), MsgOp.GET, {})
    (reply,) = await asyncio.to_thread(call, mesh, auth, msg)
    assert reply.return_code == 403 and "NO_ROUTE" in reply.return_message

    # a queue that takes the request and never answers
    import aio_pika

    name = unique("silent")
    conn = await aio_pika.connect(amqp_url)
    try:
        ch = await conn.channel()
        q = await ch.declare_queue(name, exclusive=True, auto_delete=True)
        await q.bind(mesh.requests_exchange, routing_key=name)
        msg = Message.request(name, MsgOp.GET, {})
        (reply,) = await asyncio.to_thread(call, mesh, auth, msg, timeout_s=0.5)
        assert reply.return_code == 404 and "Timed out after 0.5 s" in reply.return_message
        assert reply.correlation_id == msg.correlation_id
    finally:
        await conn.close()


def test_unreachable_broker_and_bad_credentials_are_one_line(mesh, auth) -> None:
    from insectarium.testing.servers import free_port

    nowhere = mesh.model_copy(update={"broker_port": free_port(), "max_connection_attempts": 2})
    with pytest.raises(BrokerUnavailable, match=r"cannot reach broker .*Connection refused"):
        OneShotClient(nowhere, auth.dripline, timeout_s=2).connect()
    wrong = Authentication(groups={"dripline": {"username": "nobody", "password": "wrong"}})
    with pytest.raises(BrokerUnavailable, match="refused the credentials of user 'nobody'") as e:
        OneShotClient(mesh, wrong.dripline, timeout_s=5).connect()
    assert "wrong" not in str(e.value)


def test_agent_loads_neither_the_async_stack_nor_pydantic(tmp_path: Path) -> None:
    """What makes dl-agent start in a blink: checked on the modules, not on a clock."""
    code = (
        "import sys\n"
        "from insectarium.cli import agent\n"
        "agent.main(['-b', 'localhost', '--dry-run-msg', 'get', 'peaches'])\n"
        "heavy = {'asyncio', 'aio_pika', 'aiormq', 'pydantic', 'rich', 'yaml'} & set(sys.modules)\n"
        "print('HEAVY', sorted(heavy))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
        env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )
    assert "HEAVY []" in out.stdout, out.stdout + out.stderr


# --------------------------------------------------------------------------- quick mesh
GOOD = [
    {},
    {"broker": "rabbit-broker", "broker_port": 5673, "vhost": "/lab"},
    {"requests_exchange": "rq", "alerts_exchange": "al", "heartbeat_routing_key": "hb"},
    {"max_payload_size": 100, "max_message_size": 1000, "max_connection_attempts": 0},
    {"tls": True},
    {"tls": True, "broker_port": 5999},
    {"tls": False, "tls_ca_file": None, "tls_cert_file": ""},
]
DEFERRED = [
    {"broker": "amqps://rabbit-broker:5999"},  # valid, but the full validator parses URLs
    {"broker_port": "5672"},  # valid after coercion
    {"broker_port": 0},
    {"broker_port": 70000},
    {"max_payload_size": 0},
    {"max_connection_attempts": -1},
    {"max_payload_size": True},
    {"tls": "yes"},
    {"brokr": "x"},
    {"return_codes": []},
    {"tls_ca_file": "/no/such/ca.pem"},
    {"broker": 5},
]


@pytest.mark.parametrize("layer", GOOD)
def test_quick_mesh_equals_the_full_validator(layer: dict[str, Any]) -> None:
    fast = quick_mesh(layer)
    assert isinstance(fast, QuickMesh)
    full = MeshConfig.model_validate(layer)
    for name in QuickMesh.__dataclass_fields__:
        assert getattr(fast, name) == getattr(full, name), name
    assert fast.url_for_humans == full.url_for_humans


@pytest.mark.parametrize("layer", DEFERRED)
def test_quick_mesh_leaves_anything_else_to_the_full_validator(layer, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert quick_mesh(layer) is None
    try:
        full = load_mesh(layer, source="agent.yaml")
    except ConfigError as exc:
        with pytest.raises(ConfigError) as quick_exc:
            load_mesh_quick(layer, source="agent.yaml")
        assert str(quick_exc.value) == str(exc)  # the same message, naming file and key
    else:
        assert load_mesh_quick(layer, source="agent.yaml") == full


def test_quick_mesh_reads_the_home_file_and_tls_files(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    ca = tmp_path / "ca.pem"
    ca.write_text("not read here")
    (tmp_path / ".dripline_mesh.yaml").write_text(
        f"dripline_mesh:\n  broker: rabbit-broker\n  tls: true\n  tls_ca_file: {ca}\n"
    )
    fast = load_mesh_quick({"vhost": "/x"})
    assert isinstance(fast, QuickMesh)
    assert (fast.broker, fast.broker_port, fast.vhost, fast.tls_ca_file) == (
        "rabbit-broker",
        5671,
        "/x",
        str(ca),
    )
    assert fast == QuickMesh(**load_mesh({"vhost": "/x"}).model_dump(include=set(fast.__dict__)))
