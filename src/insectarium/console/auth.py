"""Who may use the console, and how they prove it.

Two ways in, one set of accounts (from the configuration, i.e. the inventory's vault):

* **browsers** log in on ``/login`` and get a signed session cookie (HttpOnly, SameSite=Strict,
  Secure under TLS); a page asked for without it redirects to the login page;
* **scripts** (curl, monitoring, testinfra) send HTTP Basic credentials with every request;
  without valid ones they get ``401`` and a ``WWW-Authenticate`` challenge.

Roles: ``viewer`` sees everything; ``operator`` may also start, stop and restart programs.  A
changed password ends the sessions opened with the old one (the cookie carries a fingerprint
of the account).  Failed logins are throttled per client address, so a password cannot be
guessed at line speed.  No password is ever logged.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal

from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from .config import User

log = logging.getLogger(__name__)

Role = Literal["viewer", "operator"]
REALM = "insectarium console"
#: paths anyone may fetch: the login form, its assets and a content-free health check
PUBLIC_PREFIXES = ("/login", "/static/", "/healthz", "/favicon.ico")


@dataclass(frozen=True)
class Account:
    name: str
    role: Role
    _digest: bytes
    fingerprint: str

    def may_operate(self) -> bool:
        return self.role == "operator"


def _digest(password: str) -> bytes:
    return hashlib.sha256(password.encode("utf-8")).digest()


class Accounts:
    """The configured users; passwords compared in constant time."""

    def __init__(self, users: list[User], secret: str) -> None:
        self._by_name: dict[str, Account] = {}
        for u in users:
            digest = _digest(u.password.get_secret_value())
            fingerprint = hmac.new(secret.encode(), u.name.encode() + digest, "sha256").hexdigest()
            self._by_name[u.name] = Account(u.name, u.role, digest, fingerprint[:32])

    def check(self, name: str, password: str) -> Account | None:
        account = self._by_name.get(name)
        # compare against something even for an unknown name: same time either way
        expected = account._digest if account else _digest("\0unknown user\0")
        ok = hmac.compare_digest(expected, _digest(password))
        return account if ok and account is not None else None

    def from_session(self, name: object, fingerprint: object) -> Account | None:
        account = self._by_name.get(name) if isinstance(name, str) else None
        if account is None or not isinstance(fingerprint, str):
            return None
        return account if hmac.compare_digest(account.fingerprint, fingerprint) else None


class LoginThrottle:
    """At most ``limit`` failed logins per client address per ``window_s``; bounded memory."""

    def __init__(self, limit: int = 5, window_s: float = 60.0, max_clients: int = 10_000) -> None:
        self.limit, self.window_s, self.max_clients = limit, window_s, max_clients
        self._failures: OrderedDict[str, list[float]] = OrderedDict()

    def _recent(self, client: str, now: float) -> list[float]:
        times = [t for t in self._failures.get(client, []) if now - t < self.window_s]
        if times:
            self._failures[client] = times
        else:
            self._failures.pop(client, None)
        return times

    def retry_after(self, client: str) -> float:
        """Seconds until this client may try again (0: now)."""
        now = time.monotonic()
        times = self._recent(client, now)
        if len(times) < self.limit:
            return 0.0
        return max(0.0, self.window_s - (now - times[0]))

    def failed(self, client: str) -> None:
        now = time.monotonic()
        times = self._recent(client, now)
        times.append(now)
        self._failures[client] = times[-self.limit :]
        self._failures.move_to_end(client)
        while len(self._failures) > self.max_clients:
            self._failures.popitem(last=False)

    def succeeded(self, client: str) -> None:
        self._failures.pop(client, None)


def client_address(conn: HTTPConnection) -> str:
    return conn.client.host if conn.client else "unknown"


def basic_credentials(header: str | None) -> tuple[str, str] | None:
    """``(user, password)`` of an ``Authorization: Basic …`` header (None if absent/garbled)."""
    if not header or len(header) > 4096:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "basic" or not token:
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


def wants_html(conn: HTTPConnection) -> bool:
    return "text/html" in conn.headers.get("accept", "")


class AuthMiddleware:
    """Puts the logged-in :class:`Account` in ``scope["account"]`` or turns the request away.

    Must run inside Starlette's ``SessionMiddleware`` (it reads ``scope["session"]``).
    """

    def __init__(self, app: ASGIApp, accounts: Accounts, throttle: LoginThrottle) -> None:
        self.app, self.accounts, self.throttle = app, accounts, throttle

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        conn = HTTPConnection(scope)
        path = scope.get("path", "")
        session = scope.get("session") or {}
        account = self.accounts.from_session(session.get("user"), session.get("fp"))
        if account is None and (creds := basic_credentials(conn.headers.get("authorization"))):
            client = client_address(conn)
            wait = self.throttle.retry_after(client)
            if wait > 0:
                response: Response = JSONResponse(
                    {"error": "too many failed logins; try again later"},
                    status_code=429,
                    headers={"Retry-After": str(int(wait) + 1)},
                )
                await response(scope, receive, send)
                return
            account = self.accounts.check(*creds)
            if account is None:
                self.throttle.failed(client)
                log.warning("refused HTTP Basic login for %r from %s", creds[0][:64], client)
            else:
                self.throttle.succeeded(client)
        scope["account"] = account
        if account is not None or path.startswith(PUBLIC_PREFIXES):
            await self.app(scope, receive, send)
            return
        if wants_html(conn) and scope.get("method") == "GET":
            target = path + (
                ("?" + scope["query_string"].decode()) if scope["query_string"] else ""
            )
            response = RedirectResponse(f"/login?next={_quote(target)}", status_code=303)
        else:
            response = JSONResponse(
                {"error": "authentication required"},
                status_code=401,
                headers={"WWW-Authenticate": f'Basic realm="{REALM}", charset="UTF-8"'},
            )
        await response(scope, receive, send)


def _quote(text: str) -> str:
    from urllib.parse import quote

    return quote(text, safe="/")


def safe_next(target: str | None) -> str:
    """Where to go after logging in: only a path on this site (no open redirect)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target
