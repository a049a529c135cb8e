"""A rule's own check decides remediation: skipped when it holds, rolled back when it does
not hold after apply, and journaled so that rollback by id and recovery handle it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Mapping, Optional

from kensa.engine.events import PhaseEvent, TerminalEvent
from kensa.factory import default_engine
from kensa.model import PreState, RollbackResult, Status, StepResult
from kensa.rules import RULE_CHECK, parse_rule


def _rule(check: str, remediation: str, transactional: bool = True) -> str:
    return (
        "id: r\ntitle: t\nseverity: low\n"
        f"transactional: {'true' if transactional else 'false'}\n"
        "implementations:\n  - default: true\n"
        f"    check: {check}\n    remediation: {remediation}\n"
    )


def _root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    return root


def _run(tmp_path: Path, root: Path, text: str) -> tuple:
    engine = default_engine(str(tmp_path / "journal.db"), audit=False)
    seen: List[object] = []
    sub = engine.subscribe(seen.append)
    rule = parse_rule(text)
    result = engine.run(rule.to_transaction(str(root)))
    sub.close(5.0)
    phases = [e.phase.value for e in seen if isinstance(e, PhaseEvent)]
    phases += [e.status.value for e in seen if isinstance(e, TerminalEvent)]
    return engine, result, phases


def test_transaction_ends_with_the_rule_check_step() -> None:
    """A rule with a check gets one last step carrying its checks; one without gets none."""
    rule = parse_rule(_rule("{method: file_exists, path: /etc/marker}", "{mechanism: file_absent, path: /etc/x}"))
    txn = rule.to_transaction("/srv")
    assert [s.mechanism for s in txn.steps] == ["file_absent", RULE_CHECK]
    assert txn.steps[-1].params["checks"] == [{"method": "file_exists", "params": {"path": "/etc/marker"}}]
    bare = parse_rule(_rule("{method: file_exists, path: /m}", "{mechanism: file_absent, path: /x}").replace("    check: {method: file_exists, path: /m}\n", ""))
    assert [s.mechanism for s in bare.to_transaction("/srv").steps] == ["file_absent"]


def test_rule_check_holding_skips_although_a_step_would_change(tmp_path: Path) -> None:
    """The rule's check holds (the marker exists) while its step would still write a file:
    the rule is compliant, so the transaction is skipped, audited as started then skipped,
    and the file is not written."""
    root = _root(tmp_path)
    (root / "etc/marker").write_text("")
    text = _rule("{method: file_exists, path: /etc/marker}", '{mechanism: file_content, path: /etc/x, content: "y\\n"}')
    _, result, phases = _run(tmp_path, root, text)
    assert result.status is Status.SKIPPED, result
    assert phases == ["started", "skipped"], phases
    assert not (root / "etc/x").exists()


def test_rule_check_failing_after_apply_rolls_back(tmp_path: Path) -> None:
    """The remediation writes its file but the rule's check still does not hold: the
    transaction fails in validate and is rolled back, leaving the host as it was."""
    root = _root(tmp_path)
    text = _rule('{method: file_content_match, path: /etc/x, pattern: "^z$"}', '{mechanism: file_content, path: /etc/x, content: "y\\n"}')
    _, result, phases = _run(tmp_path, root, text)
    assert result.status is Status.ROLLED_BACK, result
    assert result.host_unchanged
    assert result.error is not None and RULE_CHECK in result.error.message
    assert phases[-2:] == ["validate", "rolled_back"], phases
    assert not (root / "etc/x").exists()


def test_rule_check_made_true_commits_and_rolls_back_by_id(tmp_path: Path) -> None:
    """A remediation that makes the rule's check hold commits; rollback by id then restores
    the pre-state, the check step having nothing of its own to undo."""
    root = _root(tmp_path)
    text = _rule('{method: file_content_match, path: /etc/x, pattern: "^y$"}', '{mechanism: file_content, path: /etc/x, content: "y\\n"}')
    engine, result, phases = _run(tmp_path, root, text)
    assert result.status is Status.COMMITTED, result
    assert phases == ["started", "capture", "apply", "validate", "committed"], phases
    assert (root / "etc/x").read_text() == "y\n"
    undone = engine.rollback(result.txn_id)
    assert undone.status is Status.ROLLED_BACK, undone
    assert not (root / "etc/x").exists()


def test_sysctl_rule_whose_check_holds_is_skipped_not_committed(tmp_path: Path) -> None:
    """The kernel value already is what the rule's check asks, while the persist file the
    step would write is missing: kensa remediate skips the rule (the check holds) instead of
    committing a change, and writes no file."""
    import io
    import json

    from kensa.cli.main import main

    root = _root(tmp_path)
    (root / "proc/sys/net/ipv4").mkdir(parents=True)
    (root / "proc/sys/net/ipv4/ip_forward").write_text("0\n")
    (root / "etc/sysctl.d").mkdir()
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "ip-forward.yml").write_text(_rule(
        '{method: sysctl_value, key: net.ipv4.ip_forward, expected: "0"}',
        '{mechanism: sysctl_set, key: net.ipv4.ip_forward, value: "0"}',
    ))
    out = io.StringIO()
    code = main(["--no-audit", "--journal", str(tmp_path / "j.db"), "remediate", str(rules), "--root", str(root), "--json"], out=out)
    [result] = json.loads(out.getvalue())["results"]
    assert (code, result["status"]) == (0, "skipped"), out.getvalue()
    assert list((root / "etc/sysctl.d").iterdir()) == []


class StageFile:
    """A capturable step whose change takes effect only at the next boot (as audit rules do on a
    host whose audit configuration is immutable): it writes a file and reports ``staged``."""

    name = "stage_file"
    capturable = True

    def capture(self, host: Any, params: Mapping[str, Any]) -> PreState:
        return PreState(self.name, params, {"content": host.read_bytes(params["path"])})

    def apply(self, host: Any, params: Mapping[str, Any], pre: Optional[PreState]) -> StepResult:
        host.write_file(params["path"], params["content"].encode())
        return StepResult(self.name, ok=True, changed=True, staged=True, detail="takes effect at the next boot")

    def validate(self, host: Any, params: Mapping[str, Any]) -> bool:
        return bool(host.read_bytes(params["path"]) == params["content"].encode())

    def rollback(self, host: Any, pre: PreState) -> RollbackResult:
        if pre.data["content"] is None:
            host.remove_file(pre.params["path"])
        else:
            host.write_file(pre.params["path"], pre.data["content"])
        return RollbackResult(self.name, ok=True)


def test_a_staged_step_defers_the_rule_check_as_it_defers_its_own_validate(tmp_path: Path) -> None:
    """A step that reports staged changes what holds only after the next boot, so the rule's
    check, which reads what holds now, cannot judge it either: the transaction is staged, as
    it is without the rule-check step, and what the step persisted stays (not rolled back)."""
    from kensa.model import Step, Transaction
    from kensa.rules import Check
    from kensa.rules.model import verification_step

    root = _root(tmp_path)
    engine = default_engine(str(tmp_path / "journal.db"), audit=False)
    engine.registry.register(StageFile())
    staged = Step("stage_file", {"path": "/etc/pending.rules", "content": "-w /etc/shadow -p wa\n"})
    alone = engine.run(Transaction("r", (staged,), host=str(root)))
    assert alone.status is Status.STAGED, alone
    (root / "etc/pending.rules").unlink()
    # The rule's check reads what is in effect now: /etc/active.rules, written at boot.
    check = verification_step((Check("file_exists", {"path": "/etc/active.rules"}),))
    result = engine.run(Transaction("r", (staged, check), host=str(root)))
    assert result.status is Status.STAGED, result
    assert (root / "etc/pending.rules").read_text() == "-w /etc/shadow -p wa\n"
