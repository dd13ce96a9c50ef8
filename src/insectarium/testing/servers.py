"""Private, throw-away PostgreSQL and RabbitMQ servers for tests and benchmarks.

Both are context managers (``with PostgresServer() as pg: ...``) and also offer explicit
``start()`` / ``stop()``.  Everything lives in a fresh temporary directory (removed on
``close()`` / context exit, unless ``keep=True``) and listens on free ports of 127.0.0.1 only.

PostgreSQL (``PostgresServer``)
    Debian's ``/usr/lib/postgresql/<newest>/bin/initdb`` + ``pg_ctl``.  initdb refuses to run as
    root, so as root the data directory is owned by ``postgres`` and the server runs via
    ``runuser -u postgres --``.  The superuser ``postgres`` is trusted on the Unix socket (in the
    temp dir) and on 127.0.0.1; every other role needs its password over TCP (scram-sha-256), so
    ``create_role(name, password)`` gives a realistic password-protected login.  ``fsync=off``.

RabbitMQ (``RabbitMQServer``)
    Debian's ``/usr/lib/rabbitmq/bin/rabbitmq-server`` as a private node
    ``insect-<random>@localhost`` with its own AMQP port, distribution port, mnesia, logs, config,
    enabled-plugins file (none) and ``HOME`` (Erlang cookie).  The node gets its OWN epmd on a
    private port (``ERL_EPMD_PORT``), started by us as a child process and stopped by us, so no
    shared epmd is touched and nothing is left behind; the node itself is told
    ``-start_epmd false``.  The only user is a dedicated administrator (``default_user`` in the
    config; no ``guest``) with full permissions on ``/``.  ``stop()`` + ``start()`` restart the same
    node on the same ports with the same data (durable queues and the user survive).
    Teardown: ``rabbitmqctl stop`` is not needed: SIGTERM to the node's process group (Erlang
    shuts down cleanly), SIGKILL after a grace period, then the private epmd.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

_LOCALHOST = "127.0.0.1"


class ServerError(RuntimeError):
    """A test server could not be started (message includes the end of its log)."""


# --------------------------------------------------------------------------- helpers
def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((_LOCALHOST, 0))
        return int(s.getsockname()[1])


def _is_root() -> bool:
    return os.geteuid() == 0


def _tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


def _kill_group(proc: subprocess.Popen[Any] | None, grace_s: float = 15.0) -> None:
    """SIGTERM the process group of ``proc`` (a session leader), SIGKILL after ``grace_s``."""
    if proc is None:
        return
    pgid = proc.pid
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace_s)
    # Children (erl_child_setup, inet_gethost, ...) may outlive the leader: make sure.
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and _group_alive(pgid):
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _wait_port(port: int, timeout_s: float, proc: subprocess.Popen[Any] | None = None) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(0.5)
            if s.connect_ex((_LOCALHOST, port)) == 0:
                return True
        time.sleep(0.05)
    return False


# --------------------------------------------------------------------------- stale servers
# Each server directory holds owner.json: the creating process (pid + start time) and what to
# kill.  A later launcher reaps the servers of owners that died without tearing down (killed
# test runs): see reap_stale_servers().
_PREFIXES = ("insectarium-pg-", "insectarium-mq-")


def _proc_start(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _proc_mentions(pid: int, needle: str) -> bool:
    """Whether a process's command line or environment contains ``needle``."""
    for part in ("cmdline", "environ"):
        with contextlib.suppress(OSError):
            if needle.encode() in Path(f"/proc/{pid}/{part}").read_bytes():
                return True
    return False


def reap_stale_servers(base_dir: str | os.PathLike[str] | None = None) -> list[Path]:
    """Stop servers whose creating process is gone; remove their directories.

    Only directories named ``insectarium-pg-*`` / ``insectarium-mq-*`` with an ``owner.json``
    are considered, and only processes that still refer to that directory (or the recorded
    private epmd port) are signalled.  Returns the directories reaped.
    """
    base = Path(base_dir or tempfile.gettempdir())
    reaped: list[Path] = []
    for d in sorted(base.glob("insectarium-[pm][gq]-*")):
        if not d.name.startswith(_PREFIXES):
            continue
        try:
            info = json.loads((d / "owner.json").read_text())
            owner, started = int(info["pid"]), str(info["start"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if _proc_start(owner) == started:
            continue  # the owner is alive
        with contextlib.suppress(OSError, ValueError, ProcessLookupError, PermissionError):
            pid = int((d / "data" / "postmaster.pid").read_text().splitlines()[0])
            if _proc_mentions(pid, str(d)):
                os.kill(pid, signal.SIGQUIT)
        for pgid in info.get("pgids", []):
            with contextlib.suppress(ProcessLookupError, PermissionError, TypeError, ValueError):
                if _proc_mentions(int(pgid), str(d)) or _proc_mentions(
                    int(pgid), f"-port\0{info.get('epmd_port')}\0"
                ):
                    os.killpg(int(pgid), signal.SIGKILL)
        if not info.get("keep"):
            shutil.rmtree(d, ignore_errors=True)
        reaped.append(d)
    return reaped


class _Server:
    def __init__(self, *, keep: bool = False, base_dir: str | os.PathLike[str] | None = None):
        self.keep = keep
        self._base_dir = base_dir
        self.workdir: Path | None = None
        self.startup_s: float | None = None

    def _make_workdir(self, prefix: str) -> Path:
        if self.workdir is None:
            with contextlib.suppress(Exception):
                reap_stale_servers(self._base_dir)
            self.workdir = Path(tempfile.mkdtemp(prefix=prefix, dir=self._base_dir))
            self.workdir.chmod(0o755)
            self._write_owner()
        return self.workdir

    def _write_owner(self, **extra: Any) -> None:
        """Record this process as the owner (see :func:`reap_stale_servers`)."""
        if self.workdir is None:
            return
        info = {"pid": os.getpid(), "start": _proc_start(os.getpid()), "keep": self.keep, **extra}
        (self.workdir / "owner.json").write_text(json.dumps(info), encoding="utf-8")

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def _stop_at_exit(self) -> None:
        """Stop (not remove) the server when the interpreter exits without ``close()``."""
        if not getattr(self, "_atexit_registered", False):
            atexit.register(self._atexit_stop)
            self._atexit_registered = True

    def _atexit_stop(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def close(self) -> None:
        """Stop the server and remove its directory (unless ``keep``)."""
        try:
            self.stop()
        finally:
            if self.workdir is not None and not self.keep:
                shutil.rmtree(self.workdir, ignore_errors=True)
                self.workdir = None

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# --------------------------------------------------------------------------- PostgreSQL
def find_pg_bindir() -> Path:
    """``/usr/lib/postgresql/<newest version>/bin`` (env ``INSECTARIUM_PG_BINDIR`` overrides)."""
    if os.environ.get("INSECTARIUM_PG_BINDIR"):
        return Path(os.environ["INSECTARIUM_PG_BINDIR"])
    root = Path("/usr/lib/postgresql")
    versions = sorted(
        (p for p in root.glob("*") if (p / "bin" / "initdb").exists()),
        key=lambda p: [int(x) for x in re.findall(r"\d+", p.name)] or [0],
    )
    if versions:
        return versions[-1] / "bin"
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    raise ServerError("PostgreSQL server binaries not found (apt-get install postgresql)")


class PostgresServer(_Server):
    """A private PostgreSQL cluster (``private = True``).

    >>> with PostgresServer() as pg:
    ...     pg.create_database("lab")
    ...     dsn = pg.dsn("lab")   # host=127.0.0.1 port=… user=postgres dbname=lab
    """

    superuser = "postgres"
    private = True

    def __init__(
        self,
        *,
        port: int | None = None,
        keep: bool = False,
        base_dir: str | os.PathLike[str] | None = None,
        settings: dict[str, str] | None = None,
    ):
        super().__init__(keep=keep, base_dir=base_dir)
        self.port = port or 0
        self.host = _LOCALHOST
        self.bindir = find_pg_bindir()
        self.settings = {
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "200",
            "shared_buffers": "64MB",
            "timezone": "UTC",
            **(settings or {}),
        }
        self._running = False

    # paths
    @property
    def datadir(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "data"

    @property
    def socket_dir(self) -> Path:
        assert self.workdir is not None
        return self.workdir

    @property
    def logfile(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "postgresql.log"

    def _as_owner(self, argv: list[str]) -> list[str]:
        if _is_root():
            return ["runuser", "-u", "postgres", "--", *argv]
        return argv

    def _run(self, argv: list[str], what: str) -> None:
        result = subprocess.run(
            self._as_owner(argv), capture_output=True, text=True, check=False, timeout=120
        )
        if result.returncode != 0:
            raise ServerError(
                f"PostgreSQL {what} failed ({result.returncode}): "
                f"{(result.stderr or result.stdout).strip()}\n{_tail(self.logfile)}"
            )

    def _initdb(self) -> None:
        workdir = self._make_workdir("insectarium-pg-")
        if _is_root():
            shutil.chown(workdir, "postgres", "postgres")
        self._run(
            [
                str(self.bindir / "initdb"),
                "-D",
                str(self.datadir),
                "-U",
                self.superuser,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
            ],
            "initdb",
        )
        hba = (
            "# insectarium test server: the superuser is trusted, other roles use passwords\n"
            f"local all all trust\n"
            f"host all {self.superuser} 127.0.0.1/32 trust\n"
            "host all all 127.0.0.1/32 scram-sha-256\n"
        )
        conf_hba = self.datadir / "pg_hba.conf"
        conf_hba.write_text(hba, encoding="utf-8")
        if _is_root():
            shutil.chown(conf_hba, "postgres", "postgres")

    def start(self) -> Self:
        if self._running:
            return self
        t0 = time.monotonic()
        if self.workdir is None or not (self.datadir / "PG_VERSION").exists():
            self._initdb()
        if not self.port:
            self.port = free_port()
        options = [
            f"-p {self.port}",
            f"-k {self.socket_dir}",
            "-c listen_addresses=127.0.0.1",
            *(f"-c {k}={v}" for k, v in self.settings.items()),
        ]
        self._run(
            [
                str(self.bindir / "pg_ctl"),
                "-D",
                str(self.datadir),
                "-l",
                str(self.logfile),
                "-o",
                " ".join(options),
                "-w",
                "-t",
                "60",
                "start",
            ],
            "start",
        )
        self._running = True
        self._stop_at_exit()
        self.startup_s = time.monotonic() - t0
        return self

    def stop(self) -> None:
        if not self._running:
            return
        self._running = False
        try:
            self._run(
                [
                    str(self.bindir / "pg_ctl"),
                    "-D",
                    str(self.datadir),
                    "-m",
                    "immediate",
                    "-w",
                    "-t",
                    "30",
                    "stop",
                ],
                "stop",
            )
        except (ServerError, subprocess.TimeoutExpired):
            self._kill_postmaster()

    def _kill_postmaster(self) -> None:
        pidfile = self.datadir / "postmaster.pid"
        with contextlib.suppress(OSError, ValueError, ProcessLookupError):
            pid = int(pidfile.read_text().splitlines()[0])
            os.kill(pid, signal.SIGQUIT)

    # connection details
    def dsn(
        self, dbname: str = "postgres", user: str | None = None, password: str | None = None
    ) -> str:
        """libpq conninfo for a database of this server (TCP on 127.0.0.1)."""
        from psycopg.conninfo import make_conninfo

        params: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "user": user or self.superuser,
            "dbname": dbname,
        }
        if password is not None:
            params["password"] = password
        return make_conninfo(**params)

    def url(
        self, dbname: str = "postgres", user: str | None = None, password: str | None = None
    ) -> str:
        """The same as a ``postgresql://`` URL."""
        from urllib.parse import quote

        auth = quote(user or self.superuser, safe="")
        if password is not None:
            auth += ":" + quote(password, safe="")
        return f"postgresql://{auth}@{self.host}:{self.port}/{quote(dbname, safe='')}"

    def _admin(self) -> Any:
        import psycopg

        return psycopg.connect(self.dsn("postgres"), autocommit=True)

    def create_database(self, name: str, owner: str | None = None) -> str:
        """Create a database (from template0, UTF-8); return its DSN (as the superuser)."""
        from psycopg import sql

        with self._admin() as conn:
            stmt = sql.SQL("CREATE DATABASE {} TEMPLATE template0 ENCODING 'UTF8'").format(
                sql.Identifier(name)
            )
            if owner:
                stmt += sql.SQL(" OWNER {}").format(sql.Identifier(owner))
            conn.execute(stmt)
        return self.dsn(name)

    def drop_database(self, name: str) -> None:
        from psycopg import sql

        with self._admin() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    def create_role(
        self,
        name: str,
        password: str | None = None,
        *,
        login: bool = True,
        superuser: bool = False,
        createdb: bool = False,
    ) -> str:
        """Create a role (password-protected over TCP); return a DSN for it (db ``postgres``).

        A password is generated when none is given; it is in the returned DSN.
        """
        from psycopg import sql

        password = password if password is not None else secrets.token_urlsafe(16)
        flags = [
            "LOGIN" if login else "NOLOGIN",
            "SUPERUSER" if superuser else "NOSUPERUSER",
            "CREATEDB" if createdb else "NOCREATEDB",
        ]
        with self._admin() as conn:
            conn.execute(
                sql.SQL("CREATE ROLE {} " + " ".join(flags) + " PASSWORD {}").format(
                    sql.Identifier(name), sql.Literal(password)
                )
            )
        return self.dsn("postgres", user=name, password=password)


# --------------------------------------------------------------------------- RabbitMQ
RABBITMQ_SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
RABBITMQCTL = Path("/usr/lib/rabbitmq/bin/rabbitmqctl")


def rabbit_password_hash(password: str) -> str:
    """RabbitMQ's ``rabbit_password_hashing_sha256`` hash (for definition files)."""
    salt = secrets.token_bytes(4)
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def _epmd_binary() -> str:
    found = shutil.which("epmd") or next(
        (str(p) for p in sorted(Path("/usr/lib/erlang").glob("erts-*/bin/epmd"))), None
    )
    if not found:
        raise ServerError("epmd not found (Erlang is not installed?)")
    return found


@dataclass(frozen=True)
class TLSFiles:
    """PEM files of a TLS listener: the CA that signs clients, the server's cert and key."""

    ca: Path
    cert: Path
    key: Path


class RabbitMQServer(_Server):
    """A private RabbitMQ node.

    >>> with RabbitMQServer() as mq:
    ...     mq.url        # amqp://insect_test:<pw>@127.0.0.1:<port>/
    ...     mq.ctl("list_queues")
    ...     mq.stop(); mq.start()      # same node, same port, same data
    """

    private = True

    def __init__(
        self,
        *,
        user: str = "insect_test",
        password: str | None = None,
        keep: bool = False,
        base_dir: str | os.PathLike[str] | None = None,
        start_timeout_s: float = 60.0,
        await_startup: bool = True,
        tls: TLSFiles | None = None,
        plain: bool = True,
    ):
        super().__init__(keep=keep, base_dir=base_dir)
        if not plain and tls is None:
            raise ValueError("plain=False needs tls (the node would have no listener)")
        if not RABBITMQ_SERVER.exists():
            raise ServerError(f"{RABBITMQ_SERVER} not found (apt-get install rabbitmq-server)")
        self.user = user
        self.password = password or secrets.token_urlsafe(16)
        self.nodename = f"insect-{secrets.token_hex(4)}@localhost"
        self.port = 0
        self.tls = tls
        self.plain = plain
        self.tls_port = 0
        self.dist_port = 0
        self.epmd_port = 0
        self.start_timeout_s = start_timeout_s
        self.await_startup = await_startup
        self._proc: subprocess.Popen[bytes] | None = None
        self._epmd: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        from urllib.parse import quote

        return (
            f"amqp://{quote(self.user, safe='')}:{quote(self.password, safe='')}"
            f"@{_LOCALHOST}:{self.port}/"
        )

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def logfile(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "log" / f"{self.nodename}.log"

    def _prepare(self) -> None:
        workdir = self._make_workdir("insectarium-mq-")
        for sub in ("home", "mnesia", "log"):
            (workdir / sub).mkdir(exist_ok=True)
        if not self.port:
            self.port = free_port()
            self.dist_port = free_port()
            self.epmd_port = free_port()
            if self.tls is not None:
                self.tls_port = free_port()
        (workdir / "enabled_plugins").write_text("[].\n", encoding="utf-8")
        (workdir / "rabbitmq-env.conf").write_text("", encoding="utf-8")
        (workdir / "advanced.config").write_text("[].\n", encoding="utf-8")
        conf = [
            f"default_user = {self.user}",
            f"default_pass = {self.password}",
            "default_vhost = /",
            "default_permissions.configure = .*",
            "default_permissions.read = .*",
            "default_permissions.write = .*",
            "default_user_tags.administrator = true",
            "log.console = false",
            "log.file.level = info",
            "disk_free_limit.absolute = 1MB",
            "vm_memory_high_watermark.relative = 0.8",
        ]
        if not self.plain:
            conf.append("listeners.tcp = none")
        if self.tls is not None:
            conf += [
                f"listeners.ssl.default = {_LOCALHOST}:{self.tls_port}",
                f"ssl_options.cacertfile = {self.tls.ca}",
                f"ssl_options.certfile = {self.tls.cert}",
                f"ssl_options.keyfile = {self.tls.key}",
                "ssl_options.verify = verify_peer",
                "ssl_options.fail_if_no_peer_cert = false",
            ]
        (workdir / "rabbitmq.conf").write_text("\n".join(conf) + "\n", encoding="utf-8")
        (workdir / "rabbitmq.conf").chmod(0o600)

    def _env(self) -> dict[str, str]:
        assert self.workdir is not None
        w = self.workdir
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("RABBITMQ_", "ERL_", "CONF_ENV_FILE"))
        }
        env.update(
            HOME=str(w / "home"),
            RABBITMQ_NODENAME=self.nodename,
            RABBITMQ_NODE_IP_ADDRESS=_LOCALHOST,
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=str(w / "mnesia"),
            RABBITMQ_LOG_BASE=str(w / "log"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(w / "enabled_plugins"),
            RABBITMQ_CONFIG_FILE=str(w / "rabbitmq.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(w / "advanced.config"),
            RABBITMQ_CONF_ENV_FILE=str(w / "rabbitmq-env.conf"),
            RABBITMQ_PID_FILE=str(w / "rabbitmq.pid"),
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=(
                "-start_epmd false -kernel inet_dist_use_interface {127,0,0,1}"
            ),
            RABBITMQ_CTL_ERL_ARGS="-start_epmd false",
            ERL_EPMD_PORT=str(self.epmd_port),
            ERL_EPMD_ADDRESS=_LOCALHOST,
        )
        return env

    def _start_epmd(self) -> None:
        if self._epmd is not None and self._epmd.poll() is None:
            return
        env = self._env()
        self._epmd = subprocess.Popen(
            [_epmd_binary(), "-port", str(self.epmd_port), "-address", _LOCALHOST],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        if not _wait_port(self.epmd_port, 10, self._epmd):
            raise ServerError(f"private epmd did not start on port {self.epmd_port}")

    def start(self) -> Self:
        if self.running:
            return self
        t0 = time.monotonic()
        self._prepare()
        self._stop_at_exit()
        assert self.workdir is not None
        self._start_epmd()
        out = (self.workdir / "log" / "stdout.log").open("ab")
        try:
            self._proc = subprocess.Popen(
                [str(RABBITMQ_SERVER)],
                env=self._env(),
                cwd=str(self.workdir),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            out.close()
        assert self._epmd is not None
        self._write_owner(pgids=[self._proc.pid, self._epmd.pid], epmd_port=self.epmd_port)
        ok = self._wait_amqp(self.start_timeout_s)
        if not ok:
            detail = _tail(self.logfile) + "\n" + _tail(self.workdir / "log" / "stdout.log")
            self.stop()
            raise ServerError(f"RabbitMQ node {self.nodename} did not start:\n{detail}")
        if self.await_startup:
            self.ctl("await_startup", timeout_s=self.start_timeout_s)
        self.startup_s = time.monotonic() - t0
        return self

    def _wait_amqp(self, timeout_s: float) -> bool:
        """Wait until the port answers the AMQP 0-9-1 header with a Connection.Start frame."""
        import ssl

        port = self.port if self.plain else self.tls_port
        wrap: Any = None
        if not self.plain:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE  # only asking whether the listener is up
            wrap = ctx.wrap_socket
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                return False
            with (
                contextlib.suppress(OSError),
                socket.create_connection((_LOCALHOST, port), timeout=1.0) as raw,
                wrap(raw) if wrap else contextlib.nullcontext(raw) as s,
            ):
                s.sendall(b"AMQP\x00\x00\x09\x01")
                s.settimeout(2.0)
                frame = s.recv(7)
                if len(frame) == 7 and frame[0] == 1:
                    return True
            time.sleep(0.1)
        return False

    def ctl(self, *args: str, timeout_s: float = 60.0, check: bool = True) -> str:
        """Run ``rabbitmqctl -n <node> <args>`` against this node; return its stdout."""
        result = subprocess.run(
            [str(RABBITMQCTL), "-n", self.nodename, *args],
            env=self._env(),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        if check and result.returncode != 0:
            raise ServerError(
                f"rabbitmqctl {' '.join(args)} failed ({result.returncode}): "
                f"{(result.stderr or result.stdout).strip()}"
            )
        return result.stdout

    def kill(self) -> None:
        """``kill -9`` the node (no shutdown at all, as a crash or a host loss); ``start()``
        brings it back on the same port with what it had written to disk."""
        if self._proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=10)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and _group_alive(self._proc.pid):
                time.sleep(0.05)
        self._proc = None

    def stop(self) -> None:
        """Stop the node (its data stays: ``start()`` brings it back on the same port)."""
        _kill_group(self._proc)
        self._proc = None
        _kill_group(self._epmd, grace_s=5)
        self._epmd = None


# --------------------------------------------------------------------------- existing servers
class ExternalPostgres:
    """An existing server given by an admin DSN, with the ``PostgresServer`` database API."""

    private = False

    def __init__(self, admin_dsn: str):
        from psycopg.conninfo import conninfo_to_dict

        self.admin_dsn = admin_dsn
        params = conninfo_to_dict(admin_dsn)
        self.host = str(params.get("host") or "localhost")
        self.port = int(params.get("port") or 5432)
        self.superuser = str(params.get("user") or "")
        self.startup_s = 0.0

    def dsn(
        self, dbname: str = "postgres", user: str | None = None, password: str | None = None
    ) -> str:
        from psycopg.conninfo import conninfo_to_dict, make_conninfo

        params = conninfo_to_dict(self.admin_dsn)
        params["dbname"] = dbname
        if user is not None:
            params["user"] = user
            params.pop("password", None)
        if password is not None:
            params["password"] = password
        return make_conninfo(**params)

    def _admin(self) -> Any:
        import psycopg

        return psycopg.connect(self.admin_dsn, autocommit=True)

    create_database = PostgresServer.create_database
    drop_database = PostgresServer.drop_database
    create_role = PostgresServer.create_role

    def start(self) -> Self:
        return self

    def stop(self) -> None:
        pass

    def close(self) -> None:
        pass


class ExternalRabbitMQ:
    """An existing broker given by an AMQP URL, with the ``RabbitMQServer`` attributes."""

    private = False

    def __init__(self, url: str):
        from urllib.parse import unquote, urlparse

        u = urlparse(url)
        self.url = url
        self.host = u.hostname or "localhost"
        self.port = u.port or 5672
        self.user = unquote(u.username or "guest")
        self.password = unquote(u.password or "guest")
        self.startup_s = 0.0

    def start(self) -> Self:
        return self

    def stop(self) -> None:
        raise ServerError("an external broker (INSECTARIUM_TEST_AMQP_URL) cannot be restarted")

    def ctl(self, *args: str, timeout_s: float = 60.0, check: bool = True) -> str:
        result = subprocess.run(
            ["rabbitmqctl", *args], capture_output=True, text=True, timeout=timeout_s, check=False
        )
        if check and result.returncode != 0:
            raise ServerError(f"rabbitmqctl {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout

    def close(self) -> None:
        pass
