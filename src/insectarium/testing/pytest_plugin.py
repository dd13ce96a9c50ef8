"""pytest fixtures: private PostgreSQL / RabbitMQ servers and fresh lab databases.

Register with ``pytest_plugins = ["insectarium.testing.pytest_plugin"]`` (tests/conftest.py).

Session-scoped
    ``postgres_server``  a ``PostgresServer`` (or ``ExternalPostgres`` when
                         ``INSECTARIUM_TEST_PG_DSN`` names an existing server's admin DSN):
                         ``.dsn(dbname)``, ``.create_database(name)``, ``.drop_database(name)``,
                         ``.create_role(name, password)``, ``.private``.
    ``rabbitmq_server``  a ``RabbitMQServer`` (or ``ExternalRabbitMQ`` when
                         ``INSECTARIUM_TEST_AMQP_URL`` is set): ``.url``, ``.port``, ``.user``,
                         ``.password``, ``.ctl(*args)``, ``.stop()`` / ``.start()``, ``.private``.
    ``lab_database_factory``  ``make(name=None, *, schema=True) -> DSN``: a new database with all
                         migrations and the seed (``schema=False``: empty); dropped at session end.
Function-scoped
    ``lab_database``     DSN of a fresh database with all migrations + seed applied.
    ``empty_database``   DSN of a fresh, empty database.
Module-scoped
    ``lab_database_module``  like ``lab_database``, shared by the tests of one module.

Fresh lab databases are cloned from a template migrated once per session, so each costs a
``CREATE DATABASE … TEMPLATE`` (tens of ms), not a migration run.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from insectarium.testing.servers import (
    ExternalPostgres,
    ExternalRabbitMQ,
    PostgresServer,
    RabbitMQServer,
    ServerError,
)

PG_ENV = "INSECTARIUM_TEST_PG_DSN"
AMQP_ENV = "INSECTARIUM_TEST_AMQP_URL"


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer | ExternalPostgres]:
    if os.environ.get(PG_ENV):
        yield ExternalPostgres(os.environ[PG_ENV])
        return
    try:
        server = PostgresServer()
    except ServerError as exc:
        # a missing server must fail the run, not skip it: these tests exist to use real ones
        pytest.fail(
            f"cannot start a private PostgreSQL: {exc} (run ./lab bootstrap, or set {PG_ENV})"
        )
    with server:
        yield server


@pytest.fixture(scope="session")
def rabbitmq_server() -> Iterator[RabbitMQServer | ExternalRabbitMQ]:
    if os.environ.get(AMQP_ENV):
        yield ExternalRabbitMQ(os.environ[AMQP_ENV])
        return
    try:
        server = RabbitMQServer()
    except ServerError as exc:
        pytest.fail(
            f"cannot start a private RabbitMQ: {exc} (run ./lab bootstrap, or set {AMQP_ENV})"
        )
    with server:
        yield server


def _copy_database_settings(admin: Any, template: str, target: str) -> None:
    """``ALTER DATABASE … SET`` values are not copied by CREATE DATABASE … TEMPLATE."""
    from psycopg import sql

    rows = admin.execute(
        "SELECT unnest(s.setconfig) FROM pg_db_role_setting s "
        "JOIN pg_database d ON d.oid = s.setdatabase WHERE d.datname = %s AND s.setrole = 0",
        (template,),
    ).fetchall()
    for (item,) in rows:
        name, _, value = item.partition("=")
        admin.execute(
            sql.SQL("ALTER DATABASE {} SET {} TO {}").format(
                sql.Identifier(target), sql.Identifier(name), sql.Literal(value)
            )
        )


class LabDatabases:
    """Creates fresh databases on one server; drops them all on ``close()``."""

    def __init__(self, server: PostgresServer | ExternalPostgres):
        self.server = server
        self.prefix = f"insect_{uuid.uuid4().hex[:8]}"
        self.template: str | None = None
        self.created: list[str] = []
        self._count = 0

    def _name(self) -> str:
        self._count += 1
        return f"{self.prefix}_{self._count}"

    def _template(self) -> str:
        if self.template is None:
            from insectarium.db import migrations

            name = f"{self.prefix}_template"
            dsn = self.server.create_database(name)
            self.created.append(name)
            migrations.migrate(dsn, seed=True)
            self.template = name
        return self.template

    def make(self, name: str | None = None, *, schema: bool = True) -> str:
        from psycopg import sql

        name = name or self._name()
        if not schema:
            dsn = self.server.create_database(name)
            self.created.append(name)
            return dsn
        template = self._template()
        with self.server._admin() as admin:
            admin.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                    sql.Identifier(name), sql.Identifier(template)
                )
            )
            self.created.append(name)
            _copy_database_settings(admin, template, name)
        return self.server.dsn(name)

    def drop(self, name: str) -> None:
        with contextlib.suppress(Exception):
            self.server.drop_database(name)
        if name in self.created:
            self.created.remove(name)

    def close(self) -> None:
        for name in reversed(list(self.created)):
            self.drop(name)


@pytest.fixture(scope="session")
def lab_database_factory(
    postgres_server: PostgresServer | ExternalPostgres,
) -> Iterator[Callable[..., str]]:
    dbs = LabDatabases(postgres_server)
    try:
        yield dbs.make
    finally:
        dbs.close()


def _dbname(dsn: str) -> str:
    from psycopg.conninfo import conninfo_to_dict

    return str(conninfo_to_dict(dsn)["dbname"])


@pytest.fixture
def lab_database(
    postgres_server: PostgresServer | ExternalPostgres,
    lab_database_factory: Callable[..., str],
) -> Iterator[str]:
    """DSN of a fresh database with all migrations and the seed applied."""
    dsn = lab_database_factory()
    yield dsn
    postgres_server.drop_database(_dbname(dsn))


@pytest.fixture
def empty_database(
    postgres_server: PostgresServer | ExternalPostgres,
    lab_database_factory: Callable[..., str],
) -> Iterator[str]:
    """DSN of a fresh, empty database (for migration tests)."""
    dsn = lab_database_factory(schema=False)
    yield dsn
    postgres_server.drop_database(_dbname(dsn))


@pytest.fixture(scope="module")
def lab_database_module(
    postgres_server: PostgresServer | ExternalPostgres,
    lab_database_factory: Callable[..., str],
) -> Iterator[str]:
    """DSN of a fresh lab database (migrations + seed) shared by one test module."""
    dsn = lab_database_factory()
    yield dsn
    postgres_server.drop_database(_dbname(dsn))
