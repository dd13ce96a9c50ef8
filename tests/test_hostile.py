"""The single messages that used to take a service down, each against a real ``dl-serve``.

One test per finding of the hostile review (issue 10): a value over the broker's frame limit
echoed in a header, a message id announcing 100 000 chunks, ten thousand chunk sets that never
complete, a refused value stored anyway, a calibration that blocked the event loop.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from .fuzzing import Target, headers, one, ping
from .rawamqp import RawClient, RawDelivery


@pytest.fixture(scope="module")
def target(amqp_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    t = Target(amqp_url, tmp_path_factory.mktemp("hostile"))
    yield t
    t.stop()


@pytest.fixture
def raw(target: Target) -> Iterator[tuple[RawClient, str]]:
    client = RawClient(target.url, timeout=30)
    queue = client.setup_reply_queue()
    deadline = time.monotonic() + 60
    while ping(client, queue, target, 1.0) != 0:
        assert target.alive() and time.monotonic() < deadline, target.log.read_text()
    yield client, queue
    client.close()


def request(
    raw: tuple[RawClient, str],
    routing_key: str,
    body: bytes,
    hdrs: dict,
    message_id: str | None = None,
    timeout: float = 10.0,
) -> RawDelivery:
    client, queue = raw
    corr = str(uuid.uuid4())
    client.publish(
        "requests",
        routing_key,
        body,
        correlation_id=corr,
        reply_to=queue,
        message_id=message_id or one(),
        headers=hdrs,
        content_encoding="application/json",
    )
    end = time.monotonic() + timeout
    while True:
        d = client.next_delivery(max(0.01, end - time.monotonic()))
        if d.properties.get("correlation_id") == corr:
            return d


def code(d: RawDelivery) -> int:
    return d.headers["return_code"].value


def get(raw: tuple[RawClient, str], endpoint: str, timeout: float = 10.0) -> dict:
    d = request(raw, endpoint, b"{}", headers(1), timeout=timeout)
    assert code(d) == 0
    return json.loads(d.body)


def test_a_huge_value_on_a_calibrated_endpoint_is_304_with_a_short_header(
    target: Target, raw: tuple[RawClient, str]
) -> None:
    """It used to be echoed into return_message: past frame_max the broker closed the
    service's connection (frame_too_large), at every such request."""
    cal = target.endpoints["cal"]
    for size in (131_072, 1_000_000):
        d = request(raw, cal, json.dumps({"values": ["9" * size]}).encode(), headers(0))
        assert code(d) == 304
        assert len(d.headers["return_message"].value) <= 1024
    assert get(raw, cal) == {"value_raw": 0.75, "value_cal": 1.5}
    assert "lost connection" not in target.log.read_text()


def test_a_100000_chunk_message_id_is_302_at_once_and_allocates_nothing(
    target: Target, raw: tuple[RawClient, str]
) -> None:
    """A 3 kB body announcing 100 000 chunks made the service allocate ~1 GB and send a
    300 MB reply."""
    before = target.rss_kb()
    started = time.monotonic()
    d = request(raw, target.endpoints["plain"], b"x" * 3000, headers(0), f"{uuid.uuid4()}/0/100000")
    assert code(d) == 302 and "announces 100000 chunks" in json.loads(d.body)["error"]
    assert time.monotonic() - started < 5  # answered at once, not after message_wait_ms
    assert len(d.body) < 10_000
    assert target.rss_kb() - before < 5 * 1024


def test_ten_thousand_chunk_sets_that_never_complete_keep_memory_flat(
    target: Target, raw: tuple[RawClient, str]
) -> None:
    """They used to be kept forever (~500 MB for 10 000)."""
    client, queue = raw
    plain = target.endpoints["plain"]
    before = target.rss_kb()
    for _ in range(10_000):
        client.publish(
            "requests",
            plain,
            b'{"values":["' + b"z" * 5000,
            correlation_id=str(uuid.uuid4()),
            reply_to=queue,
            message_id=f"{uuid.uuid4()}/0/2",
            headers=headers(0),
            content_encoding="application/json",
        )
        if _ % 500 == 0:  # read the 302s as they come, so the broker keeps taking ours
            while True:
                try:
                    client.next_delivery(0.01)
                except TimeoutError:
                    break
    assert get(raw, plain, timeout=120)  # still answering (after the 10 000 302s before it)
    grown = target.rss_kb() - before
    assert grown < 30 * 1024, f"{grown} kB"  # 256 incomplete sets of 5 kB at most, plus noise
    log = target.log.read_text()
    assert "incomplete message(s) dropped" in log


def test_a_value_the_calibration_refuses_is_not_stored(
    target: Target, raw: tuple[RawClient, str]
) -> None:
    cal = target.endpoints["cal"]
    assert get(raw, cal)["value_raw"] == 0.75
    d = request(raw, cal, json.dumps({"values": ["abc"]}).encode(), headers(0))
    assert code(d) == 304
    assert get(raw, cal) == {"value_raw": 0.75, "value_cal": 1.5}  # kept its previous value


def test_a_calibration_bomb_does_not_block_other_requests(
    target: Target, raw: tuple[RawClient, str]
) -> None:
    """((9**999)**999)**4 blocked the event loop for seconds; later gets went unanswered."""
    client, queue = raw
    cal, plain = target.endpoints["cal"], target.endpoints["plain"]
    bomb, probe = str(uuid.uuid4()), str(uuid.uuid4())
    for corr, rk, body, hdrs in (
        (bomb, cal, json.dumps({"values": ["((9**999)**999)**4"]}).encode(), headers(0)),
        (probe, plain, b"{}", headers(1)),
    ):
        client.publish(
            "requests",
            rk,
            body,
            correlation_id=corr,
            reply_to=queue,
            message_id=one(),
            headers=hdrs,
            content_encoding="application/json",
        )
    started = time.monotonic()
    got: dict[str, RawDelivery] = {}
    while len(got) < 2:
        d = client.next_delivery(10)
        got[d.properties["correlation_id"]] = d
    assert code(got[bomb]) == 304 and "power too large" in got[bomb].headers["return_message"].value
    assert code(got[probe]) == 0
    assert time.monotonic() - started < 5  # both answered at once, not after seconds of work


def test_the_service_answered_everything_without_a_traceback(target: Target) -> None:
    assert target.alive()
    assert "Traceback" not in Path(target.log).read_text(errors="replace")
