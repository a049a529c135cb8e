"""The kensa command: every subcommand, bad input, JSON output, the demo."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Tuple

import pytest

import kensa
from conftest import require_root
from conftest import snapshot_tree as snapshot
from kensa.cli.main import EXIT_BAD_INPUT, EXIT_NOT_APPLIED, EXIT_OK, main
from kensa.journal.store import SqliteJournal

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples" / "rules"

TREE = {
    "etc/ssh/sshd_config": ("PermitRootLogin yes\nMaxAuthTries 6\n", 0o600),
    "etc/passwd": ("root:x:0:0:root:/root:/bin/bash\n", 0o664),
    "etc/group": ("root:x:0:\n", 0o644),
    "etc/issue.net": ("Debian GNU/Linux\n", 0o644),
    "etc/sudoers": ("root ALL=(ALL:ALL) ALL\n", 0o440),
    "proc/sys/kernel/yama/ptrace_scope": ("0\n", 0o644),
    "proc/sys/kernel/kptr_restrict": ("0\n", 0o644),
    "proc/sys/net/ipv4/ip_forward": ("1\n", 0o644),
}
DIRS = ["etc/sysctl.d", "etc/audit/rules.d", "etc/sudoers.d"]


def make_root(base: Path) -> Path:
    root = base / "root"
    for rel in DIRS:
        (root / rel).mkdir(parents=True, exist_ok=True)
    for rel, (text, mode) in TREE.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(mode)
    return root




def kensa_cli(*argv: str) -> Tuple[int, str]:
    out = io.StringIO()
    code = main(list(argv), out=out)
    return code, out.getvalue()


@pytest.fixture
def journal(tmp_path: Path) -> str:
    return str(tmp_path / "journal.db")


@pytest.mark.smoke
def test_version_matches_the_package() -> None:
    """`kensa --version` prints kensa.__version__."""
    out = subprocess.run([sys.executable, "-m", "kensa", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"kensa {kensa.__version__}"


@pytest.mark.serial
def test_demo_shows_every_status() -> None:
    """The demo ends in committed, skipped, rolled back and errored, and says what happened to audit."""
    proc = subprocess.run([sys.executable, "-m", "kensa", "demo"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == EXIT_OK, proc.stderr
    for status in ("committed", "skipped", "rolled_back", "errored"):
        assert f" {status} " in proc.stdout
    assert "audit records" in proc.stdout
    assert proc.stderr == ""  # no progress bar when piped


@pytest.mark.serial
def test_demo_json_parses() -> None:
    """`kensa demo --json` is one JSON document with results and the audit state."""
    proc = subprocess.run([sys.executable, "-m", "kensa", "demo", "--json"], capture_output=True, text=True, timeout=120)
    doc = json.loads(proc.stdout)
    assert {r["status"] for r in doc["results"]} >= {"committed", "skipped", "rolled_back", "errored"}
    assert set(doc["audit"]) >= {"enabled", "reason", "records"}
    if doc["audit"]["enabled"] and os.geteuid() == 0:
        phases = [r for r in doc["audit"]["records"] if "phase=committed" in r]
        assert len(phases) == sum(1 for r in doc["results"] if r["status"] == "committed")


def test_examples_check_then_remediate_in_a_temporary_root(tmp_path: Path, journal: str) -> None:
    """The example rules (Kensa's schema) are not compliant, remediate to committed, then check compliant."""
    require_root()  # the rules set owner root
    root = make_root(tmp_path)
    code, out = kensa_cli("--journal", journal, "--no-audit", "check", str(EXAMPLES), "--root", str(root), "--json")
    before = json.loads(out)
    assert code == EXIT_NOT_APPLIED
    assert {r["verdict"] for r in before["rules"]} == {"not_compliant"}

    code, out = kensa_cli("--journal", journal, "--no-audit", "remediate", str(EXAMPLES), "--root", str(root), "--json")
    results = json.loads(out)["results"]
    assert code == EXIT_OK, out
    assert {r["status"] for r in results} == {"committed"}
    assert len(results) == len(before["rules"])

    code, out = kensa_cli("--journal", journal, "--no-audit", "check", str(EXAMPLES), "--root", str(root), "--json")
    assert code == EXIT_OK
    assert {r["verdict"] for r in json.loads(out)["rules"]} == {"compliant"}
    assert (root / "etc/ssh/sshd_config").read_text().count("PermitRootLogin no") == 1
    assert (root / "proc/sys/net/ipv4/ip_forward").read_text().strip() == "0"


@pytest.mark.smoke
def test_history_and_rollback_by_id(tmp_path: Path, journal: str) -> None:
    """history lists what ran (text and JSON); rollback by id restores the file; a second rollback is refused."""
    root = make_root(tmp_path)
    rule = EXAMPLES / "access-control" / "ssh-disable-root-login.yml"
    before = snapshot(root)
    code, out = kensa_cli("--journal", journal, "--no-audit", "remediate", str(rule), "--root", str(root), "--json")
    assert code == EXIT_OK
    txn = json.loads(out)["results"][0]["txn"]

    code, out = kensa_cli("--journal", journal, "history", "--json")
    entries = json.loads(out)
    assert [e["txn"] for e in entries] == [txn] and entries[0]["result"]["status"] == "committed"
    code, out = kensa_cli("--journal", journal, "history", "--rule", "ssh-disable-root-login", "--status", "committed")
    assert code == EXIT_OK and txn in out
    code, out = kensa_cli("--journal", journal, "history", "--rule", "no-such-rule", "--json")
    assert json.loads(out) == []

    code, out = kensa_cli("--journal", journal, "--no-audit", "rollback", txn, "--json")
    assert code == EXIT_OK, out
    assert json.loads(out)["status"] == "rolled_back"
    assert snapshot(root) == before
    code, _ = kensa_cli("--journal", journal, "--no-audit", "rollback", txn)
    assert code == EXIT_BAD_INPUT


def test_recover_with_nothing_interrupted(tmp_path: Path, journal: str) -> None:
    """recover on a clean journal says there is nothing to do and exits 0."""
    make_root(tmp_path)
    SqliteJournal(journal).close()
    code, out = kensa_cli("--journal", journal, "--no-audit", "recover")
    assert code == EXIT_OK
    assert "nothing to recover" in out
    code, out = kensa_cli("--journal", journal, "--no-audit", "recover", "--json")
    assert json.loads(out) == []


def test_dry_run_changes_nothing(tmp_path: Path, journal: str) -> None:
    """--dry-run reports a plan per rule and leaves the tree (and the journal) untouched."""
    root = make_root(tmp_path)
    before = snapshot(root)
    code, out = kensa_cli("--journal", journal, "remediate", str(EXAMPLES), "--root", str(root), "--dry-run", "--json")
    assert code == EXIT_OK
    plans = json.loads(out)["rules"]
    assert plans and all(p["plan"].startswith("would apply") for p in plans)
    assert snapshot(root) == before
    assert not os.path.exists(journal)


def test_bad_rule_file_names_file_and_line(tmp_path: Path, journal: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A malformed rule is exit 2 with file:line and the field in the message; nothing runs."""
    bad = tmp_path / "bad.yml"
    bad.write_text("id: ok-id\ntitle: t\nseverity: high\ncategory: c\nimplementations:\n  - default: true\n    remediation:\n      mechanism: [config_set]\n")
    root = make_root(tmp_path)
    before = snapshot(root)
    code, _ = kensa_cli("--journal", journal, "remediate", str(bad), "--root", str(root))
    err = capsys.readouterr().err
    assert code == EXIT_BAD_INPUT
    assert f"{bad}:8" in err and "mechanism" in err
    assert snapshot(root) == before


def test_missing_root_and_missing_rules_are_clear_errors(tmp_path: Path, journal: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A root or rule path that does not exist is exit 2 naming it."""
    code, _ = kensa_cli("--journal", journal, "check", str(EXAMPLES), "--root", str(tmp_path / "nowhere"))
    assert code == EXIT_BAD_INPUT and "nowhere: no such directory" in capsys.readouterr().err
    code, _ = kensa_cli("--journal", journal, "check", str(tmp_path / "no-rules"))
    assert code == EXIT_BAD_INPUT and "no-rules: no such rule file" in capsys.readouterr().err


def test_history_without_a_journal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """history before anything ran says where it looked."""
    code, _ = kensa_cli("--journal", str(tmp_path / "none.db"), "history")
    assert code == EXIT_BAD_INPUT and "none.db" in capsys.readouterr().err


def test_audit_status_json(monkeypatch: pytest.MonkeyPatch) -> None:
    """`kensa audit status --json` parses and says why emission is off when it is."""
    monkeypatch.setenv("KENSA_AUDIT", "off")
    code, out = kensa_cli("audit", "status", "--json")
    doc = json.loads(out)
    assert code == EXIT_OK
    assert doc["enabled"] is False and doc["reason"] == "disabled"
    assert set(doc["counters"]) >= {"emitted", "sent", "dropped", "failed"}
    code, out = kensa_cli("audit", "status")
    assert "emission:  off (disabled)" in out


def test_unsupported_rule_is_reported_not_run(tmp_path: Path, journal: str) -> None:
    """A rule whose remediation kensa does not carry out (an audit control line Kensa's schema
    accepts) loads, is reported unsupported, and the exit code says not applied."""
    rule = tmp_path / "svc.yml"
    rule.write_text(
        "id: svc-rule\ntitle: t\nseverity: low\ncategory: c\nimplementations:\n"
        "  - default: true\n    remediation: {mechanism: audit_rule_set, rule: '-e 2'}\n"
    )
    root = make_root(tmp_path)
    code, out = kensa_cli("--journal", journal, "--no-audit", "remediate", str(rule), "--root", str(root), "--json")
    doc = json.loads(out)
    assert code == EXIT_NOT_APPLIED
    assert doc["results"] == [] and doc["unsupported"][0]["rule"] == "svc-rule"


def test_terminal_escapes_from_a_root_are_printed_escaped(tmp_path: Path, journal: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A symlink whose target holds an escape sequence is reported with the escape made visible, never raw."""
    root = make_root(tmp_path)
    config = root / "etc/ssh/sshd_config"
    config.unlink()
    config.symlink_to("/x\x1b]0;OWNED\x07\x1b[2Jfake: all compliant")
    rule = EXAMPLES / "access-control" / "ssh-disable-root-login.yml"
    code, out = kensa_cli("--journal", journal, "--no-audit", "check", str(rule), "--root", str(root))
    assert code == EXIT_NOT_APPLIED
    assert "\x1b" not in out and "\x07" not in out
    assert "\\x1b]0;OWNED\\x07" in out
    code, out = kensa_cli("--journal", journal, "--no-audit", "remediate", str(rule), "--root", str(root))
    assert "\x1b" not in out + capsys.readouterr().err


def test_errored_with_the_host_changed_needs_an_operator() -> None:
    """Exit 3 for any outcome that did not hold and left the host changed, whatever its status."""
    from kensa.cli.main import EXIT_NEEDS_OPERATOR, exit_code_for
    from kensa.model import Status, TransactionResult

    def result(status: Status, unchanged: bool) -> TransactionResult:
        return TransactionResult("t", "r", "h", status, unchanged)

    assert exit_code_for([result(Status.ERRORED, False)], False) == EXIT_NEEDS_OPERATOR
    assert exit_code_for([result(Status.ERRORED, True)], False) == EXIT_NOT_APPLIED
    assert exit_code_for([result(Status.PARTIALLY_APPLIED, False)], False) == EXIT_NEEDS_OPERATOR
    assert exit_code_for([result(Status.COMMITTED, False), result(Status.SKIPPED, True)], False) == EXIT_OK
    assert exit_code_for([result(Status.COMMITTED, False)], True) == EXIT_NOT_APPLIED


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_only_on_a_terminal() -> None:
    """The batch progress bar draws on a terminal, escapes its labels, and clears its line; piped, it writes nothing."""
    from kensa.cli.render import Progress

    tty = _Terminal()
    bar = Progress(2, tty)
    bar.advance("rule-\x1b[31m committed")
    bar.advance("rule-2 rolled_back")
    bar.finish()
    drawn = tty.getvalue()
    assert "[###############...............] 1/2" in drawn and "2/2" in drawn
    assert "\x1b" not in drawn and drawn.endswith("\r")
    piped = io.StringIO()
    quiet = Progress(2, piped)
    quiet.advance("x")
    quiet.finish()
    assert piped.getvalue() == ""


def test_workers_on_one_target_says_it_has_no_effect(tmp_path: Path, journal: str, capsys: pytest.CaptureFixture[str]) -> None:
    """--workers above 1 with one target is not silently ignored: stderr says its transactions run one after another."""
    root = make_root(tmp_path)
    code, _ = kensa_cli("--journal", journal, "--no-audit", "remediate", str(EXAMPLES), "--root", str(root),
                        "--workers", "4", "--json")
    assert code in (EXIT_OK, EXIT_NOT_APPLIED)
    err = capsys.readouterr().err
    assert "--workers 4 has no effect here" in err and str(root) in err
    kensa_cli("--journal", journal, "--no-audit", "remediate", str(EXAMPLES), "--root", str(root), "--json")
    assert "--workers" not in capsys.readouterr().err
