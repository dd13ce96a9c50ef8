"""The lab console without a browser: rollups, queries, summaries, reports, configuration and
who may do what over HTTP, on the test session's real PostgreSQL."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from insectarium.console import queries
from insectarium.console.auth import basic_credentials, safe_next
from insectarium.console.config import load_config
from insectarium.dripline.config import ConfigError
from insectarium.report import from_database, from_run_directory, render_csv, write_report
from tests.console_support import ConsoleProcess, console_role

T0 = dt.datetime(2026, 3, 1, 12, 0, 0)


def copy_numeric(conn: psycopg.Connection[Any], rows: list[tuple[int, dt.datetime, Any, Any]]):
    with (
        conn.cursor() as cur,
        cur.copy(
            'COPY endpoint_numeric_data (endpoint_id, "timestamp", value_raw, value_cal) FROM STDIN'
        ) as copy,
    ):
        for row in rows:
            copy.write_row(row)


@pytest.fixture(scope="module")
def filled(lab_database_module: str) -> str:
    """peaches: 3 h of 1 Hz values (raw = second index, cal = 2 x raw) from T0, by COPY in
    several batches; chips: a few values through the numeric_data view; cheese: strings."""
    with psycopg.connect(lab_database_module, autocommit=True) as conn:
        ids = dict(conn.execute("SELECT endpoint_name, endpoint_id FROM endpoint_id_map"))
        batch: list[tuple[int, dt.datetime, Any, Any]] = []
        for s in range(3 * 3600):
            batch.append((ids["peaches"], T0 + dt.timedelta(seconds=s), float(s), 2.0 * s))
            if len(batch) == 2500:  # the logger's batches: one trigger run per COPY statement
                copy_numeric(conn, batch)
                batch = []
        copy_numeric(conn, batch)
        for i, v in enumerate((1.0, None, 3.0)):
            conn.execute(
                'INSERT INTO numeric_data (endpoint_name, "timestamp", value_raw, value_cal) '
                "VALUES ('chips', %s, %s, NULL)",
                (T0 + dt.timedelta(seconds=10 * i + 0.5), v if v is not None else 2.0),
            )
        for i, v in enumerate(("gouda", "brie", "comte")):
            conn.execute(
                'INSERT INTO string_data (endpoint_name, "timestamp", value_raw) VALUES '
                "('cheese', %s, %s)",
                (T0 + dt.timedelta(minutes=i), v),
            )
    return lab_database_module


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def _with_conn(dsn: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        return await fn(conn, *args, **kwargs)


# ------------------------------------------------------------------ rollups
def test_rollups_equal_the_raw_aggregates(filled: str) -> None:
    with psycopg.connect(filled, autocommit=True) as conn:
        for unit, table in (
            ("minute", "endpoint_numeric_rollup_1m"),
            ("hour", "endpoint_numeric_rollup_1h"),
        ):
            raw = conn.execute(
                f"SELECT endpoint_id, date_trunc('{unit}', \"timestamp\") b, count(*), "
                "count(value_raw), min(value_raw), max(value_raw), sum(value_raw), "
                "count(value_cal), min(value_cal), max(value_cal), sum(value_cal) "
                "FROM endpoint_numeric_data GROUP BY 1, 2 ORDER BY 1, 2"
            ).fetchall()
            rolled = conn.execute(
                f"SELECT endpoint_id, bucket, n, raw_n, raw_min, raw_max, raw_sum, cal_n, "
                f"cal_min, cal_max, cal_sum FROM {table} ORDER BY 1, 2"
            ).fetchall()
            assert rolled == raw, unit
        assert len(rolled) >= 3


def test_the_logger_role_needs_no_right_on_the_rollups(
    postgres_server: Any, lab_database_factory: Any
) -> None:
    dsn = lab_database_factory()
    role, password = f"logger_{uuid.uuid4().hex[:6]}", "logger-password"
    postgres_server.create_role(role, password)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"GRANT SELECT, INSERT ON endpoint_numeric_data TO {role}")
        conn.execute(f"GRANT SELECT ON endpoint_id_map TO {role}")
        conn.execute(f"GRANT USAGE ON SEQUENCE measurement_ids TO {role}")
    params = psycopg.conninfo.conninfo_to_dict(dsn)
    as_logger = psycopg.conninfo.make_conninfo(**{**params, "user": role, "password": password})
    with psycopg.connect(as_logger, autocommit=True) as conn:
        copy_numeric(conn, [(1, T0, 1.0, 2.0)])
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DELETE FROM endpoint_numeric_rollup_1m")
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute("SELECT n FROM endpoint_numeric_rollup_1h").fetchall() == [(1,)]


# ------------------------------------------------------------------ series
def test_short_windows_are_the_raw_rows(filled: str) -> None:
    start, end = T0 + dt.timedelta(seconds=100), T0 + dt.timedelta(seconds=160)
    (s,) = run(_with_conn(filled, queries.series, ["peaches"], start, end, max_points=100))
    assert s["mode"] == "raw" and len(s["t"]) == 61
    assert s["value"][0] == 200.0 and s["raw"][0] == 100.0  # calibrated first
    (r,) = run(_with_conn(filled, queries.series, ["peaches"], start, end, field="raw"))
    assert r["value"] == [float(x) for x in range(100, 161)]


@pytest.mark.parametrize(
    ("hours", "points", "mode"),
    [(1, 200, "raw-buckets"), (3, 100, "1m"), (3, 2, "1h")],
)
def test_long_windows_are_aggregated_in_the_database(
    filled: str, hours: int, points: int, mode: str
) -> None:
    start, end = T0, T0 + dt.timedelta(hours=hours) - dt.timedelta(seconds=1)
    (s,) = run(_with_conn(filled, queries.series, ["peaches"], start, end, max_points=points))
    assert s["mode"] == mode
    assert len(s["t"]) <= points + 1
    assert sum(s["n"]) == hours * 3600  # every value is in exactly one bucket
    width = s["bucket_s"]
    last = hours * 3600 - 1
    # each bucket (aligned to the date_bin origin, cut by the window) holds whole seconds
    for t, lo_v, hi_v, mean in zip(s["t"], s["min"], s["max"], s["value"], strict=True):
        begin = (
            dt.datetime.fromisoformat(t) - dt.timedelta(seconds=width / 2) - T0
        ).total_seconds()
        lo, hi = max(0, begin), min(last, begin + width - 1)
        assert (lo_v, hi_v) == (2 * lo, 2 * hi)
        assert mean == pytest.approx(lo + hi)


def test_series_refuses_what_it_cannot_answer(filled: str) -> None:
    with pytest.raises(queries.QueryError, match="not in endpoint_id_map: donuts"):
        run(_with_conn(filled, queries.series, ["donuts"], T0, T0 + dt.timedelta(1)))
    with pytest.raises(queries.QueryError, match="end after it starts"):
        run(_with_conn(filled, queries.series, ["peaches"], T0, T0))
    with pytest.raises(queries.QueryError, match="at most"):
        run(_with_conn(filled, queries.series, ["peaches"] * 30, T0, T0 + dt.timedelta(1)))


def test_string_endpoints_come_as_their_values(filled: str) -> None:
    (s,) = run(_with_conn(filled, queries.series, ["cheese"], T0, T0 + dt.timedelta(hours=1)))
    assert s["raw"] == ["gouda", "brie", "comte"]
    (s,) = run(
        _with_conn(filled, queries.series, ["cheese"], T0, T0 + dt.timedelta(hours=1), max_points=2)
    )
    assert s["raw"] == ["brie", "comte"] and s["truncated"] is True


def test_latest_values(filled: str) -> None:
    rows = {e["name"]: e for e in run(_with_conn(filled, queries.endpoints))}
    assert rows["peaches"]["value_raw"] == 3 * 3600 - 1
    assert rows["cheese"]["value_raw"] == "comte"
    assert rows["recipe"]["timestamp"] is None  # never logged
    assert "donuts" not in rows


# ------------------------------------------------------------------ summaries
@pytest.mark.parametrize(
    ("start_s", "end_s"),
    [(30.5, 7000.25), (5, 50), (0, 3 * 3600), (3599, 3601)],
)
def test_run_summary_equals_the_raw_statistics(filled: str, start_s: float, end_s: float) -> None:
    start, end = T0 + dt.timedelta(seconds=start_s), T0 + dt.timedelta(seconds=end_s)
    got = {s["name"]: s for s in run(_with_conn(filled, queries.run_summary, start, end))}
    with psycopg.connect(filled) as conn:
        window = (
            'FROM endpoint_numeric_data WHERE endpoint_id = 1 AND "timestamp" BETWEEN %s AND %s'
        )
        n, lo, hi, mean = conn.execute(
            f"SELECT count(*), min(value_cal), max(value_cal), avg(value_cal) {window}",
            (start, end),
        ).fetchone()
        values = conn.execute(f'SELECT value_cal {window} ORDER BY "timestamp"', (start, end))
        ordered = [v for (v,) in values.fetchall()]
        first, last = ordered[0], ordered[-1]
    p = got["peaches"]
    assert (p["count"], p["min"], p["max"], p["field"]) == (n, lo, hi, "value_cal")
    assert p["mean"] == pytest.approx(mean)
    assert (p["first"]["value"], p["last"]["value"]) == (first, last)


def test_summary_of_raw_only_and_string_endpoints(filled: str) -> None:
    got = {
        s["name"]: s
        for s in run(_with_conn(filled, queries.run_summary, T0, T0 + dt.timedelta(minutes=5)))
    }
    assert got["chips"]["field"] == "value_raw" and got["chips"]["count"] == 3
    assert (got["chips"]["min"], got["chips"]["max"]) == (1.0, 3.0)
    assert got["cheese"]["count"] == 3 and got["cheese"]["last"]["value"] == "comte"


# ------------------------------------------------------------------ reports
def test_report_from_the_database_and_from_a_snapshot_agree(filled: str, tmp_path: Path) -> None:
    with psycopg.connect(filled, autocommit=True) as conn:
        run_id = conn.execute(
            "INSERT INTO runs.run_table (run_name, start_timestamp, end_timestamp) "
            "VALUES ('report_run', %s, %s) RETURNING run_id",
            (T0 + dt.timedelta(seconds=60), T0 + dt.timedelta(seconds=120)),
        ).fetchone()[0]
        db_report = from_database(conn, run_id)
    peaches = next(e for e in db_report.endpoints if e.name == "peaches")
    assert len(peaches.points) == 61 and peaches.before is not None
    assert peaches.summary()["min"] == 120.0 and peaches.summary()["max"] == 240.0
    # the same values as the snapshot service writes them
    snapshot = {
        e.name: [
            {"timestamp": p.t.isoformat() + "Z", "value_raw": p.raw, "value_cal": p.cal}
            for p in ([e.before] if e.before else []) + e.points
        ]
        for e in db_report.endpoints
    }
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / f"rid{run_id:09d}_snapshot.json").write_text(json.dumps(snapshot))
    (run_dir / f"rid{run_id:09d}_meta.json").write_text(json.dumps({"DAQ": "generic_daq"}))
    file_report = from_run_directory(
        run_dir, run_id, start=db_report.run.start, end=db_report.run.end, run_name="report_run"
    )
    summaries = lambda r: {e.name: e.summary() for e in r.endpoints}  # noqa: E731
    assert summaries(file_report) == summaries(db_report)
    written = write_report(file_report, run_dir, f"rid{run_id:09d}")
    html = written[0].read_text()
    assert "<script" not in html and "http://" not in html.replace("http://www.w3.org", "")
    assert "report_run" in html and "generic_daq" in html and "<svg" in html
    lines = render_csv(file_report).splitlines()
    assert lines[0] == "endpoint,type,timestamp,value_raw,value_cal,in_run"
    assert sum(1 for x in lines if x.startswith("peaches,") and x.endswith(",1")) == 61


def test_insectarium_report_command(filled: str, tmp_path: Path) -> None:
    with psycopg.connect(filled, autocommit=True) as conn:
        run_id = conn.execute(
            "INSERT INTO runs.run_table (run_name, start_timestamp, end_timestamp) "
            "VALUES ('cli_run', %s, %s) RETURNING run_id",
            (T0, T0 + dt.timedelta(seconds=30)),
        ).fetchone()[0]

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "insectarium.cli.lab", "--dsn", filled, "report", *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )

    out = cli(str(run_id), "--data-dir", str(tmp_path / "none"), "--out", str(tmp_path))
    assert out.returncode == 0, out.stderr
    html = (tmp_path / f"rid{run_id:09d}_report.html").read_text()
    assert "cli_run" in html and "peaches" in html
    assert cli("999999", "--out", str(tmp_path)).returncode == 1
    missing = cli(str(run_id), "--from-files", "--data-dir", str(tmp_path / "none"))
    assert missing.returncode == 1 and "no run directory" in missing.stdout


# ------------------------------------------------------------------ configuration
def test_config_errors_name_the_file_and_the_key(tmp_path: Path) -> None:
    path = tmp_path / "console.yaml"
    good = {
        "secret_key": "s" * 32,
        "users": [{"name": "lab", "password": "long-enough"}],
        "database": {"user": "c", "password": "p"},
    }
    path.write_text(yaml.safe_dump(good))
    assert load_config(path).users[0].role == "viewer"
    for bad, needle in (
        ({**good, "userz": []}, "userz: unknown key"),
        ({**good, "users": [{"name": "lab", "password": "short"}]}, "users.0.password"),
        ({**good, "secret_key": "short"}, "secret_key"),
        ({**good, "users": [good["users"][0], good["users"][0]]}, "user names must be unique"),
        (
            {
                **good,
                "supervisors": [
                    {"host": "sc-db", "url": "http://a:9001"},
                    {"host": "sc-db", "url": "http://b:9001"},
                ],
            },
            "supervisor host names must be unique: sc-db",
        ),
        ({**good, "database": {**good["database"], "sslmode": "verify"}}, "database.sslmode"),
        (
            {**good, "database": {**good["database"], "sslrootcert": "/nonexistent/ca.pem"}},
            "database.sslrootcert",
        ),
        ({**good, "tls": {"cert": "/nonexistent.pem", "key": "/nonexistent.key"}}, "tls.cert"),
    ):
        path.write_text(yaml.safe_dump(bad))
        with pytest.raises(ConfigError) as err:
            load_config(path)
        assert str(path) in str(err.value) and needle in str(err.value)
        assert "long-enough" not in str(err.value)
    check = subprocess.run(
        [sys.executable, "-m", "insectarium.console", "-c", str(path), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 2 and "tls.cert" in check.stderr


def test_auth_helpers() -> None:
    import base64

    header = "Basic " + base64.b64encode(b"lab:pw:with:colons").decode()
    assert basic_credentials(header) == ("lab", "pw:with:colons")
    assert basic_credentials("Basic !!!") is None
    assert basic_credentials("Bearer x") is None
    assert basic_credentials("Basic " + "A" * 5000) is None
    for evil in ("//evil.example/", "https://evil.example/", "/\\evil", None, ""):
        assert safe_next(evil) == "/"
    assert safe_next("/runs/3?x=1") == "/runs/3?x=1"


# ------------------------------------------------------------------ HTTP: who may do what
@pytest.fixture(scope="module")
def console(
    postgres_server: Any, filled: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ConsoleProcess]:
    role, password = console_role(postgres_server, filled)
    db = psycopg.conninfo.conninfo_to_dict(filled)
    proc = ConsoleProcess(
        tmp_path_factory.mktemp("console-http"),
        {
            "secret_key": uuid.uuid4().hex * 2,
            "users": [
                {"name": "lab", "password": "operator-pw", "role": "operator"},
                {"name": "shifter", "password": "viewer-pw", "role": "viewer"},
            ],
            "database": {
                "host": db.get("host") or "127.0.0.1",
                "port": int(db.get("port") or 5432),
                "dbname": db["dbname"],
                "user": role,
                "password": password,
            },
            "supervisors": [{"host": "nowhere", "url": "http://127.0.0.1:9/RPC2", "timeout_s": 1}],
        },
    )
    try:
        yield proc.start()
    finally:
        proc.stop()


def test_no_anonymous_access(console: ConsoleProcess) -> None:
    for path in ("/api/services", "/api/endpoints", "/api/runs", "/services", "/runs/1"):
        status, headers, _ = console.request(path)
        assert status == 401, path
        assert headers["www-authenticate"].startswith("Basic realm=")
    status, headers, _ = console.request("/values?endpoint=peaches", accept="text/html")
    assert status == 303 and headers["location"] == "/login?next=/values%3Fendpoint%3Dpeaches"
    assert console.request("/healthz")[0] == 200
    assert console.request("/login", accept="text/html")[0] == 200
    assert console.request("/api/runs", user="lab", password="wrong-pw")[0] == 401
    status, _h, body = console.request("/api/runs", user="shifter", password="viewer-pw")
    assert status == 200 and "runs" in json.loads(body)


def test_a_host_that_is_down_is_one_error_not_a_failure(console: ConsoleProcess) -> None:
    status, _h, body = console.request("/api/services", user="lab", password="operator-pw")
    data = json.loads(body)
    assert status == 200 and data["programs"] == []
    assert "cannot reach supervisord" in data["errors"]["nowhere"]
    assert "operator-pw" not in body.decode()


def test_viewers_may_not_operate_and_bad_requests_get_clear_errors(console: ConsoleProcess) -> None:
    post = {"method": "POST", "data": b"{}", "headers": {"Content-Type": "application/json"}}
    status, _h, body = console.request(
        "/api/services/nowhere/x/stop", user="shifter", password="viewer-pw", **post
    )
    assert status == 403 and "viewer" in json.loads(body)["error"]
    status, _h, body = console.request(
        "/api/services/nowhere/x/stop",
        user="lab",
        password="operator-pw",
        **{**post, "headers": {**post["headers"], "Origin": "http://evil.example"}},
    )
    assert status == 403 and "cross-site" in json.loads(body)["error"]
    status, _h, body = console.request(
        "/api/series?endpoint=donuts&last=60", user="lab", password="operator-pw"
    )
    assert status == 400 and "donuts" in json.loads(body)["error"]
    status, _h, body = console.request(
        "/api/series?endpoint=peaches&start=yesterday", user="lab", password="operator-pw"
    )
    assert status == 400 and "not an ISO" in json.loads(body)["error"]
    assert console.request("/runs/424242", user="lab", password="operator-pw")[0] == 404
    status, _h, body = console.request("/api/runs/424242", user="lab", password="operator-pw")
    assert status == 404 and "no run 424242" in json.loads(body)["error"]
    status, headers, _ = console.request(
        "/runs/1/files/..%2F..%2Fetc%2Fpasswd", user="lab", password="operator-pw"
    )
    assert status == 404
    assert headers["x-frame-options"] == "DENY" and headers["x-content-type-options"] == "nosniff"


def test_the_console_role_cannot_write(postgres_server: Any, filled: str) -> None:
    role, password = console_role(postgres_server, filled)
    params = psycopg.conninfo.conninfo_to_dict(filled)
    dsn = psycopg.conninfo.make_conninfo(**{**params, "user": role, "password": password})
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM runs.run_table").fetchone()[0] >= 0
        for statement in (
            "INSERT INTO runs.run_table (run_name) VALUES ('x')",
            "DELETE FROM endpoint_numeric_data",
            "INSERT INTO endpoint_id_map (endpoint_name, type) VALUES ('x', 'numeric')",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)


def test_failed_logins_are_throttled(console: ConsoleProcess) -> None:
    statuses = [
        console.request("/api/runs", user="lab", password=f"guess-{i}")[0] for i in range(7)
    ]
    assert statuses[:5] == [401] * 5 and statuses[-1] == 429
    # the right password must wait too: the throttle is per client, not per guess
    assert console.request("/api/runs", user="lab", password="operator-pw")[0] == 429


def test_with_a_certificate_and_key_the_console_speaks_https_only(
    postgres_server: Any, filled: str, tmp_path: Path
) -> None:
    import shutil
    import ssl
    import urllib.error
    import urllib.request

    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is needed to make a test certificate")
    cert, key = tmp_path / "console.pem", tmp_path / "console.key"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
         "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    role, password = console_role(postgres_server, filled)
    db = psycopg.conninfo.conninfo_to_dict(filled)
    proc = ConsoleProcess(
        tmp_path,
        {
            "secret_key": uuid.uuid4().hex * 2,
            "tls": {"cert": str(cert), "key": str(key)},
            "users": [{"name": "lab", "password": "operator-pw", "role": "operator"}],
            "database": {
                "host": db.get("host") or "127.0.0.1",
                "port": int(db.get("port") or 5432),
                "dbname": db["dbname"],
                "user": role,
                "password": password,
            },
        },
    )
    context = ssl.create_default_context(cafile=str(cert))
    context.check_hostname = False  # the certificate names 127.0.0.1 as CN only

    def get(url: str, headers: dict[str, str] | None = None) -> int:
        req = urllib.request.Request(url, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=10, context=context) as r:
                return r.status
        except urllib.error.HTTPError as exc:
            return exc.code

    # ConsoleProcess probes plain HTTP: start it by hand and probe over TLS
    import yaml as _yaml

    config = {**proc.config, "listen": {"host": "127.0.0.1", "port": proc.port}}
    path = tmp_path / "console.yaml"
    path.write_text(_yaml.safe_dump(config))
    server = subprocess.Popen(
        [sys.executable, "-m", "insectarium.console", "-c", str(path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"https://127.0.0.1:{proc.port}"
    try:
        from tests.console_support import wait_for

        wait_for(lambda: _quiet(get, base + "/healthz") == 200, 60, "the console over HTTPS")
        assert get(base + "/api/runs") == 401
        import base64

        token = base64.b64encode(b"lab:operator-pw").decode()
        assert get(base + "/api/runs", {"Authorization": f"Basic {token}"}) == 200
        with pytest.raises(OSError):  # no plain HTTP on the same port
            urllib.request.urlopen(f"http://127.0.0.1:{proc.port}/healthz", timeout=5)
    finally:
        server.terminate()
        server.wait(15)


def _quiet(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except OSError:
        return None


def test_processes_of_a_group_are_named_and_controlled_as_supervisorctl_does(
    tmp_path: Path,
) -> None:
    """A ``numprocs`` program (the scaled-out sensor logger) is ``group:name`` in the console,
    and stop/start/tail of such a process reach it (a bare name is BAD_NAME for supervisord)."""
    import shutil
    import time

    from insectarium.console.config import Supervisor
    from insectarium.console.supervisor import SupervisorError, SupervisorHost
    from insectarium.testing.servers import free_port

    port = free_port()
    conf = tmp_path / "supervisord.conf"
    conf.write_text(
        "\n".join(
            [
                "[inet_http_server]",
                f"port=127.0.0.1:{port}",
                "[supervisord]",
                f"logfile={tmp_path}/supervisord.log",
                f"pidfile={tmp_path}/supervisord.pid",
                f"childlogdir={tmp_path}",
                "[rpcinterface:supervisor]",
                "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
                "[program:workers]",
                f"command={sys.executable} -u -c 'import time; print(1); time.sleep(600)'",
                "numprocs=2",
                "process_name=worker-%(process_num)d",
                "startsecs=0",
                f"stdout_logfile={tmp_path}/%(process_num)d.log",
                "",
            ]
        )
    )
    supervisord = shutil.which("supervisord", path=str(Path(sys.executable).parent))
    assert supervisord
    proc = subprocess.Popen([supervisord, "-n", "-c", str(conf)], start_new_session=True)
    try:
        host = SupervisorHost(Supervisor(host="here", url=f"http://127.0.0.1:{port}"))

        def states() -> dict[str, str]:
            try:
                return {p.name: p.state for p in run(host.programs())}
            except SupervisorError:  # not listening yet
                return {}

        deadline = time.monotonic() + 30
        while states() != {"workers:worker-0": "RUNNING", "workers:worker-1": "RUNNING"}:
            assert time.monotonic() < deadline, states()
            time.sleep(0.2)
        run(host.stop("workers:worker-0"))
        assert states() == {"workers:worker-0": "STOPPED", "workers:worker-1": "RUNNING"}
        run(host.start("workers:worker-0"))
        assert states()["workers:worker-0"] == "RUNNING"
        assert run(host.tail("workers:worker-1", 1000))["text"].strip() == "1"
    finally:
        proc.terminate()
        proc.wait(30)
