"""A hostile-message fuzzer for a dripline service running as a real ``dl-serve`` process.

Messages are built with the independent raw AMQP client (tests/rawamqp.py), so headers can carry
any AMQP type, bodies any bytes and message ids any text.  Every case says what the service must
answer: a set of acceptable return codes, or no reply at all (alerts and replies sent to a
service are ignored; so is a valid non-request).  The run measures the service's resident memory
(VmRSS in /proc) after a warm-up and at the end, and checks that it still answers.

Used by tests/test_fuzz_service.py: a short run in the default suite, a long one (>= 10 000
messages, bodies up to several MB) behind the ``fuzz`` marker (``./lab fuzz``).
"""

from __future__ import annotations

import collections
import dataclasses
import decimal
import json
import os
import random
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from insectarium.dripline.message import UInt32, sender_info

from .rawamqp import RawClient

NIL = "00000000-0000-0000-0000-000000000000"
NO_REPLY: frozenset[int] = frozenset()
OK_OR_SERVICE_ERROR = frozenset({0, 1, 200, 303, 304, 306, 307, 308, 310})
DECODING_FAILED = frozenset({302})
MESSAGE_WAIT_MS = 200
#: chunk size the service expects; with max_message_size 16 MiB at most 1677 chunks are plausible
MAX_PAYLOAD = 10_000
MAX_MESSAGE = 16 * 1024 * 1024


@dataclasses.dataclass
class Case:
    kind: str
    routing_key: str
    body: bytes
    headers: dict[str, Any]
    message_id: str
    expect: frozenset[int]  # acceptable codes; empty: no reply
    encoding: str | None = "application/json"
    correlation_id: str = dataclasses.field(default_factory=lambda: str(uuid.uuid4()))


@dataclasses.dataclass
class Outcome:
    messages: int = 0
    bytes_sent: int = 0
    replies: collections.Counter[int] = dataclasses.field(default_factory=collections.Counter)
    by_kind: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    failures: list[str] = dataclasses.field(default_factory=list)
    unexpected_replies: int = 0
    longest_return_message: int = 0
    rss_start_kb: int = 0
    rss_warm_kb: int = 0
    rss_peak_kb: int = 0
    rss_end_kb: int = 0
    duration_s: float = 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "messages": self.messages,
            "bytes_sent": self.bytes_sent,
            "replies_by_code": dict(sorted(self.replies.items())),
            "messages_by_kind": dict(sorted(self.by_kind.items())),
            "failures": len(self.failures),
            "unexpected_replies": self.unexpected_replies,
            "longest_return_message": self.longest_return_message,
            "rss_kb": {
                "start": self.rss_start_kb,
                "after_warm_up": self.rss_warm_kb,
                "peak": self.rss_peak_kb,
                "end": self.rss_end_kb,
            },
            "duration_s": round(self.duration_s, 1),
        }


# --------------------------------------------------------------------------- the service
class Target:
    """A ``dl-serve`` process with a calibrated, a dict-calibrated and a plain key-value store."""

    def __init__(self, amqp_url: str, workdir: Path) -> None:
        self.url = amqp_url
        u = urlparse(amqp_url)
        self.name = f"fuzz_{uuid.uuid4().hex[:8]}"
        self.endpoints = {
            "cal": f"{self.name}_cal",
            "dict": f"{self.name}_dict",
            "plain": f"{self.name}_plain",
        }
        config = workdir / "fuzz.yaml"
        config.write_text(
            f"name: {self.name}\nheartbeat_interval_s: 0\nmessage_wait_ms: {MESSAGE_WAIT_MS}\n"
            f"dripline_mesh:\n  max_message_size: {MAX_MESSAGE}\n"
            "endpoints:\n"
            f"  - name: {self.endpoints['cal']}\n    module: KeyValueStore\n"
            "    initial_value: 0.75\n    calibration: '2*{}'\n"
            "    get_on_set: true\n"
            f"  - name: {self.endpoints['dict']}\n    module: KeyValueStore\n"
            "    initial_value: 1\n    calibration: {1: 'on', 0: 'off'}\n"
            f"  - name: {self.endpoints['plain']}\n    module: KeyValueStore\n"
            "    initial_value: plain\n"
        )
        auth = workdir / "auth.json"
        auth.write_text(
            json.dumps(
                {"dripline": {"username": unquote(u.username), "password": unquote(u.password)}}
            )
        )
        self.log = workdir / "service.log"
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(
                [
                    *(sys.executable, "-m", "insectarium.cli.serve", "-c", str(config)),
                    *("-b", u.hostname or "localhost", "-p", str(u.port or 5672)),
                    *("--auth-file", str(auth)),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )

    def rss_kb(self) -> int:
        """The service's resident memory (VmRSS), kB."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


# --------------------------------------------------------------------------- messages
def headers(op: int | None = 1, specifier: str = "", **over: Any) -> dict[str, Any]:
    h: dict[str, Any] = {
        "message_type": UInt32(3),
        "message_operation": UInt32(op) if op is not None else None,
        "lockout_key": NIL,
        "specifier": specifier,
        "timestamp": "2026-01-01T00:00:00.000000Z",
        "sender_info": sender_info("fuzzer"),
    }
    h.update(over)
    return {k: v for k, v in h.items() if v is not None or k in over}


def one(uuid_: str | None = None) -> str:
    return f"{uuid_ or uuid.uuid4()}/0/1"


WRONG_VALUES: list[Any] = [
    "3",
    "",
    "x" * 300,
    -1,
    2**40,
    -(2**62),
    1.5,
    True,
    False,
    None,
    {"a": 1},
    {},
    [3],
    [],
    decimal.Decimal("3.0"),
]

SPECIFIERS = [
    "",
    "log_interval",
    "calibration",
    "on_set",
    "lock",
    "unlock",
    "ping",
    "set_condition",
    "is-locked",
    "logging_status",
    "no_such_thing",
    "_private",
    "__class__",
    "calibrate",
    "scheduled_log",
    "a.b.c",
    "x" * 2000,
]

HOSTILE_VALUES: list[Any] = [
    "((9**999)**999)**4",
    "9**999*9**999*9**999",
    "'%01000000000d' % 1",
    "1+" * 900 + "1",
    "(" * 400 + "1" + ")" * 400,
    "abc",
    "__import__('os').system('true')",
    "[1]*100000*2",
    json.loads('"\\ud800"'),
    [1, [2, [3]]],
    {"nested": {"deep": [None]}},
    10**300,
    -0.0,
    1e308,
]


def generate(rng: random.Random, target: Target, n: int, big_every: int) -> Iterator[Case]:
    """``n`` messages of every hostile kind; a body of several MB every ``big_every``."""
    cal, dic, plain = target.endpoints["cal"], target.endpoints["dict"], target.endpoints["plain"]
    endpoints = [cal, dic, plain]
    kinds = [
        "valid",
        "wrong_header",
        "garbage_headers",
        "bad_body",
        "bad_message_id",
        "chunk_count_too_large",
        "incomplete_chunks",
        "oversize_calibrated_value",
        "calibration_bomb",
        "bad_encoding",
        "not_a_request",
        "deep_json",
        "non_finite",
    ]
    for i in range(n):
        if big_every and i % big_every == big_every - 1:
            yield big_case(rng, target)
            continue
        kind = rng.choice(kinds)
        ep = rng.choice(endpoints)
        if kind == "valid":
            op = rng.choice([0, 1, 9])
            spec = rng.choice(SPECIFIERS)
            if spec == "lock":
                ep = plain  # the cases that expect a 304 from the calibrated ones stay unlocked
            values = rng.choice([[], [rng.choice(HOSTILE_VALUES)], [1, 2], [rng.random()]])
            body = json.dumps({"values": values}).encode()
            yield Case(kind, ep, body, headers(op, spec), one(), OK_OR_SERVICE_ERROR)
        elif kind == "wrong_header":
            name = rng.choice(
                [
                    "message_type",
                    "message_operation",
                    "lockout_key",
                    "specifier",
                    "timestamp",
                    "sender_info",
                ]
            )
            value = rng.choice(WRONG_VALUES)
            h = headers(rng.choice([0, 1, 9]), **{name: value})
            if name == "message_type":
                if value in (2, 4) and isinstance(value, int) and not isinstance(value, bool):
                    expect = NO_REPLY
                else:
                    expect = DECODING_FAILED
            elif name == "message_operation":
                expect = OK_OR_SERVICE_ERROR if _int_in(value, (0, 1, 9)) else frozenset({306})
            elif name == "lockout_key":
                expect = OK_OR_SERVICE_ERROR | {308}
            else:
                expect = OK_OR_SERVICE_ERROR
            yield Case(kind, ep, b"{}", h, one(), expect)
        elif kind == "garbage_headers":
            h = {
                rng.choice(["message_type", "junk", "return_code", "specifier", "x" * 50]): (
                    rng.choice(WRONG_VALUES)
                )
                for _ in range(rng.randint(0, 6))
            }
            mtype = h.get("message_type")
            expect = NO_REPLY if _int_in(mtype, (2, 4)) else DECODING_FAILED
            if _int_in(mtype, (3,)):
                expect = frozenset({306, *OK_OR_SERVICE_ERROR})
            yield Case(kind, ep, b"{}", h, one(), expect)
        elif kind == "bad_body":
            body = rng.choice(
                [
                    b"",
                    b"{",
                    b"\xff\xfe\x00garbage",
                    b'"caf\xe9"',
                    bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 400))),
                    b"[" * 50_000,
                ]
            )
            if _is_json(body):
                body = b"\xff" + body
            yield Case(kind, ep, body, headers(0), one(), DECODING_FAILED)
        elif kind == "bad_message_id":
            mid = rng.choice(["u/1", "u/x/2", "u/2/2", "u/0/0", "u/-1/3", "u/5/3", "u/0/1e9", "/"])
            yield Case(kind, ep, b"{}", headers(1), mid, DECODING_FAILED)
        elif kind == "chunk_count_too_large":
            total = rng.choice([100_000, 10**9, MAX_MESSAGE // MAX_PAYLOAD + 1])
            body = b"x" * rng.randint(1, 3000)
            yield Case(kind, ep, body, headers(0), f"{uuid.uuid4()}/0/{total}", DECODING_FAILED)
        elif kind == "incomplete_chunks":
            total = rng.randint(2, MAX_MESSAGE // MAX_PAYLOAD)
            set_id = str(uuid.uuid4())
            index = rng.randrange(total)
            body = b'{"values":["' + b"y" * rng.randint(0, 5000)
            # one chunk of a set that never completes: 302 after message_wait_ms (or sooner,
            # when the bound on incomplete sets drops it)
            yield Case(kind, ep, body, headers(0), f"{set_id}/{index}/{total}", DECODING_FAILED)
        elif kind == "oversize_calibrated_value":
            size = rng.choice([2001, 50_000, 131_072, 300_000])
            body = json.dumps({"values": ["9" * size]}).encode()
            yield Case(kind, rng.choice([cal, dic]), body, headers(0), one(), frozenset({304}))
        elif kind == "calibration_bomb":
            value = rng.choice(HOSTILE_VALUES[:8])
            body = json.dumps({"values": [value]}).encode()
            op, spec = rng.choice([(0, ""), (9, "on_set")])
            yield Case(kind, cal, body, headers(op, spec), one(), frozenset({303, 304}))
        elif kind == "bad_encoding":
            enc = rng.choice([None, "", "application/msgpack", "text/plain", "x" * 200])
            yield Case(kind, ep, b"{}", headers(1), one(), DECODING_FAILED, encoding=enc)
        elif kind == "not_a_request":
            mtype = rng.choice([2, 4])
            yield Case(kind, ep, b"{}", headers(1, message_type=UInt32(mtype)), one(), NO_REPLY)
        elif kind == "deep_json":
            depth = rng.choice([10_000, 100_000])
            body = b"[" * depth + b"]" * depth
            yield Case(kind, ep, body, headers(0), one(), DECODING_FAILED)
        else:  # non_finite: Python peers can send NaN / Infinity (not JSON, accepted by json)
            value = rng.choice(["NaN", "Infinity", "-Infinity", "1e999"])
            body = f'{{"values": [{value}]}}'.encode()
            spec = rng.choice(["log_interval", ""])
            expect = frozenset({304}) if spec else frozenset({0, 303, 304})
            if ep == plain:
                expect |= {307}  # the plain endpoint may have been locked by a "valid" case
            yield Case(kind, ep, body, headers(0, spec), one(), expect)


def big_case(rng: random.Random, target: Target) -> Case:
    """A body of one to several MB: a huge value for a calibrated endpoint, or garbage."""
    size = rng.randint(1, 4) * 1024 * 1024 + rng.randint(0, 1000)
    if rng.random() < 0.5:
        body = json.dumps({"values": ["7" * size]}).encode()
        ep = rng.choice([target.endpoints["cal"], target.endpoints["dict"]])
        return Case("big_value", ep, body, headers(0), one(), frozenset({304}))
    body = rng.randbytes(size)
    return Case("big_garbage", target.endpoints["plain"], body, headers(0), one(), DECODING_FAILED)


def _int_in(value: Any, allowed: tuple[int, ...]) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value in allowed


def _is_json(body: bytes) -> bool:
    try:
        json.loads(body)
    except (ValueError, RecursionError):
        return False
    return True


# --------------------------------------------------------------------------- the run
def ping(raw: RawClient, queue: str, target: Target, timeout: float = 5.0) -> int | None:
    corr = str(uuid.uuid4())
    raw.publish(
        "requests",
        target.name,
        b"{}",
        correlation_id=corr,
        reply_to=queue,
        message_id=one(),
        headers=headers(9, "ping"),
        content_encoding="application/json",
    )
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            d = raw.next_delivery(max(0.01, end - time.monotonic()))
        except TimeoutError:
            return None
        if d.properties.get("correlation_id") == corr:
            return d.headers["return_code"].value
    return None


def run(
    target: Target,
    n: int,
    *,
    seed: int = 1,
    big_every: int = 100,
    window: int = 64,
    warm_up: int = 200,
) -> Outcome:
    """Send ``n`` generated messages (at most ``window`` awaiting a reply), check each reply."""
    rng = random.Random(seed)
    out = Outcome()
    raw = RawClient(target.url, timeout=30)
    queue = raw.setup_reply_queue()
    deadline = time.monotonic() + 60
    while ping(raw, queue, target, 1.0) != 0:
        assert target.alive(), target.log.read_text()
        assert time.monotonic() < deadline, "service did not come up"
    out.rss_start_kb = target.rss_kb()
    waiting: dict[str, tuple[Case, float]] = {}  # correlation id -> case, deadline
    started = time.monotonic()

    def collect(block_s: float) -> None:
        end = time.monotonic() + block_s
        while True:
            try:
                d = raw.next_delivery(max(0.0, end - time.monotonic()))
            except TimeoutError:
                return
            corr = d.properties.get("correlation_id", "")
            entry = waiting.pop(corr, None)
            code = d.headers["return_code"].value if "return_code" in d.headers else -1
            message = d.headers.get("return_message")
            if message is not None:
                out.longest_return_message = max(out.longest_return_message, len(message.value))
            if entry is None:
                out.unexpected_replies += 1
                continue
            case = entry[0]
            out.replies[code] += 1
            if code not in case.expect:
                out.failures.append(f"{case.kind}: got {code}, expected {sorted(case.expect)}")
            if time.monotonic() >= end:
                return

    for i, case in enumerate(generate(rng, target, n, big_every)):
        if len(case.body) > 1024 * 1024:
            # This client reads and writes in one thread: with replies waiting to be read, the
            # broker stops reading a large message from it (both sides would block).
            end = time.monotonic() + 30
            while waiting and time.monotonic() < end:
                collect(0.5)
        raw.publish(
            "requests",
            case.routing_key,
            case.body,
            correlation_id=case.correlation_id,
            reply_to=queue,
            message_id=case.message_id,
            headers=case.headers,
            **({"content_encoding": case.encoding} if case.encoding is not None else {}),
        )
        out.messages += 1
        out.bytes_sent += len(case.body)
        out.by_kind[case.kind] += 1
        if case.expect:
            waiting[case.correlation_id] = (case, time.monotonic() + 30)
        if len(waiting) >= window:
            collect(0.05)
            while len(waiting) >= window:
                collect(1.0)
                _expire(waiting, out)
        if i + 1 == warm_up:
            out.rss_warm_kb = target.rss_kb()
        if i % 500 == 0:
            out.rss_peak_kb = max(out.rss_peak_kb, target.rss_kb())
            if not target.alive():
                out.failures.append(f"service died after {i} messages")
                break
    end = time.monotonic() + 30
    while waiting and time.monotonic() < end:
        collect(1.0)
    _expire(waiting, out, force=True)
    out.rss_peak_kb = max(out.rss_peak_kb, target.rss_kb())
    out.duration_s = time.monotonic() - started
    time.sleep(2 * MESSAGE_WAIT_MS / 1000)  # let the last incomplete sets expire
    out.rss_end_kb = target.rss_kb()
    if not out.rss_warm_kb:
        out.rss_warm_kb = out.rss_start_kb
    if ping(raw, queue, target) != 0:
        out.failures.append("service does not answer ping after the fuzzing")
    raw.close()
    return out


def _expire(waiting: dict[str, tuple[Case, float]], out: Outcome, force: bool = False) -> None:
    now = time.monotonic()
    for corr, (case, deadline) in list(waiting.items()):
        if force or now > deadline:
            waiting.pop(corr)
            out.failures.append(f"{case.kind}: no reply (expected {sorted(case.expect)})")
