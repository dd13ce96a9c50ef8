"""Request semantics and every return-code path, against services on a real broker."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from typing import Any

import pytest

from insectarium.dripline import (
    AlertConsumer,
    Endpoint,
    Entity,
    Interface,
    MsgOp,
    ReplyError,
    Service,
    ThrowReply,
)
from insectarium.dripline.message import Message
from insectarium.services.kv_store import KeyValueStore

from .runtime_support import answers, eventually, mesh_for, private_vhost, running, unique


class Thermometer(Endpoint):
    """A test endpoint with commands, attributes and failure modes."""

    def __init__(self, name: str, **kw: Any) -> None:
        super().__init__(name, **kw)
        self.units = "K"
        self.conditions: list[int] = []

    def on_get(self) -> float:
        return 4.2

    def add(self, a: float, b: float = 0, *, scale: float = 1) -> float:
        return (a + b) * scale

    async def slow_echo(self, value: Any, delay: float = 0.2) -> Any:
        await asyncio.sleep(delay)
        return value

    def explode(self) -> None:
        raise RuntimeError("boom")

    def refuse(self) -> None:
        raise ThrowReply("service_error_invalid_value", "refused on purpose", {"why": "test"})

    def on_set_condition(self, condition: int):
        self.conditions.append(condition)
        return None


@pytest.fixture
async def lab(mesh, auth):
    name = unique("svc")
    svc = Service(name, dripline_mesh=mesh, authentication=auth, heartbeat_interval_s=0)
    thermo = Thermometer(f"{name}_thermo")
    kv = KeyValueStore(f"{name}_kv", initial_value=0.75, calibration="2*{}", get_on_set=True)
    svc.add_endpoint(thermo)
    svc.add_endpoint(kv)
    async with running(svc):
        yield svc, thermo.name, kv.name


async def code_of(
    client: Interface, target: str, op: MsgOp, payload: Any = None, **kw: Any
) -> Message:
    return await client.request(target, op, payload if payload is not None else {}, **kw)


async def test_get_set_and_calibration(lab, client) -> None:
    _svc, _t, kv = lab
    assert await client.get(kv) == {"value_raw": 0.75, "value_cal": 1.5}
    assert await client.set(kv, 3) == {"value_raw": 3, "value_cal": 6}
    assert (await client.get(kv, specifier="calibration")) == {"values": ["2*{}"]}


async def test_attribute_set_by_specifier(lab, client) -> None:
    _svc, thermo, _kv = lab
    assert await client.set(thermo, "mK", specifier="units") is None
    assert await client.get(thermo, specifier="units") == {"values": ["mK"]}


async def test_cmd_with_values_and_keywords(lab, client) -> None:
    _svc, thermo, _kv = lab
    assert await client.cmd(thermo, "add", [1, 2], {"scale": 10}) == 30


@pytest.mark.parametrize(
    ("op", "specifier", "payload", "code"),
    [
        (MsgOp.SET, "", {}, 303),  # set without values
        (MsgOp.SET, "", [1, 2], 303),  # payload not an object
        (MsgOp.CMD, "add", {"values": ["a", "b", "c", "d"]}, 304),  # bad arguments
        (MsgOp.CMD, "add", {"values": [1], "nope": 2}, 304),  # unknown keyword
        (MsgOp.CMD, "", {}, 306),  # cmd without method
        (MsgOp.CMD, "no_such_method", {}, 306),
        (MsgOp.CMD, "handle_request", {}, 306),  # framework internals are not commands
        (MsgOp.CMD, "_private", {}, 306),
        (MsgOp.CMD, "on_set_condition", {"values": [10]}, 306),  # an overridden hook, not a cmd
        (MsgOp.GET, "no_such_attribute", {}, 310),
        (MsgOp.GET, "_lock_key", {}, 310),
        (MsgOp.SET, "name", {"values": ["x"]}, 310),  # protected attribute
        (MsgOp.CMD, "explode", {}, 999),
        (MsgOp.CMD, "refuse", {}, 304),
    ],
)
async def test_error_codes(lab, client, op, specifier, payload, code) -> None:
    _svc, thermo, _kv = lab
    reply = await client.request(thermo, op, payload, specifier=specifier)
    assert reply.return_code == code, reply.return_message
    assert reply.return_message


async def test_thrown_reply_carries_payload(lab, client) -> None:
    _svc, thermo, _kv = lab
    reply = await client.request(thermo, MsgOp.CMD, {}, specifier="refuse")
    assert reply.return_message == "refused on purpose"
    assert reply.payload == {"why": "test"}


async def test_unknown_operation_is_306(lab, client) -> None:
    _svc, thermo, _kv = lab
    reply = await client.request(thermo, 7, {})  # dl2's OP_SEND does not exist in dl3
    assert reply.return_code == 306


async def test_bad_lockout_key_is_308_even_for_get(lab, client) -> None:
    _svc, _t, kv = lab
    reply = await client.request(kv, MsgOp.GET, {}, lockout_key="not-a-uuid")
    assert reply.return_code == 308


async def test_lockout_cycle(lab, client) -> None:
    _svc, _t, kv = lab
    key = (await client.cmd(kv, "lock"))["key"]
    uuid.UUID(key)
    assert (await client.request(kv, MsgOp.SET, {"values": [1]})).return_code == 307
    assert (await client.request(kv, MsgOp.CMD, {}, specifier="lock")).return_code == 307
    assert (
        await client.request(kv, MsgOp.CMD, {}, specifier="lock", lockout_key=key)
    ).return_code == 200
    assert (await client.request(kv, MsgOp.GET, {})).return_code == 0  # get never needs the key
    status = await client.get(kv, specifier="is-locked")
    assert status["is_locked"] is True and status["tag"]["service_name"] == "unknown"
    assert (await client.request(kv, MsgOp.SET, {"values": [1]}, lockout_key=key)).return_code == 0
    assert (await client.request(kv, MsgOp.CMD, {}, specifier="unlock")).return_code == 200
    assert (await client.request(kv, MsgOp.CMD, {}, specifier="ping")).return_code == 0
    assert (
        await client.request(kv, MsgOp.CMD, {}, specifier="unlock", lockout_key=key)
    ).return_code == 0
    assert (await client.request(kv, MsgOp.CMD, {}, specifier="unlock")).return_code == 1
    await client.cmd(kv, "lock")
    assert (
        await client.request(kv, MsgOp.CMD, {"force": True}, specifier="unlock")
    ).return_code == 0
    assert await client.get(kv, specifier="is-locked") == {"is_locked": False}


async def test_lock_with_supplied_key(lab, client) -> None:
    _svc, _t, kv = lab
    key = str(uuid.uuid4())
    assert (await client.cmd(kv, "lock", lockout_key=key)) == {"key": key}
    await client.cmd(kv, "unlock", lockout_key=key)


async def test_ping_answers_with_sender_exe(lab, client) -> None:
    svc, thermo, _kv = lab
    reply = await client.request(thermo, MsgOp.CMD, {}, specifier="ping")
    assert reply.return_code == 0 and reply.return_message.startswith("Hello, ")
    assert reply.sender_service == svc.name


async def test_set_condition_reaches_children_and_validates(lab, client) -> None:
    svc, thermo, _kv = lab
    assert (
        await client.request(svc.name, MsgOp.CMD, {"values": [10]}, specifier="set_condition")
    ).return_code == 0
    assert svc.sync_children[thermo].conditions == [10]
    reply = await client.request(thermo, MsgOp.CMD, {"values": ["x"]}, specifier="set_condition")
    assert reply.return_code == 304


async def test_requests_are_handled_concurrently(lab, client) -> None:
    _svc, thermo, kv = lab
    slow = asyncio.create_task(client.cmd(thermo, "slow_echo", ["late"], {"delay": 1.0}))
    await asyncio.sleep(0.1)
    fast = await client.get(kv)  # must not wait for the slow command
    assert not slow.done()
    assert fast["value_raw"] == 0.75
    assert await slow == "late"


async def test_client_errors_unroutable_and_timeout(client) -> None:
    reply = await client.request(unique("nobody_home"), MsgOp.GET, {})
    assert reply.return_code == 403 and "NO_ROUTE" in reply.return_message
    with pytest.raises(ReplyError) as info:
        await client.get(unique("nobody_home"))
    assert info.value.return_code.value == 403


async def test_timeout_is_404(mesh, auth, client) -> None:
    name = unique("sleepy")
    svc = Service(name, dripline_mesh=mesh, authentication=auth, heartbeat_interval_s=0)
    svc.add_endpoint(Thermometer(f"{name}_t"))
    async with running(svc):
        reply = await client.request(
            f"{name}_t", MsgOp.CMD, {"values": [1, 2.0]}, specifier="slow_echo", timeout_s=0.3
        )
    assert reply.return_code == 404


async def test_broadcast_ping_reaches_two_services(mesh, auth, client) -> None:
    a = Service(unique("bcast_a"), dripline_mesh=mesh, authentication=auth, heartbeat_interval_s=0)
    b = Service(unique("bcast_b"), dripline_mesh=mesh, authentication=auth, heartbeat_interval_s=0)
    async with running(a), running(b):
        msg = Message.request("broadcast", MsgOp.CMD, {}, specifier="ping")
        replies = await client.send_request(msg, timeout_s=1.5, collect=True)
    senders = {r.sender_service for r in replies}
    assert {a.name, b.name} <= senders
    assert all(r.return_code == 0 for r in replies if r.sender_service in (a.name, b.name))


class Recorder(AlertConsumer):
    def __init__(self, name: str, **kw: Any) -> None:
        super().__init__(name, **kw)
        self.seen: list[tuple[dict, Any, str]] = []

    async def process_payload(self, payload, routing_data, timestamp) -> None:
        self.seen.append((routing_data, payload, timestamp))


async def test_alert_consumer_gets_sensor_values_and_heartbeats(mesh, auth, client) -> None:
    src = unique("alert_src")
    recorder = Recorder(
        unique("recorder"),
        alert_keys=["sensor_value.#", f"heartbeat.{src}"],
        alert_key_parser_re=r"(?P<kind>[a-z_]+)\.(?P<name>.+)",
        dripline_mesh=mesh,
        authentication=auth,
        heartbeat_interval_s=0,
    )
    service = Service(src, dripline_mesh=mesh, authentication=auth, heartbeat_interval_s=0.3)
    service.add_endpoint(
        KeyValueStore(f"{src}_p", initial_value=1, calibration="2*{}", log_interval=0.2)
    )
    service.add_endpoint(
        KeyValueStore(f"{src}_q", initial_value="a", get_on_set=True, log_on_set=True)
    )
    async with running(recorder), running(service):
        await client.set(f"{src}_q", "b")
        await eventually(
            lambda: {r[0]["name"] for r in recorder.seen} >= {src, f"{src}_p", f"{src}_q"}
        )
    by_name = {r[0]["name"]: r for r in recorder.seen}
    assert by_name[f"{src}_p"][1] == {"value_raw": 1, "value_cal": 2}
    assert by_name[f"{src}_q"][1] == {"value_raw": "b"}
    assert by_name[src][1] == {"name": src, "id": service.instance_id}


async def test_scheduled_logging_honours_change_thresholds(mesh, auth, client) -> None:
    src = unique("thresh")
    recorder = Recorder(
        unique("rec"),
        alert_keys=[f"sensor_value.{src}_v"],
        dripline_mesh=mesh,
        authentication=auth,
        heartbeat_interval_s=0,
    )
    service = Service(src, dripline_mesh=mesh, authentication=auth, heartbeat_interval_s=0)
    service.add_endpoint(
        KeyValueStore(
            f"{src}_v",
            initial_value=10.0,
            log_interval=0.1,
            max_absolute_change=1.0,
            check_field="value_raw",
        )
    )
    async with running(recorder), running(service):
        await eventually(lambda: len(recorder.seen) >= 1)
        await asyncio.sleep(0.5)
        assert len(recorder.seen) == 1  # unchanged value: logged once
        await client.set(f"{src}_v", 10.5)
        await asyncio.sleep(0.4)
        assert len(recorder.seen) == 1  # change below threshold
        await client.set(f"{src}_v", 12.0)
        await eventually(lambda: len(recorder.seen) == 2)


async def test_log_interval_can_be_changed_at_run_time(mesh, auth, client) -> None:
    src = unique("retime")
    recorder = Recorder(
        unique("rec"),
        alert_keys=[f"sensor_value.{src}_v"],
        dripline_mesh=mesh,
        authentication=auth,
        heartbeat_interval_s=0,
    )
    service = Service(src, dripline_mesh=mesh, authentication=auth, heartbeat_interval_s=0)
    service.add_endpoint(KeyValueStore(f"{src}_v", initial_value=1, log_interval=0))
    async with running(recorder), running(service):
        await asyncio.sleep(0.3)
        assert recorder.seen == []
        await client.set(f"{src}_v", 0.1, specifier="log_interval")
        await eventually(lambda: len(recorder.seen) >= 3)
        assert await client.get(f"{src}_v", specifier="logging_status") == {"values": ["on"]}


async def test_entity_without_calibration_still_logs(mesh, auth) -> None:
    """dripline-python's default check_field (value_cal) never logs an uncalibrated entity."""
    src = unique("nocal")
    recorder = Recorder(
        unique("rec"),
        alert_keys=[f"sensor_value.{src}_v"],
        dripline_mesh=mesh,
        authentication=auth,
        heartbeat_interval_s=0,
    )
    service = Service(src, dripline_mesh=mesh, authentication=auth, heartbeat_interval_s=0)
    service.add_endpoint(
        KeyValueStore(f"{src}_v", initial_value=5, log_interval=0.1, max_absolute_change=0.5)
    )
    async with running(recorder), running(service):
        await eventually(lambda: len(recorder.seen) >= 1)


async def test_calibration_failure_is_304(mesh, auth, client) -> None:
    name = unique("badcal")
    svc = Service(name, dripline_mesh=mesh, authentication=auth, heartbeat_interval_s=0)
    svc.add_endpoint(KeyValueStore(f"{name}_v", initial_value="gouda", calibration="2*{}"))
    svc.add_endpoint(
        KeyValueStore(f"{name}_d", initial_value=1, calibration={"1": "on", "0": "off"})
    )
    async with running(svc):
        assert (await client.request(f"{name}_v", MsgOp.GET, {})).return_code == 304
        assert await client.get(f"{name}_d") == {"value_raw": 1, "value_cal": "on"}
        # a value the calibration cannot handle is refused and NOT stored (dripline-python
        # stores it and then fails every get)
        refused = await client.request(f"{name}_d", MsgOp.SET, {"values": [7]})
        assert refused.return_code == 304 and "not in calibration dict" in refused.return_message
        assert await client.get(f"{name}_d") == {"value_raw": 1, "value_cal": "on"}
        refused = await client.request(f"{name}_d", MsgOp.CMD, {"values": [7]}, specifier="on_set")
        assert refused.return_code == 304
        assert await client.get(f"{name}_d") == {"value_raw": 1, "value_cal": "on"}


async def test_service_level_get_and_entity_alert_payload_json(lab, client) -> None:
    svc, _t, _kv = lab
    reply = await client.request(svc.name, MsgOp.GET, {})
    assert reply.return_code == 306  # a bare service does not implement on_get
    assert json.dumps(reply.to_dict())


async def test_endpoint_added_to_a_running_service_is_reachable(lab, client) -> None:
    svc, _t, _kv = lab
    name = f"{svc.name}_late"
    svc.add_endpoint(KeyValueStore(name, initial_value="late"))
    reply = None
    for _ in range(50):
        reply = await client.request(name, MsgOp.GET, {})
        if reply.return_code == 0:
            break
        await asyncio.sleep(0.05)
    assert reply is not None and reply.payload == {"value_raw": "late"}


def test_entity_rejects_bad_interval() -> None:
    with pytest.raises(ValueError, match="log_interval"):
        Entity("x", log_interval=-1)
    assert Entity("y", log_interval={"minutes": 1}).log_interval == 60


async def test_interop_forms_of_the_reference(mesh, auth, client) -> None:
    """Where dripline-python 5.1.1 is not at fault we answer as it does:
    ``get <entity> -s log_interval`` replies its timedelta as text, ``cmd <entity> -s on_set V``
    goes through the decorated on_set (get_on_set, log_on_set) and replies with the value set."""
    name = unique("interop")
    svc = Service(name, dripline_mesh=mesh, authentication=auth, heartbeat_interval_s=0)
    peaches = KeyValueStore(
        f"{name}_peaches",
        initial_value=0.75,
        calibration="2*{}",
        log_interval=10,
        get_on_set=True,
        log_on_set=True,
    )
    plain = KeyValueStore(f"{name}_plain", initial_value=1, log_interval={"minutes": 1.5})
    svc.add_endpoint(peaches)
    svc.add_endpoint(plain)
    recorder = Recorder(
        unique("rec"),
        alert_keys=[f"sensor_value.{peaches.name}"],
        dripline_mesh=mesh,
        authentication=auth,
        heartbeat_interval_s=0,
    )
    async with running(recorder), running(svc):
        assert await client.get(peaches.name, "log_interval") == {"values": ["0:00:10"]}
        assert await client.get(plain.name, "log_interval") == {"values": ["0:01:30"]}
        assert await client.cmd(peaches.name, "on_set", [0.9]) == {
            "value_raw": 0.9,
            "value_cal": 1.8,
        }
        assert await client.cmd(plain.name, "on_set", ["x"]) is None  # no get_on_set: null
        assert await client.get(plain.name) == {"value_raw": "x"}
        await eventually(
            lambda: any(p == {"value_raw": 0.9, "value_cal": 1.8} for _r, p, _t in recorder.seen)
        )
        bad = await client.request(peaches.name, MsgOp.CMD, {"values": [1, 2]}, specifier="on_set")
        assert bad.return_code == 304


async def test_multi_chunk_warning_is_one_accurate_line_per_process(
    mesh, auth, client, caplog: pytest.LogCaptureFixture
) -> None:
    from insectarium.dripline import connection

    name = unique("chunky")
    svc = Service(name, dripline_mesh=mesh, authentication=auth, heartbeat_interval_s=0)
    svc.add_endpoint(KeyValueStore(f"{name}_v", initial_value=1))
    connection._multi_chunk_warned = False
    caplog.set_level(logging.WARNING, logger="insectarium.dripline.connection")
    async with running(svc):
        await svc.send_alert(f"status_message.{name}.notice", "x" * 25_000)  # an alert, split
        await client.set(f"{name}_v", "y" * 25_000)  # a request, split
        await client.set(f"{name}_v", "z" * 25_000)
    lines = [r.getMessage() for r in caplog.records if "chunks" in r.getMessage()]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"alert status_message.{name}.notice goes out in 3 chunks")
    assert "dl-mon on requests and alerts" in lines[0] and "once per process" in lines[0]


async def test_a_service_serves_on_after_the_broker_closed_its_channel(
    mesh: Any, auth: Any, client: Interface
) -> None:
    """A channel error (e.g. a reply the broker refuses) makes the broker close the channel
    the service consumes on; it is reopened, and the request consumer with it."""
    name = unique("reopen")
    service = Service(name, dripline_mesh=mesh, authentication=auth)
    service.add_endpoint(KeyValueStore(f"{name}_v", initial_value=7))
    async with running(service):
        assert (await client.get(f"{name}_v"))["value_raw"] == 7
        assert service.connection is not None and service.connection.channel is not None
        underlay = await service.connection.channel.get_underlay_channel()
        # publishing to an exchange that does not exist: the broker closes the channel (404)
        await underlay.basic_publish(b"{}", exchange=unique("no_such_exchange"), routing_key="k")

        await eventually(lambda: answers(client, f"{name}_v", 7), timeout=20, interval=0.2)
        assert underlay.is_closed  # it really was another channel that answered


async def test_a_service_and_a_client_consume_again_after_their_queues_were_deleted(
    mesh: Any, auth: Any, rabbitmq_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Someone deletes a service's request queue and a client's reply queue (``rabbitmqctl
    delete_queue``, the management UI, a policy): the broker cancels both consumers; the
    queues are declared and bound again, consumed anew, and requests get answers again."""
    name = unique("deleted")
    service = Service(name, dripline_mesh=mesh, authentication=auth, heartbeat_interval_s=0)
    service.add_endpoint(KeyValueStore(f"{name}_v", initial_value=7))

    def queues() -> set[str]:
        listed = rabbitmq_server.ctl("list_queues", "-p", mesh.vhost, "--quiet", "name")
        return {line.strip() for line in listed.splitlines()[1:] if line.strip()}

    async with running(service):
        before = queues()
        async with Interface(dripline_mesh=mesh, authentication=auth, timeout_s=2) as dl:
            assert await answers(dl, f"{name}_v", 7)
            (reply_queue,) = {q for q in queues() - before if q.startswith("amq_")}
            assert name in before
            with caplog.at_level(logging.WARNING, logger="insectarium.dripline.connection"):
                rabbitmq_server.ctl("delete_queue", "-p", mesh.vhost, name)
                rabbitmq_server.ctl("delete_queue", "-p", mesh.vhost, reply_queue)
                assert not {name, reply_queue} & queues()
                await eventually(lambda: answers(dl, f"{name}_v", 7), timeout=20, interval=0.2)
            assert {name, reply_queue} <= queues()
            again = [r.getMessage() for r in caplog.records if "again" in r.getMessage()]
            assert f"consuming {name} again" in again and f"consuming {reply_queue} again" in again


async def test_services_and_clients_bind_again_after_an_exchange_was_deleted(
    amqp_url: str,
    auth: Any,
    rabbitmq_server: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Any account that declares the exchanges may delete them (dripline peers declare them):
    every binding to ``requests`` goes, and the broker tells nobody.  Services and clients
    bind their queues again every ``rebind_interval_s``."""
    import aio_pika

    from insectarium.dripline.connection import Connection

    monkeypatch.setattr(Connection, "rebind_interval_s", 0.3)
    with private_vhost(rabbitmq_server, amqp_url) as vhost:
        mesh = mesh_for(amqp_url).model_copy(update={"vhost": vhost})
        name = unique("rebound")
        service = Service(name, dripline_mesh=mesh, authentication=auth, heartbeat_interval_s=0)
        service.add_endpoint(KeyValueStore(f"{name}_v", initial_value=7))
        async with (
            running(service),
            Interface(dripline_mesh=mesh, authentication=auth, timeout_s=1) as dl,
        ):
            assert (await dl.get(f"{name}_v"))["value_raw"] == 7
            admin = await aio_pika.connect(amqp_url.rstrip("/") + "/" + vhost.replace("/", "%2F"))
            async with admin:
                channel = await admin.channel()
                await channel.exchange_delete(mesh.requests_exchange)
                await eventually(lambda: answers(dl, f"{name}_v", 7), timeout=20, interval=0.2)


async def test_a_message_of_many_windows_of_chunks_arrives_whole(mesh: Any, auth: Any) -> None:
    """A request of more chunks than are confirmed together (``CHUNKS_IN_FLIGHT``) goes out in
    windows, mandatory and confirmed, and the reply (not confirmed) as well: both arrive whole."""
    from insectarium.dripline.limits import CHUNKS_IN_FLIGHT

    small = mesh.model_copy(update={"max_payload_size": 1000})
    name = unique("windows")
    svc = Service(name, dripline_mesh=small, authentication=auth, heartbeat_interval_s=0)
    svc.add_endpoint(KeyValueStore(f"{name}_v", initial_value=0))
    value = "".join(f"{i:07d}" for i in range(int(CHUNKS_IN_FLIGHT * 2.5 * 1000 / 7)))
    async with (
        running(svc),
        Interface(dripline_mesh=small, authentication=auth, timeout_s=30) as dl,
    ):
        await dl.set(f"{name}_v", value)
        assert (await dl.get(f"{name}_v"))["value_raw"] == value
