"""Fixtures and helpers for the dripline runtime tests (registered from conftest.py)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from insectarium.dripline import Authentication, Interface, Service
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
