"""No value lost across a broker restart or crash, and outages reported in a few lines.

These tests stop, start and ``kill -9`` the private test broker, so they are skipped when the
suite runs against an external one (INSECTARIUM_TEST_AMQP_URL).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import logging
import os
import uuid
from typing import Any

import psycopg
import pytest

from insectarium.dripline import Message, Service
from insectarium.dripline.connection import Connection
from insectarium.services.kv_store import KeyValueStore
from insectarium.services.sensor_logger import SensorLogger

from .runtime_support import auth_for, eventually, mesh_for, running, unique
from .test_sensor_logger import make_logger, register

pytestmark = pytest.mark.slow


@pytest.fixture
def broker(request: pytest.FixtureRequest) -> Any:
    if os.environ.get("INSECTARIUM_TEST_AMQP_URL"):
        pytest.skip("needs the private test broker, which these tests restart and kill")
    return request.getfixturevalue("rabbitmq_server")


def stored(dsn: str, name: str) -> list[dt.datetime]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            'SELECT d."timestamp" FROM endpoint_numeric_data d JOIN endpoint_id_map m '
            'USING (endpoint_id) WHERE m.endpoint_name = %s ORDER BY d."timestamp"',
            (name,),
        ).fetchall()
    return [r[0] for r in rows]


def queue_depth(broker: Any, queue: str) -> int:
    """Messages in ``queue`` as the broker reports them (0 if it does not list it yet)."""
    for line in broker.ctl("list_queues", "-q", "name", "messages").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == queue:
            return int(parts[1])
    return 0


def queue_type(broker: Any, queue: str) -> str:
    for line in broker.ctl("list_queues", "-q", "name", "type").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == queue:
            return parts[1]
    return ""


async def test_queued_values_survive_a_broker_kill(
    broker: Any, lab_database: str, amqp_url: str
) -> None:
    """1 000 values waiting for a stopped logger, broker killed: 1 000 stored, 0 duplicates."""
    name = f"kill9_{uuid.uuid4().hex[:6]}"
    register(lab_database, **{name: "numeric"})
    queue = unique("sc_db_alerts")
    first = make_logger(lab_database, amqp_url, alert_queue_name=queue, alert_queue_durable=True)
    async with running(first):
        pass  # declares and binds the (quorum) queue, then goes away
    assert await asyncio.to_thread(queue_type, broker, queue) == "quorum"

    # transient messages, as dripline-cpp services publish their values
    publisher = Connection(mesh_for(amqp_url), auth_for(amqp_url).dripline, name="publisher")
    await publisher.connect()
    start = dt.datetime(2026, 3, 4, 5, 6, 7)
    for i in range(1000):
        msg = Message.alert(f"sensor_value.{name}", {"value_raw": i}, sender="test")
        msg.timestamp = (start + dt.timedelta(seconds=i)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        await publisher.publish(msg, confirm=True)
    await publisher.close()
    # (the broker's queue statistics lag a little behind)
    await eventually(
        lambda: asyncio.to_thread(lambda: queue_depth(broker, queue) == 1000),
        timeout=30,
        interval=0.5,
    )

    await asyncio.to_thread(broker.kill)
    await asyncio.to_thread(broker.start)

    second = make_logger(lab_database, amqp_url, alert_queue_name=queue, alert_queue_durable=True)
    async with running(second):
        await eventually(lambda: second.stored >= 1000, timeout=60)
        await asyncio.sleep(0.5)  # anything more (a redelivery) would show now
    times = stored(lab_database, name)
    assert len(times) == 1000 and len(set(times)) == 1000
    assert second.stored == 1000 and second.duplicates == 0


def ticking_service(
    dsn: str, amqp_url: str, prefix: str, interval: float, heartbeat_s: float
) -> tuple[str, SensorLogger, Service]:
    """A logger on its own durable queue and a service whose one endpoint (registered in the
    database) logs a value every ``interval`` seconds: (endpoint name, logger, service)."""
    source = unique(prefix)
    name = f"{source}_v"
    register(dsn, **{name: "numeric"})
    logger: SensorLogger = make_logger(
        dsn, amqp_url, alert_queue_name=unique("sc_db_alerts"), alert_queue_durable=True
    )
    service = Service(
        source,
        dripline_mesh=mesh_for(amqp_url),
        authentication=auth_for(amqp_url),
        heartbeat_interval_s=heartbeat_s,
    )
    service.add_endpoint(KeyValueStore(name, initial_value=1.5, log_interval=interval))
    return name, logger, service


async def test_a_broker_restart_during_scheduled_logging_loses_no_value(
    broker: Any, lab_database: str, amqp_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Values logged every 0.4 s while the broker is stopped for ~4 s: none missing."""
    caplog.set_level(logging.INFO)
    interval = 0.4
    name, logger, service = ticking_service(lab_database, amqp_url, "ticker", interval, 1)
    async with running(logger):
        async with running(service):
            await asyncio.sleep(2)
            await asyncio.to_thread(broker.stop)
            await asyncio.sleep(4)
            await asyncio.to_thread(broker.start)
            await eventually(service.connection.connected.is_set, timeout=60)
            await eventually(logger.connection.connected.is_set, timeout=60)
            await asyncio.sleep(3)
            entity = service.sync_children[name]
            assert entity._last_log_time is not None
        produced = service._outbox  # empty once everything went out
        assert not produced
        await asyncio.sleep(1)
    times = stored(lab_database, name)
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(times)]
    # ~9 s of ticks (the broker's own restart takes a few seconds on top of the 4 s)
    assert len(times) >= 9 / interval
    assert max(gaps) < 2 * interval, f"a scheduled value is missing: gaps {sorted(gaps)[-3:]}"
    text = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("insectarium"))
    assert "keeping alerts until they can be delivered" in text
    assert "published" in text and "kept alert(s)" in text


async def test_scheduled_logging_keeps_its_ticks_while_the_broker_holds_publishes(
    broker: Any, lab_database: str, amqp_url: str
) -> None:
    """A memory alarm makes the broker stop reading from publishers (as a broker that shuts down
    holds confirms): the values are still taken every tick and all arrive once it clears."""
    interval = 0.25
    name, logger, service = ticking_service(lab_database, amqp_url, "held", interval, 0)
    async with running(logger), running(service):
        await asyncio.sleep(1)
        await asyncio.to_thread(broker.ctl, "set_vm_memory_high_watermark", "0")  # alarm on
        try:
            await asyncio.sleep(3)
        finally:
            await asyncio.to_thread(broker.ctl, "set_vm_memory_high_watermark", "0.8")
        await eventually(lambda: len(stored(lab_database, name)) >= 6.5 / interval, timeout=30)
    times = stored(lab_database, name)
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(times)]
    assert max(gaps) < 2 * interval, (
        f"ticks were skipped while publishes waited: {sorted(gaps)[-3:]}"
    )


async def test_an_outage_is_reported_in_a_few_lines(
    broker: Any, amqp_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """One line when the broker goes, reminders while it stays away, one when it is back."""
    caplog.set_level(logging.DEBUG)
    service = Service(
        unique("quiet"),
        dripline_mesh=mesh_for(amqp_url),
        authentication=auth_for(amqp_url),
        heartbeat_interval_s=0.5,
    )
    service.add_endpoint(KeyValueStore(f"{service.name}_v", initial_value=1, log_interval=0.5))
    async with running(service):
        assert service.connection is not None
        service.connection.reminder_interval = 2.0
        await asyncio.to_thread(broker.stop)
        await asyncio.sleep(7)
        await asyncio.to_thread(broker.start)
        await eventually(service.connection.connected.is_set, timeout=60)
        await asyncio.sleep(1)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    text = [r.getMessage() for r in warnings if r.name.startswith("insectarium")]
    lost = [r for r in warnings if "lost connection to broker" in r.getMessage()]
    back = [r for r in warnings if "reconnected to broker" in r.getMessage()]
    assert len(lost) == 1 and len(back) == 1
    away = back[0].created - lost[0].created  # the broker's own start adds to the 7 s
    reminders = sum("still no connection to broker" in t for t in text)
    assert 2 <= reminders <= away / 2.0 + 1
    # aio-pika's and aiormq's per-attempt lines are folded into ours
    chatter = [r for r in warnings if r.name.startswith(("aio_pika", "aiormq"))]
    assert not chatter, [(r.name, r.msg) for r in chatter]
    assert not any("scheduled logging paused" in t or "heartbeats paused" in t for t in text)
    # the whole outage in a handful of lines besides the reminders (a page per attempt before)
    assert len(warnings) - reminders <= 5, text


async def test_requests_and_replies_flow_again_after_a_broker_restart(
    broker: Any, amqp_url: str
) -> None:
    """The service's request consumer and both reply consumers (a client of its own and the
    service's internal one) are consumed again on the restored channels after an outage."""
    from insectarium.dripline import Interface

    service = Service(
        unique("again"), dripline_mesh=mesh_for(amqp_url), authentication=auth_for(amqp_url)
    )
    name = f"{service.name}_v"
    service.add_endpoint(KeyValueStore(name, initial_value=2.5))
    client = Interface(
        dripline_mesh=mesh_for(amqp_url), authentication=auth_for(amqp_url), timeout_s=2
    )
    async with running(service), client:
        assert (await client.get(name))["value_raw"] == 2.5
        assert (await service.get(name))["value_raw"] == 2.5
        await asyncio.to_thread(broker.stop)
        await asyncio.sleep(1)
        await asyncio.to_thread(broker.start)
        await eventually(service.connection.connected.is_set, timeout=60)
        await eventually(client.connection.connected.is_set, timeout=60)

        async def answered(via: Any) -> bool:
            try:
                return (await via.get(name, timeout_s=1))["value_raw"] == 2.5
            except Exception:
                return False

        await eventually(lambda: answered(client), timeout=30, interval=0.5)
        await eventually(lambda: answered(service), timeout=30, interval=0.5)
        replies = await asyncio.gather(*(client.get(name) for _ in range(20)))
        assert [r["value_raw"] for r in replies] == [2.5] * 20
