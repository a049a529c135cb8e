"""What a transaction leaves for observers: an audit record and an event at every
phase boundary, and the terminal result's record sequence numbers in the journal.
Emission never changes an outcome: an emitter that raises is counted, not obeyed."""

from __future__ import annotations

import threading
from typing import Any, Optional

from kensa.engine.events import EventBus
from kensa.engine.protocols import PhaseEmitter, PhaseRecorder
from kensa.model import Phase, Transaction, TransactionResult
from kensa.support.afterfork import reset_in_child

__all__ = ["Trail"]


class _NoopRecorder:
    __slots__ = ()

    def emit(self, phase: str, ok: bool) -> None:
        pass


NOOP_RECORDER = _NoopRecorder()


class _NoopEmitter:
    """The engine's emitter unless one is injected."""

    def transaction(self, txn: str, rule: str, host: str) -> PhaseRecorder:
        return NOOP_RECORDER

    def __repr__(self) -> str:
        return "NoopEmitter()"


class Trail:
    """The audit emitter and the event bus of one engine, used by runs, recovery and rollback alike.

    ``journal``, when it has ``record_audit_sequences``, gets the sequence
    numbers of each transaction's records (a recorder with ``sequences``).
    """

    def __init__(self, audit: Optional[PhaseEmitter], events: Optional[EventBus], journal: Any) -> None:
        self.audit: PhaseEmitter = audit if audit is not None else _NoopEmitter()
        self.events = events if events is not None else EventBus()
        self.journal = journal
        self._lock = threading.Lock()
        self._errors = 0
        self._last_error: Optional[BaseException] = None
        reset_in_child(self)

    @property
    def errors(self) -> int:
        """How many calls into the audit emitter (or the sequence journaling) raised."""
        with self._lock:
            return self._errors

    @property
    def last_error(self) -> Optional[BaseException]:
        with self._lock:
            return self._last_error

    def recorder(self, txn: Transaction) -> PhaseRecorder:
        """The phase recorder of ``txn``; a no-op one when the emitter raises."""
        try:
            return self.audit.transaction(txn.id, txn.rule, txn.host)
        except Exception as exc:
            self.failed(exc)
            return NOOP_RECORDER

    def boundary(self, rec: PhaseRecorder, txn: Transaction, phase: Phase, ok: bool) -> None:
        """The record and the event of one phase boundary."""
        try:
            rec.emit(phase.value, ok)
        except Exception as exc:
            self.failed(exc)
        self.events.publish_phase(txn.id, txn.rule, txn.host, phase, ok)

    def terminal(self, rec: PhaseRecorder, result: TransactionResult, ok: bool) -> TransactionResult:
        """The terminal record and event of ``result``, then its sequence numbers journaled."""
        try:
            rec.emit(result.status.value, ok)
        except Exception as exc:
            self.failed(exc)
        self._journal_sequences(result.txn_id, rec)
        self.events.publish_terminal(result, ok)
        return result

    def failed(self, exc: BaseException) -> None:
        with self._lock:
            self._errors += 1
            self._last_error = exc

    def _journal_sequences(self, txn_id: str, rec: PhaseRecorder) -> None:
        # Optional on both protocols; a failure is an audit error, never an outcome.
        sequences = getattr(rec, "sequences", None)
        record = getattr(self.journal, "record_audit_sequences", None)
        if not sequences or record is None:
            return
        try:
            record(txn_id, list(sequences))
        except Exception as exc:
            self.failed(exc)

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Trail(audit={self.audit!r})"
