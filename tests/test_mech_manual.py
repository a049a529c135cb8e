"""manual: kensa never applies it; a rule that is not compliant ends ``manual`` with the
operator's note, in the result, the CLI, its exit code, the journal, the audit log and reports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Tuple

import pytest

from conftest import AuditListener, decode_value, kensa_records, parse_fields, require_audit, snapshot_tree
from kensa import audit
from kensa.engine import Engine
from kensa.evidence.tabular import finding_state
from kensa.handlers import default_registry
from kensa.hosts.local import resolve_host
from kensa.journal import SqliteJournal
from kensa.model import Status, Step, Transaction

REPO = Path(__file__).resolve().parent.parent
ENV = dict(os.environ, PYTHONPATH=str(REPO / "src"))
NOTE = "Set a GRUB password with grub2-setpassword,\n  then reboot."

RULES = {
    "manual-grub-password": """\
id: manual-grub-password
title: Boot loader password
severity: high
implementations:
  - default: true
    check:
      method: file_exists
      path: /boot/grub2/user.cfg
    remediation:
      mechanism: manual
      note: "Set a GRUB password with grub2-setpassword, then reboot."
""",
    "manual-already-done": """\
id: manual-already-done
title: Something an operator did already
severity: low
implementations:
  - default: true
    check:
      method: file_exists
      path: /etc/hostname
    remediation:
      mechanism: manual
      note: "Nothing to do here."
""",
    "auto-motd": """\
id: auto-motd
title: A banner kensa writes
severity: low
implementations:
  - default: true
    check:
      method: file_content
      path: /etc/motd
      expected_content: "authorized use only\\n"
    remediation:
      mechanism: file_content
      path: /etc/motd
      content: "authorized use only\\n"
""",
}


def _tree(tmp_path: Path) -> Tuple[Path, Path]:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/hostname").write_text("box\n")
    rules = tmp_path / "rules"
    rules.mkdir()
    for name, text in RULES.items():
        (rules / f"{name}.yml").write_text(text)
    return root, rules


def _kensa(tmp_path: Path, *args: str) -> Tuple[int, Dict[str, Any], str]:
    done = subprocess.run([sys.executable, "-m", "kensa", "--journal", str(tmp_path / "j.db"), "--no-audit", *args],
                          capture_output=True, text=True, env=ENV, timeout=300)
    parsed: Dict[str, Any] = json.loads(done.stdout) if "--json" in args else {}
    return done.returncode, parsed, done.stdout + done.stderr


def test_engine_applies_nothing_and_ends_manual_with_the_note(tmp_path: Path) -> None:
    """A transaction with a manual step that does not hold changes nothing (no capture, no
    apply), and ends ``manual``, host unchanged, its step saying what to do on one line;
    the journal holds that result. A manual step needs no pre-state, so a transactional
    rule may have one."""
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    before = snapshot_tree(root)
    journal = SqliteJournal(str(tmp_path / "j.db"))
    engine = Engine(default_registry(), hosts=resolve_host, journal=journal)
    txn = Transaction("grub", (Step("manual", {"note": NOTE}),), host=str(root), transactional=True)
    result = engine.run(txn)
    assert result.status is Status.MANUAL, result
    assert result.host_unchanged and result.error is None
    [step] = result.steps
    assert step.detail == "an operator must act: Set a GRUB password with grub2-setpassword, then reboot."
    assert not step.changed
    assert snapshot_tree(root) == before
    entry = journal.get(result.txn_id)
    assert entry.result is not None and entry.result.status is Status.MANUAL


def test_a_manual_step_next_to_others_applies_none_of_them(tmp_path: Path) -> None:
    """A remediation with a manual step and a file_content step applies neither: half a
    remediation would leave the rule still not compliant, with the host changed."""
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    before = snapshot_tree(root)
    engine = Engine(default_registry(), hosts=resolve_host)
    steps = (Step("file_content", {"path": "/etc/motd", "content": "x\n"}), Step("manual", {}))
    result = engine.run(Transaction("mixed", steps, host=str(root)))
    assert result.status is Status.MANUAL
    assert [s.detail for s in result.steps] == ["an operator must act: the rule gives no instructions"]
    assert snapshot_tree(root) == before


def test_remediate_reports_manual_distinctly_and_check_is_unaffected(tmp_path: Path) -> None:
    """``kensa remediate``: the manual rule is ``manual`` with its note (not committed, not an
    error), the already-compliant one is skipped, the automatic one commits; the exit code
    is 4, and the table says so too. ``kensa check`` still decides by the rule's check."""
    root, rules = _tree(tmp_path)
    code, done, output = _kensa(tmp_path, "remediate", str(rules), "--root", str(root), "--json")
    statuses = {r["rule"]: r["status"] for r in done["results"]}
    assert statuses == {"manual-grub-password": "manual", "manual-already-done": "skipped", "auto-motd": "committed"}
    assert code == 4, output
    [grub] = [r for r in done["results"] if r["rule"] == "manual-grub-password"]
    assert grub["host_unchanged"] is True and grub["error"] is None
    assert grub["steps"][0]["detail"] == "an operator must act: Set a GRUB password with grub2-setpassword, then reboot."
    code, _, table = _kensa(tmp_path, "remediate", str(rules), "--root", str(root))
    assert code == 4
    [line] = [row for row in table.splitlines() if row.startswith("manual-grub-password")]
    assert "manual" in line and "grub2-setpassword" in line
    code, checked, output = _kensa(tmp_path, "check", str(rules), "--root", str(root), "--json")
    verdicts = {r["rule"]: r["verdict"] for r in checked["rules"]}
    assert verdicts == {"manual-grub-password": "not_compliant", "manual-already-done": "compliant", "auto-motd": "compliant"}
    assert code == 1, output


def test_a_failed_rule_wins_over_a_manual_one_in_the_exit_code(tmp_path: Path) -> None:
    """A run with a manual rule and a rule that rolled back exits 1: something went wrong,
    which says more than that an operator has work to do."""
    root, rules = _tree(tmp_path)
    (rules / "auto-motd.yml").write_text(RULES["auto-motd"].replace('      content: "authorized', '      content: "not what the check wants'))
    code, done, output = _kensa(tmp_path, "remediate", str(rules), "--root", str(root), "--json")
    assert {r["rule"]: r["status"] for r in done["results"]}["auto-motd"] == "rolled_back"
    assert code == 1, output


def test_reports_count_a_manual_rule_as_not_satisfied() -> None:
    """In reports (rows, CSV, OSCAL) a manual outcome is a finding that is not satisfied,
    never a remediated control."""
    assert finding_state(Status.MANUAL.value) == "not-satisfied"


@pytest.mark.serial  # with the kernel-audit tests, some of which stop auditd or fill the backlog
def test_kernel_records_started_then_manual_failed(listener: AuditListener, tmp_path: Path) -> None:
    """The kernel logs two records for a manual transaction: started, then manual with
    res=failed (the finding is still open, so ``ausearch --success no`` lists it)."""
    emitter = audit.open_emitter()
    if not isinstance(emitter, audit.AuditEmitter):
        require_audit(f"emission is off: {audit.status()}")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    engine = Engine(default_registry(), audit=emitter, hosts=resolve_host)
    txn = Transaction("manual-audit", (Step("manual", {"note": NOTE}),), host=str(root))
    assert engine.run(txn).status is Status.MANUAL
    assert emitter.flush(10)
    records = kensa_records(listener, txn.id, 2)
    got = [(dict(parse_fields(r.body))["phase"], dict(parse_fields(r.body))["res"]) for r in records]
    assert got == [("started", "success"), ("manual", "failed")]
    assert all(decode_value(dict(parse_fields(r.body))["txn"]).decode() == txn.id for r in records)
    emitter.close()


@pytest.mark.parametrize("note", [["a", "list"], 5])
def test_a_note_that_is_not_text_is_refused(note: Any) -> None:
    """The note is text; a list or a number is a ParamError from the schema the loader uses."""
    from kensa.errors import ParamError

    with pytest.raises(ParamError, match="note"):
        default_registry()["manual"].schema.read({"note": note})
