"""The lab console in a real browser (Debian's Chromium + chromedriver, through selenium).

One lab for the module: the six services from their lab configs under a private supervisord (its
authenticated XML-RPC, as on glenlivet), the test session's RabbitMQ (a private vhost) and
PostgreSQL (a fresh lab database), and the console as a process with a read-only database role
holding exactly the grants of purpose ``console``.  The tests log in, stop and start a program,
compare a plot's points with the database, and look at a finished virtual run and its report.

``INSECTARIUM_SCREENSHOT_DIR=docs/images pytest tests/test_console_browser.py`` also saves the
README's screenshots there.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.console_support import (
    PROGRAMS,
    ConsoleProcess,
    SupervisedLab,
    broker_parts,
    chromium,
    console_role,
    wait_for,
)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not (shutil.which("chromium") and shutil.which("chromedriver")),
        reason="needs Debian's chromium and chromium-driver (./lab bootstrap installs them)",
    ),
]
OPERATOR, OPERATOR_PW = "lab", "operator-password"
VIEWER, VIEWER_PW = "shifter", "viewer-password"
SHOTS = os.environ.get("INSECTARIUM_SCREENSHOT_DIR")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("console")


@pytest.fixture(scope="module")
def lab(rabbitmq_server: Any, lab_database_module: str, workdir: Path) -> Iterator[SupervisedLab]:
    from psycopg.conninfo import conninfo_to_dict

    vhost = f"console_{uuid.uuid4().hex[:8]}"
    rabbitmq_server.ctl("add_vhost", vhost)
    rabbitmq_server.ctl("set_permissions", "-p", vhost, rabbitmq_server.user, ".*", ".*", ".*")
    host, port = broker_parts(rabbitmq_server.url)
    lab = SupervisedLab(
        workdir=workdir,
        broker_host=host,
        broker_port=port,
        broker_user=rabbitmq_server.user,
        broker_password=rabbitmq_server.password,
        vhost=vhost,
        db=conninfo_to_dict(lab_database_module),
    )
    try:
        yield lab.start()
    finally:
        lab.stop()
        with contextlib.suppress(Exception):
            rabbitmq_server.ctl("delete_vhost", vhost)


@pytest.fixture(scope="module")
def dripline(rabbitmq_server: Any, lab: SupervisedLab) -> Iterator[Any]:
    from insectarium.dripline import Authentication, BlockingInterface, MeshConfig

    client = BlockingInterface(
        dripline_mesh=MeshConfig(
            broker=lab.broker_host, broker_port=lab.broker_port, vhost=lab.vhost
        ),
        authentication=Authentication(
            groups={"dripline": {"username": lab.broker_user, "password": lab.broker_password}}
        ),
        timeout_s=30,
        name="console-test",
    )

    def answers() -> bool:
        from insectarium.dripline import ReplyError

        try:
            for name, _c, _d in PROGRAMS:
                client.cmd(name, "ping", timeout_s=3)
        except ReplyError:
            return False
        return True

    wait_for(answers, 90, "the six services answering ping", lab.diagnostics)
    yield client
    client.close()


@pytest.fixture(scope="module")
def console(
    postgres_server: Any, lab_database_module: str, lab: SupervisedLab, workdir: Path
) -> Iterator[ConsoleProcess]:
    from psycopg.conninfo import conninfo_to_dict

    role, password = console_role(postgres_server, lab_database_module)
    db = conninfo_to_dict(lab_database_module)
    proc = ConsoleProcess(
        workdir,
        {
            "secret_key": uuid.uuid4().hex + uuid.uuid4().hex,
            "users": [
                {"name": OPERATOR, "password": OPERATOR_PW, "role": "operator"},
                {"name": VIEWER, "password": VIEWER_PW, "role": "viewer"},
            ],
            "database": {
                "host": db.get("host") or "127.0.0.1",
                "port": int(db.get("port") or 5432),
                "dbname": db["dbname"],
                "user": role,
                "password": password,
            },
            "supervisors": [
                {
                    "host": "glenlivet",
                    "url": lab.rpc_url,
                    "username": lab.rpc_user,
                    "password": lab.rpc_password,
                }
            ],
            "data_directory": str(lab.data_dir),
            "refresh_s": 1.0,
        },
    )
    try:
        yield proc.start()
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def browser(workdir: Path) -> Iterator[Any]:
    driver = chromium(workdir)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def shot(browser: Any, name: str, max_height: int = 1800) -> None:
    """Save the whole page (up to ``max_height`` pixels) as docs/images/console-<name>.png."""
    if not SHOTS:
        return
    Path(SHOTS).mkdir(parents=True, exist_ok=True)
    size = browser.get_window_size()
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(size["width"], max(size["height"], min(int(height) + 20, max_height)))
    time.sleep(0.8)  # let plotly redraw at the new size
    browser.save_screenshot(str(Path(SHOTS) / f"console-{name}.png"))
    browser.set_window_size(size["width"], size["height"])


def until(browser: Any, condition: Any, timeout: float = 30, what: str = "") -> Any:
    """Wait for ``condition``; the live tables are re-rendered every refresh, so an element
    found a moment ago may be stale: that is "not yet", not an error."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(
        browser, timeout, poll_frequency=0.2, ignored_exceptions=[StaleElementReferenceException]
    )
    return wait.until(condition, what)


def click(browser: Any, css: str, timeout: float = 30) -> None:
    """Click the element ``css`` selects, finding it again if a refresh replaced it."""
    from selenium.webdriver.common.by import By

    def clicked(b: Any) -> bool:
        b.find_element(By.CSS_SELECTOR, css).click()
        return True

    until(browser, clicked, timeout, f"a click on {css}")


def login(browser: Any, console: ConsoleProcess, user: str, password: str) -> None:
    from selenium.webdriver.common.by import By

    browser.get(console.url + "/login")
    browser.find_element(By.ID, "username").clear()
    browser.find_element(By.ID, "username").send_keys(user)
    browser.find_element(By.ID, "password").send_keys(password)
    browser.find_element(By.ID, "login-button").click()


def program_state(browser: Any, name: str) -> str:
    from selenium.webdriver.common.by import By

    rows = browser.find_elements(By.CSS_SELECTOR, f'#services tr[data-program="{name}"] .badge')
    return rows[0].text if rows else ""


def db_rows(dsn: str, query: str, *params: Any) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(query, params).fetchall()


# ------------------------------------------------------------------ tests
def test_login_is_refused_with_a_wrong_password(browser: Any, console: ConsoleProcess) -> None:
    from selenium.webdriver.common.by import By

    browser.delete_all_cookies()
    browser.get(console.url + "/services")
    until(browser, lambda b: "/login" in b.current_url, what="redirect to the login page")
    shot(browser, "login")
    login(browser, console, OPERATOR, "not-the-password")
    error = until(browser, lambda b: b.find_elements(By.ID, "login-error"), what="an error")
    assert "Wrong user name or password" in error[0].text
    assert "/login" in browser.current_url
    assert not [c for c in browser.get_cookies() if c["name"] == "insectarium_console"]
    assert browser.find_elements(By.ID, "whoami") == []  # not logged in

    login(browser, console, OPERATOR, OPERATOR_PW)
    until(browser, lambda b: b.current_url.endswith("/services"), what="the services page")
    assert browser.find_element(By.ID, "whoami").text == f"{OPERATOR} · operator"


def test_services_page_lists_the_six_programs_and_stop_start_round_trips(
    browser: Any, console: ConsoleProcess, lab: SupervisedLab
) -> None:
    from selenium.webdriver.common.by import By

    browser.get(console.url + "/services")
    names = [n for n, _c, _d in PROGRAMS]
    until(
        browser,
        lambda b: all(program_state(b, n) == "RUNNING" for n in names),
        60,
        "six RUNNING programs in the table",
    )
    rows = browser.find_elements(By.CSS_SELECTOR, "#services tbody tr[data-program]")
    assert sorted(r.get_attribute("data-program") for r in rows) == sorted(names)
    assert {r.get_attribute("data-host") for r in rows} == {"glenlivet"}

    target = "not-status_multido"
    click(browser, f'#services tr[data-program="{target}"] button[data-action="stop"]')
    # the page updates itself (no reload): the state shows up within a few seconds
    until(browser, lambda b: program_state(b, target) == "STOPPED", 30, f"{target} STOPPED")
    assert lab.states()[target] == "STOPPED"  # really stopped, as supervisord says
    click(browser, f'#services tr[data-program="{target}"] button[data-action="start"]')
    until(browser, lambda b: program_state(b, target) == "RUNNING", 30, f"{target} RUNNING")
    assert lab.states()[target] == "RUNNING"

    # the filter and the log
    from selenium.webdriver.support.ui import Select

    Select(browser.find_element(By.ID, "filter-state")).select_by_value("!RUNNING")
    until(browser, lambda b: not b.find_elements(By.CSS_SELECTOR, "#services tr[data-program]"))
    Select(browser.find_element(By.ID, "filter-state")).select_by_value("")
    log_button = f'#services tr[data-program="{target}"] button[data-action="log"]'
    click(browser, log_button)
    until(
        browser,
        lambda b: "started" in b.find_element(By.ID, "log-text").text.lower(),
        30,
        "the program's log",
    )
    shot(browser, "services")


def test_a_plot_shows_the_values_of_the_database(
    browser: Any, console: ConsoleProcess, dripline: Any, lab_database_module: str
) -> None:
    from selenium.webdriver.common.by import By

    for value in (1.25, 2.5, 3.75, 0.5):
        dripline.set("peaches", value)
        time.sleep(0.3)

    def logged() -> list[tuple[Any, ...]]:
        rows = db_rows(
            lab_database_module,
            'SELECT d."timestamp", d.value_raw, d.value_cal FROM endpoint_numeric_data d '
            "JOIN endpoint_id_map m USING (endpoint_id) WHERE m.endpoint_name = 'peaches' "
            'ORDER BY d."timestamp"',
        )
        return rows if {r[1] for r in rows} >= {1.25, 2.5, 3.75, 0.5} else []

    # the rows committed before the page loads must all be plotted; rows logged later (the
    # endpoint's scheduled logging goes on) may or may not be, so they are not compared
    rows = wait_for(logged, 30, "the set values in the database")
    start = dt.datetime.now(dt.UTC).replace(tzinfo=None) - dt.timedelta(seconds=900)
    browser.get(console.url + "/values?endpoint=peaches&endpoint=cheese&last=900")
    until(
        browser,
        lambda b: b.execute_script(
            "const p = document.getElementById('plot'); return p.data && p.data.length > 0;"
        ),
        30,
        "the plot",
    )
    plotted = browser.execute_script(
        "const t = document.getElementById('plot').data.find(d => d.name === 'peaches');"
        "return {x: t.x.map(d => new Date(d).toISOString()), y: t.y};"
    )
    expected = [(t, cal) for t, _raw, cal in rows if t >= start + dt.timedelta(seconds=5)]
    points = {
        dt.datetime.fromisoformat(x.replace("Z", "")): y
        for x, y in zip(plotted["x"], plotted["y"], strict=True)
    }
    # every database value of the window is a point of the plot, at its time (ms precision)
    for t, cal in expected:
        match = [y for x, y in points.items() if abs((x - t).total_seconds()) < 0.002]
        assert match == [pytest.approx(cal)], (t, cal, sorted(points.items())[-10:])
    assert {2.5, 5.0, 7.5, 1.0} <= {round(y, 6) for y in points.values()}  # value_cal = 2 x raw
    # the endpoint table shows the latest value and its age
    latest = browser.find_element(By.CSS_SELECTOR, '#endpoints tr[data-endpoint="peaches"]')
    assert "1" in latest.text  # 0.5 raw -> 1 calibrated
    if SHOTS:  # the README's picture: the few seconds this test logged, with chips
        since = (rows[0][0] - dt.timedelta(seconds=2)).isoformat(timespec="seconds")
        browser.get(f"{console.url}/values?endpoint=peaches&endpoint=chips&start={since}")
        until(browser, lambda b: b.execute_script("return !!document.getElementById('plot').data"))
        shot(browser, "values")

    # a long window comes aggregated by the database, and says so
    browser.get(console.url + "/values?endpoint=peaches&last=2592000")
    note = until(
        browser,
        lambda b: (
            "buckets" in b.find_element(By.ID, "plot-note").text
            and b.find_element(By.ID, "plot-note").text
        ),
        30,
        "an aggregated 30-day plot",
    )
    assert "minute rollup" in note or "hourly rollup" in note


def test_a_finished_virtual_run_its_page_and_its_report(
    browser: Any,
    console: ConsoleProcess,
    dripline: Any,
    lab: SupervisedLab,
    lab_database_module: str,
) -> None:
    from selenium.webdriver.common.by import By

    run_id = dripline.cmd("daq_interface", "start_timed_run", ["console_run", 6])
    for value in (4.0, 6.0, 8.0):
        dripline.set("chips", value)
        time.sleep(0.4)
    dripline.set("cheese", "comte")
    wait_for(
        lambda: dripline.get("daq_interface")["run_id"] is None,
        60,
        "the run to end",
        lab.diagnostics,
    )
    run_dir = (
        lab.data_dir
        / f"{run_id // 10**6:03d}yyyxxx"
        / f"{run_id // 10**3:06d}xxx"
        / f"{run_id:09d}"
    )
    report = run_dir / f"rid{run_id:09d}_report.html"
    wait_for(report.is_file, 30, f"{report} written by the DAQ", lab.diagnostics)
    start, end = db_rows(
        lab_database_module,
        "SELECT start_timestamp, end_timestamp FROM runs.run_table WHERE run_id = %s",
        run_id,
    )[0]
    chips = db_rows(
        lab_database_module,
        "SELECT value_cal FROM endpoint_numeric_data d JOIN endpoint_id_map m USING (endpoint_id) "
        'WHERE m.endpoint_name = %s AND d."timestamp" BETWEEN %s AND %s ORDER BY d."timestamp"',
        "chips",
        start,
        end,
    )
    cal = [r[0] for r in chips]
    assert {12.0, 18.0, 24.0} <= set(cal)  # times3 calibration

    browser.get(console.url + "/runs")
    text = until(
        browser, lambda b: b.find_element(By.CSS_SELECTOR, f'#runs tr[data-run="{run_id}"]').text
    )
    assert "console_run" in text and "ended" in text
    shot(browser, "runs")
    click(browser, f'#runs tr[data-run="{run_id}"] a')
    until(browser, lambda b: b.current_url.endswith(f"/runs/{run_id}"))
    row = browser.find_element(By.CSS_SELECTOR, '#summary tr[data-endpoint="chips"]').text.split()
    # endpoint type count min max mean first last field
    assert row[:3] == ["chips", "numeric", str(len(cal))]
    assert float(row[3]) == pytest.approx(min(cal)) and float(row[4]) == pytest.approx(max(cal))
    assert float(row[5]) == pytest.approx(sum(cal) / len(cal), rel=1e-5)
    until(
        browser,
        lambda b: b.execute_script(
            "const p = document.getElementById('plot-chips'); return p && p.dataset.ready === '1';"
        ),
        30,
        "the run's plot of chips",
    )
    plotted = browser.execute_script(
        "return document.getElementById('plot-chips').data.find(d => d.name === 'chips').y;"
    )
    assert sorted(plotted) == sorted(cal)
    metadata = browser.find_element(By.ID, "metadata").text
    assert "DAQ_MODE virtual" in metadata and "run_time 6" in metadata
    files = browser.find_element(By.ID, "files").text
    assert f"rid{run_id:09d}_report.html" in files and f"rid{run_id:09d}_snapshot.json" in files
    shot(browser, "run")

    # the report the DAQ wrote at the end of the run, opened from the run page
    browser.find_element(By.LINK_TEXT, f"rid{run_id:09d}_report.html").click()
    until(browser, lambda b: f"Run {run_id}: console_run" in b.find_element(By.TAG_NAME, "h1").text)
    text = browser.find_element(By.TAG_NAME, "body").text
    assert "chips" in text and "comte" in text
    summary = json.loads(
        browser.execute_script(
            "const r = [...document.querySelectorAll('table tr')].find(tr => "
            "tr.cells[0] && tr.cells[0].textContent === 'chips');"
            "return JSON.stringify([...r.cells].map(c => c.textContent));"
        )
    )
    assert summary[2] == str(len(cal))
    assert float(summary[3]) == pytest.approx(min(cal)) and float(summary[4]) == pytest.approx(
        max(cal)
    )
    assert browser.find_elements(By.CSS_SELECTOR, "#ep-chips svg polyline")
    shot(browser, "report")
    csv_text = (run_dir / f"rid{run_id:09d}_values.csv").read_text()
    in_run = [
        line for line in csv_text.splitlines() if line.startswith("chips,") and line.endswith(",1")
    ]
    assert len(in_run) == len(cal)


def test_a_viewer_may_look_but_not_stop_a_program(
    console: ConsoleProcess, lab: SupervisedLab
) -> None:
    status, _h, body = console.request("/api/services", user=VIEWER, password=VIEWER_PW)
    assert status == 200 and json.loads(body)["may_operate"] is False
    status, _h, body = console.request(
        "/api/services/glenlivet/not-glenlivet/stop",
        user=VIEWER,
        password=VIEWER_PW,
        method="POST",
        data=b"{}",
        headers={"Content-Type": "application/json"},
    )
    assert status == 403, body
    assert lab.states()["not-glenlivet"] == "RUNNING"
