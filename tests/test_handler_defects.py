"""Handler semantics: command_exec judged by its exit status, sysctl_set's last assignment wins,
audit_rule_set refuses rules that silence audit itself."""

from __future__ import annotations

from pathlib import Path

import pytest

from kensa import Step, Transaction
from kensa.checks import step_holds
from kensa.engine import Engine
from kensa.handlers import default_registry
from kensa.host import LocalHost, resolve_host
from kensa.model import Status


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
        Step("config_set", {"path": str(conf), "key": "Setting", "value": "new"}),
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
