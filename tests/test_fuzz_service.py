"""Fuzzing a real service with hostile messages: replies, flat memory, still answering.

``test_fuzz_short`` runs in the default suite (a few hundred messages, bodies up to several MB).
``test_fuzz_long`` is the full run, deselected by default (marker ``fuzz``): ``./lab fuzz``, or
``pytest -m fuzz tests/test_fuzz_service.py``; INSECTARIUM_FUZZ_MESSAGES (default 10 000) and
INSECTARIUM_FUZZ_SEED choose the run, INSECTARIUM_FUZZ_REPORT names a JSON file for its numbers.

Memory: the service's VmRSS is read after a warm-up (the first messages include multi-MB
bodies, which grow the allocator's arenas once) and at the end.  What used to grow without
bound (chunk sets that never complete, a 100 000-chunk id, parse caches, per-name counters) is
bounded now; the end may exceed the warm-up value by at most RSS_GROWTH_KB (the pending chunk
sets and bodies the bounds allow at any one time, plus allocator noise).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from .fuzzing import Outcome, Target, run

RSS_GROWTH_KB = 40 * 1024


@pytest.fixture
def target(amqp_url: str, tmp_path: Path) -> Iterator[Target]:
    t = Target(amqp_url, tmp_path)
    yield t
    t.stop()


def check(outcome: Outcome, target: Target) -> None:
    summary = outcome.summary()
    report = os.environ.get("INSECTARIUM_FUZZ_REPORT")
    if report:
        Path(report).write_text(json.dumps(summary, indent=2) + "\n")
    print("\nfuzz:", json.dumps(summary))
    log = target.log.read_text(errors="replace")
    assert not outcome.failures, f"{len(outcome.failures)} failures, e.g. {outcome.failures[:10]}"
    assert target.alive(), log[-3000:]
    assert outcome.replies[999] == 0  # no request answered through an unhandled exception
    assert "Traceback" not in log, log[-3000:]
    assert outcome.longest_return_message <= 1024  # limits.MAX_HEADER_TEXT
    growth = outcome.rss_end_kb - outcome.rss_warm_kb
    assert growth <= RSS_GROWTH_KB, summary
    # the log says what was refused in a few lines a second, not once per message
    lines = len(log.splitlines())
    assert lines < 100 + outcome.messages // 10 + 3 * outcome.duration_s, lines


def test_fuzz_short(target: Target) -> None:
    """A few hundred hostile messages, two of them multi-MB (part of the default suite)."""
    outcome = run(target, 400, seed=7, big_every=200, warm_up=100)
    assert outcome.messages == 400
    check(outcome, target)


@pytest.mark.fuzz
def test_fuzz_long(target: Target) -> None:
    n = int(os.environ.get("INSECTARIUM_FUZZ_MESSAGES", "10000"))
    seed = int(os.environ.get("INSECTARIUM_FUZZ_SEED", "1"))
    outcome = run(target, n, seed=seed, big_every=100, warm_up=500)
    assert outcome.messages == n >= 10_000 or "INSECTARIUM_FUZZ_MESSAGES" in os.environ
    check(outcome, target)
