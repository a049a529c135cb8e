"""The share of a rule corpus's checks that give a definite verdict on this live host, read-only.

Runs only when KENSA_CORPUS names a directory of Kensa rule files (KENSA_CORPUS_VARIABLES
may name a YAML file with their ``variables:``): the corpus is not part of kensa."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import require_root

REPO = Path(__file__).resolve().parent.parent


def test_corpus_checks_are_definite_and_change_nothing(tmp_path: Path) -> None:
    """At least 90% of the corpus's rules get compliant or not compliant from their checks
    alone on this host, and /etc is byte for byte the same afterwards."""
    corpus = os.environ.get("KENSA_CORPUS")
    if not corpus:
        pytest.skip("KENSA_CORPUS does not name a rule corpus")
    require_root("checks read root-only files and run auditctl")
    out = tmp_path / "verdicts.json"
    argv = [sys.executable, "-m", "benchmarks.corpus_verdicts", corpus, "--json", str(out)]
    if os.environ.get("KENSA_CORPUS_VARIABLES"):
        argv += ["--variables", os.environ["KENSA_CORPUS_VARIABLES"]]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, env=env, timeout=3600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["etc_unchanged"] is True
    assert result["definite_share"] >= 0.9, done.stdout
