"""The database side of the lab services: one PostgreSQL connection set per service.

Dragonfly's ``PostgreSQLInterface`` opened an SQLAlchemy engine per service; here a
:class:`PostgreSQLService` owns a small set of async psycopg 3 connections (:class:`Database`) that
its endpoints borrow with ``async with self.service.db.connection() as conn``.  The database
location is given by **service-level** keys (``database_server``, ``database_port``,
``database_name``) so that Ansible can point the service at another host with a ``dl-serve``
override, and the credentials come from the auth file group ``postgres`` (or the
``POSTGRES_USER``/``POSTGRES_PASSWORD`` environment), never from the YAML.

A database restart must not kill a service: a broken connection is dropped and a new one opened on
the next use; a request that finds the database away gets a 1200 (database_error) reply saying
so, and the service keeps running.  Error texts are scrubbed of the password before they reach a
log line or a reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import psycopg
from psycopg import sql

from ..dripline import Service, ThrowReply
from ..dripline.config_files import Credentials

log = logging.getLogger(__name__)

#: the lab schema's value tables by kind (the logger writes them, the snapshot reads them); here
#: rather than in the logger so that the other DB services need not import the logger's stack
DEFAULT_DATA_TABLES = {
    "numeric": "endpoint_numeric_data",
    "string": "endpoint_string_data",
    "json": "endpoint_json_data",
}

#: errors that mean "the connection (or the server) is gone", as opposed to a bad statement
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    psycopg.OperationalError,
    psycopg.InterfaceError,
    OSError,
)

#: framework hooks that subclasses override but that must never be reachable through ``cmd``
LIFECYCLE_HOOKS = frozenset(
    {
        "start",
        "stop",
        "run",
        "request_stop",
        "on_start",
        "on_stopping",
        "on_stop",
        "setup_consumers",
        "process_alert",
        "process_payload",
        "is_command",
    }
)

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


def identifier(name: str, what: str = "identifier") -> sql.Identifier:
    """An SQL identifier taken from configuration, checked to be a plain name.

    Identifiers are never taken from requests; the check keeps a typo in a YAML file from turning
    into a confusing SQL error (quoting alone would already make it harmless).
    """
    if not isinstance(name, str) or not _IDENTIFIER.match(name):
        raise ValueError(f"{what} {name!r} is not a plain SQL identifier ([A-Za-z_][A-Za-z0-9_]*)")
    return sql.Identifier(name)


def qualified(schema: str | None, table: str) -> sql.Composable:
    """``schema.table`` (or just ``table``), both validated as identifiers."""
    if schema:
        return sql.SQL(".").join([identifier(schema, "schema"), identifier(table, "table name")])
    return identifier(table, "table name")


class Database:
    """A few async psycopg connections to one database, reopened when they break.

    Not a general-purpose pool: it keeps up to ``max_connections`` open connections for the
    concurrent requests of one service, checks a kept connection with ``SELECT 1`` before lending
    it (a fraction of a millisecond; it makes the first request after a database restart succeed
    instead of failing on a dead session), and turns connection problems into
    a :class:`ThrowReply` with code 1200 and a message naming the server but not the password.
    """

    def __init__(
        self,
        host: str,
        port: int,
        dbname: str,
        credentials: Credentials,
        *,
        connect_timeout_s: float = 5.0,
        max_connections: int = 4,
        application_name: str = "insectarium",
        idle_check_s: float = 0.0,
    ) -> None:
        self.host, self.port, self.dbname = host, int(port), dbname
        self._credentials = credentials
        self.connect_timeout_s = connect_timeout_s
        self.application_name = application_name[:63]
        self.idle_check_s = idle_check_s
        self._idle: list[tuple[psycopg.AsyncConnection[Any], float]] = []
        self._slots = asyncio.Semaphore(max(1, max_connections))
        self._all: set[psycopg.AsyncConnection[Any]] = set()
        self._closed = False

    @property
    def where(self) -> str:
        return f"database {self.dbname} on {self.host}:{self.port}"

    def scrub(self, text: str) -> str:
        """``text`` without the password (psycopg messages normally lack it; be sure)."""
        password = self._credentials.password
        if password and len(password) >= 3:
            text = text.replace(password, "***")
        return text.strip().replace("\n", " ")

    def describe_error(self, exc: BaseException) -> str:
        return self.scrub(f"{type(exc).__name__}: {exc}")

    async def connect(self) -> psycopg.AsyncConnection[Any]:
        """A new connection (session time zone UTC: the lab stores naive UTC timestamps)."""
        try:
            conn = await psycopg.AsyncConnection.connect(
                host=self.host,
                port=self.port,
                dbname=self.dbname,
                user=self._credentials.username,
                password=self._credentials.password,
                connect_timeout=max(1, round(self.connect_timeout_s)),
                application_name=self.application_name,
                options="-c timezone=UTC",
            )
        except CONNECTION_ERRORS as exc:
            raise ThrowReply(
                "database_error",
                f"cannot connect to {self.where} as {self._credentials.username}: "
                f"{self.describe_error(exc)}",
            ) from None
        self._all.add(conn)
        return conn

    async def _discard(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self._all.discard(conn)
        with contextlib.suppress(Exception):
            await conn.close()

    async def _take(self) -> psycopg.AsyncConnection[Any]:
        while self._idle:
            conn, since = self._idle.pop()
            if conn.closed or conn.broken:
                await self._discard(conn)
                continue
            if time.monotonic() - since >= self.idle_check_s:
                try:
                    await conn.execute("SELECT 1")
                    await conn.rollback()
                except Exception:
                    log.info("a pooled connection to %s was lost; opening a new one", self.where)
                    await self._discard(conn)
                    continue
            return conn
        return await self.connect()

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """Borrow a connection.  A connection error inside the block becomes a 1200 reply.

        The block should end its transaction (``async with conn.transaction()`` does); whatever
        is left open is rolled back when the connection is returned.
        """
        if self._closed:
            raise ThrowReply("database_error", f"the connection to {self.where} is closed")
        async with self._slots:
            conn = await self._take()
            try:
                yield conn
            except CONNECTION_ERRORS as exc:
                if not (conn.broken or conn.closed or isinstance(exc, OSError)):
                    # an OperationalError on a working connection (e.g. a value too large for
                    # an index, a statement timeout) is the statement's problem, not the link's
                    await self._give_back(conn, rollback=True)
                    raise ThrowReply(
                        "database_error",
                        f"{self.where} refused the statement: {self.describe_error(exc)}",
                    ) from None
                await self._discard(conn)
                raise ThrowReply(
                    "database_error",
                    f"lost the connection to {self.where}: {self.describe_error(exc)}",
                ) from None
            except BaseException:
                await self._give_back(conn, rollback=True)
                raise
            else:
                await self._give_back(conn, rollback=True)

    async def _give_back(self, conn: psycopg.AsyncConnection[Any], rollback: bool) -> None:
        if conn.closed or conn.broken or self._closed:
            await self._discard(conn)
            return
        if rollback and conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            try:
                await conn.rollback()
            except Exception:
                await self._discard(conn)
                return
        self._idle.append((conn, time.monotonic()))

    async def close(self) -> None:
        self._closed = True
        for conn in list(self._all):
            await self._discard(conn)
        self._idle.clear()


def database_error(db: Database, exc: BaseException, doing: str) -> ThrowReply:
    """A 1200 reply for a statement the database refused (message scrubbed)."""
    return ThrowReply("database_error", f"{doing} failed in {db.where}: {db.describe_error(exc)}")


class PostgreSQLService(Service):
    """A service whose endpoints talk to one PostgreSQL database (dragonfly's PostgreSQLInterface).

    Children reach the database through ``self.service.db``.  The connection is tried in
    :meth:`on_start` so a wrong host or password shows up in the log at once, but a database that
    is not up yet does not stop the service from starting: every request retries.
    """

    #: a kept connection idle this long is pinged before use (the logger retries instead)
    database_idle_check_s: float = 0.0

    def __init__(
        self,
        name: str,
        *,
        database_server: str = "localhost",
        database_port: int = 5432,
        database_name: str = "sc_db",
        database_connect_timeout_s: float = 5.0,
        database_max_connections: int = 4,
        **kwargs: Any,
    ) -> None:
        super().__init__(name, **kwargs)
        self.database_server = database_server
        self.database_port = int(database_port)
        self.database_name = database_name
        self.database_connect_timeout_s = float(database_connect_timeout_s)
        self.database_max_connections = int(database_max_connections)
        self._db: Database | None = None

    def _make_database(self) -> Database:
        return Database(
            self.database_server,
            self.database_port,
            self.database_name,
            self.authentication.postgres,
            connect_timeout_s=self.database_connect_timeout_s,
            max_connections=self.database_max_connections,
            application_name=self.name,
            idle_check_s=self.database_idle_check_s,
        )

    def is_command(self, name: str) -> bool:
        """Life-cycle hooks overridden here or in subclasses are not ``cmd`` targets.

        (The runtime exposes every public method defined outside its own classes, which would
        make ``dl-agent cmd <service> -s stop`` stop the service.)
        """
        if name in LIFECYCLE_HOOKS:
            return False
        return super().is_command(name)

    @property
    def db(self) -> Database:
        if self._db is None:
            raise ThrowReply("database_error", f"service {self.name} is not started")
        return self._db

    async def on_start(self) -> None:
        self._db = self._make_database()
        try:
            async with self._db.connection() as conn:
                await conn.execute("SELECT 1")
        except ThrowReply as exc:
            log.warning("%s; the service starts anyway and retries on each request", exc.message)
        else:
            log.info("%s connected to %s", self.name, self._db.where)

    async def on_stop(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None
