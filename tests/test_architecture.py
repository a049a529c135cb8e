"""docs/architecture.md tells the truth: its example mechanism, added exactly as it says, works."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import kensa

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "architecture.md"

RULE = """\
id: no-legacy-hosts-entry
title: No legacy entry in /etc/hosts.allow
severity: low
category: network
implementations:
  - default: true
    remediation:
      mechanism: line_absent
      path: /etc/hosts.allow
      line: "ALL: ALL"
"""

BAD_RULE = RULE.replace("path: /etc/hosts.allow", "path: etc/hosts.allow")


def block_after(marker: str) -> str:
    """The fenced code block that follows ``<!-- marker -->`` in the document."""
    text = DOC.read_text()
    found = re.search(rf"<!-- {re.escape(marker)} -->\n```python\n(.*?)```", text, re.S)
    assert found, f"docs/architecture.md has no code block after <!-- {marker} -->"
    return found.group(1)


def test_the_documented_mechanism_is_one_module_and_one_registry_line(tmp_path: Path) -> None:
    """The doc's new module plus its registry entry, applied to a copy of kensa, make a mechanism
    the loader accepts (and checks at file:line:field) and the engine commits and rolls back."""
    package = Path(kensa.__file__).resolve().parent
    src = tmp_path / "src"
    shutil.copytree(package, src / "kensa", ignore=shutil.ignore_patterns("__pycache__"))
    (src / "kensa" / "handlers" / "line_absent.py").write_text(block_after("new module: handlers/line_absent.py"))
    registry = src / "kensa" / "handlers" / "__init__.py"
    text = registry.read_text()
    import_line = block_after("registry: handlers/__init__.py").strip()
    text = text.replace("\nHANDLERS = (\n", f"\n{import_line}\n\nHANDLERS = (\n", 1)
    head, tail = text.split("\nHANDLERS = (\n", 1)
    entries, rest = tail.split("\n)\n", 1)
    registry.write_text(f"{head}\nHANDLERS = (\n{entries}\n    LineAbsent,\n)\n{rest}")

    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "hosts.allow").write_text("sshd: 10.0.0.0/8\nALL: ALL\n")
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "rule.yml").write_text(RULE)
    env = {**os.environ, "PYTHONPATH": str(src)}
    journal = str(tmp_path / "journal.db")

    def kensa_cli(*argv: str) -> "subprocess.CompletedProcess[str]":
        return subprocess.run([sys.executable, "-m", "kensa", "--journal", journal, "--no-audit", *argv],
                              capture_output=True, text=True, env=env, timeout=120)

    done = kensa_cli("remediate", str(rules), "--root", str(root), "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout)["results"][0]
    assert result["status"] == "committed", result
    assert (root / "etc" / "hosts.allow").read_text() == "sshd: 10.0.0.0/8\n"

    back = kensa_cli("rollback", result["txn"], "--json")
    assert back.returncode == 0, back.stdout + back.stderr
    assert (root / "etc" / "hosts.allow").read_text() == "sshd: 10.0.0.0/8\nALL: ALL\n"

    (rules / "rule.yml").write_text(BAD_RULE)
    bad = kensa_cli("remediate", str(rules), "--root", str(root), "--json")
    assert bad.returncode == 2, bad.stdout + bad.stderr
    assert "rule.yml:9: field 'implementations[0].remediation.path'" in bad.stderr, bad.stderr
    assert (root / "etc" / "hosts.allow").read_text() == "sshd: 10.0.0.0/8\nALL: ALL\n"
