"""Recovery of interrupted transactions, rollback by id, the run/recovery lock, journal costs.

Real handlers in a temporary root with a real SQLite journal. An interrupted
transaction is made in-process by a journal whose ``finish`` raises a
BaseException: the host is changed and the journal entry has no result, exactly
what a kill just before the terminal write leaves (tests/test_crash.py kills
real processes at every point).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import pytest

from conftest import tmpfs
from conftest import snapshot_tree as snapshot
from kensa.errors import JournalEntryNotFound, JournalError, JournalLockTimeout, RollbackRefusedError
from kensa import default_engine
from kensa.engine import Engine, Handler
from kensa.handlers import default_registry
from kensa.handlers.file_content import FileContent
from kensa.hosts.local import LocalHost, resolve_host
from kensa.journal import JournalLock, SqliteJournal
from kensa.model import (
    PreState,
    RollbackResult,
    Status,
    Step,
    StepResult,
    Transaction,
    TransactionResult,
)



def make_tree(base: Path) -> Path:
    root = base / "root"
    files = {
        "etc/motd": b"welcome\n",
        "etc/ssh/sshd_config": b"Port 22\nPermitRootLogin yes\n",
        "proc/sys/net/ipv4/ip_forward": b"1\n",
    }
    (root / "etc/sysctl.d").mkdir(parents=True)
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        path.chmod(0o644)
        os.setxattr(path, "user.kensa-test", rel.encode())
    return root




@pytest.fixture
def root(tmp_path: Path) -> Path:
    return make_tree(tmp_path)


@pytest.fixture
def journal_path(tmp_path: Path) -> Path:
    return tmp_path / "journal.db"


def motd(text: str) -> Step:
    return Step("file_content", {"path": "/etc/motd", "content": text})


def sshd(key: str, value: str) -> Step:
    return Step("config_set", {"path": "/etc/ssh/sshd_config", "key": key, "value": value, "separator": " "})


FORWARD_OFF = Step("sysctl_set", {"key": "net.ipv4.ip_forward", "value": "0"})


def txn_on(root: Path, *steps: Step, transactional: bool = True) -> Transaction:
    return Transaction("rule-" + steps[0].mechanism, steps, host=str(root), transactional=transactional)


class Records:
    """An audit emitter that keeps (txn, phase, ok) in order."""

    def __init__(self) -> None:
        self.seen: List[Tuple[str, str, bool]] = []

    def transaction(self, txn: str, rule: str, host: str) -> "Records.Recorder":
        return Records.Recorder(self.seen, txn)

    class Recorder:
        def __init__(self, seen: List[Tuple[str, str, bool]], txn: str) -> None:
            self.seen, self.txn = seen, txn

        def emit(self, phase: str, ok: bool) -> None:
            self.seen.append((self.txn, phase, ok))

    def phases(self, txn_id: str) -> List[Tuple[str, bool]]:
        return [(phase, ok) for txn, phase, ok in self.seen if txn == txn_id]


class Crash(BaseException):
    """Stands for the process dying."""


class DiesBeforeFinish(SqliteJournal):
    def finish(self, result: TransactionResult) -> None:
        raise Crash


def interrupt(journal_path: Path, txn: Transaction, registry: Optional[Mapping[str, Handler]] = None) -> str:
    """Run ``txn`` to the end but never record its result, as if killed before the terminal write."""
    with DiesBeforeFinish(journal_path) as journal:
        engine = Engine(registry or default_registry(), journal=journal, hosts=resolve_host)
        with pytest.raises(Crash):
            engine.run(txn)
    return txn.id


@contextlib.contextmanager
def engine_on(journal_path: Path, registry: Optional[Mapping[str, Handler]] = None, **kwargs: Any) -> Iterator[Engine]:
    with SqliteJournal(journal_path) as journal:
        yield Engine(registry or default_registry(), journal=journal, hosts=resolve_host, **kwargs)


class Wrapped:
    """A real handler with one method replaced."""

    def __init__(self, inner: Handler, **replaced: Any) -> None:
        self.inner, self.name, self.capturable = inner, inner.name, inner.capturable
        self.replaced = replaced

    def __getattr__(self, name: str) -> Any:
        return self.replaced.get(name, getattr(self.inner, name))

    def capture(self, host: Any, params: Mapping[str, Any]) -> PreState:
        return self.__getattr__("capture")(host, params)  # type: ignore[no-any-return]

    def apply(self, host: Any, params: Mapping[str, Any], pre: Optional[PreState]) -> StepResult:
        return self.__getattr__("apply")(host, params, pre)  # type: ignore[no-any-return]

    def validate(self, host: Any, params: Mapping[str, Any]) -> bool:
        return self.__getattr__("validate")(host, params)  # type: ignore[no-any-return]

    def rollback(self, host: Any, pre: PreState) -> RollbackResult:
        return self.__getattr__("rollback")(host, pre)  # type: ignore[no-any-return]


class TouchMarker:
    """Not capturable: writes /marker."""

    name = "touch_marker"
    capturable = False

    def validate(self, host: LocalHost, params: Mapping[str, Any]) -> bool:
        return host.read_file("/marker") is not None

    def apply(self, host: LocalHost, params: Mapping[str, Any], pre: Optional[PreState]) -> StepResult:
        host.write_file("/marker", b"x")
        return StepResult(self.name, ok=True, changed=True)

    def capture(self, host: LocalHost, params: Mapping[str, Any]) -> PreState:
        raise NotImplementedError

    def rollback(self, host: LocalHost, pre: PreState) -> RollbackResult:
        raise NotImplementedError


class StagedFile(FileContent):
    """file_content whose change counts as staged (in effect after a reboot)."""

    name = "staged_file"

    def apply(self, host: LocalHost, params: Mapping[str, Any], pre: Optional[PreState]) -> StepResult:
        return replace(super().apply(host, params, pre), staged=True)


class FailsToApply(FileContent):
    """file_content that writes, then reports failure."""

    name = "fails_to_apply"

    def apply(self, host: LocalHost, params: Mapping[str, Any], pre: Optional[PreState]) -> StepResult:
        return replace(super().apply(host, params, pre), ok=False, detail="would not stick")


def with_extra(*handlers: Any) -> Dict[str, Handler]:
    registry = default_registry()
    registry.update({handler.name: handler for handler in handlers})
    return registry


# --- recovery ------------------------------------------------------------------------


def test_recover_restores_an_interrupted_transaction_and_emits_started_rollback_recovered(root: Path, journal_path: Path) -> None:
    """Recovery restores every step, records recovered, emits started, rollback, recovered; a second recover returns []."""
    before = snapshot(root)
    txn_id = interrupt(journal_path, txn_on(root, motd("hi\n"), sshd("PermitRootLogin", "no"), FORWARD_OFF))
    assert snapshot(root) != before
    records = Records()
    with engine_on(journal_path, audit=records) as engine:
        (result,) = engine.recover()
        assert (result.txn_id, result.status, result.host_unchanged, result.error) == (txn_id, Status.RECOVERED, True, None)
        assert [rb.mechanism for rb in result.rollbacks] == ["sysctl_set", "config_set", "file_content"]
        assert snapshot(root) == before
        assert records.phases(txn_id) == [("started", True), ("rollback", True), ("recovered", True)]
        assert engine.recover() == []
        assert records.phases(txn_id) == [("started", True), ("rollback", True), ("recovered", True)]


def test_recover_restores_the_newest_transaction_first(root: Path, journal_path: Path) -> None:
    """Two interrupted transactions on one file are reversed newest first, leaving the oldest pre-state."""
    before = snapshot(root)
    first = interrupt(journal_path, txn_on(root, motd("first\n")))
    second = interrupt(journal_path, txn_on(root, motd("second\n")))
    with engine_on(journal_path) as engine:
        results = engine.recover()
    assert [(r.txn_id, r.status) for r in results] == [(second, Status.RECOVERED), (first, Status.RECOVERED)]
    assert snapshot(root) == before


def test_recover_withholds_a_step_whose_file_a_later_transaction_changed(root: Path, journal_path: Path) -> None:
    """A step whose file a later committed transaction changed is not restored: rollback_failed names the file and the transaction."""
    interrupted = interrupt(journal_path, txn_on(root, motd("half\n"), FORWARD_OFF))
    records = Records()
    with engine_on(journal_path, audit=records) as engine:
        later = engine.run(txn_on(root, motd("later\n")))
        assert later.status is Status.COMMITTED
        (result,) = engine.recover()
        assert (result.status, result.host_unchanged) == (Status.ROLLBACK_FAILED, False)
        restored, withheld = result.rollbacks  # last step first
        assert restored.ok and not withheld.ok
        assert "/etc/motd" in withheld.detail and later.txn_id in withheld.detail
        assert result.error is not None and "/etc/motd" in result.error.message
        assert (root / "etc/motd").read_bytes() == b"later\n"
        assert (root / "proc/sys/net/ipv4/ip_forward").read_bytes() == b"1\n"
        assert records.phases(interrupted)[-2:] == [("rollback", False), ("rollback_failed", False)]
        assert engine.journal.get(interrupted).result.status is Status.ROLLBACK_FAILED  # type: ignore[union-attr]
        assert engine.recover() == []


def test_recover_reports_a_failed_restore_and_still_tries_every_step(root: Path, journal_path: Path) -> None:
    """One failing rollback makes the recovery rollback_failed; the other steps are still restored."""
    before = snapshot(root)
    txn_id = interrupt(journal_path, txn_on(root, motd("hi\n"), sshd("PermitRootLogin", "no")))
    registry = default_registry()
    broken = RollbackResult("config_set", ok=False, detail="disk on fire")
    registry["config_set"] = Wrapped(
        registry["config_set"], rollback=lambda host, pre: broken, restore=lambda host, pre, assessment, force=False: broken
    )
    with engine_on(journal_path, registry) as engine:
        (result,) = engine.recover()
    assert (result.status, result.host_unchanged) == (Status.ROLLBACK_FAILED, False)
    assert [rb.ok for rb in result.rollbacks] == [False, True]
    assert result.error is not None and "disk on fire" in result.error.message
    assert snapshot(root)["etc/motd"] == before["etc/motd"]
    with engine_on(journal_path) as engine:
        assert engine.journal.get(txn_id).result.status is Status.ROLLBACK_FAILED  # type: ignore[union-attr]


def test_recover_of_a_transaction_with_an_irreversible_step_is_partially_applied(root: Path, journal_path: Path) -> None:
    """A non-capturable step may have run before the interruption: captured steps are restored, the result is partially_applied."""
    registry = with_extra(TouchMarker())
    txn = txn_on(root, motd("hi\n"), Step("touch_marker"), transactional=False)
    interrupt(journal_path, txn, registry)
    with engine_on(journal_path, registry) as engine:
        (result,) = engine.recover()
    assert (result.status, result.host_unchanged) == (Status.PARTIALLY_APPLIED, False)
    assert result.error is not None and "step 2 (touch_marker)" in result.error.message
    assert (root / "etc/motd").read_bytes() == b"welcome\n"
    assert (root / "marker").exists()


def test_recover_that_cannot_start_records_nothing_and_is_retried(root: Path, journal_path: Path) -> None:
    """When the host does not resolve, recovery is errored, the entry stays interrupted, and a later recover restores it."""
    before = snapshot(root)
    txn_id = interrupt(journal_path, txn_on(root, motd("hi\n")))

    def unmounted(key: str) -> Any:
        raise OSError(f"{key} is not mounted")

    records = Records()
    with SqliteJournal(journal_path) as journal:
        (result,) = Engine(default_registry(), journal=journal, hosts=unmounted, audit=records).recover()
        assert (result.status, result.host_unchanged) == (Status.ERRORED, False)
        assert result.error is not None and "is not mounted" in result.error.message and "recover again" in result.error.message
        assert records.phases(txn_id) == [("started", True), ("errored", False)]
        assert [e.txn.id for e in journal.interrupted()] == [txn_id]
    with engine_on(journal_path) as engine:
        assert [r.status for r in engine.recover()] == [Status.RECOVERED]
    assert snapshot(root) == before


def test_recover_and_rollback_need_a_journal() -> None:
    """An engine without a journal refuses recover and rollback with an error that says what to use."""
    engine = Engine(default_registry())
    with pytest.raises(RollbackRefusedError, match="no journal.*SqliteJournal"):
        engine.recover()
    with pytest.raises(RollbackRefusedError, match="no journal"):
        engine.rollback("some-id")


def test_no_journal_refusal_names_a_factory_that_exists() -> None:
    """The refusal of an engine without a journal tells the caller what to use, and every
    kensa function it names can be imported (the advice survives the module layout)."""
    import importlib
    import re

    with pytest.raises(RollbackRefusedError) as refused:
        Engine(default_registry()).recover()
    named = re.findall(r"(kensa(?:\.\w+)+)\(\)", str(refused.value))
    assert named, str(refused.value)
    for dotted in named:
        module, _, attribute = dotted.rpartition(".")
        assert hasattr(importlib.import_module(module), attribute), f"{dotted} named in {refused.value}"


# --- the run/recovery lock ---------------------------------------------------------------


class NoWaitJournal(SqliteJournal):
    """Locks that fail at once instead of waiting; counts lock() calls."""

    locks_made = 0

    def lock(self, *, exclusive: bool = False, timeout: Optional[float] = 30.0) -> JournalLock:
        NoWaitJournal.locks_made += 1
        return super().lock(exclusive=exclusive, timeout=0)


def test_recover_waits_for_running_transactions(root: Path, journal_path: Path) -> None:
    """While a run holds the shared lock recovery cannot take the exclusive one, and changes nothing."""
    txn_id = interrupt(journal_path, txn_on(root, motd("hi\n")))
    with NoWaitJournal(journal_path) as journal:
        with journal.lock(exclusive=False):
            with pytest.raises(JournalLockTimeout, match="exclusive"):
                Engine(default_registry(), journal=journal, hosts=resolve_host).recover()
        assert (root / "etc/motd").read_bytes() == b"hi\n"
        assert [e.txn.id for e in journal.interrupted()] == [txn_id]


def test_a_run_holds_the_shared_lock_and_is_refused_during_recovery(root: Path, journal_path: Path) -> None:
    """During apply the exclusive lock cannot be taken; while recovery holds it, a run raises before changing anything."""
    seen: List[str] = []
    inner = default_registry()["file_content"]

    def apply(host: Any, params: Mapping[str, Any], pre: Optional[PreState]) -> StepResult:
        try:
            JournalLock(journal_path, exclusive=True, timeout=0).acquire()
            seen.append("exclusive taken")
        except JournalLockTimeout:
            seen.append("exclusive refused")
        return inner.apply(host, params, pre)

    registry = default_registry()
    registry["file_content"] = Wrapped(inner, apply=apply)
    with NoWaitJournal(journal_path) as journal:
        engine = Engine(registry, journal=journal, hosts=resolve_host)
        assert engine.run(txn_on(root, motd("hi\n"))).status is Status.COMMITTED
        assert seen == ["exclusive refused"]
        with journal.lock(exclusive=True):
            with pytest.raises(JournalLockTimeout, match="recovery is in progress"):
                engine.run(txn_on(root, motd("other\n")))
        assert (root / "etc/motd").read_bytes() == b"hi\n"


def test_a_batch_takes_the_lock_once_and_pays_at_most_two_commits_per_transaction(tmp_path: Path, journal_path: Path) -> None:
    """run_many over two hosts takes the shared lock once; each transaction calls begin and finish once, each a durable write; concurrent writes may share a commit."""
    roots = [make_tree(tmp_path / "a"), make_tree(tmp_path / "b")]
    txns = [txn_on(r, motd(f"text {i}\n")) for i in range(3) for r in roots]
    calls: List[Tuple[str, str]] = []

    class Counting(NoWaitJournal):
        def begin(self, txn: Transaction, pre_states: Sequence[Optional[PreState]]) -> None:
            calls.append(("begin", txn.id))
            super().begin(txn, pre_states)

        def finish(self, result: TransactionResult) -> None:
            calls.append(("finish", result.txn_id))
            super().finish(result)

    with Counting(journal_path) as journal:
        statements: List[str] = []
        assert journal._conn is not None
        journal._conn.set_trace_callback(statements.append)
        NoWaitJournal.locks_made = 0
        results = Engine(default_registry(), journal=journal, hosts=resolve_host).run_many(txns, workers=2)
        journal._conn.set_trace_callback(None)
    assert [r.status for r in results] == [Status.COMMITTED] * len(txns)
    assert NoWaitJournal.locks_made == 1
    for txn in txns:
        assert [kind for kind, txn_id in calls if txn_id == txn.id] == ["begin", "finish"]
    commits, writes = journal.commit_counts
    assert writes == 2 * len(txns) and commits <= writes
    assert [s for s in statements if s.split()[0] in ("BEGIN", "COMMIT")] == ["BEGIN IMMEDIATE", "COMMIT"] * commits
    assert [s for s in statements if s.startswith("SAVEPOINT")] == ["SAVEPOINT kensa_write"] * writes


# --- rollback by id ---------------------------------------------------------------------


def test_rollback_by_id_restores_the_snapshot_and_is_done_once(root: Path, journal_path: Path) -> None:
    """A committed transaction rolled back by id restores the tree, is recorded, emits started, rollback, rolled_back; a second rollback is refused."""
    before = snapshot(root)
    records = Records()
    with engine_on(journal_path, audit=records) as engine:
        committed = engine.run(txn_on(root, motd("hi\n"), sshd("PermitRootLogin", "no"), FORWARD_OFF))
        assert committed.status is Status.COMMITTED and snapshot(root) != before
        result = engine.rollback(committed.txn_id)
        assert (result.status, result.host_unchanged, result.error) == (Status.ROLLED_BACK, True, None)
        assert snapshot(root) == before
        assert records.phases(committed.txn_id)[-3:] == [("started", True), ("rollback", True), ("rolled_back", True)]
        entry = engine.journal.get(committed.txn_id)  # type: ignore[union-attr]
        assert entry.result.status is Status.COMMITTED and entry.later_rollback.status is Status.ROLLED_BACK
        with pytest.raises(RollbackRefusedError, match=f"{committed.txn_id}.*already rolled back"):
            engine.rollback(committed.txn_id)
        with pytest.raises(RollbackRefusedError, match="already rolled back"):
            engine.rollback(committed.txn_id, force=True)


@pytest.mark.parametrize(
    "drift, named",
    [
        (("etc/motd", b"edited by hand\n"), "/etc/motd"),
        (("proc/sys/net/ipv4/ip_forward", b"2\n"), "net.ipv4.ip_forward"),
    ],
)
def test_rollback_of_a_drifted_host_is_refused_naming_it_and_forced(
    root: Path, journal_path: Path, drift: Tuple[str, bytes], named: str
) -> None:
    """When a step's state no longer holds, rollback is refused naming its path or key and changes nothing; force rolls back."""
    before = snapshot(root)
    with engine_on(journal_path) as engine:
        committed = engine.run(txn_on(root, motd("hi\n"), FORWARD_OFF))
        (root / drift[0]).write_bytes(drift[1])
        drifted = snapshot(root)
        with pytest.raises(RollbackRefusedError, match=f"drifted.*{named}.*--force") as refused:
            engine.rollback(committed.txn_id)
        assert refused.value.drifted == (named,)
        assert snapshot(root) == drifted
        assert engine.journal.get(committed.txn_id).later_rollback is None  # type: ignore[union-attr]
        result = engine.rollback(committed.txn_id, force=True)
    assert (result.status, result.host_unchanged) == (Status.ROLLED_BACK, True)
    assert snapshot(root) == before


def test_rollback_keeps_a_later_transactions_edit_of_the_same_file(root: Path, journal_path: Path) -> None:
    """Rolling back the first of two edits to sshd_config reverts only its own key and keeps the later one; then the second rolls back to the original bytes."""
    before = snapshot(root)
    with engine_on(journal_path) as engine:
        first = engine.run(txn_on(root, sshd("PermitRootLogin", "no")))
        second = engine.run(txn_on(root, sshd("MaxAuthTries", "3")))
        undone = engine.rollback(first.txn_id)
        assert (undone.status, undone.host_unchanged) == (Status.ROLLED_BACK, False)
        assert undone.rollbacks[0].kept and "kept a later change" in undone.rollbacks[0].detail
        assert (root / "etc/ssh/sshd_config").read_bytes() == b"Port 22\nPermitRootLogin yes\nMaxAuthTries 3\n"
        assert engine.rollback(second.txn_id).status is Status.ROLLED_BACK
    assert snapshot(root) == before


def test_rollback_refuses_what_is_not_committed(root: Path, journal_path: Path) -> None:
    """Unknown ids, interrupted, rolled back, skipped and staged transactions are refused with a reason; staged rolls back with force."""
    registry = with_extra(StagedFile(), FailsToApply())
    interrupted = interrupt(journal_path, txn_on(root, motd("hi\n")))
    with engine_on(journal_path, registry) as engine:
        engine.recover()
        with pytest.raises(JournalEntryNotFound, match="no-such-id"):
            engine.rollback("no-such-id")
        with pytest.raises(RollbackRefusedError, match="recovered: it was interrupted"):
            engine.rollback(interrupted)
        failed = engine.run(txn_on(root, Step("fails_to_apply", {"path": "/etc/motd", "content": "x\n"})))
        assert failed.status is Status.ROLLED_BACK
        with pytest.raises(RollbackRefusedError, match="ended as rolled_back"):
            engine.rollback(failed.txn_id, force=True)
        skipped = engine.run(txn_on(root, motd("welcome\n")))
        assert skipped.status is Status.SKIPPED
        with pytest.raises(RollbackRefusedError, match="ended as skipped: the host already complied"):
            engine.rollback(skipped.txn_id)
        staged = engine.run(txn_on(root, Step("staged_file", {"path": "/etc/motd", "content": "next boot\n"})))
        assert staged.status is Status.STAGED
        with pytest.raises(RollbackRefusedError, match="staged.*force"):
            engine.rollback(staged.txn_id)
        assert engine.rollback(staged.txn_id, force=True).status is Status.ROLLED_BACK
    assert (root / "etc/motd").read_bytes() == b"welcome\n"


def test_rollback_of_an_interrupted_transaction_points_to_recover(root: Path, journal_path: Path) -> None:
    """An interrupted transaction is refused by rollback with a pointer to recovery."""
    txn_id = interrupt(journal_path, txn_on(root, motd("hi\n")))
    with engine_on(journal_path) as engine:
        with pytest.raises(RollbackRefusedError, match="interrupted.*kensa recover"):
            engine.rollback(txn_id, force=True)


def test_rollback_of_an_irreversible_step_needs_force_and_is_partially_applied(root: Path, journal_path: Path) -> None:
    """A committed non-transactional rule with a non-capturable step rolls back only with force, as partially_applied."""
    registry = with_extra(TouchMarker())
    with engine_on(journal_path, registry) as engine:
        committed = engine.run(txn_on(root, motd("hi\n"), Step("touch_marker"), transactional=False))
        assert committed.status is Status.COMMITTED
        with pytest.raises(RollbackRefusedError, match=r"step 2 \(touch_marker\) cannot be reversed"):
            engine.rollback(committed.txn_id)
        result = engine.rollback(committed.txn_id, force=True)
    assert (result.status, result.host_unchanged) == (Status.PARTIALLY_APPLIED, False)
    assert (root / "etc/motd").read_bytes() == b"welcome\n"


# --- a journal that cannot be written --------------------------------------------------




def test_default_engine_with_a_journal_on_a_read_only_filesystem_fails_before_any_change(root: Path, tmp_path: Path) -> None:
    """default_engine raises JournalError naming the journal path when its filesystem is read-only; the tree is untouched."""
    before = snapshot(root)
    with tmpfs(tmp_path, "size=64k,ro") as mountpoint:
        path = mountpoint / "journal.db"
        with pytest.raises(JournalError, match=str(path)):
            default_engine(journal_path=str(path), audit=False)
    assert snapshot(root) == before


def test_a_run_with_a_journal_on_a_full_filesystem_is_errored_and_changes_nothing(root: Path, tmp_path: Path) -> None:
    """When the journal cannot record the intent (disk full), the run is errored naming the journal, and the tree is untouched."""
    before = snapshot(root)
    with tmpfs(tmp_path, "size=512k") as mountpoint:
        path = mountpoint / "journal.db"
        with SqliteJournal(path) as journal:
            with journal.lock():
                pass  # the lock file exists before the disk fills
            filler = mountpoint / "filler"
            with open(filler, "wb", buffering=0) as out:
                with contextlib.suppress(OSError):
                    while True:
                        out.write(b"\0" * 4096)
            # The step's parameters are journaled with the intent: too big for what is left.
            big = Step("file_content", {"path": "/etc/motd", "content": "x" * (256 * 1024)})
            result = Engine(default_registry(), journal=journal, hosts=resolve_host).run(txn_on(root, big))
            assert (result.status, result.host_unchanged) == (Status.ERRORED, True)
            assert result.error is not None and str(path) in result.error.message
            assert "nothing was applied" in result.error.message
            assert snapshot(root) == before
            filler.unlink()
            assert journal.interrupted() == []


@pytest.mark.parametrize("already_compliant", [True, False])
def test_a_retried_id_never_overwrites_its_interrupted_entry(tmp_path: Path, already_compliant: bool) -> None:
    """Re-running a crashed transaction's id (new journal object, as after a restart) leaves the
    interrupted entry to recovery, reports errored, and recovery then restores the pre-state."""
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/motd").write_text("old\n")
    path = tmp_path / "journal.db"
    txn = Transaction("r1", (Step("file_content", {"path": "/etc/motd", "content": "new\n"}),), host=str(root))
    crashed = SqliteJournal(path)
    handler = default_registry()["file_content"]
    host = resolve_host(str(root))
    pre = handler.capture(host, txn.steps[0].params)
    crashed.begin(txn, [pre])
    if already_compliant:
        handler.apply(host, txn.steps[0].params, pre)
    crashed.close()

    journal = SqliteJournal(path)
    engine = Engine(default_registry(), journal=journal, hosts=resolve_host)
    result = engine.run(txn)
    assert result.status is Status.ERRORED
    assert "kensa recover" in (result.error.message if result.error else "")
    assert [e.txn.id for e in journal.interrupted()] == [txn.id]
    recovered = engine.recover()
    assert [r.status for r in recovered] == [Status.RECOVERED]
    assert (root / "etc/motd").read_text() == "old\n"


def test_spellings_of_one_root_are_one_host(tmp_path: Path) -> None:
    """A later commit on the same tree spelled differently ("root/", a symlink) is seen by recovery:
    the interrupted transaction's restore is withheld instead of silently undoing that commit."""
    from kensa.hosts.local import canonical_host_key

    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/motd").write_text("v0\n")
    (tmp_path / "alias").symlink_to(root)
    journal = SqliteJournal(tmp_path / "journal.db")
    engine = Engine(default_registry(), journal=journal, hosts=resolve_host, host_key=canonical_host_key)

    def motd(content: str, host: str) -> Transaction:
        return Transaction("r", (Step("file_content", {"path": "/etc/motd", "content": content}),), host=host)

    t1 = motd("v1\n", str(root))
    handler, host = default_registry()["file_content"], resolve_host(str(root))
    pre = handler.capture(host, t1.steps[0].params)
    journal.begin(t1, [pre])  # intent journaled, then the process died mid-apply
    handler.apply(host, t1.steps[0].params, pre)

    for content, spelling in (("v2\n", str(root) + "/"), ("v3\n", str(tmp_path / "alias") + "/./")):
        result = engine.run(motd(content, spelling))
        assert result.status is Status.COMMITTED and result.host == str(root)
    [recovered] = engine.recover()
    assert recovered.status is Status.ROLLBACK_FAILED and not recovered.host_unchanged
    assert (root / "etc/motd").read_text() == "v3\n"
