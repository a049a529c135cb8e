"""The reliability report at its reduced size: nothing journaled is lost, nothing forged, the machine restored.

Runs ``python -m reliability --reduced`` (the same program that writes
docs/reliability.md at full size) into a temporary file and checks every
claim the report makes against its JSON figures, then checks that the audit
configuration is as it was before the run.

The sections the suite already proves on its own are left out of this run:
fuzz_rules (tests/test_rules.py's property tests), fuzz_paths
(tests/test_fuzz_paths.py) and sanitizers (tests/test_c_sanitizers.py);
``python -m reliability --full`` runs every section.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterator

import pytest

from conftest import require_audit, require_root

# Changes, floods or reads the kernel's audit state: one at a time (tests/conftest.py).
pytestmark = pytest.mark.serial

REPO = Path(__file__).resolve().parent.parent
# Every section of the program the rest of the suite does not already cover.
IN_THIS_RUN = ("crash", "load", "audit_faults", "adversarial", "fuzz_encoder")


def _audit_state() -> Dict[str, Any]:
    sys.path.insert(0, str(REPO))
    try:
        from reliability.machine import AuditControl
    finally:
        sys.path.remove(str(REPO))
    state = AuditControl().state()
    return {"running": bool(state.auditd_pid), "stopped": state.auditd_stopped, "backlog_limit": state.backlog_limit, "rules": state.rules}


@pytest.fixture(scope="module")
def report() -> Iterator[Dict[str, Any]]:
    """The reduced run's figures, and the audit configuration before and after it."""
    require_root()
    if not (REPO / "reliability" / "__main__.py").exists():
        pytest.skip("the reliability program is not in this copy of the tests (an sdist)")
    import kensa.audit.emitter as audit

    status = audit.status()
    if not status.enabled:
        require_audit(f"the report needs kernel audit emission: {status}")
    before = _audit_state()
    with tempfile.TemporaryDirectory() as tmp:
        out, figures = Path(tmp) / "reliability.md", Path(tmp) / "reliability.json"
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), *sys.path]))
        proc = subprocess.run(
            [sys.executable, "-m", "reliability", "--reduced", "--output", str(out), "--json", str(figures),
             "--only", *IN_THIS_RUN],
            cwd=str(REPO), env=env, capture_output=True, text=True, timeout=1200,
        )
        data = json.loads(figures.read_text()) if figures.exists() else {}
        data["returncode"], data["stdout"], data["stderr"] = proc.returncode, proc.stdout, proc.stderr
        data["markdown"] = out.read_text() if out.exists() else ""
        data["before"], data["after"] = before, _audit_state()
        yield data


def section(report: Dict[str, Any], key: str) -> Dict[str, Any]:
    found = report.get("sections", {}).get(key)
    assert found is not None, f"no {key} section: {report['stdout'][-2000:]}{report['stderr'][-2000:]}"
    assert not found["skipped"], f"{key} was not run: {found['skipped']}"
    return found  # type: ignore[no-any-return]


def test_the_run_finds_no_problem_and_no_loss(report: Dict[str, Any]) -> None:
    """The program exits 0: no scenario found a problem, no journaled result was lost."""
    assert report["returncode"] == 0, report["stdout"][-4000:] + report["stderr"][-4000:]
    assert report["losses"] == 0
    assert all(not s["problems"] for s in report["sections"].values())
    assert "**Losses of journaled data: 0.**" in report["markdown"]


def test_the_machine_is_left_as_it_was(report: Dict[str, Any]) -> None:
    """auditd runs and is not stopped, and the backlog limit and rules are as before the run."""
    assert report["after"] == report["before"]
    assert report["after"]["running"] and not report["after"]["stopped"]


def test_every_kill_leaves_the_tree_identical_after_recovery(report: Dict[str, Any]) -> None:
    """SIGKILL at each boundary of each capturable handler: recovery or rollback by id restores the tree exactly."""
    crash = section(report, "crash")["figures"]
    assert crash["kills"] == 77 and crash["identical"] == crash["kills"]
    assert crash["changed_before_recovery"] > 0 and crash["recovered"] > 0 and crash["rolled_back_by_id"] > 0
    assert crash["records_out_of_order"] == 0


def test_load_journals_every_result_and_counts_every_record(report: Dict[str, Any]) -> None:
    """Threads over four roots: no overlap per root, one journal row per run, the emitter's counters balance."""
    load = section(report, "load")["figures"]
    assert load["transactions"] == 8 * 12 and load["journal_rows"] == load["transactions"]
    assert load["missing_from_journal"] == load["journal_status_differs"] == load["wrong_statuses"] == 0
    assert load["overlaps"] == 0 and load["handler_calls"] > 0
    assert load["alias_overlaps"] == 0
    assert load["control_overlaps"] > 0, "the control run must show the detector can see overlaps"
    assert load["emitter_enabled"] and load["balanced"]
    assert load["emitted"] == load["records_produced"] == load["sent"] + load["dropped"] + load["failed"]


def test_audit_faults_never_change_a_status(report: Dict[str, Any]) -> None:
    """Under each audit fault every transaction ends as in the unfaulted batch and is journaled."""
    faults = section(report, "audit_faults")["figures"]
    batches = {k: v for k, v in faults.items() if isinstance(v, dict)}
    assert len(batches) == 6
    for name, fault in batches.items():
        assert fault["same_statuses"] and fault["wrong_statuses"] == 0, name
        assert fault["journal_rows"] == fault["transactions"], name
        assert fault["balanced"], name
    assert batches["no CAP_AUDIT_WRITE (setpriv)"]["stats"]["reason"] == "no_capability"
    assert batches["user namespace (ids 0-65535 mapped)"]["stats"]["reason"] == "user_namespace"


def test_the_encoder_fuzzer_finds_no_forged_field(report: Dict[str, Any]) -> None:
    """Encoder fuzzing ran and found nothing; the records it delivered are byte-identical in the kernel's log."""
    encoder = section(report, "fuzz_encoder")["figures"]
    assert encoder["problems"] == 0 and encoder["examples"] > 0
    assert encoder["delivered_identical"] == encoder["delivered_logged"] == encoder["delivered_sent"] > 0


def test_the_run_holds_exactly_the_sections_asked_for(report: Dict[str, Any]) -> None:
    """--only is obeyed: the report has the sections of this run and no other."""
    assert sorted(report["sections"]) == sorted(IN_THIS_RUN)


def test_one_root_spelled_two_ways_is_serialized() -> None:
    """Two threads naming one root '/r' and '/r/' never have handler calls overlap on it."""
    require_root()
    sys.path.insert(0, str(REPO))
    try:
        from reliability.load import aliased_overlaps
        from reliability.trees import make_root
        from reliability.workload import prepare_root
    finally:
        sys.path.remove(str(REPO))
    with tempfile.TemporaryDirectory() as tmp:
        root = str(make_root(Path(tmp) / "root"))
        prepare_root(root)
        calls, overlaps = aliased_overlaps(root)
    assert calls > 0
    assert overlaps == 0
