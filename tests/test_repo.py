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
