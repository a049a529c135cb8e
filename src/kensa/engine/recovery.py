"""Crash recovery and rollback by id: journaled pre-states put back on the host.

:meth:`Engine.recover <kensa.engine.Engine.recover>` and
:meth:`Engine.rollback <kensa.engine.Engine.rollback>` delegate here. This
module talks to the engine's journal object only (no sqlite), to the engine's
registry for the handlers, and to the engine's :class:`~kensa.engine.locks.Locks`
(host resolution, host and run locks) and :class:`~kensa.engine.trail.Trail`
(audit and events), so those behave exactly as in a run; restores and their
outcome are :mod:`kensa.engine.restore`'s, shared with a run's own rollback.

Recovery (:func:`recover_interrupted`)
    Under the journal's exclusive lock (runs hold it shared), every
    interrupted transaction (intent journaled, no terminal result) is reversed,
    newest first, so that where two touched the same file the oldest pre-state
    is the one left. Every captured step is restored, last step first: a step
    that never ran gets back the state it already has, so reversing all of
    them is right wherever the run stopped. The outcome, recorded with
    ``journal.record_recovery``:

    - ``recovered`` (``host_unchanged``): every restore verified by read-back;
    - ``partially_applied``: every restore verified, but the transaction has a
      step that cannot be reversed (no pre-state) and may have run before the
      interruption: nobody can tell, so the host is not called unchanged;
    - ``rollback_failed``: a restore failed or was withheld (below);
    - ``errored``, recording nothing (the entry stays interrupted): the host could
      not be reached, or its target lock not taken (another process holds it). Then
      that host's older entries are not restored either (the newer goes first),
      while the other hosts' are recovered.

    A step whose handler can assess itself (:class:`~kensa.engine.Restorable`,
    every built-in capturable mechanism) is restored only when what is there now
    is exactly what kensa would have left (the state it journaled having
    written); when it is already in its pre-state nothing is written; anything
    else was changed by someone after the interruption and is withheld, naming
    the path: an operator must look. Temporary files a killed write left next to
    the step's files are removed.

    A step is withheld, not restored, when a later journaled transaction on the
    same host that may have changed the host (committed, staged, partially
    applied, rollback failed, or itself still interrupted) touched one of the
    step's files: restoring would silently undo that transaction. The result
    says which transaction, and the operator decides.

    When recovery cannot start on a transaction (its host does not resolve, a
    mechanism has no handler) nothing is restored and nothing recorded: the
    result is ``errored`` (``host_unchanged`` False, it may be half changed)
    and the entry stays interrupted, so the next recovery tries again. The
    same holds when a remote host's connection is lost during the recovery
    (:data:`~kensa.engine.restore.CONNECTION_LOST`): what was restored stays
    restored, and the next recovery assesses the rest again.
    Otherwise recovery is idempotent: a second call finds nothing and returns [].

Rollback by id (:func:`rollback_committed`)
    Reverses a committed transaction from its journaled pre-states, holding
    the shared run lock and the engine's lock for the host like a run.
    Each step is first assessed against its pre-state and the state it wrote
    (:class:`~kensa.model.Drift`): as kensa left it, the exact pre-state comes
    back; changed since only outside the step's own change (its key's line, its
    appended line, the mode bits it set), only that change is reverted and the
    later edits are kept (the result is ``rolled_back`` but not
    ``host_unchanged``, and each rollback names what it kept); a change to the
    step's own part is drift. Refused (:class:`~kensa.engine.RollbackRefusedError`,
    nothing changed) when the transaction is not committed, was rolled back
    already, or the host drifted. For a handler that cannot assess itself, drift
    is a step's ``validate()`` no longer holding, or a later journaled
    transaction that may have changed the host touching one of its files. The
    refusal names the drifted paths (a sysctl by its key).
    ``force=True`` restores the pre-state anyway and each rollback says what it
    overwrote; it also lets a staged transaction (which
    cannot be checked before a reboot) and one with a step that cannot be
    reversed (the result is then ``partially_applied``) be rolled back. The
    outcome, ``rolled_back`` (``host_unchanged``) or ``rollback_failed``, is
    recorded with ``journal.record_rollback``; the original result is kept.

    No intent is journaled before a rollback by id: one interrupted midway
    leaves the transaction committed and the host half restored, which the
    drift check then reports; ``force=True`` finishes it.

Audit records (and events), under the original transaction's id, so one
search on the id shows the whole life of a change:

- recovery: ``started``, ``rollback``, ``recovered`` | ``partially_applied``
  | ``rollback_failed``; recovery that cannot start: ``started``, ``errored``.
- rollback by id: ``started``, ``rollback``, ``rolled_back`` | ``partially_applied``
  | ``rollback_failed``; a refusal emits nothing.

``rollback`` has ``res=success`` when every restore verified; the terminal
record when the host is back in its pre-state (``host_unchanged``). When the
journal cannot record the outcome, the result returned is ``errored`` (phase
``commit``) with the real ``host_unchanged``, and that is what is emitted.
"""

from __future__ import annotations

import contextlib
import posixpath
import time
from typing import Any, Dict, FrozenSet, List, Mapping, Optional, Sequence, Set, Tuple, Union, cast

from kensa.engine.locks import Locks
from kensa.engine.protocols import Handler, RecoveryJournal, Restorable
from kensa.engine.registry import Registry, host_handlers
from kensa.engine.restore import CONNECTION_LOST, NOT_REACHED, describe, journaled, restore_steps, rollback_outcome, step_name
from kensa.engine.trail import Trail
from kensa.errors import KensaError, RollbackRefusedError
from kensa.model import (
    Assessment, Drift, JournalEntry, Phase, PreState, Status, Step, Transaction, TransactionError, TransactionResult,
)

__all__ = ["RecoveryJournal", "recover_interrupted", "rollback_committed"]

_perf = time.perf_counter


_NEEDED = ("interrupted", "get", "history", "record_recovery", "record_rollback")


def _journal_of(journal: Any, action: str) -> RecoveryJournal:
    if journal is None:
        raise RollbackRefusedError(
            f"cannot {action}: this engine has no journal, so no pre-state was recorded; "
            "use kensa.default_engine() or Engine(journal=SqliteJournal(path))"
        )
    missing = [name for name in _NEEDED if not callable(getattr(journal, name, None))]
    if missing:
        raise RollbackRefusedError(
            f"cannot {action}: the engine's journal {journal!r} has no {', '.join(missing)}; "
            "use a kensa.journal.SqliteJournal"
        )
    return cast(RecoveryJournal, journal)


# --- what a step touches -------------------------------------------------------------


def _paths_in(value: Any, found: Set[str]) -> None:
    # Captured file states name their file under "path" (sysctl_set also under
    # "runtime_path"), however deep a handler nests them; "/etc//x" is "/etc/x".
    if isinstance(value, Mapping):
        for key, item in value.items():
            if isinstance(item, str) and isinstance(key, str) and (key == "path" or key.endswith("_path")):
                found.add(posixpath.normpath(item))
            else:
                _paths_in(item, found)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _paths_in(item, found)


def _files(step: Step, pre: Optional[PreState]) -> FrozenSet[str]:
    """The files a step may change: its ``path`` and every path its pre-state captured."""
    found: Set[str] = set()
    _paths_in({"path": step.params.get("path")}, found)
    if pre is not None:
        _paths_in(pre.data, found)
    return frozenset(found)


def _name(step: Step) -> str:
    """A step's target as the operator knows it: its path, else its key (a sysctl), else its audit rule."""
    for param in ("path", "key", "persist_file", "rule"):
        value = step.params.get(param)
        if isinstance(value, (list, tuple)):
            value = "; ".join(str(line) for line in value)
        if isinstance(value, str) and value:
            return value
    return step.mechanism


def _conflicting(step: Step, assessment: Assessment) -> List[str]:
    """The names a refusal gives a conflicting step: its :func:`_name`, or, for a step whose
    parameters name no file (a PAM service, a list of files), the files in conflict."""
    if _name(step) != step.mechanism:
        return [_name(step)]
    paths = [plan.path for plan in assessment.plan
             if getattr(plan, "drift", None) is Drift.CONFLICT and isinstance(getattr(plan, "path", None), str)]
    return paths or [step.mechanism]


def _not_reached(view: Any, entry: JournalEntry, handlers: Sequence[Optional[Handler]], index: int) -> bool:
    """True when an earlier step of this transaction over the same files is still in its
    pre-state: the interruption came before that step, so before step ``index`` too."""
    mine = _files(entry.txn.steps[index], entry.pre_states[index])
    for earlier in range(index - 1, -1, -1):
        pre, handler = entry.pre_states[earlier], handlers[earlier]
        if pre is None or not isinstance(handler, Restorable) or not mine <= _files(entry.txn.steps[earlier], pre):
            continue
        try:
            return handler.assess(view, pre).drift is Drift.AT_PRE
        except CONNECTION_LOST:
            raise
        except Exception:
            return False  # cannot tell: the step stays as assessed
    return False


def _assess(
    host: Any, entry: JournalEntry, handlers: Sequence[Optional[Handler]], force: bool = False, recovering: bool = False
) -> Dict[int, Assessment]:
    """The assessment of every captured step whose handler is :class:`~kensa.engine.Restorable`.

    Steps are restored last first, so each is assessed as the restores of the
    steps after it will leave the host (an overlay of their ``settled`` files).
    A step that cannot be assessed is a conflict naming why: nobody can tell
    what is safe to restore.
    """
    found: Dict[int, Assessment] = {}
    view = host
    for index in range(len(entry.txn.steps) - 1, -1, -1):
        step, pre, handler = entry.txn.steps[index], entry.pre_states[index], handlers[index]
        if pre is None or handler is None or not isinstance(handler, Restorable):
            continue
        try:
            assessment = handler.assess(view, pre)
            if not isinstance(assessment, Assessment):
                raise TypeError(f"{type(handler).__name__}.assess returned {type(assessment).__name__}")
            if recovering and assessment.drift is not Drift.AT_PRE and _not_reached(view, entry, handlers, index):
                found[index] = Assessment(Drift.AT_PRE, ("the interruption came before this step",), NOT_REACHED)
                continue
            overlay = getattr(view, "overlay", None)
            if overlay is not None and index > 0:
                view = overlay(handler.settled(view, pre, assessment, force))
        except CONNECTION_LOST:
            raise
        except Exception as exc:
            assessment = Assessment(Drift.CONFLICT, (f"{_name(step)} cannot be checked: {describe(exc)}",))
        found[index] = assessment
    return found


def _may_have_changed(entry: JournalEntry) -> bool:
    if entry.result is None:
        return True
    if entry.later_rollback is not None and entry.later_rollback.host_unchanged:
        return False
    return not entry.result.host_unchanged


def _later_changes(journal: RecoveryJournal, entry: JournalEntry) -> Dict[int, Tuple[str, str]]:
    """Step index -> (file, transaction) for steps whose file a later transaction may have changed."""
    files = [_files(step, pre) for step, pre in zip(entry.txn.steps, entry.pre_states)]
    mine = frozenset().union(*files)
    touched: Dict[str, str] = {}
    # Newest first: the message names the most recent change of each file.
    for later in journal.history(entry.txn.host, after_seq=entry.seq):
        if later.txn.id == entry.txn.id or not _may_have_changed(later):
            continue
        state = "interrupted" if later.result is None else later.result.status.value
        who = f"transaction {later.txn.id} (rule {later.txn.rule}, {state})"
        for step, pre in zip(later.txn.steps, later.pre_states):
            for path in _files(step, pre) & mine:
                touched.setdefault(path, who)
    found: Dict[int, Tuple[str, str]] = {}
    for index, step_files in enumerate(files):
        for path in sorted(step_files & touched.keys()):
            found.setdefault(index, (path, touched[path]))
    return found


# --- shared steps --------------------------------------------------------------------


def _resolve(registry: Registry, resolved: Union[Any, BaseException], entry: JournalEntry) -> Tuple[Any, List[Optional[Handler]]]:
    """The host object (``resolved``, what :meth:`Locks.writer` locked; raised if it is why the
    host did not resolve) and the handler of every step that has a pre-state to restore."""
    if isinstance(resolved, BaseException):
        raise resolved
    host = resolved
    source = host_handlers(registry, host)
    return host, [None if pre is None else source[step.mechanism] for step, pre in zip(entry.txn.steps, entry.pre_states)]


def _remove_leftovers(host: Any, entry: JournalEntry) -> List[str]:
    """Remove the temporary files a killed write of kensa's left next to the files this
    entry touched; return what could not be removed."""
    remove = getattr(host, "remove_leftover_temps", None)
    if remove is None:
        return []
    failures = []
    for step, pre in zip(entry.txn.steps, entry.pre_states):
        for path in sorted(_files(step, pre)):
            try:
                remove(path)
            except CONNECTION_LOST:
                raise
            except (KensaError, OSError) as exc:
                failures.append(f"kensa's leftover temporary file next to {path} could not be removed: {exc}")
    return failures


def _not_applied(entry: JournalEntry) -> Set[int]:
    """Steps the run did not apply because their unless said they were done: nothing of them to reverse or check."""
    return {i for i, done in enumerate(entry.result.steps) if done.skipped} if entry.result is not None else set()


def _irreversible(entry: JournalEntry) -> List[str]:
    skipped = _not_applied(entry)
    return [step_name(i, step) for i, (step, pre) in enumerate(zip(entry.txn.steps, entry.pre_states))
            if pre is None and i not in skipped]


def _conclude(trail: Trail, rec: Any, result: TransactionResult) -> TransactionResult:
    # Success here means the host is back in its pre-state.
    return trail.terminal(rec, result, result.host_unchanged and result.status is not Status.ERRORED)


# --- recovery ------------------------------------------------------------------------


def recover_interrupted(registry: Registry, journal: Any, trail: Trail, locks: Locks) -> List[TransactionResult]:
    """Reverse every interrupted transaction, newest first; see the module docstring."""
    store = _journal_of(journal, "recover interrupted transactions")
    results: List[TransactionResult] = []
    # Targets whose lock could not be taken (another process holds it): their older entries wait
    # for the newer one, so none of them is restored now; the other targets are recovered. A
    # target is its host's identity, as its lock is: two inventory names of one machine are one.
    busy: Dict[Tuple[str, str], KensaError] = {}
    with locks.exclusive_run():
        for entry in reversed(list(store.interrupted())):
            key = entry.txn.host
            host = locks.resolve(key)
            target = _target_of(key, host)
            if target in busy:
                results.append(_not_locked(trail, entry, busy[target], newer=True))
                continue
            with contextlib.ExitStack() as held:
                try:
                    host = held.enter_context(locks.writer(key, host))
                except KensaError as exc:
                    busy[target] = exc
                    results.append(_not_locked(trail, entry, exc, newer=False))
                    continue
                results.append(_recover_one(registry, store, trail, host, entry))
    return results


def _target_of(key: str, host: Union[Any, BaseException]) -> Tuple[str, str]:
    """The target ``key`` names: what its host says names it across connections (a remote host's
    machine and root), else its identity (what its lock is taken on), else the key."""
    if isinstance(host, BaseException):
        return ("key", key)
    for attribute in ("shared_identity", "identity"):
        found = getattr(host, attribute, None)
        if found is not None:
            return (attribute, repr(found))
    return ("key", key)


def _not_locked(trail: Trail, entry: JournalEntry, exc: KensaError, newer: bool) -> TransactionResult:
    """The ``errored`` result of an entry whose target could not be locked (or whose newer entry's
    target could not): nothing restored, it stays interrupted."""
    txn = entry.txn
    rec = trail.recorder(txn)
    trail.boundary(rec, txn, Phase.STARTED, True)
    why = ("a newer interrupted transaction of this host could not be recovered first: " if newer else "") + describe(exc)
    message = (f"could not recover interrupted transaction {txn.id} (rule {txn.rule}, host {txn.host}): {why}; "
               "nothing was restored and it stays interrupted in the journal: recover again once its lock can be taken")
    return _left_interrupted(trail, rec, txn, {Phase.PREFLIGHT: 0.0}, Phase.PREFLIGHT, exc, message)


def _recover_one(
    registry: Registry, journal: RecoveryJournal, trail: Trail, resolved: Union[Any, BaseException], entry: JournalEntry
) -> TransactionResult:
    txn = entry.txn
    rec = trail.recorder(txn)
    trail.boundary(rec, txn, Phase.STARTED, True)
    timings: Dict[Phase, float] = {}
    start = _perf()
    try:
        host, handlers = _resolve(registry, resolved, entry)
        later = _later_changes(journal, entry)
    except Exception as exc:
        timings[Phase.PREFLIGHT] = _perf() - start
        message = (
            f"could not start recovering interrupted transaction {txn.id} (rule {txn.rule}, host {txn.host}): "
            f"{describe(exc)}; nothing was restored and it stays interrupted in the journal: "
            "fix the cause and recover again"
        )
        return _left_interrupted(trail, rec, txn, timings, Phase.PREFLIGHT, exc, message)
    try:
        return _restore_interrupted(journal, trail, rec, entry, host, handlers, later, timings, start)
    except CONNECTION_LOST as exc:
        timings[Phase.ROLLBACK] = _perf() - start
        message = (
            f"the connection to host {txn.host} was lost while recovering interrupted transaction {txn.id} "
            f"(rule {txn.rule}): {describe(exc)}; it stays interrupted in the journal: recover again once the "
            "host is reachable"
        )
        return _left_interrupted(trail, rec, txn, timings, Phase.ROLLBACK, exc, message)


def _left_interrupted(
    trail: Trail, rec: Any, txn: Transaction, timings: Dict[Phase, float], phase: Phase, exc: BaseException, message: str
) -> TransactionResult:
    """The ``errored`` result of a recovery that records nothing: the entry stays interrupted."""
    error = TransactionError(type(exc).__name__, message, phase)
    result = TransactionResult(txn.id, txn.rule, txn.host, Status.ERRORED, False, timings, error=error)
    return _conclude(trail, rec, result)


def _restore_interrupted(
    journal: RecoveryJournal,
    trail: Trail,
    rec: Any,
    entry: JournalEntry,
    host: Any,
    handlers: List[Optional[Handler]],
    later: Mapping[int, Tuple[str, str]],
    timings: Dict[Phase, float],
    start: float,
) -> TransactionResult:
    txn = entry.txn
    withheld = {
        index: f"not restored: {path} was changed after the interruption by {who}; restoring this pre-state "
        f"would undo that: check {path} by hand"
        for index, (path, who) in later.items()
    }
    assessments = _assess(host, entry, handlers, recovering=True)
    for index, assessment in assessments.items():
        if index not in withheld and assessment.drift in (Drift.OUTSIDE, Drift.CONFLICT):
            withheld[index] = (
                f"not restored: {_name(txn.steps[index])} is neither in its pre-state nor as kensa would have left "
                f"it ({'; '.join(assessment.details)}); it was changed by someone else since the interruption: "
                "an operator must look"
            )
    timings[Phase.PREFLIGHT] = _perf() - start
    start = _perf()
    rollbacks, failures = restore_steps(
        txn, host, handlers, entry.pre_states, withheld=withheld, assessments=assessments, reraise=CONNECTION_LOST
    )
    failures += _remove_leftovers(host, entry)
    timings[Phase.ROLLBACK] = _perf() - start
    trail.boundary(rec, txn, Phase.ROLLBACK, not failures)
    what = f"recovery of interrupted transaction {txn.id}"
    result = rollback_outcome(txn, Status.RECOVERED, rollbacks, failures, _irreversible(entry), timings, what=what)
    return _conclude(trail, rec, journaled(lambda done: journal.record_recovery(txn.id, done), result, "recovery"))


# --- rollback by id ------------------------------------------------------------------

_NOT_ROLLED_BACK_BECAUSE = {
    Status.ROLLED_BACK: "its changes were already rolled back when it ran",
    Status.RECOVERED: "it was interrupted, and recovery already restored its pre-state",
    Status.ERRORED: "it stopped before changing anything",
    Status.SKIPPED: "the host already complied, so it changed nothing",
    Status.PARTIALLY_APPLIED: "its own rollback could not reverse every step; restore by hand from its journaled pre-states",
    Status.ROLLBACK_FAILED: "its own rollback failed; restore by hand from its journaled pre-states",
}


def _refuse_unless_committed(entry: JournalEntry, force: bool) -> None:
    txn, result = entry.txn, entry.result
    where = f"transaction {txn.id} (rule {txn.rule}, host {txn.host})"
    if result is None:
        raise RollbackRefusedError(
            f"cannot roll back {where}: it was interrupted and has no result; run recovery (kensa recover) instead"
        )
    if entry.later_rollback is not None:
        at = f" at {entry.later_rollback_at.isoformat()}" if entry.later_rollback_at is not None else ""
        raise RollbackRefusedError(
            f"cannot roll back {where}: it was already rolled back{at} ({entry.later_rollback.status.value}); "
            "see its journal entry (kensa history)"
        )
    if result.status is Status.STAGED and not force:
        raise RollbackRefusedError(
            f"cannot roll back {where}: it is staged (in effect only after a reboot), so kensa cannot check "
            "whether the host drifted; pass force=True (kensa rollback --force) to restore its pre-state anyway"
        )
    if result.status not in (Status.COMMITTED, Status.STAGED):
        reason = _NOT_ROLLED_BACK_BECAUSE.get(result.status, "only a committed transaction can be rolled back")
        raise RollbackRefusedError(f"cannot roll back {where}: it ended as {result.status.value}: {reason}")
    irreversible = _irreversible(entry)
    if irreversible and not force:
        raise RollbackRefusedError(
            f"cannot roll back {where}: {', '.join(irreversible)} cannot be reversed (no pre-state was captured); "
            "pass force=True (kensa rollback --force) to restore the other steps anyway"
        )


def _drift(
    registry: Registry, journal: RecoveryJournal, entry: JournalEntry, host: Any, assessments: Mapping[int, Assessment]
) -> Tuple[List[str], List[str]]:
    """(names, reasons) of what changed since ``entry`` committed in a way a rollback would destroy.

    A step with an assessment drifted when it is a conflict: later edits outside
    its own change are kept by the rollback, so they are no drift. A step
    without one (a handler that cannot assess) drifted when its ``validate()``
    no longer holds or a later transaction touched its files.
    """
    names: List[str] = []
    reasons: List[str] = []
    for index, assessment in sorted(assessments.items()):
        step = entry.txn.steps[index]
        if assessment.drift is Drift.CONFLICT:
            names.extend(_conflicting(step, assessment))
            reasons.append(f"{_name(step)} ({step_name(index, step)}): {'; '.join(assessment.details)}")
    skipped = _not_applied(entry)
    for index, step in enumerate(entry.txn.steps):
        if index in assessments or index in skipped:
            continue
        try:
            holds = host_handlers(registry, host)[step.mechanism].validate(host, step.params)
            why = "no longer holds what the transaction set"
        except Exception as exc:
            holds, why = False, f"cannot be checked: {describe(exc)}"
        if not holds:
            names.append(_name(step))
            reasons.append(f"{_name(step)} ({step_name(index, step)}) {why}")
    for index, (path, who) in sorted(_later_changes(journal, entry).items()):
        if index in assessments:
            continue
        if path not in names:
            names.append(path)
            reasons.append(f"{path} ({step_name(index, entry.txn.steps[index])}) was changed later by {who}")
    return names, reasons


def rollback_committed(
    registry: Registry, journal: Any, trail: Trail, locks: Locks, txn_id: str, *, force: bool = False
) -> TransactionResult:
    """Reverse committed ``txn_id`` from its journaled pre-states; see the module docstring."""
    store = _journal_of(journal, f"roll back transaction {txn_id}")
    with locks.shared_run():
        entry = store.get(txn_id)
        _refuse_unless_committed(entry, force)
        txn = entry.txn
        with locks.writer(txn.host) as resolved:
            try:
                host, handlers = _resolve(registry, resolved, entry)
            except Exception as exc:
                raise RollbackRefusedError(
                    f"cannot roll back transaction {txn.id} (rule {txn.rule}, host {txn.host}): {describe(exc)}; "
                    "nothing was changed"
                ) from exc
            assessments = _assess(host, entry, handlers, force)
            if not force:
                names, reasons = _drift(registry, store, entry, host, assessments)
                if names:
                    raise RollbackRefusedError(
                        f"cannot roll back transaction {txn.id} (rule {txn.rule}, host {txn.host}): the host drifted "
                        f"since it committed: {'; '.join(reasons)}. Rolling back restores the state from before the "
                        "transaction and would overwrite those changes; nothing was changed. Check them, then pass "
                        "force=True (kensa rollback --force) to roll back anyway",
                        names,
                    )
            rec = trail.recorder(txn)
            trail.boundary(rec, txn, Phase.STARTED, True)
            timings: Dict[Phase, float] = {}
            start = _perf()
            rollbacks, failures = restore_steps(txn, host, handlers, entry.pre_states, assessments=assessments, force=force)
            timings[Phase.ROLLBACK] = _perf() - start
            trail.boundary(rec, txn, Phase.ROLLBACK, not failures)
            what = f"rollback of transaction {txn.id}"
            result = rollback_outcome(txn, Status.ROLLED_BACK, rollbacks, failures, _irreversible(entry), timings, what=what)
            return _conclude(trail, rec, journaled(lambda done: store.record_rollback(txn.id, done), result, "rollback"))
