"""Where the benchmarks run: a broker, a fresh database and our services as processes.

By default the broker and the database server are PRIVATE (``insectarium.testing.servers``), so a
benchmark neither disturbs nor is disturbed by anything else on the machine.  ``--amqp-url`` /
``--pg-dsn`` use existing servers instead; then the benchmark isolates itself in a throw-away
RabbitMQ vhost (when ``rabbitmqctl`` can create one) and always in a throw-away database.

Child processes get a private ``HOME`` holding ``.dripline_mesh.yaml`` and
``.dripline_authentications.yaml``: ``dl-serve`` and ``dl-agent`` then reach the right broker, vhost
and database with exactly the command lines the lab uses, and no password is ever on a command line.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlparse

import psutil
import yaml

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "files" / "configs"


#: what a production PostgreSQL does by default (the private test cluster disables these)
DURABLE_PG = {"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"}


class NotRunnable(Exception):
    """A benchmark cannot run here (missing config, server, schema …): reported as NOT RUN."""


@dataclass
class Broker:
    host: str
    port: int
    user: str
    password: str = field(repr=False)
    vhost: str = "/"

    @classmethod
    def from_url(cls, url: str) -> Broker:
        u = urlparse(url)
        vhost = unquote(u.path[1:]) if u.path not in ("", "/") else "/"
        return cls(
            u.hostname or "localhost",
            u.port or 5672,
            unquote(u.username or "guest"),
            unquote(u.password or "guest"),
            vhost,
        )

    @property
    def url(self) -> str:
        return (
            f"amqp://{quote(self.user, safe='')}:{quote(self.password, safe='')}@"
            f"{self.host}:{self.port}/{quote(self.vhost, safe='')}"
        )

    def mesh(self) -> dict[str, Any]:
        return {"broker": self.host, "broker_port": self.port, "vhost": self.vhost}


def dsn_with_db(dsn: str, dbname: str) -> str:
    """The same server and role, another database (works for URL and key=value DSNs)."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    params = conninfo_to_dict(dsn)
    params["dbname"] = dbname
    return make_conninfo(**params)


def dsn_params(dsn: str) -> dict[str, Any]:
    from psycopg.conninfo import conninfo_to_dict

    return conninfo_to_dict(dsn)


class Environment:
    """Servers, a fresh database with the lab schema, a private HOME; torn down on close."""

    def __init__(
        self,
        amqp_url: str | None,
        pg_dsn: str | None,
        *,
        keep: bool = False,
        schema_file: str | None = None,
    ) -> None:
        self.amqp_url = amqp_url
        self.pg_dsn = pg_dsn
        self.keep = keep
        self.schema_file = schema_file
        self.workdir = Path(tempfile.mkdtemp(prefix="insectarium-bench-"))
        self.home = self.workdir / "home"
        self.logs = self.workdir / "logs"
        self.data_dir = self.workdir / "data"
        self.broker: Broker | None = None
        self.admin_dsn: str | None = None
        self.dbname = f"bench_{dt.datetime.now(dt.UTC):%Y%m%d_%H%M%S}_{os.getpid()}"
        self.dsn: str | None = None
        self.private = False
        self.info: dict[str, Any] = {}
        self._servers: list[Any] = []
        self.processes: list[ServiceProcess] = []
        self._vhost_created: str | None = None
        self._db_created = False
        self.schema_error: str | None = None

    # ----------------------------------------------------------------- set-up
    def open(self) -> None:
        for d in (self.home, self.logs, self.data_dir):
            d.mkdir(parents=True, exist_ok=True)
        # both servers start at once: a private RabbitMQ alone takes ~10 s to boot
        with ThreadPoolExecutor(max_workers=2) as pool:
            broker = pool.submit(self._open_broker)
            database = pool.submit(self._open_database)
            broker.result()
            database.result()
        self._write_home()

    def _open_broker(self) -> None:
        if self.amqp_url:
            broker = Broker.from_url(self.amqp_url)
            vhost = f"insectarium_bench_{os.getpid()}"
            if broker.vhost == "/" and shutil.which("rabbitmqctl") and _is_local(broker.host):
                perms = ["set_permissions", "-p", vhost, broker.user, ".*", ".*", ".*"]
                ok = _run_quiet(["rabbitmqctl", "-q", "add_vhost", vhost]) and _run_quiet(
                    ["rabbitmqctl", "-q", *perms]
                )
                if ok:
                    self._vhost_created = vhost
                    candidate = Broker(
                        broker.host, broker.port, broker.user, broker.password, vhost
                    )
                    if _can_connect(candidate):  # rabbitmqctl may have talked to another node
                        broker.vhost = vhost
            self.broker = broker
            self.info["broker"] = {"private": False, "vhost": broker.vhost}
        else:
            try:
                from insectarium.testing.servers import RabbitMQServer
            except ImportError as exc:
                raise NotRunnable(
                    f"no private RabbitMQ (insectarium.testing.servers: {exc}); "
                    "give --amqp-url to use an existing broker"
                ) from None
            server = RabbitMQServer()
            self._servers.append(server)
            _start(server)
            self.broker = Broker.from_url(server.url)
            self.private = True
            self.info["broker"] = {"private": True}

    def _open_database(self) -> None:
        if self.pg_dsn:
            self.admin_dsn = self.pg_dsn
            self.info["postgres"] = {"private": False}
        else:
            try:
                from insectarium.testing.servers import PostgresServer
            except ImportError as exc:
                raise NotRunnable(
                    f"no private PostgreSQL (insectarium.testing.servers: {exc}); "
                    "give --pg-dsn to use an existing server"
                ) from None
            # the lab's database keeps PostgreSQL's durable defaults; a test cluster turns them
            # off for speed, which would flatter a commit-per-value logger
            server = PostgresServer(settings=DURABLE_PG)
            self._servers.append(server)
            _start(server)
            self.admin_dsn = server.dsn("postgres")
            self.info["postgres"] = {"private": True}
        import psycopg

        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.dbname}"')
            self._db_created = True
            self.info["postgres"]["version"] = conn.execute("SHOW server_version").fetchone()[0]
        self.dsn = dsn_with_db(self.admin_dsn, self.dbname)
        try:
            self._apply_schema()
        except NotRunnable as exc:
            self.schema_error = str(exc)

    def _apply_schema(self) -> None:
        """The lab schema and seed, through the project's migration runner (as production)."""
        import psycopg

        assert self.dsn is not None
        if self.schema_file:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                conn.execute(Path(self.schema_file).read_text(encoding="utf-8"))
            self.info["schema"] = f"file {self.schema_file}"
            return
        try:
            from insectarium.db import migrations
        except ImportError as exc:
            raise NotRunnable(f"schema runner insectarium.db.migrations missing ({exc})") from None
        apply = _find_callable(migrations, ("migrate", "apply_migrations", "apply", "upgrade"))
        if apply is None:
            raise NotRunnable("insectarium.db.migrations has no migrate()/apply() function")
        try:
            _call_migrations(apply, self.dsn)
        except Exception as exc:
            raise NotRunnable(f"migrations failed: {type(exc).__name__}: {exc}") from None
        self.info["schema"] = f"insectarium.db.migrations.{apply.__name__}"

    def require_schema(self) -> None:
        if self.schema_error:
            raise NotRunnable(self.schema_error)

    def _write_home(self) -> None:
        assert self.broker is not None and self.dsn is not None
        pg = dsn_params(self.dsn)
        auth = {
            "dripline": {"username": self.broker.user, "password": self.broker.password},
            "postgres": {
                "username": pg.get("user") or "postgres",
                "password": pg.get("password") or "",
            },
        }
        self.auth_file.write_text(yaml.safe_dump(auth), encoding="utf-8")
        self.auth_file.chmod(0o600)
        mesh = {"dripline_mesh": {**self.broker.mesh(), "max_connection_attempts": 3}}
        (self.home / ".dripline_mesh.yaml").write_text(yaml.safe_dump(mesh), encoding="utf-8")

    @property
    def auth_file(self) -> Path:
        return self.home / ".dripline_authentications.yaml"

    def db_overrides(self) -> list[str]:
        """``key=value`` words that point a DB service at our database (as Ansible does)."""
        assert self.dsn is not None
        pg = dsn_params(self.dsn)
        return [
            f"database_server={pg.get('host') or 'localhost'}",
            f"database_port={pg.get('port') or 5432}",
            f"database_name={self.dbname}",
        ]

    def child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["HOME"] = str(self.home)
        for var in ("DRIPLINE_USER", "DRIPLINE_PASSWORD", "POSTGRES_USER", "POSTGRES_PASSWORD"):
            env.pop(var, None)
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def tool(self, name: str) -> str:
        """A console script of this venv (``dl-serve``, ``dl-agent``)."""
        candidate = Path(sys.executable).parent / name
        if candidate.exists():
            return str(candidate)
        found = shutil.which(name)
        if not found:
            raise NotRunnable(f"{name} not found next to {sys.executable} nor on PATH")
        return found

    # ----------------------------------------------------------------- tear-down
    def close(self) -> None:
        if self._db_created and self.admin_dsn and not self.keep:
            import psycopg

            with (
                contextlib.suppress(Exception),
                psycopg.connect(self.admin_dsn, autocommit=True) as conn,
            ):
                conn.execute(f'DROP DATABASE IF EXISTS "{self.dbname}" WITH (FORCE)')
        if self._vhost_created:
            _run_quiet(["rabbitmqctl", "-q", "delete_vhost", self._vhost_created])
        for server in reversed(self._servers):
            with contextlib.suppress(Exception):
                (getattr(server, "close", None) or server.stop)()
        if not self.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)


def _is_local(host: str) -> bool:
    return host in ("localhost", "127.0.0.1", "::1")


def _run_quiet(cmd: list[str]) -> bool:
    try:
        return subprocess.run(cmd, capture_output=True, timeout=60, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _can_connect(broker: Broker) -> bool:
    import asyncio

    import aio_pika

    async def probe() -> None:
        conn = await aio_pika.connect(broker.url, timeout=10)
        await conn.close()

    try:
        asyncio.run(probe())
    except Exception:
        return False
    return True


def _start(server: Any) -> None:
    start = getattr(server, "start", None)
    if callable(start):
        start()


def _find_callable(module: Any, names: tuple[str, ...]) -> Any:
    for name in names:
        fn = getattr(module, name, None)
        if callable(fn):
            return fn
    return None


def _call_migrations(apply: Any, dsn: str) -> None:
    """Call the runner with the DSN, asking for the seed when it takes such a flag."""
    import inspect

    params = inspect.signature(apply).parameters
    kwargs: dict[str, Any] = {}
    if "seed" in params:
        kwargs["seed"] = True
    if "with_seed" in params:
        kwargs["with_seed"] = True
    result = apply(dsn, **kwargs)
    if inspect.isawaitable(result):
        import asyncio

        asyncio.run(result)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- processes
class ServiceProcess:
    """A ``dl-serve`` (or baseline) process: started, waited for, measured, stopped.

    Readiness is the service's own ``service <name> started`` log line (or a given marker): by
    then its queues are declared and bound, so nothing sent afterwards is lost.
    """

    def __init__(
        self,
        env: Environment,
        name: str,
        argv: list[str],
        *,
        ready_marker: str | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.env = env
        self.extra_env = extra_env or {}
        self.name = name
        self.argv = argv
        self.ready_marker = ready_marker or f"service {name} started"
        self.log_path = env.logs / f"{name}-{uuid.uuid4().hex[:6]}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.rss_start: int | None = None
        self.rss_last: int | None = None
        self.start_s: float | None = None
        self._t0 = 0.0
        #: what load the process had when ``rss_last`` was read (memory benchmark)
        self.phase = ""
        #: VmRSS read under each ``phase`` (the last reading of each), for the memory table
        self.readings: dict[str, int] = {}
        #: VmRSS after each run of the ``runs`` benchmark (does a service grow run by run?)
        self.per_run: list[int] = []

    @classmethod
    def dl_serve(cls, env: Environment, name: str, config: str, *overrides: str) -> ServiceProcess:
        path = CONFIGS / config
        if not path.is_file():
            raise NotRunnable(f"files/configs/{config} missing")
        argv = [env.tool("dl-serve"), "-c", str(path), "--auth-file", str(env.auth_file)]
        return cls(env, name, [*argv, *overrides])

    @classmethod
    def baseline(cls, env: Environment, what: str, ready_marker: str, *args: str) -> ServiceProcess:
        """One of :mod:`bench.baselines`' servers, reaching the same broker and database."""
        assert env.broker is not None and env.dsn is not None
        extra = {
            "BENCH_AMQP_URL": env.broker.url,
            "BENCH_PG_DSN": env.dsn,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        }
        argv = [sys.executable, "-m", "bench.baselines", what, *args]
        return cls(env, f"baseline-{what}", argv, ready_marker=ready_marker, extra_env=extra)

    def start(self, timeout_s: float = 30.0) -> ServiceProcess:
        self.launch()
        return self.wait_ready(timeout_s)

    def launch(self) -> ServiceProcess:
        """Start the process without waiting (several services can then start in parallel)."""
        self._t0 = time.perf_counter()
        self.env.processes.append(self)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**self.env.child_env(), **self.extra_env},
                cwd=self.env.workdir,
                start_new_session=True,
            )
        return self

    def wait_ready(self, timeout_s: float = 30.0) -> ServiceProcess:
        assert self.proc is not None
        deadline = self._t0 + timeout_s
        while time.perf_counter() < deadline:
            if self.ready_marker in self.log_text():
                self.start_s = time.perf_counter() - self._t0
                self.rss_start = self.rss()
                return self
            if self.proc.poll() is not None:
                raise NotRunnable(
                    f"{self.name} exited with {self.proc.returncode} at start: {self.tail()}"
                )
            time.sleep(0.02)
        self.stop()
        raise NotRunnable(f"{self.name} not ready after {timeout_s:g} s: {self.tail()}")

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, lines: int = 6) -> str:
        text = self.log_text().strip().splitlines()[-lines:]
        return " | ".join(text) if text else "(no output)"

    def rss(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None
        try:
            value = int(psutil.Process(self.proc.pid).memory_info().rss)
        except psutil.Error:
            return None
        self.rss_last = value
        if self.phase:
            self.readings[self.phase] = value
        return value

    def cpu_s(self) -> float | None:
        """User + system CPU seconds used so far (load-independent cost, unlike wall time)."""
        if self.proc is None or self.proc.poll() is not None:
            return None
        try:
            t = psutil.Process(self.proc.pid).cpu_times()
        except psutil.Error:
            return None
        return float(t.user + t.system)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout_s: float = 10.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:  # no RSS reading here: it would carry the last phase's name
            self.proc.terminate()
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    def __enter__(self) -> ServiceProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
