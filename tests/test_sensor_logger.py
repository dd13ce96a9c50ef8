"""not-sc_db (SensorLogger) against a real broker and a fresh lab database per test.

Endpoint names are unique per test (registered in endpoint_id_map by the test) so stray
``sensor_value.*`` alerts of other tests cannot change what is asserted.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import decimal
import json
import logging
import uuid
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from insectarium.dripline import Authentication, Message
from insectarium.dripline.connection import Connection
from insectarium.services.sensor_logger import SensorLogger

from .runtime_support import auth_for, eventually, mesh_for, private_vhost, running, unique

#: the logger's alert queue as the recovery tests run it: durable or exclusive, read by the pika
#: feed, and durable read by aio-pika
EVERY_QUEUE_KIND = pytest.mark.parametrize(
    ("durable", "client"),
    [(True, "pika"), (False, "pika"), (True, "aio-pika")],
    ids=["durable", "exclusive", "durable-aio-pika"],
)


def db_auth(dsn: str, amqp_url: str) -> tuple[Authentication, dict[str, Any]]:
    """Credentials (dripline + postgres groups) and the service-level database keys."""
    info = conninfo_to_dict(dsn)
    auth = auth_for(amqp_url)
    auth.groups["postgres"] = {
        "username": info.get("user") or "postgres",
        "password": info.get("password") or "postgres",
    }
    keys = {
        "database_server": info.get("host") or "localhost",
        "database_port": int(info.get("port") or 5432),
        "database_name": info["dbname"],
    }
    return auth, keys


def register(dsn: str, **types: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for name, kind in types.items():
            conn.execute(
                "INSERT INTO endpoint_id_map (endpoint_name, type) VALUES (%s, %s)", (name, kind)
            )


def rows(dsn: str, table: str, name: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(
            f'SELECT d.value_raw, d.value_cal, d."timestamp" FROM {table} d '
            "JOIN endpoint_id_map m USING (endpoint_id) WHERE m.endpoint_name = %s "
            'ORDER BY d."timestamp"',
            (name,),
        ).fetchall()


def make_logger(dsn: str, amqp_url: str, **kw: Any) -> SensorLogger:
    auth, keys = db_auth(dsn, amqp_url)
    return SensorLogger(
        unique("sc_db"),
        dripline_mesh=mesh_for(amqp_url),
        authentication=auth,
        heartbeat_interval_s=0,
        alert_queue_durable=kw.pop("alert_queue_durable", False),
        **keys,
        **kw,
    )


@pytest.fixture
async def publisher(amqp_url: str) -> Any:
    conn = Connection(mesh_for(amqp_url), auth_for(amqp_url).dripline, name="test-publisher")
    await conn.connect()

    async def publish(name: str, payload: Any, timestamp: str | None = None) -> None:
        msg = Message.alert(f"sensor_value.{name}", payload, sender="test")
        if timestamp is not None:
            msg.timestamp = timestamp
        await conn.publish(msg)

    yield publish
    await conn.close()


async def test_stores_mapped_values_by_type_and_drops_unmapped_once(
    lab_database: str, amqp_url: str, publisher: Any, caplog: pytest.LogCaptureFixture
) -> None:
    tag = uuid.uuid4().hex[:6]
    num, text, blob, donuts = f"num_{tag}", f"text_{tag}", f"blob_{tag}", f"donuts_{tag}"
    register(lab_database, **{num: "numeric", text: "string", blob: "json"})
    caplog.set_level(logging.INFO, logger="insectarium.services.sensor_logger")
    logger = make_logger(lab_database, amqp_url)
    async with running(logger):
        await publisher(num, {"value_raw": 1.5, "value_cal": 3.0}, "2026-01-02T03:04:05.000001Z")
        await publisher(num, {"value_raw": "2", "value_cal": None}, "2026-01-02T03:04:06.000000Z")
        await publisher(text, {"value_raw": "gouda"}, "2026-01-02T03:04:05.000001Z")
        await publisher(
            blob, {"value_raw": {"eggs": 2}, "value_cal": [1, 2]}, "2026-01-02T03:04:05.5Z"
        )
        for i in range(5):
            await publisher(donuts, {"value_raw": i})
        await eventually(lambda: logger.stored >= 4 and logger.dropped_unknown[donuts] == 5)
        status = logger.status()
    assert rows(lab_database, "endpoint_numeric_data", num) == [
        (1.5, 3.0, dt.datetime(2026, 1, 2, 3, 4, 5, 1)),
        (2.0, None, dt.datetime(2026, 1, 2, 3, 4, 6)),
    ]
    assert [r[:2] for r in rows(lab_database, "endpoint_string_data", text)] == [("gouda", None)]
    assert [r[:2] for r in rows(lab_database, "endpoint_json_data", blob)] == [
        ({"eggs": 2}, [1, 2])
    ]
    lines = [r.getMessage() for r in caplog.records if donuts in r.getMessage()]
    assert len(lines) == 1, lines
    assert "not in endpoint_id_map" in lines[0] and "50_lab_endpoints.sql" in lines[0]
    assert status["dropped_unknown"] == {donuts: 5}
    assert status["stored"] == 4


async def test_endpoint_added_later_is_stored_after_refresh(
    lab_database: str, amqp_url: str, publisher: Any, caplog: pytest.LogCaptureFixture
) -> None:
    late = f"late_{uuid.uuid4().hex[:6]}"
    caplog.set_level(logging.INFO, logger="insectarium.services.sensor_logger")
    logger = make_logger(lab_database, amqp_url)
    async with running(logger):
        await publisher(late, {"value_raw": 1})
        await eventually(lambda: logger.dropped_unknown[late] == 1)
        register(lab_database, **{late: "numeric"})
        assert (await logger.refresh_endpoint_map())["loaded"] is True
        await publisher(late, {"value_raw": 2})
        await eventually(lambda: logger.stored == 1)
    assert [r[0] for r in rows(lab_database, "endpoint_numeric_data", late)] == [2.0]
    assert any("now in endpoint_id_map" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("client", ["pika", "aio-pika"])
async def test_durable_queue_keeps_values_sent_while_stopped(
    lab_database: str, amqp_url: str, publisher: Any, client: str
) -> None:
    """Also: every value is acknowledged once stored, by its delivery tag alone, whichever
    client receives it (the deliveries themselves are not kept until the commit)."""
    name = f"kept_{uuid.uuid4().hex[:6]}"
    register(lab_database, **{name: "numeric"})
    queue = unique("sc_db_alerts")
    first = make_logger(lab_database, amqp_url, alert_queue_name=queue, alert_queue_durable=True)
    async with running(first):
        pass  # declares and binds the durable queue
    try:
        for i in range(50):
            await publisher(name, {"value_raw": i}, f"2026-01-02T03:04:{i:02d}.000000Z")
        second = make_logger(
            lab_database,
            amqp_url,
            alert_queue_name=queue,
            alert_queue_durable=True,
            alert_client=client,
        )
        async with running(second):
            await eventually(lambda: second.stored == 50)
        assert [r[0] for r in rows(lab_database, "endpoint_numeric_data", name)] == [
            float(i) for i in range(50)
        ]
    finally:
        conn = Connection(mesh_for(amqp_url), auth_for(amqp_url).dripline, name="cleanup")
        await conn.connect()
        assert conn.channel is not None
        left = await conn.channel.declare_queue(queue, passive=True)
        await conn.channel.queue_delete(queue)
        await conn.close()
    # every stored value was acknowledged before the logger went away: nothing is redelivered
    assert left.declaration_result.message_count == 0


@EVERY_QUEUE_KIND
async def test_the_logger_stores_again_after_its_queue_was_deleted(
    lab_database: str,
    amqp_url: str,
    publisher: Any,
    rabbitmq_server: Any,
    durable: bool,
    client: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Someone deletes the logger's alert queue (``rabbitmqctl delete_queue``, the management
    UI): the broker cancels the feed's consumer; the queue is declared and bound again and
    the values published from then on are stored."""
    name = f"requeued_{uuid.uuid4().hex[:6]}"
    register(lab_database, **{name: "numeric"})
    queue = unique("sc_db_alerts")
    logger = make_logger(
        lab_database,
        amqp_url,
        alert_queue_name=queue,
        alert_queue_durable=durable,
        alert_client=client,
    )
    vhost = mesh_for(amqp_url).vhost

    async def queue_exists() -> bool:  # rabbitmqctl takes a second: not on the loop
        listed = await asyncio.to_thread(
            rabbitmq_server.ctl, "list_queues", "-p", vhost, "--quiet", "name"
        )
        return queue in {line.strip() for line in listed.splitlines()}

    try:
        with caplog.at_level(logging.WARNING):
            async with running(logger):
                await publisher(name, {"value_raw": 1}, "2026-01-02T03:04:01.000000Z")
                await eventually(lambda: logger.stored == 1)
                await asyncio.to_thread(rabbitmq_server.ctl, "delete_queue", "-p", vhost, queue)
                await eventually(queue_exists, timeout=20)

                async def stored_again() -> bool:
                    # the binding is back a moment after the queue: publish until one arrives
                    await publisher(name, {"value_raw": 2}, "2026-01-02T03:04:02.000000Z")
                    await asyncio.sleep(0.2)
                    return logger.stored >= 2

                await eventually(stored_again, timeout=20, interval=0.1)
        assert [r[0] for r in rows(lab_database, "endpoint_numeric_data", name)] == [1.0, 2.0]
        if client == "pika":  # aio-pika restores its own consumers (silently)
            said = [r.getMessage() for r in caplog.records]
            assert any("stopped our consumer of" in m and queue in m for m in said), said
            assert any(m.endswith(f"consuming {queue} again") for m in said), said
    finally:
        if durable:
            rabbitmq_server.ctl("delete_queue", "-p", vhost, queue, check=False)


@EVERY_QUEUE_KIND
async def test_the_logger_binds_again_after_the_alerts_exchange_was_deleted(
    lab_database: str,
    amqp_url: str,
    rabbitmq_server: Any,
    monkeypatch: pytest.MonkeyPatch,
    durable: bool,
    client: str,
) -> None:
    """Any account that declares the exchanges may delete them: the logger's queue loses its
    binding to ``alerts`` and the broker tells nobody; the logger binds again every
    ``rebind_interval_s`` (a durable queue from the service's connection, the exclusive one
    from the feed's own), so values published afterwards are stored."""
    import aio_pika

    from insectarium.dripline.alert_feed import AlertFeed

    monkeypatch.setattr(Connection, "rebind_interval_s", 0.3)
    monkeypatch.setattr(AlertFeed, "rebind_interval_s", 0.3)
    name = f"rebound_{uuid.uuid4().hex[:6]}"
    register(lab_database, **{name: "numeric"})
    with private_vhost(rabbitmq_server, amqp_url) as vhost:
        url = amqp_url.rstrip("/") + "/" + vhost.replace("/", "%2F")
        logger = make_logger(
            lab_database,
            url,
            alert_queue_name=unique("sc_db_alerts"),
            alert_queue_durable=durable,
            alert_client=client,
        )
        sender = Connection(mesh_for(url), auth_for(url).dripline, name="test-publisher")
        await sender.connect()
        try:
            async with running(logger):

                async def stored(value: int) -> bool:
                    msg = Message.alert(f"sensor_value.{name}", {"value_raw": value}, sender="t")
                    msg.timestamp = f"2026-01-02T03:04:{value:02d}.000000Z"
                    with contextlib.suppress(Exception):  # the first goes to a missing exchange
                        await sender.publish(msg)
                    await asyncio.sleep(0.2)
                    return logger.stored >= value

                await eventually(lambda: stored(1), timeout=10, interval=0.1)
                admin = await aio_pika.connect(url)
                async with admin:
                    await (await admin.channel()).exchange_delete(logger.mesh.alerts_exchange)
                await eventually(lambda: stored(2), timeout=20, interval=0.1)
        finally:
            await sender.close()
    assert [r[0] for r in rows(lab_database, "endpoint_numeric_data", name)] == [1.0, 2.0]


async def test_malformed_alerts_are_dropped_and_the_logger_keeps_going(
    lab_database: str, amqp_url: str, publisher: Any, caplog: pytest.LogCaptureFixture
) -> None:
    name = f"bad_{uuid.uuid4().hex[:6]}"
    register(lab_database, **{name: "numeric"})
    caplog.set_level(logging.WARNING, logger="insectarium.services.sensor_logger")
    logger = make_logger(lab_database, amqp_url)
    async with running(logger):
        await publisher(name, {"value_raw": 1}, "yesterday at noon")
        await publisher(name, "just a string", "2026-01-02T03:04:05.000000Z")
        await publisher(name, {"value_raw": "not a number"}, "2026-01-02T03:04:06.000000Z")
        await publisher(name, {"nothing": "useful"}, "2026-01-02T03:04:07.000000Z")
        await publisher(name, {"value_raw": 42}, "2026-01-02T03:04:08.000000Z")
        await eventually(lambda: logger.stored == 1)
        assert logger.dropped_malformed == 4
    assert [r[0] for r in rows(lab_database, "endpoint_numeric_data", name)] == [42.0]
    assert any("bad timestamp" in r.getMessage() for r in caplog.records)


async def test_duplicates_do_not_poison_the_batch(
    lab_database: str, amqp_url: str, publisher: Any
) -> None:
    name = f"dup_{uuid.uuid4().hex[:6]}"
    other = f"other_{uuid.uuid4().hex[:6]}"
    register(lab_database, **{name: "numeric", other: "string"})
    stamp = "2026-01-02T03:04:05.000000Z"
    logger = make_logger(lab_database, amqp_url, flush_interval_s=0.5)
    async with running(logger):
        await publisher(name, {"value_raw": 1}, stamp)
        await publisher(name, {"value_raw": 2}, stamp)  # same endpoint and timestamp
        await publisher(other, {"value_raw": "kept"}, stamp)
        await eventually(lambda: logger.stored + logger.duplicates == 3)
        assert (logger.stored, logger.duplicates) == (2, 1)
    assert [r[0] for r in rows(lab_database, "endpoint_numeric_data", name)] == [1.0]
    assert [r[0] for r in rows(lab_database, "endpoint_string_data", other)] == ["kept"]


async def test_memo_goes_to_measurement_metadata(
    lab_database: str, amqp_url: str, publisher: Any
) -> None:
    name = f"memo_{uuid.uuid4().hex[:6]}"
    register(lab_database, **{name: "numeric"})
    logger = make_logger(lab_database, amqp_url)
    async with running(logger):
        await publisher(name, {"value_raw": 7, "memo": "calibrated today"})
        await eventually(lambda: logger.stored == 1)
    with psycopg.connect(lab_database, autocommit=True) as conn:
        found = conn.execute(
            "SELECT value_raw, memo FROM numeric_data WHERE endpoint_name = %s", (name,)
        ).fetchall()
    assert found == [(7.0, "calibrated today")]


async def test_lost_database_connection_is_reopened_without_losing_values(
    lab_database: str, amqp_url: str, publisher: Any
) -> None:
    name = f"outage_{uuid.uuid4().hex[:6]}"
    register(lab_database, **{name: "numeric"})
    logger = make_logger(lab_database, amqp_url)
    async with running(logger):
        await publisher(name, {"value_raw": 1}, "2026-01-02T03:04:05.000000Z")
        await eventually(lambda: logger.stored == 1)
        # what a database restart does to the logger's sessions
        with psycopg.connect(lab_database, autocommit=True) as conn:
            killed = conn.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = %s",
                (logger.name,),
            ).fetchone()
        assert killed is not None and killed[0] >= 1
        for i in range(2, 12):
            await publisher(name, {"value_raw": i}, f"2026-01-02T03:04:{i + 5:02d}.000000Z")
        await eventually(lambda: logger.stored == 11)
    assert len(rows(lab_database, "endpoint_numeric_data", name)) == 11


async def test_status_endpoint_and_service_get(
    lab_database: str, amqp_url: str, client: Any
) -> None:
    from insectarium.services.sensor_logger import SensorLoggerStatus

    logger = make_logger(lab_database, amqp_url)
    status_name = unique("sc_db_status")
    logger.add_endpoint(SensorLoggerStatus(status_name))
    async with running(logger):
        via_child = await client.get(status_name)
        via_service = await client.get(logger.name)
        refreshed = await client.cmd(logger.name, "refresh_endpoint_map")
    assert via_child["stored"] == 0 and via_child["pending"] == 0
    assert via_service["mapped_endpoints"] >= 5  # the seed
    assert refreshed["loaded"] is True


async def test_database_missing_at_start_loses_nothing(
    postgres_server: Any, lab_database_factory: Any, amqp_url: str, publisher: Any
) -> None:
    name = unique("late_db")
    logger = make_logger(postgres_server.dsn(name), amqp_url, retry_max_delay_s=0.5)
    try:
        async with running(logger):  # the database does not exist yet: the service starts anyway
            for i in range(20):
                await publisher("peaches", {"value_raw": i}, f"2026-01-02T03:04:{i:02d}.000000Z")
            await asyncio.sleep(1.0)
            assert logger.stored == 0 and not logger.dropped_unknown  # waiting, not dropping
            dsn = lab_database_factory(name)
            await eventually(lambda: logger.stored >= 20, timeout=30)
        assert [r[0] for r in rows(dsn, "endpoint_numeric_data", "peaches")][:20] == [
            float(i) for i in range(20)
        ]
    finally:
        postgres_server.drop_database(name)


async def test_a_classic_queue_of_an_older_version_is_converted_without_loss(
    lab_database: str, amqp_url: str, publisher: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A lab installed by an older version has the queue as a classic queue: the logger
    converts it to a quorum queue and stores every value it held or received meanwhile."""
    import aiormq

    caplog.set_level(logging.WARNING)
    name = f"upgrade_{uuid.uuid4().hex[:6]}"
    register(lab_database, **{name: "numeric"})
    queue = unique("sc_db_alerts")
    kw = {"alert_queue_name": queue, "alert_queue_durable": True}
    async with running(make_logger(lab_database, amqp_url, alert_queue_type="classic", **kw)):
        pass  # what the older version left: a classic durable queue, bound
    for i in range(300):
        await publisher(name, {"value_raw": i}, f"2026-01-02T03:{i // 60:02d}:{i % 60:02d}.0Z")
    logger = make_logger(lab_database, amqp_url, **kw)
    async with running(logger):
        for i in range(300, 350):  # arrive after the conversion
            await publisher(name, {"value_raw": i}, f"2026-01-02T03:{i // 60:02d}:{i % 60:02d}.0Z")
        await eventually(lambda: logger.stored >= 350, timeout=30)
    assert [r[0] for r in rows(lab_database, "endpoint_numeric_data", name)] == [
        float(i) for i in range(350)
    ]
    text = [r.getMessage() for r in caplog.records]
    assert any("exists as a classic queue" in t and "converting" in t for t in text)
    conn = Connection(mesh_for(amqp_url), auth_for(amqp_url).dripline, name="check")
    await conn.connect()
    try:
        assert conn.connection is not None
        channel = await conn.connection.channel()
        # redeclaring as a quorum queue succeeds: it is one now ...
        await channel.declare_queue(
            queue, durable=True, arguments={"x-queue-type": "quorum"}, passive=False
        )
        await channel.queue_delete(queue)
        # ... and the sibling used during the conversion is gone
        with pytest.raises(aiormq.exceptions.ChannelNotFoundEntity):
            probe = await conn.connection.channel()
            await probe.declare_queue(f"{queue}.upgrade", passive=True)
    finally:
        await conn.close()


async def test_invented_endpoint_names_cannot_grow_the_logger(
    lab_database: str, amqp_url: str, publisher: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """50 000 unknown names grew the logger's memory, log and status reply (3 MB) without
    bound; now per-name bookkeeping stops at MAX_TRACKED_NAMES and the rest is counted."""
    from insectarium.dripline.limits import MAX_TRACKED_NAMES

    caplog.set_level(logging.WARNING, logger="insectarium.services.sensor_logger")
    tag = uuid.uuid4().hex[:6]
    extra = 150
    logger = make_logger(lab_database, amqp_url)
    async with running(logger):
        for i in range(MAX_TRACKED_NAMES + extra):
            await publisher(f"ghost{i}_{tag}", {"value_raw": 1})
        await eventually(
            lambda: (
                sum(logger.dropped_unknown.values()) + logger.dropped_unknown_other
                == MAX_TRACKED_NAMES + extra
            ),
            timeout=30,
        )
        status = logger.status()
    assert len(logger.dropped_unknown) == MAX_TRACKED_NAMES
    assert logger.dropped_unknown_other == extra == status["dropped_unknown_other"]
    assert len(logger._names) <= 10 * MAX_TRACKED_NAMES and len(logger._warned) <= MAX_TRACKED_NAMES
    assert len(json.dumps(status)) < 100 * MAX_TRACKED_NAMES
    warned = [r for r in caplog.records if "ghost" in r.getMessage()]
    assert MAX_TRACKED_NAMES <= len(warned) <= MAX_TRACKED_NAMES + 2


async def test_a_value_that_cannot_be_text_does_not_block_the_logger(
    lab_database: str, amqp_url: str, publisher: Any
) -> None:
    """A lone surrogate (valid JSON, not valid UTF-8) in a string value is dropped, counted,
    and the values after it are stored (it used to fail its batch forever)."""
    name = f"surrogate_{uuid.uuid4().hex[:6]}"
    register(lab_database, **{name: "string"})
    logger = make_logger(lab_database, amqp_url)
    async with running(logger):
        await publisher(name, {"value_raw": json.loads('"\\ud800"')}, "2026-01-02T03:04:05.0Z")
        await publisher(name, {"value_raw": "fine"}, "2026-01-02T03:04:06.0Z")
        await eventually(lambda: logger.stored == 1)
        assert logger.dropped_malformed == 1
    assert [r[0] for r in rows(lab_database, "endpoint_string_data", name)] == ["fine"]


async def test_alerts_are_read_whatever_else_their_headers_hold(
    lab_database: str, amqp_url: str
) -> None:
    """The feed reads ``message_type`` and ``timestamp`` without decoding the other headers:
    their order and extra headers of every kind do not matter, and a message of another type
    takes the runtime's full-decode path (which stores it, as before)."""
    import pika

    name = f"order_{uuid.uuid4().hex[:6]}"
    register(lab_database, **{name: "numeric"})
    logger = make_logger(lab_database, amqp_url)
    extra = {
        "x-array": [1, "two", {"three": decimal.Decimal("3.5")}, None],
        "x-nested": {"deeper": {"deepest": True}},
        "x-bytes": b"\x00\xff",
        "x-stamp": dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
        "sender_info": {"exe": "handmade", "service_name": "test"},
    }
    headers = [
        # timestamp before message_type, extra headers between them
        {"timestamp": "2026-01-02T03:04:05.000007Z", **extra, "message_type": 4},
        {"message_type": 4, "timestamp": "2026-01-02T03:04:06.000000Z"},
        {**extra, "timestamp": "2026-01-02T03:04:07.000000Z", "message_type": 2},  # a reply
    ]

    def publish() -> None:
        conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
        try:
            channel = conn.channel()
            for i, h in enumerate(headers):
                channel.basic_publish(
                    "alerts",
                    f"sensor_value.{name}",
                    json.dumps({"value_raw": float(i)}).encode(),
                    pika.BasicProperties(
                        content_encoding="application/json",
                        message_id=f"{uuid.uuid4()}/0/1",
                        headers=h,
                    ),
                )
        finally:
            conn.close()

    async with running(logger):
        await asyncio.to_thread(publish)
        await eventually(lambda: logger.stored == 3)
    assert rows(lab_database, "endpoint_numeric_data", name) == [
        (0.0, None, dt.datetime(2026, 1, 2, 3, 4, 5, 7)),
        (1.0, None, dt.datetime(2026, 1, 2, 3, 4, 6)),
        (2.0, None, dt.datetime(2026, 1, 2, 3, 4, 7)),
    ]
    assert logger.dropped_malformed == 0


async def test_memory_is_handed_back_once_a_burst_is_over(
    lab_database: str, amqp_url: str, publisher: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a burst (here 20 values) the logger trims its heap once it has been idle for
    TRIM_IDLE_S, once; a trickle below the burst size never trims."""
    from insectarium.services import sensor_logger

    trims: list[int] = []
    monkeypatch.setattr(sensor_logger, "TRIM_AFTER_VALUES", 20)
    monkeypatch.setattr(sensor_logger, "TRIM_IDLE_S", 0.3)
    monkeypatch.setattr(sensor_logger, "release_soon", lambda delay_s=0.1: trims.append(1))
    name = f"burst_{uuid.uuid4().hex[:6]}"
    register(lab_database, **{name: "numeric"})
    logger = make_logger(lab_database, amqp_url, flush_interval_s=0.05)
    async with running(logger):
        for i in range(10):
            await publisher(name, {"value_raw": i}, f"2026-01-02T03:04:{i:02d}.000000Z")
        await eventually(lambda: logger.stored == 10)
        await asyncio.sleep(0.8)
        assert trims == []  # 10 values: not a burst
        for i in range(10, 30):
            await publisher(name, {"value_raw": i}, f"2026-01-02T03:04:{i:02d}.000000Z")
        await eventually(lambda: logger.stored == 30)
        await eventually(lambda: trims == [1])
        await asyncio.sleep(0.8)
        assert trims == [1]  # once per burst
    assert len(rows(lab_database, "endpoint_numeric_data", name)) == 30
