"""Repository contracts: CI runs exactly the README's test command; types and layers are checked."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import require_real

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"


def source_checkout() -> None:
    """Skip unless this is a checkout with src/ and pyproject.toml (not an sdist's or wheel's copy of tests/)."""
    if not (SRC / "kensa").is_dir() or not (ROOT / "pyproject.toml").is_file() or not (ROOT / ".ci" / "run").is_file():
        pytest.skip("not a source checkout")


def tool(module: str) -> None:
    """A test tool from the ``test`` extra must be importable."""
    if importlib.util.find_spec(module) is None:
        require_real(f"{module} is not installed: pip install -e '.[test]'")


def lint_imports(src: Path) -> "subprocess.CompletedProcess[str]":
    """lint-imports with pyproject.toml's contracts over the kensa package found in ``src``."""
    env = dict(os.environ, PYTHONPATH=str(src))
    code = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    return subprocess.run([sys.executable, "-c", code, "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_ci_runs_the_readme_test_command() -> None:
    """The last command of .ci/run appears verbatim in README.md."""
    source_checkout()
    ci = ROOT / ".ci" / "run"
    readme = ROOT / "README.md"
    last = [line for line in ci.read_text().splitlines() if line.strip() and not line.startswith("#")][-1]
    assert last in readme.read_text().splitlines()


def test_mypy_strict_passes_on_the_package(tmp_path: Path) -> None:
    """mypy (pinned in the typing extra, strict per pyproject.toml) finds no error in src/kensa."""
    source_checkout()
    tool("mypy")
    proc = subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path / "cache"), str(SRC / "kensa")],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]


def test_the_layer_contracts_hold() -> None:
    """lint-imports keeps every import-linter contract in pyproject.toml (layers, no cycles)."""
    source_checkout()
    tool("importlinter")
    proc = lint_imports(SRC)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout, proc.stdout[-3000:]


def test_an_upward_import_breaks_the_layers(tmp_path: Path) -> None:
    """The layers contract is not vacuous: kensa.model importing kensa.cli is reported, naming both."""
    source_checkout()
    tool("importlinter")
    copy = tmp_path / "src"
    shutil.copytree(SRC / "kensa", copy / "kensa", ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    model = copy / "kensa" / "model.py"
    model.write_text(model.read_text() + "\nimport kensa.cli  # an upward import\n")
    proc = lint_imports(copy)
    assert proc.returncode != 0, proc.stdout[-3000:]
    assert "kensa.model is not allowed to import kensa.cli" in proc.stdout, proc.stdout[-3000:]
