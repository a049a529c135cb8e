"""The transaction engine: capture, apply, validate, then commit or roll back.

The engine talks only to protocols it defines here (handlers, the phase emitter,
the journal); it imports no netlink, cffi or sqlite code. The real parts are
wired by :func:`kensa.default_engine`.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Protocol, Sequence, runtime_checkable

from .model import PreState, RollbackResult, StepResult, Transaction, TransactionResult


@runtime_checkable
class Handler(Protocol):
    """A remediation mechanism.

    ``capture`` records the exact pre-state; ``apply`` changes the host;
    ``validate`` says whether the desired state holds (it is also the
    "already compliant" check); ``rollback`` restores the captured pre-state and
    verifies it by reading back. Handlers whose change cannot be reversed set
    ``capturable = False`` and are never asked to capture or roll back.
    """

    name: str
    capturable: bool

    def capture(self, host: Any, params: Mapping[str, Any]) -> PreState: ...

    def apply(self, host: Any, params: Mapping[str, Any], pre: Optional[PreState]) -> StepResult: ...

    def validate(self, host: Any, params: Mapping[str, Any]) -> bool: ...

    def rollback(self, host: Any, pre: PreState) -> RollbackResult: ...


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
