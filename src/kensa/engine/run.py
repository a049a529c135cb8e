"""The transaction engine: capture, apply, validate, then commit or roll back.

The engine talks only to the protocols of :mod:`kensa.engine.protocols`
(handlers, the phase emitter, the journal, the target lock); it imports no
netlink, cffi or sqlite code. The real parts are wired by
:func:`kensa.factory.default_engine`, which imports them only when called.

How a transaction runs (:meth:`Engine.run`):

1. preflight: every step's mechanism is registered, a transactional rule has
   only capturable steps, and the host key resolves. Failure: ``errored``.
2. check: when every step's ``validate()`` already holds the result is
   ``skipped``; nothing is captured or applied. When some handlers set
   ``decides_compliance = True`` (the step carrying a rule's own check, see
   :mod:`kensa.rules.checkstep`), their steps alone decide this. When it does
   not hold and a step's handler sets ``needs_operator = True`` (``manual``),
   the result is ``manual``: nothing is captured or applied, and each such
   step's result says what the operator must do (its ``instruction(params)``).
   Such a step needs no pre-state, so a transactional rule may have one.
   A step with an ``unless`` command (any mechanism) that exits 0 on a live
   target is already done: it counts as holding here, and is then neither
   captured, applied nor validated; its result has ``skipped`` set.
3. capture: every capturable step records its pre-state, then
   ``journal.begin`` makes intent and pre-states durable. Failure: ``errored``
   with nothing applied.
4. apply, in order, stopping at the first failed step (``ok`` False or an
   exception). The failed step counts as attempted: a capturable one is rolled
   back with the others, since it may have changed part of what it owns.
5. validate every step that did not report ``staged``. When all hold the result
   is ``committed``, or ``staged`` when a step reported ``staged``: a staged
   change takes effect only after a reboot, so it cannot be validated now, and
   the transaction is not called validated (no ``validate`` record).
6. on failure, roll back the attempted capturable steps in reverse order:
   ``rolled_back`` when every rollback verified, ``partially_applied`` when a
   non-capturable step may have changed the host, ``rollback_failed`` when a
   rollback failed (every rollback is still attempted).

A non-capturable step "may have changed the host" when its apply succeeded,
raised, or returned ``changed=True``; a failure it reports with
``changed=False`` is trusted to have changed nothing.

``journal.finish`` records every terminal result. When it raises, the returned
result is ``errored`` (phase ``commit``), keeping the real ``host_unchanged``,
steps and rollbacks: a result the journal does not hold is never reported as
done.

KeyboardInterrupt or SystemExit inside a handler's apply or validate rolls back
what was attempted, records the terminal result (journal, audit, events) and
re-raises. One inside a rollback propagates at once, leaving the journal entry
without a result, which is what recovery looks for.

A remote host whose connection is lost (or whose agent is stopped at its
operation timeout) after apply began is in a state nobody on the controller
knows: the run's result is ``errored`` with ``host_unchanged`` False, an error
naming the host and saying to run recovery, and the audit trail shows the
failed phase; no rollback is tried over the dead connection and no result is
journaled, so the entry stays interrupted and :meth:`Engine.recover` reverses
it over a new connection, exactly as after a crash. Before apply such a loss
is an ordinary ``errored`` (nothing was applied).

Emission never changes an outcome: an emitter that raises is counted in
:attr:`Engine.audit_errors`; event subscribers run on threads of their own
(see :mod:`kensa.engine.events`).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Set, Tuple, Union, cast

from kensa.engine.guards import first_check, needs_operator, unless_held
from kensa.engine.events import DEFAULT_QUEUE_SIZE, Callback, EventBus, Subscription
from kensa.engine.locks import Locks
from kensa.engine.protocols import Handler, Journal, PhaseEmitter, PhaseRecorder, TargetLock
from kensa.engine.recovery import recover_interrupted, rollback_committed
from kensa.engine.registry import Registry, host_handlers
from kensa.engine.services import Pending, after_commit, carry_out
from kensa.engine.restore import CONNECTION_LOST, describe, journaled, restore_steps, rollback_outcome, step_name
from kensa.engine.trail import Trail
from kensa.errors import KensaError, NotCapturableError, StepFailedError, ValidationFailedError
from kensa.model import (
    Phase,
    PreState,
    ServiceOutcome,
    ServiceStatus,
    Status,
    StepResult,
    Transaction,
    TransactionError,
    TransactionResult,
)

__all__ = ["Engine", "errored"]

_perf = time.perf_counter
_OK_STATUSES = frozenset((Status.COMMITTED, Status.SKIPPED, Status.STAGED))


def _same_key(key: str) -> str:
    return key


def errored(txn: Transaction, timings: Dict[Phase, float], kind: str, message: str, phase: Phase) -> TransactionResult:
    """An ``errored`` result: nothing was applied."""
    error = TransactionError(kind, message, phase)
    return TransactionResult(txn.id, txn.rule, txn.host, Status.ERRORED, True, timings, error=error)


class _Lost(Exception):
    """A run that must end without a journaled result (see :data:`~kensa.engine.restore.CONNECTION_LOST`)."""

    def __init__(self, result: TransactionResult) -> None:
        super().__init__(result.error.message if result.error is not None else "")
        self.result = result


class Engine:
    """Runs transactions through registered handlers; see the module docstring.

    ``registry`` maps mechanism names to handlers (a :class:`Registry` or a plain
    mapping). ``hosts`` turns a transaction's host key into the object handlers
    receive (default: the key itself); ``host_key`` turns the spellings of one
    target into one canonical key, under which the transaction runs, is
    locked, journaled and audited (default: ``hosts.canonical_key`` when the
    resolver has one, as :func:`kensa.hosts.resolve_host` does, else keys are
    taken as they are). ``audit`` defaults to a no-op emitter,
    ``journal`` to none, ``events`` to a fresh :class:`~kensa.engine.events.EventBus`,
    ``target_lock`` to none (only this process's threads are serialized; see
    :class:`TargetLock`). Safe to share between threads: runs on the same host
    key serialize, runs on different hosts proceed in parallel. Safe across
    ``fork``: the child gets fresh locks (see :mod:`kensa.engine.events` too).
    """

    def __init__(
        self,
        registry: Union[Registry, Mapping[str, Handler]],
        audit: Optional[PhaseEmitter] = None,
        journal: Optional[Journal] = None,
        hosts: Optional[Callable[[str], Any]] = None,
        events: Optional[EventBus] = None,
        host_key: Optional[Callable[[str], str]] = None,
        target_lock: Optional[TargetLock] = None,
    ) -> None:
        self.registry = registry if isinstance(registry, Registry) else Registry(registry)
        # Spellings of one target ("/srv/r", "/srv/r/", a symlink to it) must
        # share a lock, a journal history and audit records: every transaction
        # runs under its canonical key.
        # A hosts callable may name its own canonicalizer (kensa.hosts.resolve_host does).
        self.host_key: Callable[[str], str] = (
            host_key if host_key is not None else getattr(hosts, "canonical_key", _same_key)
        )
        self._journal = journal
        self.trail = Trail(audit, events, journal)
        self.locks = Locks(hosts, journal, target_lock)
        self._pending = Pending()

    @property
    def journal(self) -> Optional[Journal]:
        return self._journal

    @property
    def audit(self) -> PhaseEmitter:
        return self.trail.audit

    @property
    def events(self) -> EventBus:
        return self.trail.events

    @property
    def hosts(self) -> Callable[[str], Any]:
        return self.locks.hosts

    @property
    def target_lock(self) -> TargetLock:
        return self.locks.target_lock

    @property
    def audit_errors(self) -> int:
        """How many calls into the audit emitter raised (each was ignored)."""
        return self.trail.errors

    @property
    def last_audit_error(self) -> Optional[BaseException]:
        """The most recent exception the audit emitter raised, if any."""
        return self.trail.last_error

    def subscribe(self, callback: Callback, maxsize: int = DEFAULT_QUEUE_SIZE) -> Subscription:
        """Receive this engine's phase and terminal events on a thread of the subscriber's own."""
        return self.events.subscribe(callback, maxsize)

    def run(self, txn: Transaction, following: Optional[Transaction] = None) -> TransactionResult:
        """Run one transaction to a terminal result; handler errors never escape.

        ``following``: the transaction the caller runs next on the same host, if known. A host
        that reads ahead (``expect_check``: a remote one) is told the step the engine checks first
        in it when that check is the engine's next request (:func:`~kensa.engine.guards.first_check`).
        Give it only while holding the host's target lock across both runs (``locks.target(key,
        host)``, as ``kensa remediate`` does): a request in between drops what was read ahead.

        With a journal that has a ``lock()`` method the run holds its shared
        lock, so it never overlaps :meth:`recover`; a KensaError from taking
        that lock (recovery is in progress) is raised before anything runs.
        The run also holds the target lock of its host (see :class:`TargetLock`).
        When that cannot be taken (another process kept the host busy past the
        lock's timeout) the result is ``errored`` in preflight, journaled and
        audited, with nothing run: a batch goes on with its other transactions.
        """
        txn = self._canonical(txn)
        with self.locks.shared_run(), self.locks.host(txn.host):
            held = contextlib.ExitStack()
            start = _perf()
            # The host is resolved once: the object the lock is keyed on is the one the run changes.
            host = self.locks.resolve(txn.host)
            try:
                held.enter_context(self.locks.target(txn.host, host))
            except KensaError as exc:
                return self._target_busy(txn, exc, _perf() - start)
            with held:
                return self._run(txn, host, following)

    def run_many(self, txns: Iterable[Transaction], workers: Optional[int] = None) -> List[TransactionResult]:
        """Run transactions, different hosts in parallel (``workers`` threads at most), one host's
        one after another; results in input order. On KeyboardInterrupt, or when a run raises, no
        further one starts; the running ones finish, then it propagates. The journal's shared
        lock (see :meth:`run`) is taken once for the batch; each run takes its host's own locks."""
        with self.locks.shared_run():
            return self._run_many(txns, workers)

    def notify_pending(self, host_key: Optional[str] = None) -> List[Tuple[str, ServiceOutcome]]:
        """Carry out the ``notify`` actions queued so far (only ``host_key``'s when given), once per
        host, verb and unit, inside the locks a transaction of the host holds (nothing more inside a
        hold the caller has); a host whose lock is not taken in time gets its actions failed, saying
        why. (host key, outcome) pairs, in the order first asked for."""
        done: List[Tuple[str, ServiceOutcome]] = []
        for key, actions in self._pending.take(host_key):
            with self.locks.host(key), contextlib.ExitStack() as held:
                host = self.locks.resolve(key)
                try:
                    held.enter_context(self.locks.target(key, host))
                except KensaError as exc:
                    host = exc
                for action in actions:
                    if isinstance(host, BaseException):
                        outcome = ServiceOutcome(action.verb, action.unit, ServiceStatus.FAILED, f"host {key}: {describe(host)}")
                    else:
                        outcome = carry_out(host, action)
                    done.append((key, outcome))
        return done

    def recover(self) -> List[TransactionResult]:
        """Roll back every interrupted transaction in the journal; see :mod:`kensa.engine.recovery`."""
        return recover_interrupted(self.registry, self._journal, self.trail, self.locks)

    def rollback(self, txn_id: str, *, force: bool = False) -> TransactionResult:
        """Reverse committed transaction ``txn_id`` from its journaled pre-state; see :mod:`kensa.engine.recovery`."""
        return rollback_committed(self.registry, self._journal, self.trail, self.locks, txn_id, force=force)

    def _run_many(self, txns: Iterable[Transaction], workers: Optional[int]) -> List[TransactionResult]:
        if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
            raise ValueError(f"workers must be a positive number of threads, got {workers!r}")
        todo = [self._canonical(txn) for txn in txns]
        groups: Dict[str, List[int]] = {}
        for index, txn in enumerate(todo):
            groups.setdefault(txn.host, []).append(index)
        results: List[Optional[TransactionResult]] = [None] * len(todo)
        stop = threading.Event()

        def run_host(indices: List[int]) -> None:
            for index in indices:
                if stop.is_set():
                    return
                results[index] = self.run(todo[index])

        if workers == 1 or len(groups) <= 1:
            for indices in groups.values():
                run_host(indices)
            return cast(List[TransactionResult], results)
        threads = min(workers or min(32, (os.cpu_count() or 1) + 4), len(groups))
        pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="kensa-engine")
        try:
            for future in [pool.submit(run_host, indices) for indices in groups.values()]:
                future.result()
        except BaseException:
            stop.set()
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
        return cast(List[TransactionResult], results)

    # --- one transaction -----------------------------------------------------------

    def _canonical(self, txn: Transaction) -> Transaction:
        try:
            key = self.host_key(txn.host)
        except Exception:
            # Left as given: resolving it in preflight reports why it is bad.
            return txn
        return txn if key == txn.host else replace(txn, host=key)

    def _target_busy(self, txn: Transaction, exc: KensaError, waited: float) -> TransactionResult:
        rec = self.trail.recorder(txn)
        self.trail.boundary(rec, txn, Phase.STARTED, True)
        timings = {Phase.PREFLIGHT: waited}
        return self._conclude(rec, errored(txn, timings, type(exc).__name__, str(exc), Phase.PREFLIGHT))

    def _run(self, txn: Transaction, resolved: Union[Any, BaseException],
             following: Optional[Transaction] = None) -> TransactionResult:
        rec = self.trail.recorder(txn)
        self.trail.boundary(rec, txn, Phase.STARTED, True)
        timings: Dict[Phase, float] = {}
        try:
            prepared = self._prepare(txn, rec, timings, resolved)
        except BaseException as exc:  # KeyboardInterrupt or SystemExit: nothing was applied
            phase = next((p for p in (Phase.PREFLIGHT, Phase.CHECK, Phase.CAPTURE) if p not in timings), Phase.CAPTURE)
            message = f"interrupted by {type(exc).__name__} during {phase.value}; nothing was applied"
            self._conclude(rec, errored(txn, timings, type(exc).__name__, message, phase))
            raise
        if isinstance(prepared, TransactionResult):
            return self._conclude(rec, prepared)
        host, handlers, pres, guarded = prepared
        expect = getattr(host, "expect_check", None)
        if callable(expect):
            expect(first_check(self.registry, txn, None if following is None else self._canonical(following)))
        try:
            result = self._change(txn, rec, timings, host, handlers, pres, guarded)
            if txn.services and result.status in (Status.COMMITTED, Status.STAGED):
                def undo(cause: TransactionError) -> TransactionResult:
                    return self._undo(txn, timings, host, handlers, pres, len(txn.steps), [], list(result.steps), cause)

                result = after_commit(txn, host, result, undo, self._pending)
        except _Lost as lost:
            # Not journaled: the entry stays interrupted, for recovery over a new connection.
            return self.trail.terminal(rec, lost.result, False)
        finally:
            if callable(expect):
                expect(None)  # a step the apply did not reach (its unless held) leaves nothing expected
        return self._conclude(rec, result)

    def _prepare(
        self, txn: Transaction, rec: PhaseRecorder, timings: Dict[Phase, float], resolved: Union[Any, BaseException]
    ) -> Union[TransactionResult, Tuple[Any, List[Handler], List[Optional[PreState]], Dict[int, StepResult]]]:
        """Preflight, compliance check, capture and journal intent; nothing is applied."""
        start = _perf()
        handlers: List[Handler] = []
        try:
            source = self.registry if isinstance(resolved, BaseException) else host_handlers(self.registry, resolved)
            for index, step in enumerate(txn.steps):
                handler = source[step.mechanism]
                if txn.transactional and not handler.capturable and not needs_operator(handler):
                    raise NotCapturableError(
                        f"rule {txn.rule!r}: {step_name(index, step)} cannot capture its pre-state, so the "
                        "rule cannot be transactional; mark the rule non-transactional or use a capturable mechanism"
                    )
                handlers.append(handler)
        except Exception as exc:
            timings[Phase.PREFLIGHT] = _perf() - start
            return errored(txn, timings, type(exc).__name__, str(exc), Phase.PREFLIGHT)
        if isinstance(resolved, BaseException):
            timings[Phase.PREFLIGHT] = _perf() - start
            message = f"could not resolve host {txn.host!r}: {describe(resolved)}"
            return errored(txn, timings, type(resolved).__name__, message, Phase.PREFLIGHT)
        host = resolved
        timings[Phase.PREFLIGHT] = _perf() - start

        start = _perf()
        compliant = True
        index = 0
        # A step that decides compliance (a rule's own check) decides it alone.
        deciding = [i for i, handler in enumerate(handlers) if getattr(handler, "decides_compliance", False) is True]
        guarded: Dict[int, StepResult] = {}  # steps whose unless says they are done: never captured or applied
        guards_run: Set[int] = set()
        try:
            for index in deciding or range(len(handlers)):
                step, handler = txn.steps[index], handlers[index]
                if not deciding:
                    guards_run.add(index)
                    held = unless_held(host, step)
                    if held is not None:
                        guarded[index] = held
                        continue
                if not bool(handler.validate(host, step.params)):
                    compliant = False
                    break
            for index, step in enumerate(txn.steps):
                if not compliant and index not in guards_run and index not in deciding:
                    held = unless_held(host, step)
                    if held is not None:
                        guarded[index] = held
        except Exception as exc:
            timings[Phase.CHECK] = _perf() - start
            message = f"{step_name(index, txn.steps[index])} raised while checking compliance: {describe(exc)}"
            return errored(txn, timings, type(exc).__name__, message, Phase.CHECK)
        timings[Phase.CHECK] = _perf() - start
        if compliant:
            return TransactionResult(txn.id, txn.rule, txn.host, Status.SKIPPED, True, timings)
        manual = [(step, handler) for index, (step, handler) in enumerate(zip(txn.steps, handlers))
                  if needs_operator(handler) and index not in guarded]
        if manual:
            # Applying the other steps would leave the rule half remediated and still not compliant.
            notes = tuple(
                StepResult(step.mechanism, ok=False, detail=f"an operator must act: {cast(Any, handler).instruction(step.params)}")
                for step, handler in manual
            )
            return TransactionResult(txn.id, txn.rule, txn.host, Status.MANUAL, True, timings, notes)

        start = _perf()
        pres: List[Optional[PreState]] = []
        # Each step captures what the steps before it will leave (see Restorable.planned).
        view = host
        try:
            for index, (step, handler) in enumerate(zip(txn.steps, handlers)):
                if not handler.capturable or index in guarded:
                    pres.append(None)
                    continue
                pre = handler.capture(view, step.params)
                if not isinstance(pre, PreState):
                    raise TypeError(f"{type(handler).__name__}.capture returned {type(pre).__name__}, not a PreState")
                pres.append(pre)
                planned, overlay = getattr(handler, "planned", None), getattr(view, "overlay", None)
                if planned is not None and overlay is not None and index + 1 < len(txn.steps):
                    view = overlay(planned(view, pre))
        except Exception as exc:
            timings[Phase.CAPTURE] = _perf() - start
            message = f"{step_name(index, txn.steps[index])} could not capture its pre-state: {describe(exc)}"
            return errored(txn, timings, type(exc).__name__, message, Phase.CAPTURE)
        if self.journal is not None:
            try:
                self.journal.begin(txn, pres)
            except Exception as exc:
                timings[Phase.CAPTURE] = _perf() - start
                message = f"the journal could not record the intent, so nothing was applied: {describe(exc)}"
                return errored(txn, timings, type(exc).__name__, message, Phase.CAPTURE)
        timings[Phase.CAPTURE] = _perf() - start
        self.trail.boundary(rec, txn, Phase.CAPTURE, True)
        return host, handlers, pres, guarded

    def _change(
        self,
        txn: Transaction,
        rec: PhaseRecorder,
        timings: Dict[Phase, float],
        host: Any,
        handlers: List[Handler],
        pres: List[Optional[PreState]],
        guarded: Mapping[int, StepResult],
    ) -> TransactionResult:
        """Apply, validate, and commit or roll back; ``guarded`` steps are not applied (their unless held)."""
        results: List[StepResult] = []
        attempted = 0
        irreversible: List[str] = []  # non-capturable steps that may have changed the host
        failure: Optional[TransactionError] = None
        staged = False
        phase = Phase.APPLY
        index = 0
        start = _perf()
        try:
            for index, step in enumerate(txn.steps):
                handler = handlers[index]
                attempted = index + 1
                if index in guarded:
                    results.append(guarded[index])
                    continue
                try:
                    res = handler.apply(host, step.params, pres[index])
                    if not isinstance(res, StepResult):
                        raise TypeError(f"{type(handler).__name__}.apply returned {type(res).__name__}, not a StepResult")
                except CONNECTION_LOST as exc:
                    timings[Phase.APPLY] = _perf() - start
                    results.append(StepResult(step.mechanism, ok=False, detail=describe(exc)))
                    raise self._lost(txn, rec, timings, Phase.APPLY, step_name(index, step), exc, results) from exc
                except Exception as exc:
                    if not handler.capturable:
                        irreversible.append(step_name(index, step))
                    res = StepResult(step.mechanism, ok=False, detail=describe(exc))
                    message = f"{step_name(index, step)} raised during apply: {describe(exc)}"
                    failure = TransactionError(type(exc).__name__, message, Phase.APPLY)
                else:
                    if not handler.capturable and (res.ok or res.changed):
                        irreversible.append(step_name(index, step))
                    if not res.ok:
                        message = f"{step_name(index, step)} failed: {res.detail or 'the handler gave no detail'}"
                        failure = TransactionError(StepFailedError.__name__, message, Phase.APPLY)
                results.append(res)
                if failure is not None:
                    break
            timings[Phase.APPLY] = _perf() - start
            self.trail.boundary(rec, txn, Phase.APPLY, failure is None)
            if failure is None:
                phase = Phase.VALIDATE
                start = _perf()
                for index, step in enumerate(txn.steps):
                    if index in guarded:
                        continue
                    if results[index].staged:
                        staged = True
                        continue
                    if staged and getattr(handlers[index], "decides_compliance", False) is True:
                        # A rule's own check reads what is in effect now, which a staged
                        # change is not until the reboot: it is deferred with that change.
                        continue
                    try:
                        holds = bool(handlers[index].validate(host, step.params))
                    except CONNECTION_LOST as exc:
                        timings[Phase.VALIDATE] = _perf() - start
                        raise self._lost(txn, rec, timings, Phase.VALIDATE, step_name(index, step), exc, results) from exc
                    except Exception as exc:
                        message = f"{step_name(index, step)} raised during validate: {describe(exc)}"
                        failure = TransactionError(type(exc).__name__, message, Phase.VALIDATE)
                        break
                    if not holds:
                        message = f"{step_name(index, step)} applied, but its desired state does not hold"
                        failure = TransactionError(ValidationFailedError.__name__, message, Phase.VALIDATE)
                        break
                timings[Phase.VALIDATE] = _perf() - start
        except _Lost:
            raise
        except BaseException as exc:  # KeyboardInterrupt or SystemExit inside a handler
            timings[phase] = _perf() - start
            step = txn.steps[index]
            if phase is Phase.APPLY and len(results) < attempted:
                if not handlers[index].capturable:
                    irreversible.append(step_name(index, step))
                results.append(StepResult(step.mechanism, ok=False, detail=f"interrupted by {type(exc).__name__}"))
            self.trail.boundary(rec, txn, phase, False)
            message = f"{step_name(index, step)} was interrupted by {type(exc).__name__} during {phase.value}"
            failure = TransactionError(type(exc).__name__, message, phase)
            try:
                undone = self._undo(txn, timings, host, handlers, pres, attempted, irreversible, results, failure)
            except _Lost as lost:
                self.trail.terminal(rec, lost.result, False)
            else:
                self._conclude(rec, undone)
            raise
        if failure is not None:
            if phase is Phase.VALIDATE:
                self.trail.boundary(rec, txn, Phase.VALIDATE, False)
            return self._undo(txn, timings, host, handlers, pres, attempted, irreversible, results, failure)
        if staged:
            return TransactionResult(txn.id, txn.rule, txn.host, Status.STAGED, False, timings, tuple(results))
        self.trail.boundary(rec, txn, Phase.VALIDATE, True)
        return TransactionResult(txn.id, txn.rule, txn.host, Status.COMMITTED, False, timings, tuple(results))

    def _undo(
        self,
        txn: Transaction,
        timings: Dict[Phase, float],
        host: Any,
        handlers: List[Handler],
        pres: List[Optional[PreState]],
        attempted: int,
        irreversible: List[str],
        results: List[StepResult],
        cause: TransactionError,
    ) -> TransactionResult:
        """Roll back the attempted capturable steps, last first; every one is tried."""
        start = _perf()
        try:
            rollbacks, failures = restore_steps(txn, host, handlers, pres, upto=attempted, reraise=CONNECTION_LOST)
        except CONNECTION_LOST as exc:
            timings[Phase.ROLLBACK] = _perf() - start
            raise self._lost(txn, None, timings, Phase.ROLLBACK, "the rollback", exc, results) from exc
        timings[Phase.ROLLBACK] = _perf() - start
        return rollback_outcome(txn, Status.ROLLED_BACK, rollbacks, failures, irreversible, timings, results, cause)

    def _lost(
        self,
        txn: Transaction,
        rec: Optional[PhaseRecorder],
        timings: Dict[Phase, float],
        phase: Phase,
        where: str,
        exc: BaseException,
        results: List[StepResult],
    ) -> "_Lost":
        """The host's connection died after apply began: what the run reports, left unjournaled."""
        if rec is not None:
            self.trail.boundary(rec, txn, phase, False)
        message = (
            f"the connection to host {txn.host} was lost during {phase.value} of {where}: {describe(exc)}; "
            "the host may be partly changed and the transaction is left interrupted in the journal: run "
            "kensa recover (Engine.recover) once the host is reachable again, to reverse what was applied"
        )
        error = TransactionError(type(exc).__name__, message, phase)
        return _Lost(TransactionResult(txn.id, txn.rule, txn.host, Status.ERRORED, False, timings, tuple(results), error=error))

    def _conclude(self, rec: PhaseRecorder, result: TransactionResult) -> TransactionResult:
        """Journal the terminal result, then emit its record and event."""
        if self._journal is not None:
            result = journaled(self._journal.finish, result)
        return self.trail.terminal(rec, result, result.status in _OK_STATUSES)

    def __repr__(self) -> str:
        return f"Engine(registry={self.registry!r}, audit={self.audit!r}, journal={self.journal!r})"
