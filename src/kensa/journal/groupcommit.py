"""Group commit: concurrent writers of one journal share its fsyncs.

Every durable write (``begin``, ``finish`` ...) must be on disk when its call
returns, and on a disk an fsync'ed commit costs what it costs whether it
carries one write or twenty. With ``--workers 16`` hosts in flight, commits
one write at a time make the journal the bottleneck of the run. So writes
are committed in batches, a leader/follower scheme:

- A caller queues its write and waits. When no batch is being committed, the
  first waiter becomes the leader: it takes every queued write (its own among
  them), runs them in one SQL transaction, commits it (one fsync) and wakes
  the others. Writes that arrive meanwhile queue for the next batch, whose
  leader is the first of them to wake.
- Each write runs inside a SAVEPOINT: one that raises (a duplicate id, a
  refused result) is rolled back alone and its error goes to its caller only;
  the others are committed.
- When a failure takes the whole SQL transaction with it (SQLite aborts it
  on some I/O errors), or the COMMIT itself fails, nothing of the batch is on
  disk: the failed write gets its error, and the rest are run again, each in a
  transaction of its own, so every caller learns the outcome of its own write.
- A crash mid-batch leaves each write fully present or absent: the batch is
  one SQL transaction, and no caller has returned (so none has applied a
  change on the strength of it) before its COMMIT.
- KeyboardInterrupt (or SystemExit) in the leader rolls the batch back,
  re-queues the others' writes for the next leader and propagates to the
  leader's own caller.

Writes from other processes are ordered by SQLite's write lock and busy
timeout as before (each batch begins with ``BEGIN IMMEDIATE``).
"""

from __future__ import annotations

import sqlite3
import threading
from typing import Any, Callable, ContextManager, Generic, List, Optional, TypeVar

from kensa.errors import JournalError

__all__ = ["GroupCommit"]

T = TypeVar("T")


class _Write(Generic[T]):
    __slots__ = ("what", "work", "durable", "settled", "done", "result", "error")

    def __init__(self, what: str, work: Callable[[sqlite3.Connection], T], durable: bool) -> None:
        self.what = what
        self.work = work
        self.durable = durable
        self.settled = False  # committed, or failed for good: set by the leader
        self.done = False  # settled and published to the waiting caller (under the condition)
        self.result: Optional[T] = None
        self.error: Optional[BaseException] = None


class GroupCommit:
    """The durable writes of one journal connection, committed in shared batches.

    ``connection(durable)`` holds the journal's connection for the duration
    of a ``with`` (and excludes its other users), its commits fsync'ed when
    ``durable``; ``failure`` turns an sqlite3 or
    OS error into the JournalError a caller sees. With ``grouped=False`` every
    write is committed alone (one fsync each), which is how the journal wrote
    before and what the benchmark compares with.
    """

    def __init__(
        self,
        connection: Callable[[bool], ContextManager[sqlite3.Connection]],
        failure: Callable[[str, BaseException], JournalError],
        *,
        grouped: bool = True,
    ) -> None:
        self._connection = connection
        self._failure = failure
        self.grouped = grouped
        self.commits = 0
        """SQL transactions committed (one fsync each); fewer than :attr:`writes` when writes shared them."""
        self.writes = 0
        """Writes committed."""
        self.reset()

    def reset(self) -> None:
        """Forget the queue and the leader: for a forked child, where the parent's threads do not exist."""
        self._cond = threading.Condition(threading.Lock())
        self._queue: List[_Write[Any]] = []
        self._leading = False

    @property
    def waiting(self) -> int:
        """Writes queued for the next batch (not counting the one being committed)."""
        with self._cond:
            return len(self._queue)

    def write(self, what: str, work: Callable[[sqlite3.Connection], T], *, durable: bool = True) -> T:
        """Run ``work(conn)`` in a write transaction; when this returns, its writes are committed.

        Committed durably (fsync'ed) unless ``durable`` is False; a write that
        is not shares the fsync of any durable write in its batch. ``what``
        names the write in errors ("could not {what}"). Raises what ``work``
        raised (an sqlite3 or OS error as :class:`JournalError`), or the error
        of the commit that would have carried it.
        """
        mine: _Write[T] = _Write(what, work, durable)
        with self._cond:
            self._queue.append(mine)
            while self._leading and not mine.done:
                self._cond.wait()
            if not mine.done:
                self._leading = True
                batch = self._queue if self.grouped else [mine]
                self._queue = [] if self.grouped else [item for item in self._queue if item is not mine]
        if not mine.done:
            self._lead(mine, batch)
        if mine.error is not None:
            raise mine.error
        return mine.result  # type: ignore[return-value]

    def _lead(self, mine: _Write[Any], batch: List[_Write[Any]]) -> None:
        try:
            self._commit(batch)
        finally:
            with self._cond:
                for item in batch:
                    item.done = item.settled
                # Writes of others that an interrupt of this thread left unsettled go first in the next batch.
                self._queue[:0] = [item for item in batch if not item.settled and item is not mine]
                self._leading = False
                self._cond.notify_all()

    def _commit(self, batch: List[_Write[Any]]) -> None:
        """Settle every write of ``batch``: together when possible, else each alone."""
        try:
            self._commit_on(batch)
        except (sqlite3.Error, OSError) as exc:
            # The connection could not be set up for the batch: nothing of it ran.
            for item in batch:
                if not item.settled:
                    self._settle(item, error=self._failure(item.what, exc))

    def _commit_on(self, batch: List[_Write[Any]]) -> None:
        with self._connection(any(item.durable for item in batch)) as conn:
            try:
                if self._together(conn, batch):
                    return
            except (sqlite3.Error, OSError) as exc:
                # The batch could not begin or commit: none of it is on disk.
                if len(batch) == 1:
                    self._settle(batch[0], error=self._failure(batch[0].what, exc))
                    return
            # A write's failure took the whole transaction down, or the commit
            # failed: the writes not settled yet run again, each alone.
            for item in batch:
                if item.settled:
                    continue
                try:
                    self._together(conn, [item])
                except (sqlite3.Error, OSError) as exc:
                    self._settle(item, error=self._failure(item.what, exc))

    def _together(self, conn: sqlite3.Connection, batch: List[_Write[Any]]) -> bool:
        """Run ``batch`` in one SQL transaction and commit it.

        False when a write's failure aborted the transaction (that write is
        settled with its error; the others are not settled). An sqlite3 or OS
        error of BEGIN or COMMIT propagates, with nothing of the batch settled
        but the writes that failed on their own.
        """
        conn.execute("BEGIN IMMEDIATE")
        committing = False
        try:
            for item in batch:
                conn.execute("SAVEPOINT kensa_write")
                try:
                    item.result = item.work(conn)
                except Exception as exc:
                    error = self._failure(item.what, exc) if isinstance(exc, (sqlite3.Error, OSError)) else exc
                    self._settle(item, error=error)
                    if not conn.in_transaction:
                        return False
                    conn.execute("ROLLBACK TO kensa_write")
                conn.execute("RELEASE kensa_write")
            committing = True
            conn.execute("COMMIT")
        except BaseException:
            if committing and not conn.in_transaction:
                # The COMMIT went through; what was raised (an interrupt) came after it.
                self._committed(batch)
                raise
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass  # the error being raised says more
            raise
        self._committed(batch)
        return True

    def _settle(self, item: _Write[Any], *, error: BaseException) -> None:
        item.result, item.error, item.settled = None, error, True

    def _committed(self, batch: List[_Write[Any]]) -> None:
        self.commits += 1
        for item in batch:
            if not item.settled:
                item.settled = True
                self.writes += 1
