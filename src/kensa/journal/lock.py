"""The run/recovery lock: ``flock`` on ``<resolved journal path>.lock``.

Runs hold it shared, recovery holds it exclusive, so recovery never rolls
back a transaction that a live run is still applying, whichever link to the
journal each was given.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path
from types import TracebackType
from typing import Optional, Type, Union

from kensa.errors import JournalError, JournalLockTimeout
from kensa.support.flocks import flock_holders

__all__ = ["JOURNAL_WHAT_TO_DO", "JournalLock", "PathArg"]

PathArg = Union[str, "os.PathLike[str]"]

# What an operator can do when the journal's filesystem refuses it.
JOURNAL_WHAT_TO_DO = (
    "Check that the filesystem holding the journal is writable and has free space, "
    "or set KENSA_JOURNAL to a journal file elsewhere."
)

_POLL_SECONDS = 0.05


class JournalLock:
    """``flock`` on ``<resolved journal path>.lock``: shared for runs, exclusive for recovery.

    The journal path's symlinks are resolved once, here, as SQLite resolves
    them to open the database: a run through ``jl.db`` and a recovery through
    a link to it take the same lock.

    A context manager; ``timeout`` is in seconds (None waits forever, 0 tries
    once). On timeout it raises :class:`JournalLockTimeout` naming the lock
    file and, when /proc/locks tells, the pids holding it. A forked child shares
    the lock with its parent until both have released or exited.
    """

    def __init__(self, journal_path: PathArg, *, exclusive: bool = False, timeout: Optional[float] = 30.0) -> None:
        self._path = Path(os.path.realpath(os.fspath(journal_path)) + ".lock")
        self._exclusive = exclusive
        self._timeout = timeout
        self._fd: Optional[int] = None

    @property
    def path(self) -> Path:
        """The lock file."""
        return self._path

    @property
    def exclusive(self) -> bool:
        """True for recovery's exclusive lock, False for a run's shared lock."""
        return self._exclusive

    @property
    def held(self) -> bool:
        """True between a successful :meth:`acquire` and :meth:`release`."""
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock, waiting up to the timeout."""
        if self._fd is not None:
            raise JournalError(f"kensa journal lock {self._path} is already held by this JournalLock")
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            # O_NOFOLLOW: a link planted at the lock path must not redirect it.
            fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise JournalError(
                f"kensa journal lock {self._path}: cannot open it: {exc}. {JOURNAL_WHAT_TO_DO}"
            ) from exc
        operation = fcntl.LOCK_EX if self._exclusive else fcntl.LOCK_SH
        try:
            if self._timeout is None:
                fcntl.flock(fd, operation)
            else:
                self._acquire_within(fd, operation, self._timeout)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def _acquire_within(self, fd: int, operation: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, operation | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                pass
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._timed_out(fd, timeout)
            time.sleep(min(_POLL_SECONDS, remaining))

    def _timed_out(self, fd: int, timeout: float) -> JournalLockTimeout:
        holders = flock_holders(fd)
        if holders:
            by = "held by " + ", ".join(
                f"pid {pid} ({'exclusive' if mode == 'WRITE' else 'shared'})" for pid, mode in holders
            )
        else:
            by = "holder unknown"
        if self._exclusive:
            wanted, advice = "exclusive (recovery)", "a kensa run is using the journal; wait for it to finish"
        else:
            wanted, advice = "shared (run)", "journal recovery is in progress; wait for it to finish"
        return JournalLockTimeout(
            f"kensa journal lock {self._path}: could not take the {wanted} lock within {timeout:g}s, "
            f"{by}: {advice}, then try again"
        )

    def release(self) -> None:
        """Release the lock; a no-op when not held."""
        fd, self._fd = self._fd, None
        if fd is not None:
            # Closing the only descriptor releases the flock.
            os.close(fd)

    def __enter__(self) -> JournalLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.release()
