"""supervisord on every lab host, through its own authenticated XML-RPC interface.

What CESI did for the seed lab: list every program of every host with its state and uptime,
start / stop / restart one, read the end of its log.  Each host is asked in parallel with a short
timeout, so one host that is down shows up as one error line instead of a hanging page.

The standard library's ``xmlrpc.client`` does the protocol (supervisord speaks nothing else);
calls run in worker threads with a fresh proxy each, because a proxy is not thread-safe.
"""

from __future__ import annotations

import asyncio
import http.client
import logging
import time
import xmlrpc.client
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from .config import Supervisor

log = logging.getLogger(__name__)

#: the most log text one request may fetch (the page shows the end of the log)
MAX_TAIL_BYTES = 256 * 1024
#: supervisord fault codes that mean "already in the requested state"
ALREADY_STARTED, NOT_RUNNING = 60, 70


class SupervisorError(Exception):
    """A supervisord could not be reached or refused a call (message without credentials)."""


@dataclass(frozen=True)
class Program:
    host: str
    name: str
    group: str
    state: str
    description: str
    start: int
    now: int
    pid: int
    exitstatus: int
    spawnerr: str

    @property
    def uptime_s(self) -> int | None:
        return self.now - self.start if self.state == "RUNNING" and self.start else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "name": self.name,
            "group": self.group,
            "state": self.state,
            "description": self.description,
            "uptime_s": self.uptime_s,
            "pid": self.pid or None,
            "exitstatus": self.exitstatus,
            "spawnerr": self.spawnerr,
            "since": self.start or None,
        }


class _Timeout:
    """A socket timeout on every connection: xmlrpc.client has none, and one hung supervisord
    must not hold up the page of every host."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__()
        self._timeout_s = timeout_s

    def make_connection(self, host: Any) -> http.client.HTTPConnection:
        conn = super().make_connection(host)  # type: ignore[misc]
        conn.timeout = self._timeout_s
        return conn


class _TimeoutTransport(_Timeout, xmlrpc.client.Transport):
    pass


class _SafeTimeoutTransport(_Timeout, xmlrpc.client.SafeTransport):
    pass


class SupervisorHost:
    """One host's supervisord."""

    def __init__(self, config: Supervisor) -> None:
        self.host = config.host
        self.timeout_s = config.timeout_s
        parts = urlsplit(config.url)
        self._display_url = urlunsplit(parts._replace(netloc=parts.hostname or ""))
        netloc = parts.netloc.rpartition("@")[2]
        if config.username:
            password = config.password.get_secret_value() if config.password else ""
            netloc = f"{quote(config.username, safe='')}:{quote(password, safe='')}@{netloc}"
        path = parts.path if parts.path not in ("", "/") else "/RPC2"
        self._url = urlunsplit(parts._replace(netloc=netloc, path=path))
        self._https = parts.scheme == "https"

    def _proxy(self) -> Any:
        transport = (
            _SafeTimeoutTransport(self.timeout_s)
            if self._https
            else _TimeoutTransport(self.timeout_s)
        )
        return xmlrpc.client.ServerProxy(self._url, transport=transport, allow_none=True)

    def _call(self, method: str, *args: Any) -> Any:
        proxy = self._proxy()
        try:
            return getattr(proxy, method)(*args)
        except xmlrpc.client.Fault as fault:
            raise SupervisorError(f"{self.host}: {method}: {fault.faultString}") from None
        except xmlrpc.client.ProtocolError as exc:
            what = "wrong user or password" if exc.errcode == 401 else f"HTTP {exc.errcode}"
            raise SupervisorError(f"{self.host}: supervisord refused the call ({what})") from None
        except (OSError, http.client.HTTPException) as exc:
            raise SupervisorError(
                f"{self.host}: cannot reach supervisord at {self._display_url}: "
                f"{type(exc).__name__}: {exc}"
            ) from None

    async def call(self, method: str, *args: Any) -> Any:
        return await asyncio.to_thread(self._call, method, *args)

    async def programs(self) -> list[Program]:
        infos = await self.call("supervisor.getAllProcessInfo")
        return [
            Program(
                host=self.host,
                name=_full_name(i),
                group=str(i.get("group", "")),
                state=str(i.get("statename", "UNKNOWN")),
                description=str(i.get("description", "")),
                start=int(i.get("start") or 0),
                now=int(i.get("now") or time.time()),
                pid=int(i.get("pid") or 0),
                exitstatus=int(i.get("exitstatus") or 0),
                spawnerr=str(i.get("spawnerr", "")),
            )
            for i in infos
        ]

    async def start(self, name: str) -> None:
        try:
            await self.call("supervisor.startProcess", name, True)
        except SupervisorError as exc:
            if "ALREADY_STARTED" not in str(exc):
                raise

    async def stop(self, name: str) -> None:
        try:
            await self.call("supervisor.stopProcess", name, True)
        except SupervisorError as exc:
            if "NOT_RUNNING" not in str(exc):
                raise

    async def restart(self, name: str) -> None:
        await self.stop(name)
        await self.start(name)

    async def tail(self, name: str, length: int) -> dict[str, Any]:
        """The last ``length`` bytes (at most :data:`MAX_TAIL_BYTES`) of the program's log."""
        length = max(1, min(int(length), MAX_TAIL_BYTES))
        text, offset, overflow = await self.call("supervisor.tailProcessStdoutLog", name, 0, length)
        return {"text": text, "offset": offset, "overflow": bool(overflow)}


def _full_name(info: dict[str, Any]) -> str:
    """The name supervisorctl shows and the RPC accepts: ``group:name`` for a process of a
    group (``numprocs``, e.g. the extra sensor logger processes), else the program's name."""
    name, group = str(info.get("name", "")), str(info.get("group", ""))
    return name if not group or group == name else f"{group}:{name}"


class Supervisors:
    """Every configured host; lookups by host name."""

    def __init__(self, configs: list[Supervisor]) -> None:
        self.hosts = {c.host: SupervisorHost(c) for c in configs}

    def get(self, host: str) -> SupervisorHost:
        try:
            return self.hosts[host]
        except KeyError:
            raise SupervisorError(f"no supervisord configured for host {host!r}") from None

    async def overview(self) -> tuple[list[Program], dict[str, str]]:
        """All programs of all hosts, and an error text per host that did not answer."""
        names = list(self.hosts)
        results = await asyncio.gather(
            *(self.hosts[h].programs() for h in names), return_exceptions=True
        )
        programs: list[Program] = []
        errors: dict[str, str] = {}
        for host, result in zip(names, results, strict=True):
            if isinstance(result, BaseException):
                if not isinstance(result, SupervisorError):
                    log.exception("supervisord on %s", host, exc_info=result)
                errors[host] = str(result)
            else:
                programs.extend(result)
        programs.sort(key=lambda p: (p.host, p.name))
        return programs, errors
