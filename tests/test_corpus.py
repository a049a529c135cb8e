"""A whole public rule corpus loads and gets verdicts (only with KENSA_CORPUS set).

The public Kensa corpus is not part of this project, so these tests run only when
KENSA_CORPUS names a directory of rule files, and skip otherwise (whatever
KENSA_REQUIRE_REAL says: the corpus is an input, not a component of the machine).
``python -m benchmarks.corpus_check`` gives the full report.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from kensa.handlers import default_registry
from kensa.hosts.local import LocalHost
from kensa.rules.applicability import OsRelease
from kensa.rules.assess import check_rules, observe
from kensa.rules.load import load_rule_set
from kensa.rules.variables import load_variables

CORPUS = os.environ.get("KENSA_CORPUS", "")
VARIABLES = Path(__file__).resolve().parent.parent / "benchmarks" / "corpus-variables"

pytestmark = pytest.mark.skipif(not os.path.isdir(CORPUS), reason="set KENSA_CORPUS to a rule corpus directory")


def test_every_corpus_rule_loads() -> None:
    """Every file of the corpus loads: none is malformed, none lacks a variable the project's
    corpus variables define."""
    loaded = load_rule_set([CORPUS], variables=load_variables(str(VARIABLES)))
    assert [p.message for p in loaded.problems] == []
    assert len(loaded.rules) == sum(1 for _ in Path(CORPUS).rglob("*.yml"))


def test_corpus_check_gives_definite_verdicts(tmp_path: Path) -> None:
    """Checked on this host as an Ubuntu 22.04 (the corpus's families are RHEL and Ubuntu),
    at least 90% of the rules get compliant, not compliant or not applicable."""
    loaded = load_rule_set([CORPUS], variables=load_variables(str(VARIABLES)))
    host = LocalHost("/")
    facts = replace(observe(host), os_release=OsRelease("ubuntu", "22.04"))
    verdicts = Counter(r.verdict.value for r in check_rules(loaded.rules, host, default_registry(), facts=facts))
    definite = verdicts["compliant"] + verdicts["not_compliant"] + verdicts["not_applicable"]
    assert definite >= 0.9 * len(loaded.rules), verdicts
    assert verdicts["compliant"] and verdicts["not_compliant"], verdicts
