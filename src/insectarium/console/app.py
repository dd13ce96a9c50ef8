"""The console's web application: pages, the JSON API behind them, and their wiring.

Starlette (a small, well-kept ASGI toolkit) serves server-rendered Jinja2 pages; each page asks
the JSON API for its data and redraws itself (services every ``refresh_s``, recent plots every
few seconds), so nothing needs a reload.  Plots are drawn in the browser by plotly.js, which
ships inside the ``plotly`` wheel and is served from here: the console works on a lab network
without internet access.  Reading the database and supervisord never blocks the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import importlib.util
import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from . import queries
from .auth import Account, Accounts, AuthMiddleware, LoginThrottle, client_address, safe_next
from .config import ConsoleConfig
from .supervisor import MAX_TAIL_BYTES, SupervisorError, Supervisors

log = logging.getLogger(__name__)
HERE = Path(__file__).resolve().parent
#: the windows offered on the values page (seconds)
WINDOWS = [
    ("5 min", 300),
    ("15 min", 900),
    ("1 h", 3600),
    ("6 h", 6 * 3600),
    ("24 h", 86400),
    ("7 days", 7 * 86400),
    ("30 days", 30 * 86400),
]
PROGRAM_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
#: files of a run directory and reports are shown as documents without any power: no script,
#: no request anywhere, a unique origin (whoever can write into a run directory cannot reach a
#: logged-in console through it)
SANDBOX = "sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src data:"
SECURITY_HEADERS = [
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
]


class SecurityHeaders:
    """Adds the headers every response of the console carries (framing, sniffing, referrers)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + SECURITY_HEADERS
            await send(message)

        await self.app(scope, receive, send_with_headers)


def plotly_js() -> Path | None:
    """plotly.min.js from the installed plotly package (not imported: only the file is used)."""
    spec = importlib.util.find_spec("plotly")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        path = Path(location) / "package_data" / "plotly.min.js"
        if path.is_file():
            return path
    return None


class Console:
    """The running console: configuration, accounts, database pool and supervisord clients."""

    def __init__(self, config: ConsoleConfig) -> None:
        self.config = config
        self.accounts = Accounts(config.users, config.secret_key.get_secret_value())
        self.throttle = LoginThrottle()
        self.supervisors = Supervisors(config.supervisors)
        self.pool: Any = None
        self.templates = Jinja2Templates(directory=str(HERE / "templates"))
        self.templates.env.globals.update(title=config.title)
        self.templates.env.filters["value"] = _fmt_value

    # ------------------------------------------------------------------ database
    def conninfo(self) -> str:
        from psycopg.conninfo import make_conninfo

        db = self.config.database
        options = (
            "-c timezone=UTC -c default_transaction_read_only=on "
            f"-c statement_timeout={int(db.statement_timeout_s * 1000)}"
        )
        return make_conninfo(
            host=db.host,
            port=db.port,
            dbname=db.dbname,
            user=db.user,
            password=db.password.get_secret_value(),
            connect_timeout=max(1, round(db.connect_timeout_s)),
            application_name="insectarium-console",
            options=options,
            **{k: v for k, v in (("sslmode", db.sslmode), ("sslrootcert", db.sslrootcert)) if v},
        )

    @contextlib.asynccontextmanager
    async def lifespan(self, _app: Starlette) -> AsyncIterator[None]:
        from psycopg_pool import AsyncConnectionPool

        self.pool = AsyncConnectionPool(
            self.conninfo(),
            min_size=1,
            max_size=self.config.database.pool_size,
            kwargs={"autocommit": True},
            open=False,
            timeout=self.config.database.connect_timeout_s + 1,
            name="console",
        )
        # the console starts even while the database is down; pages then say so
        await self.pool.open(wait=False)
        try:
            yield
        finally:
            await self.pool.close()

    @contextlib.asynccontextmanager
    async def db(self) -> AsyncIterator[Any]:
        import psycopg
        from psycopg_pool import PoolTimeout

        db = self.config.database
        try:
            async with self.pool.connection() as conn:
                yield conn
        except (PoolTimeout, psycopg.OperationalError) as exc:
            raise HTTPException(
                503, f"database {db.dbname} on {db.host}:{db.port} unavailable: {_scrub(exc, db)}"
            ) from None
        except queries.QueryError as exc:
            raise HTTPException(400, str(exc)) from None
        except psycopg.Error as exc:
            raise HTTPException(500, f"database error: {_scrub(exc, db)}") from None

    # ------------------------------------------------------------------ pages
    def page(self, request: Request, template: str, **context: Any) -> HTMLResponse:
        account: Account = request.scope["account"]
        return self.templates.TemplateResponse(
            request,
            template,
            {
                "account": account,
                "refresh_s": self.config.refresh_s,
                "path": request.url.path,
                **context,
            },
        )

    async def login_form(self, request: Request) -> Response:
        if request.scope.get("account") is not None:
            return RedirectResponse(safe_next(request.query_params.get("next")), 303)
        return self.templates.TemplateResponse(
            request, "login.html", {"next": safe_next(request.query_params.get("next"))}
        )

    async def login(self, request: Request) -> Response:
        client = client_address(request)
        wait = self.throttle.retry_after(client)
        form = await request.form(max_files=0, max_fields=5, max_part_size=4096)
        target = safe_next(str(form.get("next") or "/"))
        if wait > 0:
            return self.templates.TemplateResponse(
                request,
                "login.html",
                {
                    "next": target,
                    "error": f"Too many failed logins. Try again in {int(wait) + 1} s.",
                },
                status_code=429,
            )
        name, password = str(form.get("username") or ""), str(form.get("password") or "")
        account = self.accounts.check(name, password)
        if account is None:
            self.throttle.failed(client)
            log.warning("refused login for %r from %s", name[:64], client)
            return self.templates.TemplateResponse(
                request,
                "login.html",
                {"next": target, "error": "Wrong user name or password.", "username": name},
                status_code=401,
            )
        self.throttle.succeeded(client)
        request.session.clear()
        request.session.update(user=account.name, fp=account.fingerprint)
        log.info("%s logged in from %s", account.name, client)
        return RedirectResponse(target, 303)

    async def logout(self, request: Request) -> Response:
        request.session.clear()
        return RedirectResponse("/login", 303)

    async def services_page(self, request: Request) -> Response:
        return self.page(request, "services.html", hosts=list(self.supervisors.hosts))

    async def values_page(self, request: Request) -> Response:
        return self.page(request, "values.html", windows=WINDOWS, max_points=self.config.max_points)

    async def runs_page(self, request: Request) -> Response:
        async with self.db() as conn:
            rows = await queries.runs(conn, limit=200)
            newest = await queries.newest_run_id(conn)
        for row in rows:
            row["state"] = queries.run_state(row, newest)
        return self.page(request, "runs.html", runs=rows)

    async def run_page(self, request: Request) -> Response:
        run_id = request.path_params["run_id"]
        found = await self.run_with_summary(run_id)
        if found is None:
            raise HTTPException(404, f"there is no run {run_id}")
        row, state, end, summary = found
        directory = self.run_dir(run_id)
        files = _files(directory)
        metadata = await asyncio.to_thread(_metadata, directory, run_id)
        return self.page(
            request,
            "run.html",
            run=row,
            state=state,
            summary=summary,
            files=files,
            metadata=metadata,
            directory=str(directory),
            window_end=queries.iso(end),
            window_start=queries.iso(row["start_timestamp"]),
        )

    async def run_with_summary(
        self, run_id: int
    ) -> tuple[dict[str, Any], str, dt.datetime, Any] | None:
        """A run's row, state, end of its window (now while it runs) and value summary, or
        None when there is no such run: what its page and ``/api/runs/<id>`` both show."""
        async with self.db() as conn:
            row = await queries.run(conn, run_id)
            if row is None:
                return None
            newest = await queries.newest_run_id(conn)
            end = row.get("end_timestamp") or _utcnow()
            summary = await queries.run_summary(conn, row["start_timestamp"], end)
        return row, queries.run_state(row, newest), end, summary

    def run_dir(self, run_id: int) -> Path:
        from ..report.sources import run_directory

        return run_directory(self.config.data_directory, run_id)

    async def run_file(self, request: Request) -> Response:
        run_id, name = request.path_params["run_id"], request.path_params["name"]
        directory = self.run_dir(run_id)
        if "/" in name or name.startswith(".") or not (directory / name).is_file():
            raise HTTPException(404, f"run {run_id} has no file {name}")
        media = "text/html" if name.endswith(".html") else None
        return FileResponse(
            directory / name, media_type=media, headers={"Content-Security-Policy": SANDBOX}
        )

    async def run_report(self, request: Request) -> Response:
        """The run report built now from the database (same as ``insectarium report``)."""
        from ..report import render_html

        run_id = request.path_params["run_id"]
        report = await asyncio.to_thread(self._report_from_db, run_id)
        return HTMLResponse(
            render_html(report, "values.csv"), headers={"Content-Security-Policy": SANDBOX}
        )

    async def run_csv(self, request: Request) -> Response:
        """Every value of the run as CSV (the report's companion), from the database."""
        from ..report import render_csv

        run_id = request.path_params["run_id"]
        report = await asyncio.to_thread(self._report_from_db, run_id)
        return PlainTextResponse(
            render_csv(report),
            media_type="text/csv",
            headers={"Content-Disposition": f'attachment; filename="run{run_id:09d}_values.csv"'},
        )

    def _report_from_db(self, run_id: int) -> Any:
        import psycopg

        from ..report import from_database

        try:
            with psycopg.connect(self.conninfo(), autocommit=True) as conn:
                return from_database(conn, run_id, data_directory=self.config.data_directory)
        except LookupError as exc:
            raise HTTPException(404, str(exc)) from None
        except psycopg.Error as exc:
            raise HTTPException(503, f"database: {_scrub(exc, self.config.database)}") from None

    # ------------------------------------------------------------------ API
    async def api_services(self, request: Request) -> Response:
        programs, errors = await self.supervisors.overview()
        return JSONResponse(
            {
                "hosts": list(self.supervisors.hosts),
                "programs": [p.as_dict() for p in programs],
                "errors": errors,
                "may_operate": request.scope["account"].may_operate(),
                "now": queries.iso(_utcnow()),
            }
        )

    async def api_service_action(self, request: Request) -> Response:
        account: Account = request.scope["account"]
        host, name = request.path_params["host"], request.path_params["name"]
        action = request.path_params["action"]
        if not account.may_operate():
            return _error(403, f"{account.name} is a viewer: only operators may {action} programs")
        if action not in ("start", "stop", "restart") or not PROGRAM_RE.match(name):
            return _error(404, "no such action")
        origin = request.headers.get("origin")
        if origin and origin.rstrip("/") != f"{request.url.scheme}://{request.url.netloc}":
            return _error(403, "cross-site request refused")
        try:
            supervisor = self.supervisors.get(host)
            await getattr(supervisor, action)(name)
        except SupervisorError as exc:
            return _error(502, str(exc))
        log.info("%s: %s %s on %s", account.name, action, name, host)
        return JSONResponse({"ok": True, "host": host, "name": name, "action": action})

    async def api_service_log(self, request: Request) -> Response:
        host, name = request.path_params["host"], request.path_params["name"]
        if not PROGRAM_RE.match(name):
            return _error(404, "no such program")
        try:
            length = int(request.query_params.get("bytes", "16384"))
        except ValueError:
            return _error(400, "bytes must be an integer")
        try:
            tail = await self.supervisors.get(host).tail(name, min(length, MAX_TAIL_BYTES))
        except SupervisorError as exc:
            return _error(502, str(exc))
        return JSONResponse({"host": host, "name": name, **tail})

    async def api_endpoints(self, request: Request) -> Response:
        async with self.db() as conn:
            rows = await queries.endpoints(conn)
        return JSONResponse({"endpoints": rows, "now": queries.iso(_utcnow())})

    async def api_series(self, request: Request) -> Response:
        params = request.query_params
        names = [n for n in params.getlist("endpoint") if n]
        field = params.get("field", "cal")
        if field not in ("cal", "raw"):
            return _error(400, "field must be cal or raw")
        try:
            start, end = window(params)
            max_points = int(params.get("points", self.config.max_points))
        except ValueError as exc:
            return _error(400, str(exc))
        max_points = max(50, min(max_points, self.config.max_points))
        async with self.db() as conn:
            data = await queries.series(
                conn,
                names,
                start,
                end,
                max_points=max_points,
                field=field,  # type: ignore[arg-type]
            )
        return JSONResponse({"start": queries.iso(start), "end": queries.iso(end), "series": data})

    async def api_runs(self, request: Request) -> Response:
        try:
            limit = int(request.query_params.get("limit", "50"))
            offset = int(request.query_params.get("offset", "0"))
        except ValueError:
            return _error(400, "limit and offset must be integers")
        async with self.db() as conn:
            rows = await queries.runs(conn, limit, offset)
            newest = await queries.newest_run_id(conn)
        return JSONResponse(
            {"runs": [{**_jsonable(r), "state": queries.run_state(r, newest)} for r in rows]}
        )

    async def api_run(self, request: Request) -> Response:
        run_id = request.path_params["run_id"]
        found = await self.run_with_summary(run_id)
        if found is None:
            return _error(404, f"there is no run {run_id}")
        row, state, _end, summary = found
        return JSONResponse(
            {
                "run": _jsonable(row),
                "state": state,
                "summary": summary,
                "files": [{"name": n, "bytes": s} for n, s in _files(self.run_dir(run_id))],
            }
        )

    async def healthz(self, _request: Request) -> Response:
        return PlainTextResponse("ok")

    async def plotly(self, _request: Request) -> Response:
        path = plotly_js()
        if path is None:
            return PlainTextResponse("plotly is not installed", status_code=404)
        return FileResponse(path, headers={"Cache-Control": "public, max-age=86400"})


def window(params: Any) -> tuple[dt.datetime, dt.datetime]:
    """``start``/``end`` (ISO, UTC) or ``last`` (seconds before now)."""
    now = _utcnow()
    if params.get("last"):
        seconds = float(params["last"])
        if not 0 < seconds <= 3660 * 86400:
            raise ValueError("last must be between 0 and ten years (in seconds)")
        return now - dt.timedelta(seconds=seconds), now
    start = _parse(params.get("start"), "start")
    end = _parse(params.get("end"), "end") if params.get("end") else now
    return start, end


def _parse(value: str | None, what: str) -> dt.datetime:
    if not value:
        raise ValueError(f"{what} is required (ISO time, UTC) unless last= is given")
    try:
        t = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{what} {value[:40]!r} is not an ISO date/time") from None
    return t.astimezone(dt.UTC).replace(tzinfo=None) if t.tzinfo else t


def _fmt_value(v: Any) -> str:
    from ..report.render import fmt_value

    return fmt_value(v)


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def _files(directory: Path) -> list[tuple[str, int]]:
    from ..report.sources import list_files

    return list_files(directory)


def _metadata(directory: Path, run_id: int) -> dict[str, Any] | None:
    """The run's ``_meta.json`` (what the DAQ recorded at the start), if readable."""
    import json

    from ..report.sources import find_file

    path = find_file(directory, "_meta.json", run_id)
    if path is None or path.stat().st_size > 1_000_000:
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    return {
        k: (queries.iso(v) if isinstance(v, dt.datetime) else queries.finite(v))
        for k, v in row.items()
    }


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _scrub(exc: BaseException, db: Any) -> str:
    text = str(exc).strip().replace("\n", " ")
    password = db.password.get_secret_value()
    return text.replace(password, "***") if len(password) >= 3 else text


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if request.url.path.startswith("/api/") or "text/html" not in request.headers.get("accept", ""):
        return _error(exc.status_code, str(exc.detail))
    console: Console = request.app.state.console
    return console.templates.TemplateResponse(
        request,
        "error.html",
        {
            "account": request.scope.get("account"),
            "status": exc.status_code,
            "detail": exc.detail,
            "path": request.url.path,
        },
        status_code=exc.status_code,
    )


def create_app(config: ConsoleConfig) -> Starlette:
    console = Console(config)
    routes = [
        Route("/", lambda r: RedirectResponse("/services", 303)),
        Route("/login", console.login_form, methods=["GET"]),
        Route("/login", console.login, methods=["POST"]),
        Route("/logout", console.logout, methods=["POST"]),
        Route("/healthz", console.healthz),
        Route("/services", console.services_page),
        Route("/values", console.values_page),
        Route("/runs", console.runs_page),
        Route("/runs/{run_id:int}", console.run_page),
        Route("/runs/{run_id:int}/report", console.run_report),
        Route("/runs/{run_id:int}/values.csv", console.run_csv),
        Route("/runs/{run_id:int}/files/{name:str}", console.run_file),
        Route("/api/services", console.api_services),
        Route(
            "/api/services/{host:str}/{name:str}/log",
            console.api_service_log,
        ),
        Route(
            "/api/services/{host:str}/{name:str}/{action:str}",
            console.api_service_action,
            methods=["POST"],
        ),
        Route("/api/endpoints", console.api_endpoints),
        Route("/api/series", console.api_series),
        Route("/api/runs", console.api_runs),
        Route("/api/runs/{run_id:int}", console.api_run),
        Route("/static/plotly.min.js", console.plotly),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    secure = config.tls is not None or config.secure_cookies
    middleware = [
        Middleware(SecurityHeaders),
        Middleware(GZipMiddleware, minimum_size=2048),
        Middleware(
            SessionMiddleware,
            secret_key=config.secret_key.get_secret_value(),
            session_cookie="insectarium_console",
            max_age=config.session_max_age_s,
            same_site="strict",
            https_only=secure,
        ),
        Middleware(AuthMiddleware, accounts=console.accounts, throttle=console.throttle),
    ]
    app = Starlette(
        routes=routes,
        middleware=middleware,
        lifespan=console.lifespan,
        exception_handlers={HTTPException: http_error},
    )
    app.state.console = console
    return app
