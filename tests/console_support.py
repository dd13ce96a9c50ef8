"""What the console tests need, all real: a read-only database role with the grants the
``postgresql`` role gives purpose ``console``, the six lab services under a private supervisord
(with its authenticated ``[inet_http_server]``, as on glenlivet), the console as a process, and
Debian's Chromium driven by selenium.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import xmlrpc.client
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml

from .role_grants import grant_read_only
from .runtime_support import CONFIGS, LAB_SERVICES

PROGRAMS = LAB_SERVICES  # supervisord programs of the console tests


def free_port() -> int:
    from insectarium.testing.servers import free_port as _free

    return _free()


def console_role(postgres_server: Any, dsn: str) -> tuple[str, str]:
    """A login role with the console's read-only grants on the database of ``dsn``."""
    role, password = f"console_{secrets.token_hex(4)}", secrets.token_urlsafe(12)
    postgres_server.create_role(role, password)
    grant_read_only(dsn, role)  # the console is a read-only purpose (inventories/shared/lab.yml)
    return role, password


def wait_for(predicate: Any, timeout: float, what: str, detail: Any = None) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            extra = detail() if callable(detail) else ""
            raise AssertionError(f"{what}: not within {timeout} s\n{extra}")
        time.sleep(0.25)


@dataclass
class SupervisedLab:
    """The six lab services as programs of a private supervisord."""

    workdir: Path
    broker_host: str
    broker_port: int
    broker_user: str
    broker_password: str
    vhost: str
    db: dict[str, Any]
    data_dir: Path = field(init=False)
    rpc_port: int = field(init=False)
    rpc_user: str = "lab"
    rpc_password: str = field(default_factory=lambda: secrets.token_urlsafe(12))
    proc: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.data_dir = self.workdir / "data"
        self.rpc_port = free_port()

    @property
    def rpc_url(self) -> str:
        return f"http://127.0.0.1:{self.rpc_port}/RPC2"

    def rpc(self) -> Any:
        return xmlrpc.client.ServerProxy(
            f"http://{self.rpc_user}:{self.rpc_password}@127.0.0.1:{self.rpc_port}/RPC2"
        )

    def _program(self, name: str, config: str, needs_db: bool, auth: Path) -> str:
        words = [
            sys.executable,
            "-m",
            "insectarium.cli.serve",
            "-c",
            str(CONFIGS / config),
            "-b",
            self.broker_host,
            "-p",
            str(self.broker_port),
            "--auth-file",
            str(auth),
            f"dripline_mesh.vhost={self.vhost}",
        ]
        if needs_db:
            words += [
                f"database_server={self.db.get('host') or 'localhost'}",
                f"database_port={self.db.get('port') or 5432}",
                f"database_name={self.db['dbname']}",
            ]
        if name == "not-generic_daq":
            words.append(f"data_directory={self.data_dir}")
        return " ".join(words)

    def start(self) -> SupervisedLab:
        auth = self.workdir / "auth.yaml"
        auth.write_text(
            json.dumps(
                {
                    "dripline": {"username": self.broker_user, "password": self.broker_password},
                    "postgres": {
                        "username": self.db.get("user", ""),
                        "password": self.db.get("password", ""),
                    },
                }
            )
        )
        auth.chmod(0o600)
        w = self.workdir
        lines = [
            "[unix_http_server]",
            f"file={w}/supervisor.sock",
            "[inet_http_server]",
            f"port=127.0.0.1:{self.rpc_port}",
            f"username={self.rpc_user}",
            f"password={self.rpc_password}",
            "[supervisord]",
            f"logfile={w}/supervisord.log",
            f"pidfile={w}/supervisord.pid",
            f"childlogdir={w}",
            "nodaemon=true",
            "[rpcinterface:supervisor]",
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
            "[supervisorctl]",
            f"serverurl=unix://{w}/supervisor.sock",
        ]
        for i, (name, config, needs_db) in enumerate(PROGRAMS):
            lines += [
                f"[program:{name}]",
                f"command={self._program(name, config, needs_db, auth)}",
                f"directory={w}",
                f"priority={100 if i == 0 else 200}",
                'environment=PYTHONUNBUFFERED="1"',
                "autostart=true",
                "autorestart=true",
                "startsecs=2",
                "stopasgroup=true",
                "killasgroup=true",
                "stopwaitsecs=15",
                "redirect_stderr=true",
                f"stdout_logfile={w}/{name}.log",
            ]
        conf = w / "supervisord.conf"
        conf.write_text("\n".join(lines) + "\n")
        conf.chmod(0o600)
        supervisord = shutil.which("supervisord", path=str(Path(sys.executable).parent))
        assert supervisord, "supervisord not installed in the venv (requirements/dev.txt)"
        env = {k: v for k, v in os.environ.items() if k != "INSECTARIUM_DATA_DIR"}
        with (w / "supervisord.out").open("wb") as out:
            self.proc = subprocess.Popen(
                [supervisord, "-n", "-c", str(conf)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        wait_for(self.all_running, 120, "the six programs RUNNING", self.diagnostics)
        return self

    def states(self) -> dict[str, str]:
        try:
            return {p["name"]: p["statename"] for p in self.rpc().supervisor.getAllProcessInfo()}
        except (OSError, xmlrpc.client.Error):
            return {}

    def all_running(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"supervisord exited\n{self.diagnostics()}")
        states = self.states()
        return len(states) == len(PROGRAMS) and set(states.values()) == {"RUNNING"}

    def diagnostics(self) -> str:
        parts = [f"states: {self.states()}"]
        for name, _c, _d in PROGRAMS:
            path = self.workdir / f"{name}.log"
            text = path.read_text(errors="replace") if path.exists() else ""
            parts.append(f"--- {name}\n" + "\n".join(text.splitlines()[-15:]))
        return "\n".join(parts)

    def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(Exception):
            self.rpc().supervisor.stopAllProcesses(True)
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, 9)
            self.proc.wait(5)
        self.proc = None


@dataclass
class ConsoleProcess:
    """``insectarium-console -c <file>`` as a process, on a free port of 127.0.0.1."""

    workdir: Path
    config: dict[str, Any]
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.workdir / "console.log"

    def start(self) -> ConsoleProcess:
        cfg = {**self.config, "listen": {"host": "127.0.0.1", "port": self.port}}
        path = self.workdir / "console.yaml"
        path.write_text(yaml.safe_dump(cfg))
        path.chmod(0o600)
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "insectarium.console", "-c", str(path)],
                stdout=out,
                stderr=subprocess.STDOUT,
            )

        def healthy() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"console exited:\n{self.log.read_text()}")
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(self.url + "/healthz", timeout=2) as r,
            ):
                return r.status == 200
            return False

        wait_for(healthy, 60, "the console answering /healthz", self.log.read_text)
        return self

    def request(
        self,
        path: str,
        *,
        user: str | None = None,
        password: str | None = None,
        method: str = "GET",
        accept: str = "application/json",
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        """One HTTP request (no redirects followed): status, headers, body."""
        import base64

        req = urllib.request.Request(self.url + path, method=method, data=data)
        req.add_header("Accept", accept)
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        if user is not None:
            token = base64.b64encode(f"{user}:{password}".encode()).decode()
            req.add_header("Authorization", f"Basic {token}")

        class NoRedirect(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *args: Any, **kwargs: Any) -> None:
                return None

        opener = urllib.request.build_opener(NoRedirect)
        try:
            with opener.open(req, timeout=30) as r:
                return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


def chromium(workdir: Path, width: int = 1400, height: int = 900) -> Any:
    """Debian's Chromium through Debian's chromedriver, headless, in a fresh profile."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--hide-scrollbars",
        f"--window-size={width},{height}",
        f"--user-data-dir={workdir / 'chromium-profile'}",
    ):
        options.add_argument(arg)
    driver_path = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    return webdriver.Chrome(options=options, service=Service(executable_path=driver_path))


def broker_parts(url: str) -> tuple[str, int]:
    u = urlparse(url)
    return u.hostname or "localhost", u.port or 5672
