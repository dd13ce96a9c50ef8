"""Who may do what on the broker: every forbidden action tried with the account that must not.

The accounts get exactly the permissions the rabbitmq role gives (the role's filter plugin
``roles/rabbitmq/filter_plugins/dripline_permissions.py`` is imported and applied here with
rabbitmqctl): one user per service, the shifters' human account, the administrator.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aio_pika
import aiormq
import pytest

from insectarium.dripline import Authentication, Interface, Service
from insectarium.dripline.config import MeshConfig
from insectarium.dripline.connection import BrokerUnavailable, Connection, PublishRefused
from insectarium.services.kv_store import KeyValueStore

from .runtime_support import REPO, mesh_for, run_cli, running

_spec = importlib.util.spec_from_file_location(
    "dripline_permissions", REPO / "roles/rabbitmq/filter_plugins/dripline_permissions.py"
)
assert _spec is not None and _spec.loader is not None
perms = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(perms)


@dataclass
class Account:
    name: str
    password: str

    def auth(self) -> Authentication:
        return Authentication(
            groups={"dripline": {"username": self.name, "password": self.password}}
        )

    def auth_file(self, directory: Path) -> Path:
        path = directory / f"{self.name}.yaml"
        path.write_text(f"dripline:\n  username: {self.name}\n  password: {self.password}\n")
        return path


def _apply(server: Any, user: str, granted: dict[str, list[dict[str, str]]], tags: str = "") -> str:
    # hex: a urlsafe token starts with "-" one time in 64, and rabbitmqctl takes it for an option
    password = secrets.token_hex(16)
    server.ctl("add_user", user, password)
    if tags:
        server.ctl("set_user_tags", user, tags)
    for p in granted["permissions"]:
        server.ctl(
            "set_permissions",
            "-p",
            p["vhost"],
            user,
            p["configure_priv"],
            p["write_priv"],
            p["read_priv"],
        )
    for t in granted["topic_permissions"]:
        server.ctl(
            "set_topic_permissions",
            "-p",
            t["vhost"],
            user,
            t["exchange"],
            t["write_priv"],
            t["read_priv"],
        )
    return password


@dataclass
class Lab:
    mesh: MeshConfig
    a: Account  # service with endpoint <a>_peaches
    b: Account  # service with endpoint <b>_chips
    logger: Account  # alert consumer of sensor_value.#, durable queue <logger>_alerts
    shifter: Account
    admin: Account

    @property
    def peaches(self) -> str:
        return f"{self.a.name}_peaches"

    @property
    def chips(self) -> str:
        return f"{self.b.name}_chips"

    @property
    def logger_queue(self) -> str:
        return f"{self.logger.name}_alerts"


@pytest.fixture(scope="module")
async def lab(amqp_url: str, rabbitmq_server: Any) -> AsyncIterator[Lab]:
    tag = uuid.uuid4().hex[:6]
    a, b, logger = f"perm_a_{tag}", f"perm_b_{tag}", f"perm_logger_{tag}"
    accounts = {}
    for name, endpoints, extra in (
        (a, [f"{a}_peaches"], {}),
        (b, [f"{b}_chips"], {}),
        (
            logger,
            [],
            # processes: 2 -> the account also runs <logger>-2 (the scaled-out sensor logger)
            {
                "extra_queues": [f"{logger}_alerts"],
                "alert_keys": ["sensor_value.#"],
                "processes": 2,
            },
        ),
    ):
        config = {"name": name, "endpoints": [{"name": e} for e in endpoints]}
        granted = perms.dripline_service_permissions({"name": name, **extra}, config=config)
        accounts[name] = Account(name, _apply(rabbitmq_server, name, granted))
    shifter = f"perm_shifter_{tag}"
    accounts[shifter] = Account(
        shifter, _apply(rabbitmq_server, shifter, perms.dripline_human_permissions())
    )
    admin = f"perm_admin_{tag}"
    accounts[admin] = Account(
        admin,
        _apply(rabbitmq_server, admin, perms.dripline_admin_permissions(), tags="administrator"),
    )
    mesh = mesh_for(amqp_url, max_connection_attempts=2)
    # the exchanges exist before anyone uses them, as in the lab (services declare them)
    conn = Connection(mesh, accounts[a].auth().dripline)
    await conn.connect()
    await conn.close()
    yield Lab(mesh, accounts[a], accounts[b], accounts[logger], accounts[shifter], accounts[admin])
    for user in accounts:
        rabbitmq_server.ctl("delete_user", user, check=False)


async def _amqp(lab: Lab, account: Account) -> aio_pika.abc.AbstractConnection:
    return await aio_pika.connect(
        host=lab.mesh.broker,
        port=lab.mesh.broker_port,
        login=account.name,
        password=account.password,
    )


async def refused(
    lab: Lab, account: Account, action: Callable[[aio_pika.abc.AbstractChannel], Awaitable[Any]]
) -> str:
    """Run ``action`` on a fresh channel of ``account``; it must be refused (403)."""
    conn = await _amqp(lab, account)
    try:
        channel = await conn.channel(publisher_confirms=True)
        with pytest.raises(aiormq.exceptions.ChannelAccessRefused) as exc:
            await action(channel)
        return str(exc.value)
    finally:
        await conn.close()


async def allowed(
    lab: Lab, account: Account, action: Callable[[aio_pika.abc.AbstractChannel], Awaitable[Any]]
) -> Any:
    conn = await _amqp(lab, account)
    try:
        channel = await conn.channel(publisher_confirms=True)
        return await action(channel)
    finally:
        await conn.close()


def _service(lab: Lab, account: Account, endpoint: str) -> Service:
    return Service(
        account.name,
        endpoints=[KeyValueStore(endpoint, initial_value=0.75)],
        dripline_mesh=lab.mesh,
        authentication=account.auth(),
        heartbeat_interval_s=0,
    )


async def _logger_queue(lab: Lab, channel: aio_pika.abc.AbstractChannel) -> Any:
    queue = await channel.declare_queue(lab.logger_queue, durable=True, auto_delete=False)
    await queue.bind(lab.mesh.alerts_exchange, routing_key="sensor_value.#")
    return queue


async def _next_value(queue: Any, timeout: float = 5.0) -> tuple[str, bytes]:  # noqa: ASYNC109
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        message = await queue.get(fail=False, no_ack=True)
        if message is not None:
            return message.routing_key, message.body
        await asyncio.sleep(0.05)
    raise AssertionError(f"nothing arrived in {queue.name} within {timeout} s")


# --------------------------------------------------------------------------- what is allowed
async def test_services_shifter_and_logger_do_their_jobs(lab: Lab) -> None:
    """The allowed paths work: a shifter's get, a service's own value reaching the logger,
    heartbeats and status messages, the shifter watching alerts."""
    logger_conn = await _amqp(lab, lab.logger)
    watch_conn = await _amqp(lab, lab.shifter)
    try:
        queue = await _logger_queue(lab, await logger_conn.channel())
        await queue.purge()
        watch = await (await watch_conn.channel()).declare_queue("", exclusive=True)
        await watch.bind(lab.mesh.alerts_exchange, routing_key="#")
        svc = _service(lab, lab.a, lab.peaches)
        async with (
            running(svc),
            Interface(dripline_mesh=lab.mesh, authentication=lab.shifter.auth()) as dl,
        ):
            assert (await dl.get(lab.peaches))["value_raw"] == 0.75
            await svc.send_alert(f"sensor_value.{lab.peaches}", {"value_raw": 0.5})
            await svc.send_alert(f"heartbeat.{lab.a.name}", {"name": lab.a.name})
            await svc.send_alert(f"status_message.{lab.a.name}.notice", "all good")
            key, body = await _next_value(queue)
            assert key == f"sensor_value.{lab.peaches}" and b"0.5" in body
            seen = {(await _next_value(watch))[0] for _ in range(3)}
            assert seen == {
                f"sensor_value.{lab.peaches}",
                f"heartbeat.{lab.a.name}",
                f"status_message.{lab.a.name}.notice",
            }
    finally:
        await logger_conn.close()
        await watch_conn.close()


# --------------------------------------------------------------------------- the shifter
def test_shifter_cannot_forge_a_sensor_value(lab: Lab, tmp_path: Path) -> None:
    auth = lab.shifter.auth_file(tmp_path)
    args = ["-b", lab.mesh.broker, "-p", str(lab.mesh.broker_port), "--auth-file", str(auth)]
    forged = run_cli("agent", *args, "alert", f"sensor_value.{lab.peaches}", "31337")
    assert forged.returncode == 4, forged.stdout + forged.stderr
    assert "refused" in forged.stderr and f"sensor_value.{lab.peaches}" in forged.stderr
    heartbeat = run_cli("agent", *args, "alert", f"heartbeat.{lab.a.name}", "x")
    assert heartbeat.returncode == 4 and "refused" in heartbeat.stderr
    # what a shifter may post: a status message
    note = run_cli("agent", *args, "alert", "status_message.shift.notice", "coffee")
    assert note.returncode == 0, note.stderr


async def test_forged_value_never_reaches_the_logger(lab: Lab, tmp_path: Path) -> None:
    conn = await _amqp(lab, lab.logger)
    try:
        queue = await _logger_queue(lab, await conn.channel())
        await queue.purge()
        auth = lab.shifter.auth_file(tmp_path)
        args = ["-b", lab.mesh.broker, "-p", str(lab.mesh.broker_port), "--auth-file", str(auth)]
        forged = await asyncio.to_thread(
            run_cli, "agent", *args, "alert", f"sensor_value.{lab.peaches}", "31337"
        )
        assert forged.returncode == 4
        svc = _service(lab, lab.a, lab.peaches)
        async with running(svc):
            await svc.send_alert(f"sensor_value.{lab.peaches}", 1.25)
        key, body = await _next_value(queue)
        assert key == f"sensor_value.{lab.peaches}"
        assert b"31337" not in body and b"1.25" in body, body  # the first one is the real one
    finally:
        await conn.close()


def test_shifter_cannot_watch_requests(lab: Lab, tmp_path: Path) -> None:
    auth = lab.shifter.auth_file(tmp_path)
    out = run_cli(
        "mon", "-b", lab.mesh.broker, "-p", str(lab.mesh.broker_port), "--auth-file", str(auth),
        "-r", "#",
    )  # fmt: skip
    assert out.returncode == 4, out.stdout + out.stderr
    assert "refused" in out.stderr and "'#'" in out.stderr
    assert "Traceback" not in out.stderr


async def test_shifter_cannot_bind_to_a_service_key(lab: Lab) -> None:
    async def bind(channel: aio_pika.abc.AbstractChannel) -> None:
        queue = await channel.declare_queue("", exclusive=True)
        await queue.bind(lab.mesh.requests_exchange, routing_key=f"{lab.peaches}.#")

    assert "access to topic" in await refused(lab, lab.shifter, bind)


async def test_shifter_cannot_reply_for_a_service(lab: Lab) -> None:
    async def reply(channel: aio_pika.abc.AbstractChannel) -> None:
        exchange = await channel.get_exchange(lab.mesh.requests_exchange)
        await exchange.publish(aio_pika.Message(b"{}"), routing_key=f"amq_{uuid.uuid4().hex}")

    await refused(lab, lab.shifter, reply)


@pytest.mark.parametrize("action", ["delete", "purge", "consume"])
async def test_shifter_cannot_touch_the_logger_queue(lab: Lab, action: str) -> None:
    await allowed(lab, lab.logger, lambda ch: _logger_queue(lab, ch))

    async def touch(channel: aio_pika.abc.AbstractChannel) -> None:
        queue = await channel.get_queue(lab.logger_queue, ensure=False)
        if action == "delete":
            await queue.delete(if_unused=False, if_empty=False)
        elif action == "purge":
            await queue.purge()
        else:
            await queue.get(fail=False)

    await refused(lab, lab.shifter, touch)


async def test_no_one_may_use_the_default_exchange(lab: Lab) -> None:
    """Publishing to the default exchange would drop a message into any queue by name."""
    for account in (lab.shifter, lab.a, lab.admin):

        async def direct(channel: aio_pika.abc.AbstractChannel) -> None:
            await channel.default_exchange.publish(
                aio_pika.Message(b"31337"), routing_key=lab.logger_queue
            )

        await refused(lab, account, direct)


# --------------------------------------------------------------------------- the services
async def test_service_cannot_publish_another_services_value(
    lab: Lab, caplog: pytest.LogCaptureFixture
) -> None:
    svc = _service(lab, lab.a, lab.peaches)
    async with (
        running(svc),
        Interface(dripline_mesh=lab.mesh, authentication=lab.shifter.auth()) as dl,
    ):
        with caplog.at_level(logging.ERROR), pytest.raises(PublishRefused, match=lab.chips):
            await svc.send_alert(f"sensor_value.{lab.chips}", 31337)
        assert any(
            "refused" in r.getMessage() and lab.chips in r.getMessage() for r in caplog.records
        )
        with pytest.raises(PublishRefused):
            await svc.send_alert(f"heartbeat.{lab.b.name}", {"name": lab.b.name})
        # the refusal closed only the alerts channel: requests are still answered
        assert (await dl.get(lab.peaches))["value_raw"] == 0.75
        await svc.send_alert(f"sensor_value.{lab.peaches}", 0.8)


async def test_service_cannot_take_another_services_requests(lab: Lab) -> None:
    async def bind(channel: aio_pika.abc.AbstractChannel) -> None:
        queue = await channel.declare_queue(lab.a.name, exclusive=True, auto_delete=True)
        await queue.bind(lab.mesh.requests_exchange, routing_key=f"{lab.chips}.#")

    assert "access to topic" in await refused(lab, lab.a, bind)

    async def squat(channel: aio_pika.abc.AbstractChannel) -> None:
        await channel.declare_queue(lab.b.name, exclusive=True, auto_delete=True)

    await refused(lab, lab.a, squat)


async def test_a_second_logger_process_gets_its_own_name_and_no_other(lab: Lab) -> None:
    """processes: 2 lets the logger's account run <logger>-2 (its queue, its bindings, its
    heartbeats), and nothing beyond: <logger>-3 is refused."""
    second = Service(
        f"{lab.logger.name}-2",
        dripline_mesh=lab.mesh,
        authentication=lab.logger.auth(),
        heartbeat_interval_s=0,
    )
    async with running(second):
        await second.send_alert(f"heartbeat.{second.name}", {"name": second.name})
        with pytest.raises(PublishRefused):
            await second.send_alert(f"heartbeat.{lab.logger.name}-3", {"name": "three"})

    async def third(channel: aio_pika.abc.AbstractChannel) -> None:
        await channel.declare_queue(f"{lab.logger.name}-3", exclusive=True, auto_delete=True)

    await refused(lab, lab.logger, third)

    async def bind_third(channel: aio_pika.abc.AbstractChannel) -> None:
        queue = await channel.declare_queue(f"{lab.logger.name}-2", exclusive=True)
        await queue.bind(lab.mesh.requests_exchange, routing_key=f"{lab.logger.name}-3.#")

    assert "access to topic" in await refused(lab, lab.logger, bind_third)


async def test_only_the_logger_may_read_sensor_values(lab: Lab) -> None:
    async def listen(channel: aio_pika.abc.AbstractChannel) -> None:
        queue = await channel.declare_queue(lab.a.name, exclusive=True, auto_delete=True)
        await queue.bind(lab.mesh.alerts_exchange, routing_key="sensor_value.#")

    await refused(lab, lab.a, listen)

    async def heartbeats(channel: aio_pika.abc.AbstractChannel) -> None:
        queue = await channel.declare_queue(lab.logger_queue, durable=True, auto_delete=False)
        await queue.bind(lab.mesh.alerts_exchange, routing_key="heartbeat.#")

    await refused(lab, lab.logger, heartbeats)


async def test_admin_cannot_use_the_mesh(lab: Lab) -> None:
    async def declare(channel: aio_pika.abc.AbstractChannel) -> None:
        await channel.declare_exchange(lab.mesh.alerts_exchange, "topic", durable=False)

    await refused(lab, lab.admin, declare)

    async def consume(channel: aio_pika.abc.AbstractChannel) -> None:
        await channel.declare_queue("", exclusive=True)

    await refused(lab, lab.admin, consume)


async def test_admin_account_cannot_run_a_client(lab: Lab) -> None:
    conn = Connection(lab.mesh, lab.admin.auth().dripline)
    with pytest.raises(BrokerUnavailable, match=r"does not let user .* use the dripline exchanges"):
        await conn.connect()
