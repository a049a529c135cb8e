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


def pytest_in(tmp_path: Path, tests: str, *args: str, **env: str) -> "subprocess.CompletedProcess[str]":
    """pytest over ``tests`` (a test module's text) next to a copy of this conftest.py, with ``env`` added."""
    (tmp_path / "conftest.py").write_text((Path(__file__).parent / "conftest.py").read_text())
    (tmp_path / "test_it.py").write_text(tests)
    clean = {k: v for k, v in os.environ.items() if k not in ("KENSA_REQUIRE_REAL", "PYTEST_ADDOPTS")}
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA", *args, str(tmp_path)],
                          cwd=tmp_path, env={**clean, **env}, capture_output=True, text=True, timeout=300)


NEEDS_A_COMPONENT = """
from conftest import require_real

def test_needs_the_frobnicator():
    require_real("the frobnicator is not installed")
"""


def test_a_missing_component_skips_unless_real_components_are_required(tmp_path: Path) -> None:
    """require_real skips without KENSA_REQUIRE_REAL and fails, saying what is missing, with KENSA_REQUIRE_REAL=1."""
    skipped = pytest_in(tmp_path, NEEDS_A_COMPONENT)
    assert skipped.returncode == 0 and "1 skipped" in skipped.stdout, skipped.stdout[-2000:]
    failed = pytest_in(tmp_path, NEEDS_A_COMPONENT, KENSA_REQUIRE_REAL="1")
    assert failed.returncode == 1 and "1 failed" in failed.stdout, failed.stdout[-2000:]
    assert "KENSA_REQUIRE_REAL=1 but the frobnicator is not installed" in failed.stdout


def test_a_bad_or_retired_switch_is_a_usage_error(tmp_path: Path) -> None:
    """KENSA_REQUIRE_REAL=yes and the retired KENSA_REQUIRE_AUDIT stop the run before any test, naming the fix."""
    bad = pytest_in(tmp_path, NEEDS_A_COMPONENT, KENSA_REQUIRE_REAL="yes")
    assert bad.returncode == pytest.ExitCode.USAGE_ERROR, bad.stdout[-2000:] + bad.stderr[-2000:]
    assert "KENSA_REQUIRE_REAL='yes'" in bad.stderr
    retired = pytest_in(tmp_path, NEEDS_A_COMPONENT, KENSA_REQUIRE_AUDIT="1")
    assert retired.returncode == pytest.ExitCode.USAGE_ERROR, retired.stdout[-2000:] + retired.stderr[-2000:]
    assert "KENSA_REQUIRE_AUDIT is no longer read: set KENSA_REQUIRE_REAL=1 instead" in retired.stderr


def test_serial_tests_run_first_on_one_worker(tmp_path: Path) -> None:
    """Under pytest-xdist (--dist loadgroup) every test marked serial runs on the same worker, and they are collected first."""
    tool("xdist")
    tests = "import os, pytest\n" + "".join(
        f"\n{'@pytest.mark.serial' if n % 2 else ''}\ndef test_{n}():\n"
        f"    with open({str(tmp_path / 'ran')!r}, 'a') as f:\n"
        f"        f.write('{n} ' + os.environ['PYTEST_XDIST_WORKER'] + '\\n')\n"
        for n in range(8))
    proc = pytest_in(tmp_path, tests, "-n", "2", "--dist", "loadgroup", "-p", "no:randomly")
    assert proc.returncode == 0, proc.stdout[-3000:]
    ran = dict(line.split() for line in (tmp_path / "ran").read_text().splitlines())
    assert len(ran) == 8
    assert len({ran[str(n)] for n in (1, 3, 5, 7)}) == 1, ran
    collected = pytest_in(tmp_path, tests, "--collect-only", "-q").stdout.split()
    assert [name.rsplit("::", 1)[-1] for name in collected[:4]] == ["test_1", "test_3", "test_5", "test_7"], collected


def test_readme_names_only_kensa_modules_and_attributes_that_exist() -> None:
    """Every dotted kensa name the README shows in code (`kensa.x.Y`) can be imported, so
    the advice it gives (which class to pass, where a lock lives) survives module moves."""
    import importlib
    import re

    import pytest

    readme = ROOT / "README.md"
    if not readme.exists():
        pytest.skip("not a source checkout")
    missing = []
    for name in sorted(set(re.findall(r"`[^`]*?\b(kensa(?:\.[A-Za-z_]\w*)+)", readme.read_text()))):
        parts = name.split(".")
        for cut in range(len(parts), 0, -1):
            try:
                found: object = importlib.import_module(".".join(parts[:cut]))
            except ImportError:
                continue
            for part in parts[cut:]:
                found = getattr(found, part, None)
            if found is None:
                missing.append(name)
            break
    assert missing == []


def test_pyflakes_finds_no_unused_or_undefined_name() -> None:
    """pyflakes finds no unused import, undefined or shadowed name in src/kensa (a line marked
    ``# noqa`` imports on purpose, to probe what the Python running it has)."""
    source_checkout()
    tool("pyflakes")
    proc = subprocess.run([sys.executable, "-m", "pyflakes", str(SRC / "kensa")], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    found = []
    for line in proc.stdout.splitlines():
        path, _, rest = line.partition(":")
        number = rest.partition(":")[0]
        text = Path(path).read_text().splitlines()[int(number) - 1] if number.isdigit() else ""
        if "# noqa" not in text:
            found.append(line)
    assert found == [], "\n".join(found)


def test_no_test_copies_the_live_etc_with_a_plain_copytree() -> None:
    # Package tests install real .debs whose conffiles come and go in /etc while other tests
    # copy it; a plain copytree then fails on the vanished file.
    offenders = [f"{path.name}:{number}" for path in sorted(Path(__file__).parent.glob("*.py"))
                 for number, line in enumerate(path.read_text().splitlines(), 1)
                 if 'copytree("' + '/etc' in line]
    assert offenders == []


def test_a_live_tree_copy_leaves_out_entries_that_vanish_while_it_copies(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from conftest import copy_live_tree

    source = tmp_path / "etc"
    (source / "kept.d").mkdir(parents=True)
    (source / "kept.d" / "a.conf").write_text("a\n")
    (source / "going.dpkg-new").write_text("b\n")
    (source / "gone.d").mkdir()
    (source / "gone.d" / "c.conf").write_text("c\n")
    os.symlink("kept.d/a.conf", source / "link")
    real_copy2 = shutil.copy2
    real_scandir = os.scandir

    def copy2_after_it_vanished(src: str, dst: str, **kwargs: bool) -> str:
        if src.endswith("going.dpkg-new"):
            os.unlink(src)
        return real_copy2(src, dst, **kwargs)

    def scandir_after_it_vanished(path: str) -> "os._ScandirIterator[str]":
        if str(path).endswith("gone.d"):
            shutil.rmtree(path)
        return real_scandir(path)

    monkeypatch.setattr(shutil, "copy2", copy2_after_it_vanished)
    monkeypatch.setattr(os, "scandir", scandir_after_it_vanished)
    copy_live_tree(source, tmp_path / "copy")
    copy = tmp_path / "copy"
    assert (copy / "kept.d" / "a.conf").read_text() == "a\n"
    assert os.readlink(copy / "link") == "kept.d/a.conf"
    assert not (copy / "going.dpkg-new").exists()
    assert not (copy / "gone.d" / "c.conf").exists()
