"""The benchmark command keeps working (a quick run; its timings are not judged here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

# Changes, floods or reads the kernel's audit state: one at a time (tests/conftest.py).
pytestmark = pytest.mark.serial

REPO = Path(__file__).resolve().parent.parent


def test_quick_benchmark_run_completes() -> None:
    """`python -m benchmarks --quick --no-write` exits 0 and prints every section with its targets."""
    if not (REPO / "benchmarks").is_dir():
        pytest.skip("not a source checkout")
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--no-write", "--no-stop-auditd"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    for section in ("EMISSION PER RECORD", "SENDER THROUGHPUT", "PER TRANSACTION", "TARGETS"):
        assert section in proc.stdout
