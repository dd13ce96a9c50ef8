"""Several sensor-logger processes on one queue (issue 14, item 2): no value stored twice.

One logger runs in the test, a second as a real ``dl-serve`` process on the same durable quorum
queue; the second is frozen (SIGSTOP) once it has stored values of a backlog, and killed (SIGKILL)
once the first consumes too, so the broker redelivers what it held unacknowledged — values it
had not stored yet, and any it had stored but not yet acknowledged — to the first.  Every value
must be in the table exactly once.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from insectarium.dripline import Message
from insectarium.dripline.connection import Connection

from .runtime_support import REPO, auth_for, eventually, mesh_for, running, unique
from .test_sensor_logger import db_auth, make_logger, register

pytestmark = pytest.mark.slow

N = 20_000


def counts(dsn: str, name: str) -> tuple[int, int, float]:
    """(rows, distinct timestamps, sum of value_raw) of ``name``."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            'SELECT count(*), count(DISTINCT d."timestamp"), coalesce(sum(d.value_raw), 0) '
            "FROM endpoint_numeric_data d JOIN endpoint_id_map m USING (endpoint_id) "
            "WHERE m.endpoint_name = %s",
            (name,),
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), float(row[2])


def logger_process(tmp: Path, dsn: str, amqp_url: str, name: str, queue: str) -> subprocess.Popen:
    """``dl-serve`` of a SensorLogger named ``name`` on ``queue`` (credentials in a file)."""
    auth, keys = db_auth(dsn, amqp_url)
    creds = auth.dripline
    (tmp / "auth.yaml").write_text(
        yaml.safe_dump(
            {
                "dripline": {"username": creds.username, "password": creds.password},
                "postgres": auth.groups["postgres"],
            }
        )
    )
    mesh = mesh_for(amqp_url)
    config = {
        "name": name,
        "module": "SensorLogger",
        "heartbeat_interval_s": 0,
        "alert_queue_name": queue,
        "alert_queue_durable": True,
        "alert_key_parser_re": r"^sensor_value\.(?P<endpoint_name>.+)$",
        **keys,
    }
    (tmp / "logger.yaml").write_text(yaml.safe_dump(config))
    argv = [sys.executable, "-m", "insectarium.cli.serve", "-c", str(tmp / "logger.yaml")]
    argv += ["-b", mesh.broker, "-p", str(mesh.broker_port), "--auth-file", str(tmp / "auth.yaml")]
    return subprocess.Popen(
        argv,
        stdout=open(tmp / "logger.log", "wb"),
        stderr=subprocess.STDOUT,
        cwd=REPO,
        env={**os.environ, "HOME": str(tmp)},
    )


async def test_two_logger_processes_store_every_value_once_despite_redeliveries(
    lab_database: str, amqp_url: str, tmp_path: Path
) -> None:
    name = f"scale_{uuid.uuid4().hex[:6]}"
    register(lab_database, **{name: "numeric"})
    queue = unique("sc_db_alerts")
    declarer = make_logger(lab_database, amqp_url, alert_queue_name=queue, alert_queue_durable=True)
    async with running(declarer):
        pass  # declares and binds the quorum queue

    publisher = Connection(mesh_for(amqp_url), auth_for(amqp_url).dripline, name="publisher")
    await publisher.connect()
    start = dt.datetime(2026, 5, 6, 7, 8, 9)

    def alert(i: int) -> Message:
        msg = Message.alert(f"sensor_value.{name}", {"value_raw": float(i)}, sender="test")
        msg.timestamp = (start + dt.timedelta(milliseconds=i)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        return msg

    for lo in range(0, N, 500):
        await asyncio.gather(
            *(publisher.publish(alert(i), confirm=True) for i in range(lo, lo + 500))
        )
    await publisher.close()

    second = logger_process(tmp_path, lab_database, amqp_url, unique("sc_db_2"), queue)
    try:
        # the second process takes its share of the backlog first (prefetch 10 000) …
        deadline = time.monotonic() + 60
        while "consuming alerts" not in (tmp_path / "logger.log").read_text(errors="replace"):
            assert second.poll() is None, (tmp_path / "logger.log").read_text(errors="replace")
            assert time.monotonic() < deadline, "the second logger did not start"
            await asyncio.sleep(0.02)
        # … and is frozen as soon as it has stored some: it then holds the rest of its share
        # unacknowledged whatever the machine's load (under load it had once drained the whole
        # backlog before the first logger started, and nothing was redelivered)
        await eventually(lambda: counts(lab_database, name)[0] > 0, timeout=30, interval=0.01)
        second.send_signal(signal.SIGSTOP)
        first = make_logger(
            lab_database, amqp_url, alert_queue_name=queue, alert_queue_durable=True
        )
        async with running(first):
            # the first consumes what is left in the queue; the second dies holding its share
            # (waiting for the first to store something first failed once in CI: the second
            # had taken all that was left, so the first had nothing until the kill)
            second.send_signal(signal.SIGKILL)
            second.wait(10)
            await eventually(
                lambda: counts(lab_database, name)[0] >= N and not first.status()["pending"],
                timeout=120,
                interval=0.2,
            )
            await asyncio.sleep(1.0)  # a late redelivery would show now
            status: dict[str, Any] = first.status()
    finally:
        if second.poll() is None:
            second.kill()
            second.wait(10)
    rows, distinct, total = counts(lab_database, name)
    assert rows == N and distinct == N, (rows, distinct)
    assert total == N * (N - 1) / 2
    assert status["redelivered"] > 0, status  # the killed process's values came back …
    assert status["stored"] + status["duplicates_skipped"] <= N  # … and none was stored twice
