"""The one rollback routine and the one outcome classification that a run's own
rollback, recovery and rollback by id share, and the one way a result the
journal could not record is reported."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Type, cast

from kensa.engine.protocols import Handler, Restorable
from kensa.hosts.protocol import Host
from kensa.errors import HostConnectionLost, NotCapturableError, RemoteTimeoutError, RollbackFailedError
from kensa.model import Assessment, Phase, PreState, RollbackResult, Status, Step, StepResult, Transaction, TransactionError, TransactionResult

__all__ = ["CONNECTION_LOST", "NOT_REACHED", "describe", "journaled", "restore_steps", "rollback_outcome", "step_name"]

_perf = time.perf_counter

#: The plan of an assessment saying the interruption came before the step ran.
NOT_REACHED = "not reached"

#: Errors after which a remote host is in an unknown state: its connection is gone
#: (or its agent was stopped at a timeout). A run or recovery that meets one leaves
#: the journal entry interrupted, for a recovery over a new connection, instead of
#: recording an outcome it cannot know.
CONNECTION_LOST = (HostConnectionLost, RemoteTimeoutError)


def describe(exc: BaseException) -> str:
    """``Type: message`` of an exception, even one whose ``__str__`` raises."""
    try:
        text = str(exc)
    except Exception:
        text = object.__repr__(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def step_name(index: int, step: Step) -> str:
    return f"step {index + 1} ({step.mechanism})"


def restore_steps(
    txn: Transaction,
    host: Host,
    handlers: Sequence[Optional[Handler]],
    pre_states: Sequence[Optional[PreState]],
    upto: Optional[int] = None,
    withheld: Optional[Mapping[int, str]] = None,
    assessments: Optional[Mapping[int, Assessment]] = None,
    force: bool = False,
    reraise: Tuple[Type[BaseException], ...] = (),
) -> Tuple[List[RollbackResult], List[str]]:
    """Restore the captured steps before ``upto`` (default: all), last first; every one is tried.

    A step in ``withheld`` is not touched: its result is a failure saying why.
    A step with an assessment is restored as assessed (:class:`Restorable`),
    the others with their handler's ``rollback``. Returns (rollbacks, failures):
    one line per failed restore, naming the step. An exception of a type in
    ``reraise`` stops the restores and propagates (:data:`CONNECTION_LOST`).
    """
    withheld = withheld or {}
    assessments = assessments or {}
    rollbacks: List[RollbackResult] = []
    failures: List[str] = []
    last = len(txn.steps) if upto is None else upto
    for index in range(last - 1, -1, -1):
        pre, handler, step = pre_states[index], handlers[index], txn.steps[index]
        if pre is None or handler is None:
            continue
        if index in withheld:
            rb = RollbackResult(step.mechanism, ok=False, detail=withheld[index])
        else:
            try:
                assessment = assessments.get(index)
                if assessment is not None and assessment.plan == NOT_REACHED:
                    rb = RollbackResult(step.mechanism, ok=True, detail="not reached before the interruption: nothing to restore")
                elif assessment is not None:
                    rb = cast(Restorable, handler).restore(host, pre, assessment, force)
                else:
                    rb = handler.rollback(host, pre)
                if not isinstance(rb, RollbackResult):
                    raise TypeError(f"{type(handler).__name__}.rollback returned {type(rb).__name__}")
            except reraise:
                raise
            except Exception as exc:
                rb = RollbackResult(step.mechanism, ok=False, detail=describe(exc))
        if not rb.ok:
            failures.append(f"{step_name(index, step)}: {rb.detail or 'the handler gave no detail'}")
        rollbacks.append(rb)
    return rollbacks, failures


def rollback_outcome(
    txn: Transaction,
    done: Status,
    rollbacks: Sequence[RollbackResult],
    failures: Sequence[str],
    irreversible: Sequence[str],
    timings: Dict[Phase, float],
    steps: Sequence[StepResult] = (),
    cause: Optional[TransactionError] = None,
    what: str = "",
) -> TransactionResult:
    """The result of a rollback: ``rollback_failed`` when a restore failed,
    ``partially_applied`` when a step that cannot be reversed may have changed
    the host, else ``done`` (``rolled_back`` or ``recovered``).

    ``cause`` is why a run rolled back (it stays the result's error unless a
    restore failed); ``what`` names a rollback by id or a recovery in messages.
    """
    if failures:
        if cause is not None:
            message = (
                f"{len(failures)} of {len(rollbacks)} rollbacks failed, the host is not in its pre-state "
                f"(first: {failures[0]}); rolled back because {cause.message}"
            )
        else:
            message = (
                f"{what}: {len(failures)} of {len(rollbacks)} restores failed, the host is not in its pre-state "
                f"(first: {failures[0]}); the pre-states stay in the journal for a manual restore"
            )
        error: Optional[TransactionError] = TransactionError(RollbackFailedError.__name__, message, Phase.ROLLBACK)
        status, unchanged = Status.ROLLBACK_FAILED, False
    elif irreversible:
        error = cause
        if cause is None:
            message = (
                f"{what}: every captured step was restored, but {', '.join(irreversible)} cannot be reversed "
                "and may have changed the host; check it by hand"
            )
            error = TransactionError(NotCapturableError.__name__, message, Phase.ROLLBACK)
        status, unchanged = Status.PARTIALLY_APPLIED, False
    else:
        # Later edits kept around a reverted change leave the host unlike its pre-state.
        error, status, unchanged = cause, done, not any(rb.kept for rb in rollbacks)
    return TransactionResult(txn.id, txn.rule, txn.host, status, unchanged, timings, tuple(steps), tuple(rollbacks), error)


def journaled(
    write: Callable[[TransactionResult], None], result: TransactionResult, what: str = "result"
) -> TransactionResult:
    """Journal ``result`` with ``write``; a result the journal does not hold is
    returned as ``errored`` (phase ``commit``, the real ``host_unchanged`` kept),
    never as done. The commit phase's time is added to its timings."""
    start = _perf()
    status, error = result.status, result.error
    try:
        write(result)
    except Exception as exc:
        was = f"{status.value}: {error.message}" if error is not None else status.value
        message = f"the journal could not record the {what} ({was}): {describe(exc)}"
        status, error = Status.ERRORED, TransactionError(type(exc).__name__, message, Phase.COMMIT)
    timings = dict(result.timings)
    timings[Phase.COMMIT] = _perf() - start
    return replace(result, status=status, error=error, timings=timings)
