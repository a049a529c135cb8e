"""Handler semantics: command_exec judged by its exit status, sysctl_set's last assignment wins,
audit_rule_set refuses rules that silence audit itself."""

from __future__ import annotations

from pathlib import Path

import pytest

from kensa import Step, Transaction
from kensa.audit import AUDIT_USER
from kensa.facts.auditrules import silencing_reason
from kensa.checks import step_holds
from kensa.engine import Engine
from kensa.handlers import default_registry
from kensa.handlers.audit_rule_set import AuditRuleSet
from kensa.errors import ParamError, RuleError
from kensa.hosts.local import LocalHost, resolve_host
from kensa.model import Status, TransactionResult
from kensa.rules.load import parse_rule


def _live_engine() -> Engine:
    return Engine(default_registry(), hosts=resolve_host)


def test_command_without_unless_commits_when_it_exits_zero(tmp_path: Path) -> None:
    """A command_exec step without ``unless`` whose command exits 0 ends committed, and the
    command ran exactly once (the compliance check and the validate phase never run it)."""
    counter = tmp_path / "runs"
    step = Step("command_exec", {"run": f"sh -c 'echo ran >> {counter}'"})
    result = _live_engine().run(Transaction("cmd", (step,), "localhost", transactional=False))
    assert result.status is Status.COMMITTED, result.error
    assert counter.read_text() == "ran\n"


def test_command_without_unless_that_fails_is_a_failed_apply(tmp_path: Path) -> None:
    """A command without ``unless`` exiting non-zero fails its apply: partially_applied, ran once."""
    counter = tmp_path / "runs"
    step = Step("command_exec", {"run": f"sh -c 'echo ran >> {counter}; exit 4'"})
    result = _live_engine().run(Transaction("cmd", (step,), "localhost", transactional=False))
    assert result.status is Status.PARTIALLY_APPLIED
    assert result.error is not None and "exit status 4" in result.error.message
    assert counter.read_text() == "ran\n"


def test_config_set_with_a_command_keeps_the_config(tmp_path: Path) -> None:
    """A non-transactional rule of config_set then a succeeding command_exec commits; the
    config change is kept, not rolled back."""
    conf = tmp_path / "app.conf"
    conf.write_text("Setting old\n")
    steps = (
        Step("config_set", {"path": str(conf), "key": "Setting", "value": "new", "separator": " "}),
        Step("command_exec", {"run": "true"}),
    )
    result = _live_engine().run(Transaction("cfg-cmd", steps, "localhost", transactional=False))
    assert result.status is Status.COMMITTED, result.error
    assert conf.read_text() == "Setting new\n"


def test_command_without_unless_runs_again_on_every_run(tmp_path: Path) -> None:
    """Without ``unless`` nothing says the host complies: a second run of the same transaction
    runs the command again instead of reporting skipped."""
    counter = tmp_path / "runs"
    txn = Transaction("cmd", (Step("command_exec", {"run": f"sh -c 'echo ran >> {counter}'"}),), "localhost", transactional=False)
    engine = _live_engine()
    assert engine.run(txn).status is Status.COMMITTED
    assert engine.run(txn).status is Status.COMMITTED
    assert counter.read_text() == "ran\nran\n"


def test_check_of_a_command_without_unless_is_not_compliant_and_runs_nothing(tmp_path: Path) -> None:
    """`kensa check` (step_holds) of a command without ``unless`` says not compliant and does not run it."""
    counter = tmp_path / "runs"
    step = Step("command_exec", {"run": f"sh -c 'echo ran >> {counter}'"})
    assert step_holds(step, LocalHost("/"), default_registry()) is False
    assert not counter.exists()


def test_command_with_unless_is_judged_by_unless(tmp_path: Path) -> None:
    """With ``unless`` the step holds when ``unless`` exits 0: before apply that is skipped,
    after apply a still-failing ``unless`` fails the validate phase."""
    engine = _live_engine()
    marker = tmp_path / "done"
    skip = Step("command_exec", {"run": "false", "unless": "true"})
    assert engine.run(Transaction("c", (skip,), "localhost", transactional=False)).status is Status.SKIPPED
    never = Step("command_exec", {"run": "true", "unless": f"test -e {marker}"})
    result = engine.run(Transaction("c", (never,), "localhost", transactional=False))
    assert result.status is Status.PARTIALLY_APPLIED and result.error is not None
    assert "does not hold" in result.error.message
    make = Step("command_exec", {"run": f"touch {marker}", "unless": f"test -e {marker}"})
    assert engine.run(Transaction("c", (make,), "localhost", transactional=False)).status is Status.COMMITTED


def test_two_commands_without_unless_in_one_rule_both_commit(tmp_path: Path) -> None:
    """Each command_exec step is judged by its own run: two of them in one rule commit, each ran once."""
    first, second = tmp_path / "first", tmp_path / "second"
    steps = (
        Step("command_exec", {"run": f"sh -c 'echo ran >> {first}'"}),
        Step("command_exec", {"run": f"sh -c 'echo ran >> {second}'"}),
    )
    result = _live_engine().run(Transaction("two", steps, "localhost", transactional=False))
    assert result.status is Status.COMMITTED, result.error
    assert first.read_text() == second.read_text() == "ran\n"


# --- sysctl_set: in a sysctl file the last assignment of a key wins -------------------


@pytest.fixture
def sysctl_root(tmp_path: Path) -> Path:
    """A target root with a runtime value for vm.swappiness (a plain file, as in an image)."""
    root = tmp_path / "root"
    (root / "proc/sys/vm").mkdir(parents=True)
    (root / "etc/sysctl.d").mkdir(parents=True)
    (root / "proc/sys/vm/swappiness").write_text("10\n")
    return root


PERSIST = "/etc/sysctl.d/90-tuning.conf"


def _sysctl(root: Path, text: str) -> Status:
    (root / PERSIST.lstrip("/")).write_text(text)
    step = Step("sysctl_set", {"key": "vm.swappiness", "value": "10", "persist_file": PERSIST})
    return Engine(default_registry(), hosts=resolve_host).run(Transaction("swap", (step,), str(root))).status


def test_sysctl_set_edits_the_last_assignment_of_a_key_assigned_twice(sysctl_root: Path) -> None:
    """A persist file assigning the key twice, the first right and the last wrong (the last
    wins at boot), is not compliant; remediation rewrites the last assignment and commits."""
    status = _sysctl(sysctl_root, "vm.swappiness = 10\n# later override\nvm.swappiness=60\n")
    assert status is Status.COMMITTED
    assert (sysctl_root / PERSIST.lstrip("/")).read_text() == "vm.swappiness = 10\n# later override\nvm.swappiness = 10\n"


def test_sysctl_set_is_compliant_when_the_last_assignment_holds(sysctl_root: Path) -> None:
    """A first wrong and a last right assignment: the value at boot is right, so the rule is
    skipped and the file is left alone."""
    text = "vm.swappiness = 60\nvm.swappiness = 10\n"
    assert _sysctl(sysctl_root, text) is Status.SKIPPED
    assert (sysctl_root / PERSIST.lstrip("/")).read_text() == text


def test_sysctl_set_knows_a_key_spelt_with_slashes_or_a_dash(sysctl_root: Path) -> None:
    """``vm/swappiness`` and systemd's ``-vm.swappiness`` name the same parameter: a wrong
    last assignment spelt that way is the one rewritten, keeping its spelling."""
    status = _sysctl(sysctl_root, "vm.swappiness = 10\n-vm/swappiness = 60\n")
    assert status is Status.COMMITTED
    assert (sysctl_root / PERSIST.lstrip("/")).read_text() == "vm.swappiness = 10\n-vm/swappiness = 10\n"


# --- audit_rule_set: rules that silence audit itself -----------------------------------

SILENCING = [
    pytest.param("-a exclude,always -F msgtype=USER", id="exclude-USER"),
    pytest.param("-a always,exclude -F msgtype=1005", id="exclude-1005"),
    pytest.param("-a always,exclude -F msgtype>=1000 -F msgtype<=1099", id="exclude-range-over-1005"),
    pytest.param("-a always,exclude -F msgtype!=CRYPTO_KEY_USER", id="exclude-all-but-another"),
    pytest.param("-a always,exclude", id="exclude-everything"),
    pytest.param("-a never,task", id="never-task"),
    pytest.param("-a task,never", id="task-never"),
    pytest.param("-a never,user", id="never-user"),
    pytest.param("-a exit,never -F arch=b64", id="never-every-syscall"),
    # A field that matches every task does not narrow a never rule, and an exclude
    # rule that spares kensa's records still drops what an auditor expects.
    pytest.param("-a never,exit -F auid>=0", id="never-exit-always-true-field"),
    pytest.param("-A never,exit -F auid!=12345", id="never-exit-prepended"),
    pytest.param("-a never,exit -S all -F pid>0", id="never-all-pid"),
    pytest.param("-a always,exclude -F msgtype>=1100", id="exclude-range-above-1005"),
    pytest.param("-a always,exclude -F msgtype=CRYPTO_KEY_USER", id="exclude-another-type"),
    pytest.param("-a never,exit -F arch=b64 -S adjtimex -F auid=unset", id="never-one-syscall"),
    pytest.param("-a never,user -F msgtype!=USER", id="never-user-but-not-USER"),
    pytest.param("-a never,filesystem -F fstype=ext4", id="never-filesystem"),
]

KEEPS_AUDIT = [
    pytest.param("-a always,exit -F arch=b64 -S adjtimex -S settimeofday -k time-change", id="always-exit"),
    pytest.param("-w /etc/sudoers -p wa -k scope", id="watch"),
    pytest.param("-a always,exit -F arch=b64 -S execve -F auid>=1000 -F auid!=unset -k exec", id="always-exit-fields"),
]

RULES_FILE = "etc/audit/rules.d/99-kensa.rules"


@pytest.fixture
def image_root(tmp_path: Path) -> Path:
    """A target root that is not the live host: audit_rule_set only persists rules there."""
    root = tmp_path / "root"
    (root / "etc/audit/rules.d").mkdir(parents=True)
    return root


def _audit_run(root: Path, params: dict) -> TransactionResult:
    step = Step("audit_rule_set", params)
    return Engine(default_registry(), hosts=resolve_host).run(Transaction("audit", (step,), str(root)))


@pytest.mark.parametrize("line", SILENCING)
def test_a_rule_that_silences_audit_is_refused_and_changes_nothing(image_root: Path, line: str) -> None:
    """audit_rule_set refuses a rule that would silence audit (kensa's own records included),
    naming the rule and the parameter that allows it; nothing is written."""
    result = _audit_run(image_root, {"rule": line})
    assert result.status is Status.ERRORED and result.host_unchanged
    assert result.error is not None
    assert repr(line) in result.error.message and "allow_silencing: true" in result.error.message
    assert not (image_root / RULES_FILE).exists()
    host = LocalHost(str(image_root))
    with pytest.raises(ParamError, match="would silence audit"):
        AuditRuleSet().apply(host, {"rule": line}, None)
    assert not (image_root / RULES_FILE).exists()


@pytest.mark.parametrize("line", SILENCING)
def test_a_silencing_rule_with_allow_silencing_is_applied(image_root: Path, line: str) -> None:
    """With ``allow_silencing: true`` the step means it: the rule is persisted and commits."""
    result = _audit_run(image_root, {"rule": line, "allow_silencing": True})
    assert result.status is Status.COMMITTED, result.error
    assert (image_root / RULES_FILE).read_text() == line + "\n"


@pytest.mark.parametrize("line", KEEPS_AUDIT)
def test_exclusions_that_keep_kensas_records_are_accepted(image_root: Path, line: str) -> None:
    """Rules that add auditing (always on the exit list, watches) are not silencing."""
    assert silencing_reason(line, AUDIT_USER) is None
    assert _audit_run(image_root, {"rule": line}).status is Status.COMMITTED


def test_allow_silencing_must_be_a_boolean(image_root: Path) -> None:
    """``allow_silencing: "yes"`` is a clear error, not a truthy string: nothing is written."""
    result = _audit_run(image_root, {"rule": "-a never,task", "allow_silencing": "yes"})
    assert result.status is Status.ERRORED and result.error is not None
    assert "allow_silencing must be true or false" in result.error.message
    assert not (image_root / RULES_FILE).exists()


def _rule_file(rule: str, extra: str = "") -> str:
    return (
        "id: r\ntitle: t\nseverity: low\nimplementations:\n"
        f"  - default: true\n    remediation: {{mechanism: audit_rule_set, rule: '{rule}'{extra}}}\n"
    )


def test_the_loader_knows_allow_silencing_and_checks_its_type() -> None:
    """A rule file may set ``allow_silencing: true`` (the step carries it); a non-boolean is a RuleError."""
    rule = parse_rule(_rule_file("-a never,task", ", allow_silencing: true"))
    impl = rule.implementations[0]
    assert impl.supported and impl.steps[0].params["allow_silencing"] is True
    with pytest.raises(RuleError, match="allow_silencing"):
        parse_rule(_rule_file("-a never,task", ", allow_silencing: 'yes'"))


@pytest.mark.parametrize("rule", ["-e 0", "-a always,exit -S open -e 0"])
def test_audit_off_is_refused_even_with_allow_silencing(image_root: Path, rule: str) -> None:
    """``-e 0`` turns audit off: it is a control option, refused by the loader and the
    handler whatever allow_silencing says."""
    with pytest.raises(RuleError, match="'-e'"):
        parse_rule(_rule_file(rule, ", allow_silencing: true"))
    result = _audit_run(image_root, {"rule": rule, "allow_silencing": True})
    assert result.status is Status.ERRORED and result.error is not None and "-e" in result.error.message
    assert not (image_root / RULES_FILE).exists()
