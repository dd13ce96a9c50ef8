"""`./lab`'s own bookkeeping, read by sourcing the script (its `main` runs when executed)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from .runtime_support import REPO


def _count(log: Path, rc: int) -> list[str]:
    script = (
        'source ./lab && count_pytest "$1" "$2" && '
        'printf "%s\\n" "$total_passed" "$total_failed" "${failed_tests[@]}"'
    )
    out = subprocess.run(
        ["bash", "-c", script, "lab-test", str(log), str(rc)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return out.stdout.splitlines()


def test_a_failed_stage_names_its_failed_tests(tmp_path: Path) -> None:
    """CI shows only the tail of the output: the results end with the ids of what failed."""
    log = tmp_path / "test-pytest.log"
    log.write_text(
        "tests/test_a.py ..F.E\n"
        "=========================== short test summary info ============================\n"
        "FAILED tests/test_a.py::test_b - AssertionError: boom\n"
        "ERROR tests/test_a.py::test_c - TimeoutError\n"
        "\x1b[31m==== 1 failed, 3 passed, 1 error in 2.00s ====\x1b[0m\n"
    )
    assert _count(log, 1) == [
        "3",
        "2",
        "FAILED tests/test_a.py::test_b - AssertionError: boom",
        "ERROR tests/test_a.py::test_c - TimeoutError",
    ]


def test_a_stage_that_failed_without_a_summary_counts_as_one_failure(tmp_path: Path) -> None:
    """(and Ansible's own "FAILED - RETRYING" lines are not test ids)"""
    log = tmp_path / "test-molecule.log"
    log.write_text(
        "FAILED - RETRYING: [localhost]: Wait for instance(s) deletion (300 retries left).\n"
        "CRITICAL Ansible return code was 2\n"
    )
    assert _count(log, 2) == ["0", "1"]
    log.write_text("==== 52 passed in 36.39s ====\n")
    assert _count(log, 0) == ["52", "0"]
