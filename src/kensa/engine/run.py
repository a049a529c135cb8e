"""The transaction engine: capture, apply, validate, then commit or roll back.

The engine talks only to protocols it defines here (handlers, the phase emitter,
the journal); it imports no netlink, cffi or sqlite code. The real parts are
wired by :func:`default_engine`, which imports them only when called.

How a transaction runs (:meth:`Engine.run`):

1. preflight: every step's mechanism is registered, a transactional rule has
   only capturable steps, and the host key resolves. Failure: ``errored``.
2. check: when every step's ``validate()`` already holds the result is
   ``skipped``; nothing is captured or applied.
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

Emission never changes an outcome: an emitter that raises is counted in
:attr:`Engine.audit_errors`; event subscribers run on threads of their own
(see :mod:`kensa.events`).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import (
    Any,
    Callable,
    ContextManager,
    Dict,
    Iterable,
    Iterator,
    List,
    Mapping,
    Optional,
    Protocol,
    Sequence,
    Tuple,
    Union,
    cast,
    runtime_checkable,
)

from kensa.errors import DuplicateMechanismError, KensaError, NotCapturableError, RollbackFailedError, RollbackRefusedError, StepFailedError, UnknownMechanismError, ValidationFailedError, WiringError
from kensa.support.afterfork import reset_in_child
from kensa.engine.events import DEFAULT_QUEUE_SIZE, Callback, EventBus, Subscription
from kensa.model import (
    Assessment,
    Phase,
    PreState,
    RollbackResult,
    Status,
    Step,
    StepResult,
    Transaction,
    TransactionError,
    TransactionResult,
)

__all__ = [
    "DuplicateMechanismError",
    "Engine",
    "Handler",
    "Journal",
    "NotCapturableError",
    "PhaseEmitter",
    "PhaseRecorder",
    "Registry",
    "Restorable",
    "RollbackFailedError",
    "RollbackRefusedError",
    "StepFailedError",
    "TargetLock",
    "UnknownMechanismError",
    "ValidationFailedError",
    "WiringError",
    "default_engine",
]


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

    def assess(self, host: Any, pre: PreState) -> Assessment: ...

    def restore(self, host: Any, pre: PreState, assessment: Assessment, force: bool = False) -> RollbackResult: ...

    def planned(self, host: Any, pre: PreState) -> Mapping[str, Any]: ...

    def settled(self, host: Any, pre: PreState, assessment: Assessment, force: bool = False) -> Mapping[str, Any]: ...


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
    """One writer per target across processes (:class:`kensa.targetlock.TargetLocks`).

    ``hold(key, identity)`` is a context manager held around a whole
    transaction, rollback by id or recovery of one entry on the target
    ``key``; ``identity`` is the host object's ``identity`` attribute, or None.
    It raises a KensaError when the lock cannot be taken; nothing has run then.
    """

    def hold(self, key: str, identity: Any = None) -> ContextManager[None]: ...


class Registry:
    """Mechanism name -> handler instance; each name is registered once.

    Register handlers before running transactions: lookups take no lock.
    """

    def __init__(self, handlers: Union[Mapping[str, Handler], Iterable[Handler]] = ()) -> None:
        self._handlers: Dict[str, Handler] = {}
        if isinstance(handlers, Mapping):
            for name, handler in handlers.items():
                self.register(handler, name=name)
        else:
            for handler in handlers:
                self.register(handler)

    def register(self, handler: Handler, name: Optional[str] = None) -> Handler:
        """Register ``handler`` under ``name`` (default: ``handler.name``) and return it."""
        if not isinstance(handler, Handler):
            raise TypeError(
                f"{handler!r} is not a handler: it needs name, capturable, capture, apply, validate and rollback"
            )
        key = handler.name if name is None else name
        if not isinstance(key, str) or not key:
            raise ValueError(f"mechanism name must be a non-empty string, got {key!r} for {handler!r}")
        existing = self._handlers.get(key)
        if existing is not None:
            raise DuplicateMechanismError(
                f"mechanism {key!r} is already registered ({type(existing).__name__}); "
                f"cannot also register {type(handler).__name__} under it: pick another name"
            )
        self._handlers[key] = handler
        return handler

    def get(self, name: str) -> Optional[Handler]:
        """The handler of ``name``, or None."""
        return self._handlers.get(name)

    def __getitem__(self, name: str) -> Handler:
        handler = self._handlers.get(name)
        if handler is None:
            known = ", ".join(sorted(self._handlers)) or "none"
            raise UnknownMechanismError(
                f"no handler is registered for mechanism {name!r} (registered: {known}); "
                "fix the step's mechanism or register a handler for it"
            )
        return handler

    def __contains__(self, name: object) -> bool:
        return name in self._handlers

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._handlers))

    def __len__(self) -> int:
        return len(self._handlers)

    def __repr__(self) -> str:
        return f"Registry({sorted(self._handlers)!r})"


class _NoopRecorder:
    __slots__ = ()

    def emit(self, phase: str, ok: bool) -> None:
        pass


_NOOP_RECORDER = _NoopRecorder()


class _NoopEmitter:
    """The engine's emitter unless one is injected."""

    def transaction(self, txn: str, rule: str, host: str) -> PhaseRecorder:
        return _NOOP_RECORDER

    def __repr__(self) -> str:
        return "NoopEmitter()"


class _NoTargetLock:
    """The engine's target lock unless one is injected: threads of one process only."""

    def hold(self, key: str, identity: Any = None) -> ContextManager[None]:
        return contextlib.nullcontext()

    def __repr__(self) -> str:
        return "NoTargetLock()"


def _same_key(key: str) -> str:
    return key


def _host_key(key: str) -> Any:
    return key


_perf = time.perf_counter
_OK_STATUSES = frozenset((Status.COMMITTED, Status.SKIPPED, Status.STAGED))


def _describe(exc: BaseException) -> str:
    try:
        text = str(exc)
    except Exception:  # an exception whose __str__ raises still gets described
        text = object.__repr__(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _step_name(index: int, step: Step) -> str:
    return f"step {index + 1} ({step.mechanism})"


class Engine:
    """Runs transactions through registered handlers; see the module docstring.

    ``registry`` maps mechanism names to handlers (a :class:`Registry` or a plain
    mapping). ``hosts`` turns a transaction's host key into the object handlers
    receive (default: the key itself); ``host_key`` turns the spellings of one
    target into one canonical key, under which the transaction runs, is
    locked, journaled and audited (default: ``hosts.canonical_key`` when the
    resolver has one, as :func:`kensa.host.resolve_host` does, else keys are
    taken as they are). ``audit`` defaults to a no-op emitter,
    ``journal`` to none, ``events`` to a fresh :class:`~kensa.events.EventBus`,
    ``target_lock`` to none (only this process's threads are serialized; see
    :class:`TargetLock`). Safe to share between threads: runs on the same host
    key serialize, runs on different hosts proceed in parallel. Safe across
    ``fork``: the child gets fresh locks (see :mod:`kensa.events` too).
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
        # A hosts callable may name its own canonicalizer (kensa.host.resolve_host does).
        self.host_key: Callable[[str], str] = (
            host_key if host_key is not None else getattr(hosts, "canonical_key", _same_key)
        )
        self.audit: PhaseEmitter = audit if audit is not None else _NoopEmitter()
        self.journal = journal
        self.hosts: Callable[[str], Any] = hosts if hosts is not None else _host_key
        self.events = events if events is not None else EventBus()
        self.target_lock: TargetLock = target_lock if target_lock is not None else _NoTargetLock()
        # One lock per host key, kept for the engine's life (a few bytes per host).
        self._host_locks: Dict[str, threading.Lock] = {}
        self._host_locks_guard = threading.Lock()
        self._audit_lock = threading.Lock()
        self._audit_errors = 0
        self._last_audit_error: Optional[BaseException] = None
        # The journal's shared run lock, taken once however many runs nest.
        self._run_lock_guard = threading.Lock()
        self._run_lock_users = 0
        self._run_lock_held: Optional[contextlib.ExitStack] = None
        self._run_lock_pid = 0
        reset_in_child(self)

    @property
    def audit_errors(self) -> int:
        """How many calls into the audit emitter raised (each was ignored)."""
        with self._audit_lock:
            return self._audit_errors

    @property
    def last_audit_error(self) -> Optional[BaseException]:
        """The most recent exception the audit emitter raised, if any."""
        with self._audit_lock:
            return self._last_audit_error

    def subscribe(self, callback: Callback, maxsize: int = DEFAULT_QUEUE_SIZE) -> Subscription:
        """Receive this engine's phase and terminal events on a thread of the subscriber's own."""
        return self.events.subscribe(callback, maxsize)

    def run(self, txn: Transaction) -> TransactionResult:
        """Run one transaction to a terminal result; handler errors never escape.

        With a journal that has a ``lock()`` method the run holds its shared
        lock, so it never overlaps :meth:`recover`; a KensaError from taking
        that lock (recovery is in progress) is raised before anything runs.
        The run also holds the target lock of its host (see :class:`TargetLock`).
        When that cannot be taken (another process kept the host busy past the
        lock's timeout) the result is ``errored`` in preflight, journaled and
        audited, with nothing run: a batch goes on with its other transactions.
        """
        txn = self._canonical(txn)
        with self._shared_run_lock(), self._lock_for(txn.host):
            held = contextlib.ExitStack()
            start = _perf()
            # The host is resolved once: the object the lock is keyed on is the one the run changes.
            host = self._resolve(txn.host)
            try:
                held.enter_context(self._hold_target(txn.host, host))
            except KensaError as exc:
                return self._target_busy(txn, exc, _perf() - start)
            with held:
                return self._run(txn, host)

    def run_many(self, txns: Iterable[Transaction], workers: Optional[int] = None) -> List[TransactionResult]:
        """Run transactions, different hosts in parallel; results in input order.

        Transactions on the same host run one after another in input order.
        ``workers`` caps the threads (default: as ThreadPoolExecutor chooses).
        On KeyboardInterrupt, or when a run raises, transactions not yet started
        are not started; the running ones finish, then the exception propagates.
        The journal's shared lock (see :meth:`run`) is taken once for the batch.
        """
        with self._shared_run_lock():
            return self._run_many(txns, workers)

    def recover(self) -> List[TransactionResult]:
        """Roll back every interrupted transaction in the journal; see :mod:`kensa.recovery`."""
        from kensa.engine.recovery import recover_interrupted

        return recover_interrupted(self)

    def rollback(self, txn_id: str, *, force: bool = False) -> TransactionResult:
        """Reverse committed transaction ``txn_id`` from its journaled pre-state; see :mod:`kensa.recovery`."""
        from kensa.engine.recovery import rollback_committed

        return rollback_committed(self, txn_id, force=force)

    def _shared_run_lock(self) -> ContextManager[None]:
        make_lock = getattr(self.journal, "lock", None)
        if make_lock is None:
            return contextlib.nullcontext()
        return self._holding_run_lock(make_lock)

    @contextlib.contextmanager
    def _holding_run_lock(self, make_lock: Callable[..., Any]) -> Iterator[None]:
        # flock locks belong to an open file: nested and concurrent runs of this
        # engine share one, so run_many pays one lock for the batch and a run
        # inside it never waits on itself.
        with self._run_lock_guard:
            if self._run_lock_pid != os.getpid():
                # Forked while a run held it: the child's runs take their own.
                if self._run_lock_held is not None:
                    self._run_lock_held.close()
                self._run_lock_held, self._run_lock_users = None, 0
                self._run_lock_pid = os.getpid()
            if self._run_lock_users == 0:
                held = contextlib.ExitStack()
                held.enter_context(make_lock(exclusive=False))
                self._run_lock_held = held
            self._run_lock_users += 1
        try:
            yield
        finally:
            with self._run_lock_guard:
                self._run_lock_users -= 1
                if self._run_lock_users == 0 and self._run_lock_held is not None:
                    self._run_lock_held.close()
                    self._run_lock_held = None

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

    def _lock_for(self, key: str) -> threading.Lock:
        lock = self._host_locks.get(key)
        if lock is None:
            with self._host_locks_guard:
                lock = self._host_locks.setdefault(key, threading.Lock())
        return lock

    @contextlib.contextmanager
    def _hold_host(self, key: str) -> Iterator[None]:
        """Be the one writer of target ``key``: this process's lock, then the cross-process one."""
        with self._lock_for(key), self._hold_target(key, self._resolve(key)):
            yield

    def _resolve(self, key: str) -> Union[Any, BaseException]:
        """The host object of ``key``, or the exception resolving it raised (preflight reports it)."""
        try:
            return self.hosts(key)
        except Exception as exc:
            return exc

    def _hold_target(self, key: str, host: Union[Any, BaseException]) -> ContextManager[None]:
        # A host that did not resolve is locked under its key; its run ends errored in preflight.
        identity = None if isinstance(host, BaseException) else getattr(host, "identity", None)
        return self.target_lock.hold(key, identity)

    def _recorder(self, txn: Transaction) -> PhaseRecorder:
        try:
            return self.audit.transaction(txn.id, txn.rule, txn.host)
        except Exception as exc:
            self._audit_failed(exc)
            return _NOOP_RECORDER

    def _target_busy(self, txn: Transaction, exc: KensaError, waited: float) -> TransactionResult:
        rec = self._recorder(txn)
        self._boundary(rec, txn, Phase.STARTED, True)
        timings = {Phase.PREFLIGHT: waited}
        return self._conclude(rec, self._errored(txn, timings, type(exc).__name__, str(exc), Phase.PREFLIGHT))

    def _after_fork_in_child(self) -> None:
        # Runs single-threaded in the child: any of these may have been held by a
        # parent thread at fork time, and that thread does not exist here.
        self._host_locks = {}
        self._host_locks_guard = threading.Lock()
        self._audit_lock = threading.Lock()
        self._run_lock_guard = threading.Lock()

    def _run(self, txn: Transaction, resolved: Union[Any, BaseException]) -> TransactionResult:
        rec = self._recorder(txn)
        self._boundary(rec, txn, Phase.STARTED, True)
        timings: Dict[Phase, float] = {}
        try:
            prepared = self._prepare(txn, rec, timings, resolved)
        except BaseException as exc:  # KeyboardInterrupt or SystemExit: nothing was applied
            phase = next((p for p in (Phase.PREFLIGHT, Phase.CHECK, Phase.CAPTURE) if p not in timings), Phase.CAPTURE)
            message = f"interrupted by {type(exc).__name__} during {phase.value}; nothing was applied"
            self._conclude(rec, self._errored(txn, timings, type(exc).__name__, message, phase))
            raise
        if isinstance(prepared, TransactionResult):
            return self._conclude(rec, prepared)
        host, handlers, pres = prepared
        return self._conclude(rec, self._change(txn, rec, timings, host, handlers, pres))

    def _prepare(
        self, txn: Transaction, rec: PhaseRecorder, timings: Dict[Phase, float], resolved: Union[Any, BaseException]
    ) -> Union[TransactionResult, Tuple[Any, List[Handler], List[Optional[PreState]]]]:
        """Preflight, compliance check, capture and journal intent; nothing is applied."""
        start = _perf()
        handlers: List[Handler] = []
        try:
            for index, step in enumerate(txn.steps):
                handler = self.registry[step.mechanism]
                if txn.transactional and not handler.capturable:
                    raise NotCapturableError(
                        f"rule {txn.rule!r}: {_step_name(index, step)} cannot capture its pre-state, so the "
                        "rule cannot be transactional; mark the rule non-transactional or use a capturable mechanism"
                    )
                handlers.append(handler)
        except Exception as exc:
            timings[Phase.PREFLIGHT] = _perf() - start
            return self._errored(txn, timings, type(exc).__name__, str(exc), Phase.PREFLIGHT)
        if isinstance(resolved, BaseException):
            timings[Phase.PREFLIGHT] = _perf() - start
            message = f"could not resolve host {txn.host!r}: {_describe(resolved)}"
            return self._errored(txn, timings, type(resolved).__name__, message, Phase.PREFLIGHT)
        host = resolved
        timings[Phase.PREFLIGHT] = _perf() - start

        start = _perf()
        compliant = True
        index = 0
        try:
            for index, (step, handler) in enumerate(zip(txn.steps, handlers)):
                if not bool(handler.validate(host, step.params)):
                    compliant = False
                    break
        except Exception as exc:
            timings[Phase.CHECK] = _perf() - start
            message = f"{_step_name(index, txn.steps[index])} raised while checking compliance: {_describe(exc)}"
            return self._errored(txn, timings, type(exc).__name__, message, Phase.CHECK)
        timings[Phase.CHECK] = _perf() - start
        if compliant:
            return TransactionResult(txn.id, txn.rule, txn.host, Status.SKIPPED, True, timings)

        start = _perf()
        pres: List[Optional[PreState]] = []
        # Each step captures what the steps before it will leave (see Restorable.planned).
        view = host
        try:
            for index, (step, handler) in enumerate(zip(txn.steps, handlers)):
                if not handler.capturable:
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
            message = f"{_step_name(index, txn.steps[index])} could not capture its pre-state: {_describe(exc)}"
            return self._errored(txn, timings, type(exc).__name__, message, Phase.CAPTURE)
        if self.journal is not None:
            try:
                self.journal.begin(txn, pres)
            except Exception as exc:
                timings[Phase.CAPTURE] = _perf() - start
                message = f"the journal could not record the intent, so nothing was applied: {_describe(exc)}"
                return self._errored(txn, timings, type(exc).__name__, message, Phase.CAPTURE)
        timings[Phase.CAPTURE] = _perf() - start
        self._boundary(rec, txn, Phase.CAPTURE, True)
        return host, handlers, pres

    def _change(
        self,
        txn: Transaction,
        rec: PhaseRecorder,
        timings: Dict[Phase, float],
        host: Any,
        handlers: List[Handler],
        pres: List[Optional[PreState]],
    ) -> TransactionResult:
        """Apply, validate, and commit or roll back."""
        results: List[StepResult] = []
        attempted = 0
        irreversible = False  # a non-capturable step may have changed the host
        failure: Optional[TransactionError] = None
        staged = False
        phase = Phase.APPLY
        index = 0
        start = _perf()
        try:
            for index, step in enumerate(txn.steps):
                handler = handlers[index]
                attempted = index + 1
                try:
                    res = handler.apply(host, step.params, pres[index])
                    if not isinstance(res, StepResult):
                        raise TypeError(f"{type(handler).__name__}.apply returned {type(res).__name__}, not a StepResult")
                except Exception as exc:
                    irreversible = irreversible or not handler.capturable
                    res = StepResult(step.mechanism, ok=False, detail=_describe(exc))
                    message = f"{_step_name(index, step)} raised during apply: {_describe(exc)}"
                    failure = TransactionError(type(exc).__name__, message, Phase.APPLY)
                else:
                    if not handler.capturable and (res.ok or res.changed):
                        irreversible = True
                    if not res.ok:
                        message = f"{_step_name(index, step)} failed: {res.detail or 'the handler gave no detail'}"
                        failure = TransactionError(StepFailedError.__name__, message, Phase.APPLY)
                results.append(res)
                if failure is not None:
                    break
            timings[Phase.APPLY] = _perf() - start
            self._boundary(rec, txn, Phase.APPLY, failure is None)
            if failure is None:
                phase = Phase.VALIDATE
                start = _perf()
                for index, step in enumerate(txn.steps):
                    if results[index].staged:
                        staged = True
                        continue
                    try:
                        holds = bool(handlers[index].validate(host, step.params))
                    except Exception as exc:
                        message = f"{_step_name(index, step)} raised during validate: {_describe(exc)}"
                        failure = TransactionError(type(exc).__name__, message, Phase.VALIDATE)
                        break
                    if not holds:
                        message = f"{_step_name(index, step)} applied, but its desired state does not hold"
                        failure = TransactionError(ValidationFailedError.__name__, message, Phase.VALIDATE)
                        break
                timings[Phase.VALIDATE] = _perf() - start
        except BaseException as exc:  # KeyboardInterrupt or SystemExit inside a handler
            timings[phase] = _perf() - start
            step = txn.steps[index]
            if phase is Phase.APPLY and len(results) < attempted:
                irreversible = irreversible or not handlers[index].capturable
                results.append(StepResult(step.mechanism, ok=False, detail=f"interrupted by {type(exc).__name__}"))
            self._boundary(rec, txn, phase, False)
            message = f"{_step_name(index, step)} was interrupted by {type(exc).__name__} during {phase.value}"
            failure = TransactionError(type(exc).__name__, message, phase)
            self._conclude(rec, self._undo(txn, timings, host, handlers, pres, attempted, irreversible, results, failure))
            raise
        if failure is not None:
            if phase is Phase.VALIDATE:
                self._boundary(rec, txn, Phase.VALIDATE, False)
            return self._undo(txn, timings, host, handlers, pres, attempted, irreversible, results, failure)
        if staged:
            return TransactionResult(txn.id, txn.rule, txn.host, Status.STAGED, False, timings, tuple(results))
        self._boundary(rec, txn, Phase.VALIDATE, True)
        return TransactionResult(txn.id, txn.rule, txn.host, Status.COMMITTED, False, timings, tuple(results))

    def _undo(
        self,
        txn: Transaction,
        timings: Dict[Phase, float],
        host: Any,
        handlers: List[Handler],
        pres: List[Optional[PreState]],
        attempted: int,
        irreversible: bool,
        results: List[StepResult],
        cause: TransactionError,
    ) -> TransactionResult:
        """Roll back the attempted capturable steps, last first; every one is tried."""
        rollbacks: List[RollbackResult] = []
        first_failed = ""
        start = _perf()
        for index in range(attempted - 1, -1, -1):
            pre = pres[index]
            if pre is None:
                continue
            step = txn.steps[index]
            try:
                rb = handlers[index].rollback(host, pre)
                if not isinstance(rb, RollbackResult):
                    raise TypeError(f"{type(handlers[index]).__name__}.rollback returned {type(rb).__name__}")
            except Exception as exc:
                rb = RollbackResult(step.mechanism, ok=False, detail=_describe(exc))
            if not rb.ok and not first_failed:
                first_failed = f"{_step_name(index, step)}: {rb.detail or 'the handler gave no detail'}"
            rollbacks.append(rb)
        timings[Phase.ROLLBACK] = _perf() - start
        if first_failed:
            failed = sum(1 for rb in rollbacks if not rb.ok)
            message = (
                f"{failed} of {len(rollbacks)} rollbacks failed, the host is not in its pre-state "
                f"(first: {first_failed}); rolled back because {cause.message}"
            )
            status, unchanged = Status.ROLLBACK_FAILED, False
            cause = TransactionError(RollbackFailedError.__name__, message, Phase.ROLLBACK)
        elif irreversible:
            status, unchanged = Status.PARTIALLY_APPLIED, False
        else:
            status, unchanged = Status.ROLLED_BACK, True
        return TransactionResult(txn.id, txn.rule, txn.host, status, unchanged, timings, tuple(results), tuple(rollbacks), cause)

    def _errored(
        self, txn: Transaction, timings: Dict[Phase, float], kind: str, message: str, phase: Phase
    ) -> TransactionResult:
        error = TransactionError(kind, message, phase)
        return TransactionResult(txn.id, txn.rule, txn.host, Status.ERRORED, True, timings, error=error)

    def _conclude(self, rec: PhaseRecorder, result: TransactionResult) -> TransactionResult:
        """Journal the terminal result, then emit its record and event."""
        if self.journal is not None:
            start = _perf()
            error = result.error
            status = result.status
            try:
                self.journal.finish(result)
            except Exception as exc:
                was = f"{status.value}: {error.message}" if error is not None else status.value
                message = f"the journal could not record the result ({was}): {_describe(exc)}"
                error = TransactionError(type(exc).__name__, message, Phase.COMMIT)
                status = Status.ERRORED
            timings = dict(result.timings)
            timings[Phase.COMMIT] = _perf() - start
            result = replace(result, status=status, error=error, timings=timings)
        return self._terminal(rec, result, result.status in _OK_STATUSES)

    def _terminal(self, rec: PhaseRecorder, result: TransactionResult, ok: bool) -> TransactionResult:
        """Emit the terminal record and event of ``result`` (recovery uses it too)."""
        try:
            rec.emit(result.status.value, ok)
        except Exception as exc:
            self._audit_failed(exc)
        self._journal_audit_sequences(result.txn_id, rec)
        self.events.publish_terminal(result, ok)
        return result

    def _journal_audit_sequences(self, txn_id: str, rec: PhaseRecorder) -> None:
        """Journal the sequence numbers of the records ``rec`` emitted, when both sides support it.

        Optional on both protocols (a recorder's ``sequences``, a journal's
        ``record_audit_sequences``); a failure is an audit error, never an outcome.
        """
        sequences = getattr(rec, "sequences", None)
        record = getattr(self.journal, "record_audit_sequences", None)
        if not sequences or record is None:
            return
        try:
            record(txn_id, list(sequences))
        except Exception as exc:
            self._audit_failed(exc)

    def _boundary(self, rec: PhaseRecorder, txn: Transaction, phase: Phase, ok: bool) -> None:
        try:
            rec.emit(phase.value, ok)
        except Exception as exc:
            self._audit_failed(exc)
        self.events.publish_phase(txn.id, txn.rule, txn.host, phase, ok)

    def _audit_failed(self, exc: BaseException) -> None:
        with self._audit_lock:
            self._audit_errors += 1
            self._last_audit_error = exc

    def __repr__(self) -> str:
        return f"Engine(registry={self.registry!r}, audit={self.audit!r}, journal={self.journal!r})"


def default_engine(
    journal_path: Optional[str] = None,
    *,
    audit: bool = True,
    events: Optional[EventBus] = None,
    target_lock_timeout: Optional[float] = None,
) -> Engine:
    """The production engine: built-in handlers, local hosts, SQLite journal, kernel audit.

    Host keys are ``"localhost"`` (this machine, ``/``) or the absolute path of
    a target root (:func:`kensa.host.resolve_host`); spellings of one target are
    made one key (:func:`kensa.host.canonical_host_key`).
    ``journal_path``: default :func:`kensa.journal.default_journal_path`.
    ``audit=False`` turns kernel audit records off. Runs, rollbacks and
    recovery hold a cross-process lock of their target
    (:class:`kensa.targetlock.TargetLocks`, in ``<journal>.targets/``), waiting
    at most ``target_lock_timeout`` seconds (None: the default,
    :data:`kensa.targetlock.DEFAULT_TIMEOUT`; ``float("inf")`` waits forever)
    for another process's transaction on it. The parts are imported here,
    so ``import kensa`` stays free of cffi and sqlite; a part that cannot be
    imported raises :class:`WiringError` (an ImportError) naming it.
    """
    try:
        from kensa.handlers import default_registry
    except ImportError as exc:
        raise WiringError(f"default_engine needs kensa.handlers.default_registry: {exc}; reinstall kensa") from exc
    try:
        from kensa.hosts.local import resolve_host
    except ImportError as exc:
        raise WiringError(f"default_engine needs kensa.host.resolve_host: {exc}; reinstall kensa") from exc
    try:
        from kensa.journal.store import SqliteJournal, default_journal_path
    except ImportError as exc:
        raise WiringError(f"default_engine needs kensa.journal.SqliteJournal: {exc}; reinstall kensa") from exc
    emitter: Optional[PhaseEmitter] = None
    if audit:
        try:
            from kensa.audit.emitter import open_emitter
        except ImportError as exc:
            raise WiringError(f"default_engine needs kensa.audit.open_emitter: {exc}; reinstall kensa") from exc
        emitter = open_emitter()

    try:
        from kensa.hosts.targetlock import DEFAULT_TIMEOUT, TargetLocks, target_lock_directory
    except ImportError as exc:
        raise WiringError(f"default_engine needs kensa.targetlock.TargetLocks: {exc}; reinstall kensa") from exc

    path = journal_path if journal_path is not None else default_journal_path()
    journal = SqliteJournal(path)
    timeout = DEFAULT_TIMEOUT if target_lock_timeout is None else target_lock_timeout
    locks = TargetLocks(target_lock_directory(path), timeout=timeout)
    return Engine(
        default_registry(), audit=emitter, journal=journal, hosts=resolve_host, events=events, target_lock=locks
    )
