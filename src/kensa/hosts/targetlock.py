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
changed then (the engine turns it into an ``errored`` result of that run; a
rollback or recovery raises it). ``timeout=None`` waits as long as it takes.

A forked child never inherits a held lock: descriptors held at fork time are
closed in the child (its runs take the lock afresh, and wait for the parent's).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import stat
import time
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Tuple, Union

from kensa.support.afterfork import reset_in_child
from kensa.support.flocks import flock_holders
from kensa.errors import TargetLockError, TargetLockTimeout

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

# Short, so a waiter gets its turn between another process's back-to-back transactions.
_POLL_SECONDS = 0.005


#: Where root's target locks live, whatever journal a process uses.
SYSTEM_LOCK_DIRECTORY = Path("/run/kensa/targets")


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


def _identity_bytes(key: str, identity: Any) -> bytes:
    if identity is None:
        return b"key:" + key.encode("utf-8", "surrogateescape")
    if isinstance(identity, bytes):
        return b"identity:" + identity
    text = identity if isinstance(identity, str) else repr(identity)
    return b"identity:" + text.encode("utf-8", "surrogateescape")


class TargetLocks:
    """Exclusive cross-process locks of targets, in ``directory``; see the module docstring.

    ``timeout`` is in seconds (None waits forever, 0 tries once). Safe to share
    between threads; a thread must not take the lock of a target it already
    holds (the engine's per-process host lock sees to that).
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
        return self._directory / (hashlib.sha256(_identity_bytes(key, identity)).hexdigest() + ".lock")

    @contextlib.contextmanager
    def hold(self, key: str, identity: Any = None) -> Iterator[None]:
        """Hold the target's lock for the ``with`` block; raises TargetLockTimeout after the timeout."""
        path = self.path_for(key, identity)
        fd = self._open(key, path)
        try:
            self._take(fd, key, path)
        except BaseException:
            os.close(fd)
            raise
        token = object()
        self._held[token] = fd
        try:
            yield
        finally:
            mine = self._held.pop(token, None)
            if mine is not None:
                os.close(mine)  # closing the only descriptor releases the flock

    def _open(self, key: str, path: Path) -> int:
        try:
            dir_fd = self._open_directory()
        except OSError as exc:
            raise TargetLockError(
                f"kensa target lock directory {self._directory} for host {key!r}: cannot open it: {exc.strerror or exc}"
            ) from exc
        try:
            # O_NOFOLLOW: a link planted at the lock path must not redirect the lock.
            fd = os.open(path.name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
        except OSError as exc:
            raise TargetLockError(
                f"kensa target lock {path} for host {key!r}: cannot open it: {exc.strerror or exc}"
            ) from exc
        finally:
            os.close(dir_fd)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise TargetLockError(f"kensa target lock {path} for host {key!r} is not a regular file")
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _open_directory(self) -> int:
        try:
            os.mkdir(self._directory, 0o700)
        except FileExistsError:
            pass
        except FileNotFoundError:
            self._directory.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            with contextlib.suppress(FileExistsError):
                os.mkdir(self._directory, 0o700)
        dir_fd = os.open(self._directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        st = os.fstat(dir_fd)
        if st.st_uid != os.geteuid() or st.st_mode & 0o077:
            os.close(dir_fd)
            # Someone else could swap or hold our lock files: refuse rather than trust it.
            raise PermissionError(
                errno.EPERM,
                f"it must be a directory owned by uid {os.geteuid()} with mode 0700, but it is owned by uid "
                f"{st.st_uid} with mode {stat.S_IMODE(st.st_mode):04o}; remove it or fix its owner and mode",
            )
        return dir_fd

    def _take(self, fd: int, key: str, path: Path) -> None:
        deadline = None if self._timeout is None else time.monotonic() + self._timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                pass
            except OSError as exc:
                raise TargetLockError(f"kensa target lock {path} for host {key!r}: flock failed: {exc.strerror}") from exc
            if deadline is None:
                time.sleep(_POLL_SECONDS)
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._timed_out(fd, key, path)
            time.sleep(min(_POLL_SECONDS, remaining))

    def _timed_out(self, fd: int, key: str, path: Path) -> TargetLockTimeout:
        holders = [pid for pid, _ in flock_holders(fd)]
        by = ("held by pid " + ", ".join(str(pid) for pid in holders)) if holders else "holder unknown"
        return TargetLockTimeout(
            f"host {key!r} is being changed by another kensa process ({by}; lock file "
            f"{path}): could not take its lock within {self._timeout:g}s; nothing was changed. "
            "Wait for that process to finish, then try again",
        )

    def _after_fork_in_child(self) -> None:
        # The child shares the parent's open lock descriptions: keeping them would
        # hold the parent's locks until the child exits, and block the child itself.
        held: Tuple[int, ...] = tuple(self._held.values())
        self._held = {}
        for fd in held:
            with contextlib.suppress(OSError):
                os.close(fd)

    def __repr__(self) -> str:
        return f"TargetLocks({os.fspath(self._directory)!r}, timeout={self._timeout!r})"
