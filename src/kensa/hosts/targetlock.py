"""One writer per target across processes: an ``flock`` per canonical target.

The engine's host locks serialize the threads of one process. Two processes
(two ``kensa remediate`` runs, a run and a ``kensa rollback``) on one target
would still read, edit and rename the same files over each other, losing
committed changes. :class:`TargetLocks` closes that gap: the engine holds an
exclusive ``flock`` of the target for a whole transaction, rollback by id or
recovery of one entry.

Lock files live in a private directory (mode 0700, owned by the user running
kensa; any other owner or mode is refused): for root ``/run/kensa/targets``,
shared by every journal, else ``<journal>.targets/`` next to the journal (see
:func:`target_lock_directory`), one file per target named by the SHA-256 of the
target's identity: the host object's ``identity`` attribute when it has one,
else its canonical key. Neither the directory nor a lock file is ever opened
through a symlink. Lock files are kept: removing one while another process
waits on it would let two processes hold "the" lock at once.

Waiting is bounded. A process that cannot take the lock within ``timeout``
seconds (default :data:`DEFAULT_TIMEOUT`) gets :class:`TargetLockTimeout`,
naming the target, the lock file and the pids holding it; nothing has been
changed then (the engine turns it into an ``errored`` result of that run, or
of each interrupted entry of that target in a recovery, which goes on with the
other targets; a rollback raises it). ``timeout=None`` waits as long as it takes.

A remote target is locked on the target too: its agent takes there the lock
a kensa run on that machine takes (:mod:`kensa.hosts.remotelock`). Both sides
name and open lock files with :mod:`kensa.hosts.lockfiles`.

A forked child never inherits a held lock: descriptors held at fork time are
closed in the child (its runs take the lock afresh, and wait for the parent's).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Set, Tuple, Union

from kensa.errors import TargetLockError, TargetLockTimeout
from kensa.hosts import lockfiles
from kensa.hosts.lockfiles import busy, holders, lock_name, open_lock, try_lock
from kensa.support.afterfork import reset_in_child

__all__ = [
    "DEFAULT_TIMEOUT",
    "SYSTEM_LOCK_DIRECTORY",
    "TargetLockError",
    "TargetLockTimeout",
    "TargetLocks",
    "target_lock_directory",
]

#: Seconds a run waits for another process's transaction on the same target.
DEFAULT_TIMEOUT = 300.0

#: Where root's target locks live, whatever journal a process uses (the agent's too).
SYSTEM_LOCK_DIRECTORY = Path(lockfiles.SYSTEM_LOCK_DIRECTORY)

# Short, so a waiter gets its turn between another process's back-to-back transactions.
_POLL_SECONDS = 0.005


def target_lock_directory(journal_path: Union[str, "os.PathLike[str]"], *, system: Optional[bool] = None) -> Path:
    """Where :func:`kensa.default_engine` keeps target locks for ``journal_path``.

    As root (``system`` defaults to that): :data:`SYSTEM_LOCK_DIRECTORY`, one
    set of locks for the machine, so processes that keep different journals (a
    batch job with a journal per task, an operator with ``--journal``) still
    exclude each other on one target; ``/run`` is emptied at boot, as locks
    should be. Otherwise next to the journal, at its real path (every spelling
    of one journal, a symlink to it included, shares one set): a user can only
    change trees of their own, through their own journal.
    """
    if system is None:
        system = os.geteuid() == 0 and os.path.isdir(SYSTEM_LOCK_DIRECTORY.parent.parent)
    if system:
        return SYSTEM_LOCK_DIRECTORY
    return Path(os.path.realpath(os.fspath(journal_path)) + ".targets")


class TargetLocks:
    """Exclusive cross-process locks of targets, in ``directory``; see the module docstring.

    ``timeout`` is in seconds (None waits forever, 0 tries once). Safe to share
    between threads. A hold inside a hold of the same target by the same thread
    takes nothing (the enclosing one keeps the lock): a command holding a target
    for its whole run, around the transactions' own holds.
    """

    def __init__(self, directory: Union[str, "os.PathLike[str]"], *, timeout: Optional[float] = DEFAULT_TIMEOUT) -> None:
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout < 0):
            raise ValueError(f"target lock timeout must be a non-negative number of seconds or None, got {timeout!r}")
        self._directory = Path(os.fspath(directory))
        self._timeout = timeout
        # Descriptors of the locks held now, per hold (dict set/pop are atomic). A
        # child drops them all; a hold that was open in the forking thread then finds
        # its entry gone and closes nothing (the number may name another file by then).
        self._held: Dict[object, int] = {}
        # (thread, lock file name) of the holds open now: a nested hold of the same thread is free.
        self._mine: Set[Tuple[int, str]] = set()
        reset_in_child(self)

    @property
    def directory(self) -> Path:
        """The private directory holding the lock files."""
        return self._directory

    @property
    def timeout(self) -> Optional[float]:
        """Seconds :meth:`hold` waits for another holder (None: forever)."""
        return self._timeout

    def path_for(self, key: str, identity: Any = None) -> Path:
        """The lock file of the target ``key`` (``identity``, when given, names it instead)."""
        return self._directory / lock_name(key, identity)

    @contextlib.contextmanager
    def hold(self, key: str, identity: Any = None) -> Iterator[None]:
        """Hold the target's lock for the ``with`` block; raises TargetLockTimeout after the timeout."""
        name = lock_name(key, identity)
        mine = (threading.get_ident(), name)
        if mine in self._mine:
            yield
            return
        fd, path = open_lock(self._directory, name, key)
        try:
            self._take(fd, key, path)
        except BaseException:
            os.close(fd)
            raise
        token = object()
        self._held[token] = fd
        self._mine.add(mine)
        try:
            yield
        finally:
            self._mine.discard(mine)
            held = self._held.pop(token, None)
            if held is not None:
                os.close(held)  # closing the only descriptor releases the flock

    def _take(self, fd: int, key: str, path: str) -> None:
        deadline = None if self._timeout is None else time.monotonic() + self._timeout
        while not try_lock(fd, key, path):
            if deadline is None:
                time.sleep(_POLL_SECONDS)
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise busy(key, holders(fd), str(path), self._timeout)
            time.sleep(min(_POLL_SECONDS, remaining))

    def _after_fork_in_child(self) -> None:
        # The child shares the parent's open lock descriptions: keeping them would
        # hold the parent's locks until the child exits, and block the child itself.
        held: Tuple[int, ...] = tuple(self._held.values())
        self._held = {}
        self._mine = set()
        for fd in held:
            with contextlib.suppress(OSError):
                os.close(fd)

    def __repr__(self) -> str:
        return f"TargetLocks({os.fspath(self._directory)!r}, timeout={self._timeout!r})"
