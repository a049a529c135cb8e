"""Repository contracts: CI runs exactly the README's test command."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ci_runs_the_readme_test_command() -> None:
    """The last command of .ci/run appears verbatim in README.md."""
    ci = ROOT / ".ci" / "run"
    readme = ROOT / "README.md"
    if not ci.exists() or not readme.exists():
        import pytest

        pytest.skip("not a source checkout")
    last = [line for line in ci.read_text().splitlines() if line.strip() and not line.startswith("#")][-1]
    assert last in readme.read_text().splitlines()
