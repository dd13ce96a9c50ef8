"""Fixtures and helpers for the dripline runtime tests (registered from conftest.py)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import pytest

from insectarium.dripline import Authentication, Interface, ReplyError, Service
from insectarium.dripline.config import MeshConfig


@pytest.fixture(scope="session")
def amqp_url(request: pytest.FixtureRequest) -> str:
    """URL of a real broker: the private test server, or INSECTARIUM_TEST_AMQP_URL."""
    if os.environ.get("INSECTARIUM_TEST_AMQP_URL"):
        return os.environ["INSECTARIUM_TEST_AMQP_URL"]
    server = request.getfixturevalue("rabbitmq_server")
    return server.url


def mesh_for(url: str, **extra: Any) -> MeshConfig:
    from urllib.parse import unquote, urlparse

    u = urlparse(url)
    vhost = unquote(u.path[1:]) if u.path not in ("", "/") else "/"
    return MeshConfig(
        broker=u.hostname or "localhost", broker_port=u.port or 5672, vhost=vhost, **extra
    )


def auth_for(url: str) -> Authentication:
    from urllib.parse import unquote, urlparse

    u = urlparse(url)
    return Authentication(
        groups={
            "dripline": {
                "username": unquote(u.username or "guest"),
                "password": unquote(u.password or "guest"),
            }
        }
    )


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


@pytest.fixture
def mesh(amqp_url: str) -> MeshConfig:
    return mesh_for(amqp_url)


@pytest.fixture
def auth(amqp_url: str) -> Authentication:
    return auth_for(amqp_url)


@contextlib.asynccontextmanager
async def running(service: Service) -> AsyncIterator[Service]:
    """Start a service in this event loop and stop it afterwards."""
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


@pytest.fixture
async def client(amqp_url: str) -> AsyncIterator[Interface]:
    iface = Interface(
        dripline_mesh=mesh_for(amqp_url), authentication=auth_for(amqp_url), timeout_s=5
    )
    await iface.start()
    yield iface
    await iface.close()


async def answers(via: Any, endpoint: str, value: Any) -> bool:
    """Whether ``via`` (a client) gets ``value`` for ``endpoint`` within 1 s (for
    :func:`eventually`, while a service comes back)."""
    try:
        return (await via.get(endpoint, timeout_s=1))["value_raw"] == value
    except ReplyError:
        return False


async def eventually(predicate: Any, timeout: float = 10.0, interval: float = 0.05) -> Any:  # noqa: ASYNC109
    """Poll ``predicate`` (sync or async) until it returns a truthy value."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)


REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "files" / "configs"
# The lab's six services as (program, config file, needs the database), in start order: the
# logger first, so that its durable alert queue exists before the others send values.
LAB_SERVICES = [
    ("not-sc_db", "slow_control_table.yaml", True),
    ("not-snapshot_service", "slow_control_snapshot.yaml", True),
    ("not-run_table", "run_table.yaml", True),
    ("not-glenlivet", "kv_store_tutorial.yaml", False),
    ("not-status_multido", "status_multigets.yaml", False),
    ("not-generic_daq", "generic_daq.yaml", False),
]


@pytest.fixture(scope="module")
def broker_args(amqp_url: str, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """CLI options reaching the test broker, with the credentials in an auth file."""
    u = urlparse(amqp_url)
    auth = tmp_path_factory.mktemp("cli") / "auth.yaml"
    auth.write_text(
        f"dripline:\n  username: {unquote(u.username or 'guest')}\n"
        f"  password: {unquote(u.password or 'guest')}\n"
    )
    return ["-b", u.hostname or "localhost", "-p", str(u.port or 5672), "--auth-file", str(auth)]


def dl_mon_one_alert(args: list[str], send: Callable[[], object]) -> tuple[int, str, str]:
    """Run ``dl-mon <args> -n 1`` and call ``send`` (which publishes an alert it listens to)
    once a second until dl-mon exits after showing one, at most 20 s.

    Returns dl-mon's exit status, its output, and the first line it wrote to stderr (what it
    said before the first alert was sent: "listening …" or why it could not).
    """
    proc = subprocess.Popen(
        [sys.executable, "-m", "insectarium.cli.mon", *args, "-n", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        first_line = proc.stderr.readline()
        deadline = time.monotonic() + 20
        while proc.poll() is None and time.monotonic() < deadline:
            send()
            try:
                proc.wait(1)
            except subprocess.TimeoutExpired:
                continue
        out, _err = proc.communicate(timeout=10)
    finally:
        proc.kill()
    return proc.returncode, out, first_line


def run_cli(module: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``python -m insectarium.cli.<module> args…`` and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", f"insectarium.cli.{module}", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "HOME": os.environ.get("HOME", "/root")},
    )


@contextlib.contextmanager
def prefixed_kv_store(
    broker_args: list[str], directory: Path, prefix: str, is_ready: Callable[[], bool]
) -> Iterator[str]:
    """The tutorial key-value store as a ``dl-serve`` process, service and endpoints prefixed
    with ``prefix`` (so tests never collide), without scheduled logging; yields the prefix."""
    import yaml

    base = yaml.safe_load((REPO / "files/configs/kv_store_tutorial.yaml").read_text())
    base["name"] = prefix
    for ep in base["endpoints"]:
        ep["name"] = f"{prefix}_{ep['name']}"
        ep["log_interval"] = 0
    cfg = directory / "kv.yaml"
    cfg.write_text(yaml.safe_dump(base))
    proc = subprocess.Popen(
        [sys.executable, "-m", "insectarium.cli.serve", "-c", str(cfg), *broker_args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not is_ready():
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline
        yield prefix
    finally:
        proc.terminate()
        proc.wait(10)


@contextlib.contextmanager
def private_vhost(rabbitmq_server: Any, amqp_url: str) -> Iterator[str]:
    """A vhost of its own for a test that deletes shared things (an exchange), with every
    permission for the test broker's user; deleted afterwards."""
    vhost = f"/{unique('vhost')}"
    user = unquote(urlparse(amqp_url).username or "guest")
    rabbitmq_server.ctl("add_vhost", vhost)
    try:
        rabbitmq_server.ctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
        yield vhost
    finally:
        rabbitmq_server.ctl("delete_vhost", vhost, check=False)
