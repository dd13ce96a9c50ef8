"""dl-mon's listener: chunk reassembly within bounds, clean exits, and a broker restart survived.

dl-mon runs on a blocking one-socket listener (no asyncio, no aio-pika) so that it listens
within a fraction of the old start-up; these tests hold it to what the aio-pika version did.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from insectarium.dripline.listener import ChunkCollector
from insectarium.dripline.message import Message, amqp_chunks

from .runtime_support import run_cli, unique


def _chunks(payload: object, max_payload: int) -> list[tuple[bytes, object]]:
    return amqp_chunks(Message.alert("sensor_value.x", payload, sender="t"), max_payload)


def test_chunks_are_joined_in_any_order_and_late_ones_dropped() -> None:
    collector = ChunkCollector(max_message_size=100_000, max_payload_size=10)
    pieces = _chunks({"value_raw": "a" * 50}, 10)
    assert len(pieces) > 3
    out = []
    for body, props in reversed(pieces):
        out += collector.feed("sensor_value.x", props, body)
    assert len(out) == 1 and out[0].is_valid
    assert out[0].payload == {"value_raw": "a" * 50}
    assert collector.pending_count == 0
    body, props = pieces[0]
    assert collector.feed("sensor_value.x", props, body) == []  # a late duplicate: not shown


def test_a_stalled_message_is_released_invalid_after_its_wait() -> None:
    collector = ChunkCollector(max_message_size=100_000, max_payload_size=10, message_wait_ms=50)
    pieces = _chunks({"value_raw": "b" * 40}, 10)
    for body, props in pieces[:-1]:
        assert collector.feed("sensor_value.x", props, body) == []
    assert collector.expire() == []  # not yet
    deadline = collector.next_deadline()
    assert deadline is not None
    (msg,) = collector.expire(deadline + 0.001)
    assert not msg.is_valid and "Entire message was not available" in msg.error
    assert collector.pending_count == 0 and collector.next_deadline() is None


def test_sizes_a_publisher_controls_are_bounded() -> None:
    collector = ChunkCollector(max_message_size=1_000, max_payload_size=10, max_pending_messages=3)
    # more chunks announced than could fit: refused before anything is kept
    body, props = _chunks("x", 10)[0]
    props.message_id = f"{props.message_id.split('/')[0]}/0/1000"
    (msg,) = collector.feed("k", props, body)
    assert not msg.is_valid and "announces 1000 chunks" in msg.error
    # a single delivery above the limit (the client read past its body)
    body, props = _chunks("y", 10_000)[0]
    (msg,) = collector.feed("k", props, b"", oversize=5_000)
    assert not msg.is_valid and "5000 bytes exceeds the limit of 1000" in msg.error
    # never more than 3 incomplete messages kept: the oldest is released, invalid
    released = []
    for i in range(10):
        body, props = _chunks({"v": str(i) * 30}, 10)[0]
        released += collector.feed("k", props, body)
        assert collector.pending_count <= 3
    assert len(released) == 7 and all(not m.is_valid for m in released)
    assert all("incomplete messages" in m.error for m in released)


def _wait_for(path: Path, text: str, proc: subprocess.Popen[str], limit: float) -> str:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        content = path.read_text()
        if text in content:
            return content
        assert proc.poll() is None, content
        time.sleep(0.1)
    raise AssertionError(f"{text!r} not seen in {limit} s: {path.read_text()}")


def _start_mon(
    broker_args: list[str], tmp_path: Path, *args: str
) -> tuple[subprocess.Popen[str], Path, Path]:
    out, err = tmp_path / "mon.out", tmp_path / "mon.err"
    with out.open("w") as stdout, err.open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "insectarium.cli.mon", *broker_args, *args],
            stdout=stdout,
            stderr=stderr,
            text=True,
        )
    _wait_for(err, "listening", proc, 30)
    return proc, out, err


def test_sigterm_ends_dl_mon_cleanly(broker_args: list[str], tmp_path: Path) -> None:
    proc, _out, err = _start_mon(broker_args, tmp_path, "-a", f"sensor_value.{unique('t')}")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0
    assert "Traceback" not in err.read_text()


@pytest.mark.slow
def test_dl_mon_keeps_listening_across_a_broker_restart(
    request: pytest.FixtureRequest, broker_args: list[str], tmp_path: Path
) -> None:
    if os.environ.get("INSECTARIUM_TEST_AMQP_URL"):
        pytest.skip("needs the private test broker, which this test restarts")
    server = request.getfixturevalue("rabbitmq_server")
    key = f"sensor_value.{unique('restart')}"
    proc, out, err = _start_mon(broker_args, tmp_path, "-a", key, "--json-print")
    try:

        def alert_until_shown(value: str) -> None:
            deadline = time.monotonic() + 60
            while f'"value_raw": {value}' not in out.read_text():
                assert time.monotonic() < deadline, err.read_text()
                run_cli("agent", *broker_args, "-t", "2", "alert", key, f"value_raw={value}")
                time.sleep(0.3)

        alert_until_shown("1.5")
        server.stop()
        _wait_for(err, "lost connection to broker", proc, 30)
        time.sleep(1)
        assert proc.poll() is None, "dl-mon must wait for its broker, not exit"
        server.start()
        _wait_for(err, "reconnected to broker", proc, 60)
        alert_until_shown("2.5")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(15) == 0
        text = err.read_text()
        assert text.count("lost connection") == 1  # one line per outage, not one per attempt
        assert "Traceback" not in text
    finally:
        proc.kill()
        proc.wait(10)


def test_an_idle_listener_keeps_its_connection_with_heartbeats(
    amqp_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """With a 1 s heartbeat the broker drops a silent client after ~2 s: the listener beats
    while idle, stays connected and still gets what arrives afterwards."""
    import logging
    import threading

    from insectarium.dripline.listener import Listener
    from insectarium.dripline.oneshot import OneShotClient

    from .runtime_support import auth_for, mesh_for

    caplog.set_level(logging.WARNING)
    mesh, creds = mesh_for(amqp_url), auth_for(amqp_url).dripline
    key = f"sensor_value.{unique('idle')}"
    listener = Listener(mesh, creds, [(mesh.alerts_exchange, key)], heartbeat_s=1)
    listener.start()
    seen: list[Message] = []

    def on_message(msg: Message) -> None:
        seen.append(msg)
        listener.stop()

    thread = threading.Thread(target=listener.run, args=(on_message,), daemon=True)
    thread.start()
    try:
        time.sleep(5)
        with OneShotClient(mesh, creds, name="t") as sender:
            sender.publish(Message.alert(key, {"value_raw": 3.25}, sender="t"))
        thread.join(15)
        assert not thread.is_alive()
    finally:
        listener.stop()
        listener.close()
    assert [m.payload for m in seen] == [{"value_raw": 3.25}]
    assert not [r for r in caplog.records if "lost connection" in r.getMessage()]


def test_the_listener_binds_again_after_its_exchange_was_deleted(
    amqp_url: str, rabbitmq_server: object, caplog: pytest.LogCaptureFixture
) -> None:
    """Deleting ``alerts`` drops dl-mon's binding and the broker tells nobody; the listener
    binds again every ``rebind_interval_s``: it finds the exchange gone, says so, and watches
    again once a peer has declared it anew (services declare it when they publish)."""
    import asyncio
    import logging
    import threading

    import aio_pika

    from insectarium.dripline.listener import Listener
    from insectarium.dripline.oneshot import OneShotClient

    from .runtime_support import auth_for, mesh_for, private_vhost

    caplog.set_level(logging.WARNING, logger="insectarium.dripline.listener")
    with private_vhost(rabbitmq_server, amqp_url) as vhost:
        url = amqp_url.rstrip("/") + "/" + vhost.replace("/", "%2F")
        mesh, creds = mesh_for(url), auth_for(url).dripline
        key = f"sensor_value.{unique('rebound')}"

        async def admin(*, delete: bool) -> None:
            """What another account may do: delete the exchange, or declare it as peers do."""
            async with await aio_pika.connect(url) as conn:
                channel = await conn.channel()
                if delete:
                    await channel.exchange_delete(mesh.alerts_exchange)
                else:
                    await channel.declare_exchange(mesh.alerts_exchange, "topic", durable=False)

        def publish(value: float) -> None:
            with OneShotClient(mesh, creds, name="t") as sender:
                sender.publish(Message.alert(key, {"value_raw": value}, sender="t"))

        asyncio.run(admin(delete=False))
        listener = Listener(mesh, creds, [(mesh.alerts_exchange, key)], reconnect_interval=0.2)
        listener.rebind_interval_s = 0.3
        listener.start()
        seen: list[float] = []
        thread = threading.Thread(
            target=listener.run, args=(lambda m: seen.append(m.payload["value_raw"]),)
        )
        thread.start()
        try:
            publish(1.0)
            deadline = time.monotonic() + 10
            while 1.0 not in seen and time.monotonic() < deadline:
                time.sleep(0.05)
            asyncio.run(admin(delete=True))
            time.sleep(1.0)  # the listener's rebinding finds the exchange missing meanwhile
            asyncio.run(admin(delete=False))
            deadline = time.monotonic() + 15
            while 2.0 not in seen and time.monotonic() < deadline:
                publish(2.0)
                time.sleep(0.3)
        finally:
            listener.stop()
            thread.join(10)
            listener.close()
    assert seen[0] == 1.0 and 2.0 in seen, seen
    said = [r.getMessage() for r in caplog.records]
    assert any("there is no exchange" in m for m in said), said
    assert any(m.startswith("reconnected to broker") for m in said), said
