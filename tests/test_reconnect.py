"""A service whose broker restarts reconnects by itself, serves again and says so in its log."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from .runtime_support import unique

pytestmark = pytest.mark.slow


def test_service_serves_again_after_broker_restart(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    if os.environ.get("INSECTARIUM_TEST_AMQP_URL"):
        pytest.skip("needs the private test broker, which this test restarts")
    server = request.getfixturevalue("rabbitmq_server")
    u = urlparse(server.url)
    name = unique("phoenix")
    cfg = tmp_path / "svc.yaml"
    cfg.write_text(
        f"name: {name}\nheartbeat_interval_s: 1\nendpoints:\n"
        f"  - name: {name}_v\n    module: KeyValueStore\n    initial_value: 42\n"
        f"    log_interval: 1\n    check_field: value_raw\n"
    )
    auth = tmp_path / "auth.yaml"
    auth.write_text(
        f"dripline:\n  username: {unquote(u.username)}\n  password: {unquote(u.password)}\n"
    )
    common = ["-b", u.hostname, "-p", str(u.port), "--auth-file", str(auth)]
    log_path = tmp_path / "svc.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "insectarium.cli.serve", "-c", str(cfg), *common],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:

        def get() -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "insectarium.cli.agent",
                    *common,
                    "-t",
                    "2",
                    "--max-connection-attempts",
                    "1",
                    "--json-print",
                    "get",
                    f"{name}_v",
                ],
                capture_output=True,
                text=True,
                check=False,
                timeout=60,
            )

        def wait_for_answer(limit: float) -> subprocess.CompletedProcess[str]:
            deadline = time.monotonic() + limit
            while True:
                r = get()
                if r.returncode == 0:
                    return r
                assert proc.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, f"no answer: {r.stdout}{r.stderr}"
                time.sleep(0.5)

        assert '"value_raw":42' in wait_for_answer(30).stdout
        server.stop()
        time.sleep(2)
        assert proc.poll() is None, "the service must survive the broker's absence"
        server.start()
        assert '"value_raw":42' in wait_for_answer(60).stdout
        assert proc.poll() is None
        text = log_path.read_text()
        assert "lost connection to broker" in text
        assert "reconnected to broker" in text
    finally:
        proc.terminate()
        proc.wait(10)
