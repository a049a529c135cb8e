"""Who may write a target when: one run per host key in this process, one writer
per target across processes, and runs never overlapping a recovery."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from typing import Any, Callable, ContextManager, Dict, Iterator, Optional, Union

from kensa.engine.protocols import TargetLock
from kensa.hosts.targetlock import DEFAULT_TIMEOUT
from kensa.support.afterfork import reset_in_child

__all__ = ["Locks"]


_OnTarget = Callable[[Optional[float], Optional[float]], ContextManager[None]]


@contextlib.contextmanager
def _within_one_timeout(held: ContextManager[None], on_target: _OnTarget, timeout: Optional[float]) -> Iterator[None]:
    """The controller's lock, then the target's own by the same deadline: the target's wait gets
    what is left of ``timeout`` (nothing, when the first took it all: one try), not a new one."""
    deadline = None if timeout is None else time.monotonic() + timeout
    with held, on_target(timeout, deadline):
        yield


class _NoTargetLock:
    """The engine's target lock unless one is injected: threads of one process only."""

    def hold(self, key: str, identity: Any = None) -> ContextManager[None]:
        return contextlib.nullcontext()

    def __repr__(self) -> str:
        return "NoTargetLock()"


def _as_given(key: str) -> Any:
    return key


class Locks:
    """The locks of one engine and the resolution of host keys they are taken on.

    ``hosts`` turns a host key into the object handlers receive; ``journal``,
    when it has ``lock(exclusive=...)``, gives the run lock: runs share it,
    recovery holds it exclusively. ``target_lock`` serializes processes per
    target (see :class:`~kensa.engine.protocols.TargetLock`).
    """

    def __init__(self, hosts: Optional[Callable[[str], Any]], journal: Any, target_lock: Optional[TargetLock]) -> None:
        self.hosts: Callable[[str], Any] = hosts if hosts is not None else _as_given
        self.journal = journal
        self.target_lock: TargetLock = target_lock if target_lock is not None else _NoTargetLock()
        # One lock per host key, kept for the engine's life (a few bytes per host).
        self._host_locks: Dict[str, threading.Lock] = {}
        self._host_locks_guard = threading.Lock()
        # The journal's shared run lock, taken once however many runs nest.
        self._run_lock_guard = threading.Lock()
        self._run_lock_users = 0
        self._run_lock_held: Optional[contextlib.ExitStack] = None
        self._run_lock_pid = 0
        reset_in_child(self)

    def resolve(self, key: str) -> Union[Any, BaseException]:
        """The host object of ``key``, or the exception resolving it raised (preflight reports it)."""
        try:
            return self.hosts(key)
        except Exception as exc:
            return exc

    def host(self, key: str) -> threading.Lock:
        """This process's lock of host ``key``."""
        lock = self._host_locks.get(key)
        if lock is None:
            with self._host_locks_guard:
                lock = self._host_locks.setdefault(key, threading.Lock())
        return lock

    def target(self, key: str, host: Union[Any, BaseException]) -> ContextManager[None]:
        """The cross-process lock of target ``key`` (``host``: its resolved object, or why it did not resolve).

        A host that other machines write too (a remote one) has ``hold_target_lock(timeout,
        deadline)``: the lock its own machine's kensa runs take, taken after this process's one.
        Both are waited for within one :attr:`target_timeout`: what the first leaves of it is
        the second's, so a run is errored at that deadline, never after twice the timeout."""
        # A host that did not resolve is locked under its key; its run ends errored in preflight.
        if isinstance(host, BaseException):
            return self.target_lock.hold(key, None)
        held = self.target_lock.hold(key, getattr(host, "identity", None))
        on_target: Optional[_OnTarget] = getattr(host, "hold_target_lock", None)
        if on_target is None:
            return held
        return _within_one_timeout(held, on_target, self.target_timeout)

    @property
    def target_timeout(self) -> Optional[float]:
        """Seconds a run waits for another process's hold of a target (None: no limit)."""
        found: Optional[float] = getattr(self.target_lock, "timeout", DEFAULT_TIMEOUT)
        return found

    @contextlib.contextmanager
    def writer(self, key: str, resolved: Optional[Union[Any, BaseException]] = None) -> Iterator[Union[Any, BaseException]]:
        """Be the one writer of target ``key``: this process's lock, then the cross-process one.
        Yields the host object the locks were taken on (or why it did not resolve): the block
        must change that one, not resolve ``key`` again (a new connection holds no lock).
        ``resolved`` is what :meth:`resolve` gave for ``key`` already, if the caller has it."""
        with self.host(key):
            host = self.resolve(key) if resolved is None else resolved
            with self.target(key, host):
                yield host

    def shared_run(self) -> ContextManager[None]:
        """The journal's run lock, shared with this engine's other runs; none without a journal lock."""
        make_lock = getattr(self.journal, "lock", None)
        if make_lock is None:
            return contextlib.nullcontext()
        return self._holding_run_lock(make_lock)

    def exclusive_run(self) -> ContextManager[Any]:
        """The journal's run lock held alone: no run overlaps (recovery)."""
        make_lock: Optional[Callable[..., ContextManager[Any]]] = getattr(self.journal, "lock", None)
        return contextlib.nullcontext() if make_lock is None else make_lock(exclusive=True)

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

    def _after_fork_in_child(self) -> None:
        # Runs single-threaded in the child: a parent thread may have held any of
        # these at fork time, and that thread does not exist here.
        self._host_locks = {}
        self._host_locks_guard = threading.Lock()
        self._run_lock_guard = threading.Lock()
