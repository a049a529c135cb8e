"""The C emitter under AddressSanitizer, UBSan and valgrind (tests/c/run_sanitizers.sh)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import require_audit, require_root

# Changes, floods or reads the kernel's audit state: one at a time (tests/conftest.py).
pytestmark = pytest.mark.serial

SCRIPT = Path(__file__).parent / "c" / "run_sanitizers.sh"


def test_emitter_stress_is_sanitizer_clean() -> None:
    """Concurrent, sync, full-ring, close-while-busy and fork-storm scenarios run clean."""
    require_root()
    if shutil.which("gcc") is None:
        require_audit("gcc is needed to build the sanitizer driver")
    out = subprocess.run(["bash", str(SCRIPT), "5000"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "sanitizers: clean" in out.stdout
