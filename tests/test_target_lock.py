"""One writer per target across processes: the cross-process target lock."""

from __future__ import annotations

import contextlib
import json
import os
import stat
import subprocess
import sys
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator, List, Mapping, Optional

import pytest

from conftest import require_root
from kensa.errors import KensaError, TargetLockError, TargetLockTimeout
from kensa import Step, Transaction
from kensa import Engine, default_engine
from kensa.hosts.local import LocalHost
from kensa.model import Phase, PreState, RollbackResult, Status, StepResult
from kensa.hosts.targetlock import SYSTEM_LOCK_DIRECTORY, TargetLocks, target_lock_directory

SRC = str(Path(__file__).resolve().parents[1] / "src")
RULES_PER_PROCESS = 60


def _write_rules(directory: Path, prefix: str, count: int) -> None:
    directory.mkdir()
    for index in range(count):
        key = f"{prefix}Key{index}"
        (directory / f"{prefix.lower()}-{index}.yml").write_text(
            f"id: {prefix.lower()}-key-{index}\n"
            f"title: set {key}\n"
            "severity: low\n"
            "category: system\n"
            "implementations:\n"
            "  - default: true\n"
            "    remediation:\n"
            "      mechanism: config_set\n"
            "      path: /etc/app.conf\n"
            f"      key: {key}\n"
            f'      value: "{index}"\n'
            '      separator: " "\n'
        )


def _kensa(journal: Path, *args: str) -> "subprocess.Popen[str]":
    env = dict(os.environ, PYTHONPATH=SRC)
    return subprocess.Popen(
        [sys.executable, "-m", "kensa", "--journal", str(journal), "--no-audit", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_two_processes_remediating_one_root_lose_no_key(tmp_path: Path) -> None:
    """Two real `kensa remediate` processes with 60 rules each on one root: all 120 keys end in the file.

    Without a cross-process lock each process reads the file, sets its key and
    renames its copy over the other's, so committed keys vanish.
    """
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "app.conf").write_text("# app\n")
    journal = tmp_path / "journal.db"
    _write_rules(tmp_path / "a", "A", RULES_PER_PROCESS)
    _write_rules(tmp_path / "b", "B", RULES_PER_PROCESS)
    procs = [
        _kensa(journal, "remediate", str(tmp_path / name), "--root", str(root), "--json") for name in ("a", "b")
    ]
    outputs: List[str] = []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            pytest.fail("a kensa remediate process did not finish")
        assert out, err
        outputs.append(out)
    statuses = Counter(item["status"] for out in outputs for item in json.loads(out)["results"])
    assert statuses == {"committed": 2 * RULES_PER_PROCESS}
    assert [proc.returncode for proc in procs] == [0, 0]
    text = (root / "etc" / "app.conf").read_text()
    missing = [
        f"{prefix}Key{index}"
        for prefix in ("A", "B")
        for index in range(RULES_PER_PROCESS)
        if f"{prefix}Key{index} {index}\n" not in text
    ]
    assert not missing, f"{len(missing)} committed keys are not in the file: {missing[:5]}"


HOLDER = """
import sys
from kensa.hosts.targetlock import TargetLocks
identity = sys.argv[3] if len(sys.argv) > 3 else None
with TargetLocks(sys.argv[1]).hold(sys.argv[2], identity):
    print("held", flush=True)
    sys.stdin.read()
"""


@contextmanager
def _held_by_other_process(directory: Path, key: str, identity: Optional[str] = None) -> Iterator[int]:
    """Hold the target lock of ``key`` in a real second process; yields its pid."""
    args = [sys.executable, "-c", HOLDER, str(directory), key] + ([identity] if identity else [])
    proc = subprocess.Popen(
        args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=SRC)
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "held\n"
        yield proc.pid
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(30)


def _conf_step(value: str) -> Step:
    return Step("config_set", {"path": "/etc/app.conf", "key": "Setting", "value": value, "separator": " "})


def _engine(tmp_path: Path, timeout: float) -> Engine:
    engine = default_engine(str(tmp_path / "journal.db"), audit=False, target_lock_timeout=timeout)
    assert isinstance(engine.target_lock, TargetLocks)
    return engine


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "app.conf").write_text("Setting old\n")
    return root


def test_run_waits_bounded_and_names_the_host_and_the_holder_pid(tmp_path: Path, root: Path) -> None:
    """A run on a target another process holds ends errored (in preflight, journaled) after the
    timeout, naming the host and the holder's pid, and changes nothing; the batch goes on."""
    engine = _engine(tmp_path, timeout=0.2)
    locks = engine.target_lock
    assert isinstance(locks, TargetLocks)
    other = tmp_path / "other"
    (other / "etc").mkdir(parents=True)
    txns = [Transaction("r", (_conf_step("new"),), str(root)), Transaction("o", (_conf_step("new"),), str(other))]
    with _held_by_other_process(locks.directory, str(root), LocalHost(str(root)).identity) as pid:
        busy, free = engine.run_many(txns)
    assert busy.status is Status.ERRORED and busy.host_unchanged and busy.error is not None
    assert busy.error.type == TargetLockTimeout.__name__ and busy.error.phase is Phase.PREFLIGHT
    message = busy.error.message
    assert f"pid {pid}" in message and repr(str(root)) in message and "nothing was changed" in message
    assert (root / "etc" / "app.conf").read_text() == "Setting old\n"
    assert free.status is Status.COMMITTED
    assert engine.journal is not None
    journaled = engine.journal.get(busy.txn_id).result
    assert journaled is not None and (journaled.status, journaled.error) == (busy.status, busy.error)
    assert engine.run(Transaction("r", (_conf_step("new"),), str(root))).status is Status.COMMITTED


def test_target_lock_timeout_is_a_kensa_timeout_error(tmp_path: Path) -> None:
    """TargetLocks.hold raises TargetLockTimeout (a KensaError and a TimeoutError) after its timeout."""
    locks = TargetLocks(tmp_path / "locks", timeout=0)
    with _held_by_other_process(locks.directory, "/srv/r") as pid:
        with pytest.raises(TargetLockTimeout, match=f"pid {pid}") as caught:
            with locks.hold("/srv/r"):
                pass
    assert isinstance(caught.value, KensaError) and isinstance(caught.value, TimeoutError)


def test_rollback_by_id_takes_the_target_lock(tmp_path: Path, root: Path) -> None:
    """`rollback TXN` while another process holds the target's lock is refused after the
    timeout; the committed change stays."""
    engine = _engine(tmp_path, timeout=0.2)
    result = engine.run(Transaction("r", (_conf_step("new"),), str(root)))
    assert result.status is Status.COMMITTED
    assert isinstance(engine.target_lock, TargetLocks)
    with _held_by_other_process(engine.target_lock.directory, str(root), LocalHost(str(root)).identity):
        with pytest.raises(TargetLockTimeout):
            engine.rollback(result.txn_id)
    assert (root / "etc" / "app.conf").read_text() == "Setting new\n"


class FailThenExitInRollback:
    """Fails its apply; its rollback raises SystemExit (leaving the transaction interrupted) once."""

    name = "fail_then_exit"
    capturable = True

    def __init__(self, exit_in_rollback: bool) -> None:
        self.exit_in_rollback = exit_in_rollback

    def capture(self, host: Any, params: Mapping[str, Any]) -> PreState:
        return PreState(self.name, params, {})

    def apply(self, host: Any, params: Mapping[str, Any], pre: Optional[PreState]) -> StepResult:
        return StepResult(self.name, ok=False, detail="fails on purpose")

    def validate(self, host: Any, params: Mapping[str, Any]) -> bool:
        return False

    def rollback(self, host: Any, pre: PreState) -> RollbackResult:
        if self.exit_in_rollback:
            raise SystemExit(9)
        return RollbackResult(self.name, ok=True)


def _interrupt(tmp_path: Path, root: Path, rule: str = "r") -> None:
    """Leave a transaction on ``root`` interrupted in the journal (its process exits in rollback)."""
    engine = _engine(tmp_path, timeout=0.2)
    engine.registry.register(FailThenExitInRollback(exit_in_rollback=True))
    with pytest.raises(SystemExit):
        engine.run(Transaction(rule, (_conf_step("new"), Step("fail_then_exit", {})), str(root)))


def test_recovery_takes_the_target_lock(tmp_path: Path, root: Path) -> None:
    """Recovery of an interrupted transaction while another process holds the target's lock
    gives up on it after the timeout: errored, naming the holder, nothing restored, still
    interrupted. Once free, recovery runs."""
    _interrupt(tmp_path, root)
    assert (root / "etc" / "app.conf").read_text() == "Setting new\n"
    fresh = _engine(tmp_path, timeout=0.2)
    fresh.registry.register(FailThenExitInRollback(exit_in_rollback=False))
    assert isinstance(fresh.target_lock, TargetLocks)
    with _held_by_other_process(fresh.target_lock.directory, str(root), LocalHost(str(root)).identity) as pid:
        [busy] = fresh.recover()
    assert busy.status is Status.ERRORED and not busy.host_unchanged
    assert busy.error is not None and busy.error.type == "TargetLockTimeout" and f"pid {pid}" in busy.error.message
    assert "stays interrupted" in busy.error.message
    assert (root / "etc" / "app.conf").read_text() == "Setting new\n"
    assert [r.status for r in fresh.recover()] == [Status.RECOVERED]
    assert (root / "etc" / "app.conf").read_text() == "Setting old\n"


def test_a_busy_target_does_not_stop_the_recovery_of_the_others(tmp_path: Path) -> None:
    """Interrupted transactions on two targets, one held by another process past the timeout:
    the other target is recovered; the busy one's entries (a newer and an older) are errored and
    stay interrupted, the older one not restored before the newer (and not waited for again)."""
    roots = []
    for name in ("busy", "free"):
        tree = tmp_path / name
        (tree / "etc").mkdir(parents=True)
        (tree / "etc" / "app.conf").write_text("Setting old\n")
        roots.append(tree)
    busy_root, free_root = roots
    _interrupt(tmp_path, busy_root, "older")
    _interrupt(tmp_path, free_root, "free")
    _interrupt(tmp_path, busy_root, "newer")
    fresh = _engine(tmp_path, timeout=0.2)
    fresh.registry.register(FailThenExitInRollback(exit_in_rollback=False))
    assert isinstance(fresh.target_lock, TargetLocks)
    with _held_by_other_process(fresh.target_lock.directory, str(busy_root), LocalHost(str(busy_root)).identity):
        results = {r.rule: r for r in fresh.recover()}
    assert results["free"].status is Status.RECOVERED
    assert (free_root / "etc" / "app.conf").read_text() == "Setting old\n"
    for rule in ("newer", "older"):
        assert results[rule].status is Status.ERRORED and results[rule].error is not None, results[rule]
        assert results[rule].error.type == "TargetLockTimeout"
    assert "a newer interrupted transaction" in results["older"].error.message  # type: ignore[union-attr]
    assert (busy_root / "etc" / "app.conf").read_text() == "Setting new\n"
    assert sorted(r.rule for r in fresh.recover()) == ["newer", "older"]
    assert (busy_root / "etc" / "app.conf").read_text() == "Setting old\n"


class Inert:
    """A capturable step that changes nothing and always holds after apply."""

    name = "inert"
    capturable = True

    def capture(self, host: Any, params: Mapping[str, Any]) -> PreState:
        return PreState(self.name, params, {})

    def apply(self, host: Any, params: Mapping[str, Any], pre: Optional[PreState]) -> StepResult:
        return StepResult(self.name, ok=True)

    def validate(self, host: Any, params: Mapping[str, Any]) -> bool:
        return False

    def rollback(self, host: Any, pre: PreState) -> RollbackResult:
        return RollbackResult(self.name, ok=True)


def test_the_lock_follows_the_host_objects_identity(tmp_path: Path) -> None:
    """Two host keys whose host objects share one ``identity`` share one lock: a run on the
    second key waits for the process holding the first's."""
    locks = TargetLocks(tmp_path / "locks", timeout=0.2)
    engine = Engine([Inert()], hosts=lambda key: SimpleNamespace(identity="same-tree"), target_lock=locks)
    assert locks.path_for("/a", "same-tree") == locks.path_for("/b", "same-tree") != locks.path_for("/a")
    with _held_by_other_process(locks.directory, "/a", "same-tree"):
        busy = engine.run(Transaction("r", (Step("inert", {}),), "/b"))
        assert busy.status is Status.ERRORED and busy.error is not None
        assert busy.error.type == TargetLockTimeout.__name__
        result = Engine([Inert()], target_lock=locks).run(Transaction("r", (Step("inert", {}),), "/c"))
    assert result.status is Status.ROLLED_BACK  # another target is not blocked (its validate never holds)


def test_a_symlink_planted_at_the_lock_path_is_not_followed(tmp_path: Path) -> None:
    """A symlink at a target's lock path is refused with TargetLockError; its target is not created."""
    locks = TargetLocks(tmp_path / "locks")
    (tmp_path / "locks").mkdir(mode=0o700)
    victim = tmp_path / "victim"
    locks.path_for("/srv/r").symlink_to(victim)
    with pytest.raises(TargetLockError, match="cannot open it"):
        with locks.hold("/srv/r"):
            pass
    assert not victim.exists()


def test_a_lock_directory_that_is_not_private_is_refused(tmp_path: Path) -> None:
    """A lock directory others can write, or a symlink in its place, is refused naming it."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(TargetLockError, match="mode 0700"):
        with TargetLocks(shared).hold("/srv/r"):
            pass
    assert not list(shared.iterdir())
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(TargetLockError, match=str(tmp_path / "link")):
        with TargetLocks(tmp_path / "link").hold("/srv/r"):
            pass
    assert not list(real.iterdir())


def test_a_users_target_locks_are_private_next_to_the_journal(tmp_path: Path, root: Path) -> None:
    """Outside root, the lock directory is ``<journal>.targets`` with mode 0700, and a
    symlink to the journal shares it."""
    (tmp_path / "link.db").symlink_to(tmp_path / "journal.db")
    directory = target_lock_directory(tmp_path / "journal.db", system=False)
    assert directory == tmp_path / "journal.db.targets"
    assert target_lock_directory(tmp_path / "link.db", system=False) == directory
    with TargetLocks(directory, timeout=1).hold(str(root)):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700


def test_roots_processes_with_different_journals_share_one_lock_per_target(tmp_path: Path, root: Path) -> None:
    """As root, every journal uses the machine's lock directory: a target held by another
    process through one journal's engine is waited for by an engine with another journal."""
    require_root("the machine-wide lock directory is root's")
    first = default_engine(str(tmp_path / "first.db"), audit=False, target_lock_timeout=0.2)
    second = default_engine(str(tmp_path / "second.db"), audit=False, target_lock_timeout=0.2)
    assert isinstance(first.target_lock, TargetLocks) and isinstance(second.target_lock, TargetLocks)
    assert first.target_lock.directory == second.target_lock.directory == SYSTEM_LOCK_DIRECTORY
    with _held_by_other_process(first.target_lock.directory, str(root), LocalHost(str(root)).identity):
        busy = second.run(Transaction("r", (_conf_step("new"),), str(root)))
    assert busy.status is Status.ERRORED and busy.error is not None
    assert busy.error.type == TargetLockTimeout.__name__
    assert (root / "etc" / "app.conf").read_text() == "Setting old\n"
    assert stat.S_IMODE(SYSTEM_LOCK_DIRECTORY.stat().st_mode) == 0o700


def test_a_child_forked_inside_a_hold_neither_keeps_nor_double_closes_the_lock(tmp_path: Path) -> None:
    """Forked inside ``hold``: the child does not keep the parent's lock, and when the child
    leaves that ``with`` it closes nothing (not a lock it took since, which may reuse the
    descriptor's number); the parent's release frees the target for other processes."""
    locks = TargetLocks(tmp_path / "locks", timeout=0)
    inner = contextlib.ExitStack()
    child = False
    with locks.hold("/srv/r"):
        pid = os.fork()
        child = pid == 0
        if child:
            try:
                inner.enter_context(locks.hold("/srv/other"))
            except BaseException:
                os._exit(2)
    if child:
        code = 3
        try:
            with TargetLocks(tmp_path / "locks", timeout=0).hold("/srv/other"):
                code = 4  # the outer with released the child's own later lock
        except TargetLockTimeout:
            code = 0
        except BaseException:
            code = 5
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    with TargetLocks(tmp_path / "locks", timeout=0).hold("/srv/r"):
        pass  # free at once: neither the parent nor the exited child holds it


def test_kensa_remediate_holds_the_root_for_its_run_and_says_when_another_process_keeps_it(
        tmp_path: Path, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """kensa remediate --root holds the target for its whole run (its transactions and the restarts
    they ask for at the end): when another process keeps the lock past the timeout, every rule that
    would run is reported errored naming the holder's pid, nothing is changed and the exit code is 1."""
    import io

    from kensa.cli.main import main

    require_root("root's target locks live in /run/kensa/targets")
    _write_rules(tmp_path / "rules", "C", 3)
    monkeypatch.setattr("kensa.hosts.targetlock.DEFAULT_TIMEOUT", 0.3)
    out = io.StringIO()
    with _held_by_other_process(SYSTEM_LOCK_DIRECTORY, str(root), LocalHost(str(root)).identity) as pid:
        code = main(["--journal", str(tmp_path / "j.db"), "--no-audit", "remediate", str(tmp_path / "rules"),
                     "--root", str(root), "--json"], out=out)
    found = json.loads(out.getvalue())
    assert code == 1 and found["results"] == [] and found["notified"] == []
    assert sorted(row["rule"] for row in found["unsupported"]) == ["c-key-0", "c-key-1", "c-key-2"]
    assert all(row["status"] == "errored" and f"pid {pid}" in row["detail"] for row in found["unsupported"])
    assert (root / "etc" / "app.conf").read_text() == "Setting old\n"
