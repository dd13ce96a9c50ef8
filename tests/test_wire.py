"""What we put on the wire, read back by an independent raw AMQP client (real RabbitMQ).

These are the interoperability musts of dripline-3-wire.md: property values, ``message-id``
shape, header field *types* (unsigned 32-bit ``'i'``, nested ``'F'`` sender_info), chunking, and
replies to requests that did not come from our own client.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import Iterator

import pytest

from insectarium.dripline import Entity, Interface, Service
from insectarium.dripline.constants import NIL_UUID
from insectarium.dripline.message import UInt32, sender_info
from insectarium.dripline.service import ServiceAlreadyRunning
from insectarium.services.kv_store import KeyValueStore

from .rawamqp import RawClient
from .runtime_support import auth_for, mesh_for, running, unique

UUID_RE = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
TS_RE = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z"


@pytest.fixture
def raw(amqp_url: str) -> Iterator[RawClient]:
    client = RawClient(amqp_url)
    yield client
    client.close()


def dl_headers(operation: int, specifier: str = "", lockout_key: str = NIL_UUID) -> dict:
    """Headers as dripline-cpp's dl-agent writes them."""
    return {
        "message_type": UInt32(3),
        "message_operation": UInt32(operation),
        "lockout_key": lockout_key,
        "specifier": specifier,
        "timestamp": "2026-01-01T00:00:00.000000Z",
        "sender_info": sender_info("unknown"),
    }


def raw_request(
    raw: RawClient,
    reply_queue: str,
    routing_key: str,
    body: bytes,
    *,
    operation: int = 1,
    specifier: str = "",
    message_id: str | None = None,
    headers: dict | None = None,
    encoding: str = "application/json",
) -> str:
    correlation = str(uuid.uuid4())
    raw.publish(
        "requests",
        routing_key,
        body,
        content_encoding=encoding,
        correlation_id=correlation,
        reply_to=reply_queue,
        message_id=message_id or f"{uuid.uuid4()}/0/1",
        headers=headers if headers is not None else dl_headers(operation, specifier),
    )
    return correlation


async def test_request_from_interface_on_the_wire(raw: RawClient, amqp_url: str) -> None:
    target = unique("wire_target")
    queue = raw.declare_queue()
    raw.declare_exchange("requests")  # the test may be the first user of a fresh broker
    raw.bind(queue, "requests", f"{target}.#")
    raw.consume(queue)
    async with Interface(
        dripline_mesh=mesh_for(amqp_url), authentication=auth_for(amqp_url)
    ) as iface:
        reply = await iface.request(target, 1, {}, specifier="a.b", timeout_s=0.5)
        assert reply.return_code == 404  # our raw queue took it but never answered
        d = await asyncio.to_thread(raw.next_delivery, 5)
        reply_queue = iface._reply_queue.name
    assert d.exchange == "requests" and d.routing_key == target
    assert d.properties["content_encoding"] == "application/json"
    assert re.fullmatch(UUID_RE, d.properties["correlation_id"])
    assert re.fullmatch(UUID_RE + "/0/1", d.properties["message_id"])
    assert d.properties["reply_to"] == reply_queue
    assert "content_type" not in d.properties
    h = d.headers
    assert (h["message_type"].type, h["message_type"].value) == ("i", 3)
    assert (h["message_operation"].type, h["message_operation"].value) == ("i", 1)
    assert (h["lockout_key"].type, h["lockout_key"].value) == ("S", NIL_UUID)
    assert (h["specifier"].type, h["specifier"].value) == ("S", "a.b")
    assert re.fullmatch(TS_RE, h["timestamp"].value)
    info = h["sender_info"]
    assert info.type == "F"
    assert {k: f.type for k, f in info.value.items()} == {
        "exe": "S",
        "hostname": "S",
        "username": "S",
        "service_name": "S",
        "versions": "F",
    }
    assert info.value["versions"].value["dripline"].value["version"].value == "3.0.0"
    assert json.loads(d.body) == {}


async def test_reply_to_a_foreign_request_on_the_wire(raw: RawClient, mesh, auth) -> None:
    name = unique("wire_svc")
    svc = Service(name, dripline_mesh=mesh, authentication=auth, heartbeat_interval_s=0)
    svc.add_endpoint(KeyValueStore(f"{name}_peaches", initial_value=0.75, calibration="2*{}"))
    async with running(svc):
        reply_queue = raw.setup_reply_queue()
        corr = raw_request(raw, reply_queue, f"{name}_peaches.whatever", b"{}")
        d = await asyncio.to_thread(raw.next_delivery, 5)
    assert d.routing_key == reply_queue and d.exchange == "requests"
    assert d.properties["correlation_id"] == corr
    assert re.fullmatch(UUID_RE + "/0/1", d.properties["message_id"])
    h = d.headers
    assert (h["message_type"].type, h["message_type"].value) == ("i", 2)
    assert (h["return_code"].type, h["return_code"].value) == ("i", 0)
    assert h["return_message"].type == "S"
    assert h["specifier"].value == ""
    assert h["sender_info"].value["service_name"].value == name
    assert json.loads(d.body) == {"value_raw": 0.75, "value_cal": 1.5}


async def test_sensor_value_alert_on_the_wire(raw: RawClient, mesh, auth) -> None:
    name = unique("wire_alert")
    queue = raw.declare_queue()
    raw.declare_exchange("alerts")
    raw.bind(queue, "alerts", f"sensor_value.{name}_chips")
    raw.consume(queue)
    svc = Service(name, dripline_mesh=mesh, authentication=auth, heartbeat_interval_s=0)
    svc.add_endpoint(
        KeyValueStore(f"{name}_chips", initial_value=2, calibration="times3({})", log_interval=0.2)
    )
    async with running(svc):
        d = await asyncio.to_thread(raw.next_delivery, 5)
    assert d.exchange == "alerts" and d.routing_key == f"sensor_value.{name}_chips"
    assert (d.headers["message_type"].type, d.headers["message_type"].value) == ("i", 4)
    assert "return_code" not in d.headers and "message_operation" not in d.headers
    assert json.loads(d.body) == {"value_raw": 2, "value_cal": 6}


async def test_large_reply_is_chunked_and_large_request_reassembled(
    raw: RawClient, mesh, auth
) -> None:
    name = unique("wire_chunks")
    small_mesh = mesh.model_copy(update={"max_payload_size": 1000})
    svc = Service(name, dripline_mesh=small_mesh, authentication=auth, heartbeat_interval_s=0)
    svc.add_endpoint(KeyValueStore(f"{name}_big"))
    big = "x" * 2500
    async with running(svc):
        # a request arriving in three chunks (as dl-agent splits a big set)
        reply_queue = raw.setup_reply_queue()
        body = json.dumps({"values": [big]}).encode()
        uid = str(uuid.uuid4())
        corr = str(uuid.uuid4())
        headers = dl_headers(0)
        pieces = [body[i : i + 1000] for i in range(0, len(body), 1000)]
        for i, piece in enumerate(reversed(pieces)):  # out of order on purpose
            index = len(pieces) - 1 - i
            raw.publish(
                "requests",
                f"{name}_big",
                piece,
                content_encoding="application/json",
                correlation_id=corr,
                reply_to=reply_queue,
                message_id=f"{uid}/{index}/{len(pieces)}",
                headers=headers,
            )
        set_reply = await asyncio.to_thread(raw.next_delivery, 5)
        assert set_reply.headers["return_code"].value == 0
        # the get reply is bigger than max_payload_size: it comes back in chunks
        raw_request(raw, reply_queue, f"{name}_big", b"{}")
        chunks = [await asyncio.to_thread(raw.next_delivery, 5) for _ in range(3)]
    ids = [c.properties["message_id"].split("/") for c in chunks]
    assert len({i[0] for i in ids}) == 1
    assert sorted(int(i[1]) for i in ids) == [0, 1, 2] and {i[2] for i in ids} == {"3"}
    assert all(len(c.body) <= 1000 for c in chunks)
    joined = b"".join(c.body for c in sorted(chunks, key=lambda c: c.properties["message_id"]))
    assert json.loads(joined) == {"value_raw": big}


async def test_incomplete_chunked_request_gets_302(raw: RawClient, mesh, auth) -> None:
    name = unique("wire_partial")
    svc = Service(
        name, dripline_mesh=mesh, authentication=auth, heartbeat_interval_s=0, message_wait_ms=200
    )
    svc.add_endpoint(KeyValueStore(f"{name}_x"))
    async with running(svc):
        reply_queue = raw.setup_reply_queue()
        raw_request(
            raw,
            reply_queue,
            f"{name}_x",
            b'{"values": [',
            operation=0,
            message_id=f"{uuid.uuid4()}/0/2",
        )
        d = await asyncio.to_thread(raw.next_delivery, 5)
    assert d.headers["return_code"].value == 302
    payload = json.loads(d.body)
    assert payload["error"] == "Entire message was not available"
    assert payload["invalid"].startswith('{"values": [')


async def test_service_queue_and_bindings_as_dripline_declares_them(
    amqp_url: str, mesh, auth
) -> None:
    """A second process with the same service name is refused (exclusive queue)."""
    name = unique("wire_excl")
    first = Service(name, dripline_mesh=mesh, authentication=auth, heartbeat_interval_s=0)
    second = Service(name, dripline_mesh=mesh, authentication=auth, heartbeat_interval_s=0)
    async with running(first):
        with pytest.raises(ServiceAlreadyRunning, match="already serves"):
            await second.start()
        await second.stop()
        async with Interface(dripline_mesh=mesh, authentication=auth) as iface:
            assert (await iface.request(name, 9, {}, specifier="ping")).return_code == 0
            # the broadcast binding exists too
            assert (await iface.request("broadcast", 9, {}, specifier="ping")).return_code == 0


async def test_entity_subclass_and_heartbeat_on_the_wire(raw: RawClient, mesh, auth) -> None:
    name = unique("wire_hb")
    queue = raw.declare_queue()
    raw.declare_exchange("alerts")
    raw.bind(queue, "alerts", f"heartbeat.{name}")
    raw.consume(queue)
    svc = Service(name, dripline_mesh=mesh, authentication=auth, heartbeat_interval_s=0.2)
    svc.add_endpoint(Entity(f"{name}_e"))
    async with running(svc):
        d = await asyncio.to_thread(raw.next_delivery, 5)
        d2 = await asyncio.to_thread(raw.next_delivery, 5)
    assert json.loads(d.body) == {"name": name, "id": svc.instance_id}
    assert d.properties["message_id"] != d2.properties["message_id"]
