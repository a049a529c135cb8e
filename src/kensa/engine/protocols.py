"""The engine's contracts with its parts: handlers, the phase emitter, the journal, the
target lock. Every part the engine uses is reached through one of these protocols,
so the engine imports no netlink, cffi or sqlite code; the real parts are wired in
:mod:`kensa.factory`. Imports nothing of kensa but the model and the host protocols."""

from __future__ import annotations

from typing import Any, ContextManager, Mapping, Optional, Protocol, Sequence, runtime_checkable

from kensa.hosts.protocol import Host, PhaseHandler, ReadableHost
from kensa.model import Assessment, JournalEntry, PreState, RollbackResult, Transaction, TransactionResult

__all__ = ["Handler", "Journal", "PhaseEmitter", "PhaseRecorder", "RecoveryJournal", "Restorable", "TargetLock"]


@runtime_checkable
class Handler(PhaseHandler, Protocol):
    """A remediation mechanism.

    ``capture`` records the exact pre-state; ``apply`` changes the host;
    ``validate`` says whether the desired state holds (it is also the
    "already compliant" check); ``rollback`` restores the captured pre-state and
    verifies it by reading back. Handlers whose change cannot be reversed set
    ``capturable = False`` and are never asked to capture or roll back. A
    handler may set ``decides_compliance = True``: when a transaction has such
    steps, their ``validate`` alone decides whether it is already compliant. The
    phases are :class:`kensa.hosts.protocol.PhaseHandler`'s, so a step runner
    can run them where the host is.
    """

    name: str
    capturable: bool


@runtime_checkable
class Restorable(Protocol):
    """A capturable handler that can tell its own change from later edits.

    ``assess`` compares the target now with the step's pre-state and with the
    state it journaled having written (see :class:`~kensa.model.Drift`); it
    changes nothing. ``restore`` carries out that assessment: nothing to do at
    the pre-state, the exact pre-state when the target is as kensa left it, only
    the step's own change when later edits lie outside it, and nothing (a failed
    result saying what is withheld) on a conflict unless ``force``, which puts
    the pre-state back and says what it overwrote. Rollback by id and recovery
    use these; a run's own rollback uses ``rollback``.


    Steps of one transaction may write the same file, and all are captured
    before any is applied. So ``planned(host, pre)`` says what the step will
    leave (path -> what will be there), and the engine captures each later step
    through ``host.overlay(...)`` of those plans; ``settled(host, pre,
    assessment, force)`` says what a restore will leave, and rollback and
    recovery assess each earlier step through an overlay of it.
    """

    def assess(self, host: ReadableHost, pre: PreState) -> Assessment: ...

    def restore(self, host: Host, pre: PreState, assessment: Assessment, force: bool = False) -> RollbackResult: ...

    def planned(self, host: ReadableHost, pre: PreState) -> Mapping[str, Any]: ...

    def settled(self, host: ReadableHost, pre: PreState, assessment: Assessment, force: bool = False) -> Mapping[str, Any]: ...


class PhaseRecorder(Protocol):
    """Emits the audit records of one transaction (txn, rule and host bound once)."""

    def emit(self, phase: str, ok: bool) -> None: ...


class PhaseEmitter(Protocol):
    """Source of :class:`PhaseRecorder` objects, one per transaction."""

    def transaction(self, txn: str, rule: str, host: str) -> PhaseRecorder: ...


class Journal(Protocol):
    """Durable record of intent, pre-state and outcome.

    ``begin`` is called once, after capture and before the first apply, and must
    be durable when it returns; ``finish`` records the terminal result. Both
    raise on failure: the engine never assumes a write it could not make.
    """

    def begin(self, txn: Transaction, pre_states: Sequence[Optional[PreState]]) -> None: ...

    def finish(self, result: TransactionResult) -> None: ...


class TargetLock(Protocol):
    """One writer per target across processes (:class:`kensa.hosts.targetlock.TargetLocks`).

    ``hold(key, identity)`` is a context manager held around a whole
    transaction, rollback by id or recovery of one entry on the target
    ``key``; ``identity`` is the host object's ``identity`` attribute, or None.
    It raises a KensaError when the lock cannot be taken; nothing has run then.
    """

    def hold(self, key: str, identity: Any = None) -> ContextManager[None]: ...


class RecoveryJournal(Protocol):
    """What recovery and rollback by id need of a journal (:class:`kensa.journal.SqliteJournal` has it).

    A ``lock(exclusive=..., timeout=...)`` method returning a context manager
    is used when present.
    """

    def interrupted(self) -> Sequence[JournalEntry]: ...

    def get(self, txn_id: str) -> JournalEntry: ...

    def history(self, host: Optional[str] = None, *, after_seq: Optional[int] = None) -> Sequence[JournalEntry]: ...

    def record_recovery(self, txn_id: str, result: TransactionResult) -> None: ...

    def record_rollback(self, txn_id: str, result: TransactionResult) -> None: ...
