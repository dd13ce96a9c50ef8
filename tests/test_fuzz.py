"""Property-based fuzzing: malformed messages get error replies and never take a service down.

The service runs as a real ``dl-serve`` process; messages are crafted with the independent raw
client so that headers can carry any AMQP type, bodies any bytes and message ids any text.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from insectarium.dripline.message import UInt32, sender_info

from .rawamqp import BrokerClosed, RawClient
from .runtime_support import unique

ERROR_CODES = {302, 303, 304, 306, 307, 308, 310, 999, 102}
REJECTED = "rejected by the broker"


@pytest.fixture(scope="module")
def fuzz_service(amqp_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    from urllib.parse import unquote, urlparse

    u = urlparse(amqp_url)
    name = unique("fuzz")
    cfg = tmp_path_factory.mktemp("fuzz") / "fuzz.yaml"
    cfg.write_text(
        f"name: {name}\nheartbeat_interval_s: 0\nmessage_wait_ms: 200\nendpoints:\n"
        f"  - name: {name}_kv\n    module: KeyValueStore\n    initial_value: 1\n"
        f"    calibration: '2*{{}}'\n"
    )
    auth = cfg.with_name("auth.json")
    auth.write_text(
        json.dumps(
            {
                "dripline": {
                    "username": unquote(u.username or "guest"),
                    "password": unquote(u.password or "guest"),
                }
            }
        )
    )
    log = cfg.with_name("service.log").open("w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "insectarium.cli.serve",
            "-c",
            str(cfg),
            "-b",
            u.hostname or "localhost",
            "-p",
            str(u.port or 5672),
            "--auth-file",
            str(auth),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    raw = RawClient(amqp_url)
    reply_queue = raw.setup_reply_queue()
    info = {
        "name": name,
        "raw": raw,
        "reply_queue": reply_queue,
        "proc": proc,
        "url": amqp_url,
        "log": Path(log.name),
    }
    deadline = time.monotonic() + 30
    while not ping(info, timeout=0.5):
        assert proc.poll() is None, info["log"].read_text()
        assert time.monotonic() < deadline, "service did not come up"
    yield info
    info["raw"].close()
    proc.terminate()
    proc.wait(10)
    log.close()


def send(
    info: dict,
    routing_key: str,
    body: bytes,
    headers: dict,
    message_id: str,
    encoding: str | None = "application/json",
    timeout: float = 3.0,
):
    raw: RawClient = info["raw"]
    corr = str(uuid.uuid4())
    props = {
        "correlation_id": corr,
        "reply_to": info["reply_queue"],
        "message_id": message_id,
        "headers": headers,
    }
    if encoding is not None:
        props["content_encoding"] = encoding
    end = time.monotonic() + timeout
    try:
        raw.publish("requests", routing_key, body, **props)
        while time.monotonic() < end:
            try:
                d = raw.next_delivery(max(0.01, end - time.monotonic()))
            except TimeoutError:
                return None
            if d.properties.get("correlation_id") == corr:
                return d
    except (BrokerClosed, OSError):
        # RabbitMQ itself refused the frame (e.g. a header table it cannot parse): the message
        # never reached the service, so this example says nothing about it. Reconnect.
        info["raw"] = RawClient(info["url"])
        info["reply_queue"] = info["raw"].setup_reply_queue()
        return REJECTED
    return None


def good_headers(op: int = 1, specifier: str = "") -> dict:
    return {
        "message_type": UInt32(3),
        "message_operation": UInt32(op),
        "lockout_key": "00000000-0000-0000-0000-000000000000",
        "specifier": specifier,
        "timestamp": "2026-01-01T00:00:00.000000Z",
        "sender_info": sender_info("fuzzer"),
    }


def ping(info: dict, timeout: float = 3.0) -> bool:
    d = send(
        info, info["name"], b"{}", good_headers(9, "ping"), f"{uuid.uuid4()}/0/1", timeout=timeout
    )
    return d is not None and d.headers["return_code"].value == 0


def code(d) -> int:
    return d.headers["return_code"].value


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.text(max_size=40),
)
header_values = st.recursive(
    scalars, lambda inner: st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=6
)
FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))


@FUZZ
@given(body=st.binary(min_size=0, max_size=300).filter(lambda b: not _is_json(b)))
def test_undecodable_body_gets_302(fuzz_service: dict, body: bytes) -> None:
    d = send(
        fuzz_service, f"{fuzz_service['name']}_kv", body, good_headers(), f"{uuid.uuid4()}/0/1"
    )
    assert d is not None and code(d) == 302
    assert json.loads(d.body)["invalid"] is not None


@FUZZ
@given(
    body=st.recursive(
        scalars,
        lambda i: st.lists(i, max_size=3) | st.dictionaries(st.text(max_size=8), i, max_size=3),
        max_leaves=8,
    ),
    op=st.integers(0, 2**32 - 1),
    specifier=st.text(max_size=30),
)
def test_any_json_payload_any_operation_gets_a_reply(
    fuzz_service: dict, body, op, specifier
) -> None:
    d = send(
        fuzz_service,
        f"{fuzz_service['name']}_kv",
        json.dumps(body).encode(),
        good_headers(op, specifier),
        f"{uuid.uuid4()}/0/1",
    )
    assert d is not None
    if op not in (0, 1, 9):
        assert code(d) == 306


@FUZZ
@given(
    headers=st.dictionaries(
        st.sampled_from(
            [
                "message_type",
                "message_operation",
                "lockout_key",
                "specifier",
                "timestamp",
                "sender_info",
                "return_code",
                "junk",
            ]
        ),
        header_values,
        max_size=8,
    )
)
def test_garbage_headers_never_crash(fuzz_service: dict, headers: dict) -> None:
    d = send(
        fuzz_service,
        f"{fuzz_service['name']}_kv",
        b"{}",
        headers,
        f"{uuid.uuid4()}/0/1",
        timeout=1.0,
    )
    assume(d != REJECTED)
    mtype = headers.get("message_type")
    if d is None:
        # only a valid non-request (reply/alert type) is silently ignored
        assert mtype in (2, 4) and not isinstance(mtype, bool)
    elif mtype not in (3,) or isinstance(mtype, bool):
        assert code(d) == 302


@FUZZ
@given(
    message_id=st.text(max_size=40).filter(lambda t: t.count("/") >= 1),
    encoding=st.one_of(st.none(), st.just("application/json"), st.text(max_size=20)),
)
def test_bad_message_ids_and_encodings(fuzz_service: dict, message_id: str, encoding) -> None:
    d = send(
        fuzz_service,
        f"{fuzz_service['name']}_kv",
        b"{}",
        good_headers(),
        message_id,
        encoding=encoding,
        timeout=1.0,
    )
    assume(d != REJECTED)
    parts = message_id.split("/")
    valid_id = (
        len(parts) == 3
        and parts[1].isdigit()
        and parts[2].isdigit()
        and 0 <= int(parts[1]) < int(parts[2]) <= 100_000
    )
    if not valid_id or encoding != "application/json":
        if valid_id and int(parts[2]) > 1:
            return  # a chunk of a larger message: waits for its siblings, then 302
        assert d is not None and code(d) in ERROR_CODES
    else:
        assert d is not None and code(d) == 0


def test_service_survived_the_fuzzing(fuzz_service: dict) -> None:
    assert fuzz_service["proc"].poll() is None
    assert ping(fuzz_service)
    d = send(
        fuzz_service, f"{fuzz_service['name']}_kv", b"{}", good_headers(), f"{uuid.uuid4()}/0/1"
    )
    assert json.loads(d.body) == {"value_raw": 1, "value_cal": 2}
    # every malformed message was answered by design, none through an unhandled exception
    assert "Traceback" not in fuzz_service["log"].read_text(errors="replace")


def _is_json(b: bytes) -> bool:
    try:
        json.loads(b)
    except ValueError:
        return False
    return True
