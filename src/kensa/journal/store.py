"""The durable journal: intent, exact pre-state and outcome of every transaction.

The kernel audit log is best-effort; this journal is the record of truth. The
engine calls :meth:`SqliteJournal.begin` after capture and before the first
apply, and :meth:`SqliteJournal.finish` with every terminal result. An entry
with intent but no result is a transaction that was interrupted (crash, kill,
power loss) while the host may have been half changed: recovery finds it with
:meth:`SqliteJournal.interrupted` and rolls it back from its stored pre-state.

The package's other modules hold the parts: :mod:`kensa.journal.codec` (how
values, pre-states and digests are stored), :mod:`kensa.journal.fields` (the
one declaration of a result's columns), :mod:`kensa.journal.schema` (DDL,
migrations, SQL), :mod:`kensa.journal.prestates`, :mod:`kensa.journal.entries`
(rows read back), :mod:`kensa.journal.connection`, :mod:`kensa.journal.retention`,
:mod:`kensa.journal.auditseq` (audit sequence numbers), :mod:`kensa.journal.lock`.

Where the journal lives
    :func:`default_journal_path` (kept in :mod:`kensa.journal.connection`): ``$KENSA_JOURNAL`` when set; otherwise
    ``/var/lib/kensa/journal.db`` when running as root; otherwise
    ``$XDG_STATE_HOME/kensa/journal.db``, which is
    ``~/.local/state/kensa/journal.db`` when ``XDG_STATE_HOME`` is unset or not
    an absolute path. The file is created with mode 0600 (pre-states may hold
    the contents of sensitive files); SQLite gives its ``-wal`` and ``-shm``
    files the same mode.

Durability
    WAL mode with ``synchronous=FULL``: a commit returns only after the WAL is
    fsync'ed, and every write method returns only once its write is committed.
    Writes of concurrent threads share commits (:mod:`kensa.journal.groupcommit`):
    those that arrive while one commit is being fsync'ed go together into the
    next, each in a savepoint of its own, so a rejected write fails only its
    caller. A transaction alone pays two fsync'ed commits (``begin`` and
    ``finish``); sixteen hosts in flight pay about as many commits as one
    (plus, now and then, the automatic WAL checkpoint). The one exception is
    :meth:`SqliteJournal.record_audit_sequences`, which does not pay an fsync
    of its own (see there).

Threads and processes
    One connection per :class:`SqliteJournal`, opened with
    ``check_same_thread=False`` and guarded by a lock: SQLite serializes writers
    anyway, and one connection per journal lets its writes share commits. A
    forked child never touches its parent's connection (SQLite forbids carrying
    one across ``fork``): it opens its own on first use
    (:func:`kensa.support.afterfork.reset_in_child`). Several processes may
    share one journal file; SQLite's busy timeout orders their commits.

Runs and recovery
    :class:`~kensa.journal.lock.JournalLock` is an ``flock`` on
    ``<journal path>.lock``, the journal path with its symlinks resolved (as
    SQLite resolves them to open the database): runs hold it shared, recovery
    holds it exclusive, so recovery never rolls back a transaction that a live
    run is still applying, whichever link each was given.

Order
    Every entry gets ``seq`` when it is created, from a counter kept in the
    journal: strictly increasing, never reused, even after pruning. Listings
    and "what ran after this entry" (``history(after_seq=...)``) go by it.
    Wall-clock times (``created``, ``finished``) are kept for people and for
    retention only: a clock stepped back (common after a crash, before NTP)
    must not make a later transaction look older.

Opening, integrity, retention
    Opening migrates the schema and proves the file writable before any
    transaction has changed the host (:mod:`kensa.journal.connection`).
    Stored steps and pre-states are checked against their SHA-256 whenever
    read; a damaged entry comes back marked ``corrupt``
    (:mod:`kensa.journal.entries`). :meth:`SqliteJournal.prune` never deletes
    what recovery still needs (:mod:`kensa.journal.retention`).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Set, Tuple, Type, Union

from kensa.errors import (
    InvalidJournalQuery,
    JournalCorruptError,
    JournalEntryNotFound,
    JournalError,
    JournalNotFound,
)
from kensa.journal import schema
from kensa.journal.auditseq import audit_sequence_rows, insert_audit_sequences, select_audit_sequences
from kensa.journal.codec import (
    NotJsonLike,
    bound_digest,
    dumps,
    encode_tagged,
    now_us,
    pre_state_chunks,
    steps_digest,
    stored_text,
    to_us,
    unstored_text,
)
from kensa.journal.connection import connect, default_journal_path, failure, migrate, sql_transaction
from kensa.journal.entries import entry_or_corrupt
from kensa.journal.fields import result_values
from kensa.journal.groupcommit import GroupCommit
from kensa.journal.lock import JournalLock, PathArg
from kensa.journal.prestates import StoredPreStates, insert_pre_state, pre_states_from
from kensa.journal.retention import delete_finished
from kensa.model import AuditSequence, JournalEntry, PreState, PruneResult, Status, Transaction, TransactionResult
from kensa.support.afterfork import reset_in_child

__all__ = ["SqliteJournal", "default_journal_path"]


class SqliteJournal:
    """The journal in one SQLite file; implements the engine's ``Journal`` protocol.

    Opening creates or migrates the schema and proves the file is writable,
    raising :class:`JournalError` (with the path and the cause) otherwise.
    Safe to share between threads; see the module docstring for processes.
    ``group_commit=False`` commits every write alone (one fsync per write, as
    the journal did before its writes shared commits), for comparison.
    """

    def __init__(
        self,
        path: PathArg,
        *,
        busy_timeout: float = 30.0,
        create: bool = True,
        clock: Optional[Callable[[], datetime]] = None,
        group_commit: bool = True,
    ) -> None:
        self._path = Path(os.fspath(path))
        # SQLite follows symlinks to the database; resolving once here makes the
        # lock guard the same file, and keeps a later swap of a link from
        # redirecting a reconnect (a forked child opens its own connection).
        self._resolved = Path(os.path.realpath(self._path))
        self._busy_timeout = busy_timeout
        self._create = create
        self._clock = clock
        if not create and not self._resolved.exists():
            raise JournalNotFound(
                f"kensa journal {self._path}: no such file; nothing has run with this journal "
                "(check the path, --journal or KENSA_JOURNAL); nothing was created"
            )
        self._lock = threading.Lock()
        self._closed = False
        # Connections inherited over fork: kept referenced so they are never
        # closed (or finalized) in the child.
        self._inherited: List[sqlite3.Connection] = []
        # Ids whose intent this object recorded and whose result it has not:
        # only these may be finished over an existing entry. Any other entry
        # without a result is an interrupted transaction that recovery owns.
        self._begun: Set[str] = set()
        self._commits = GroupCommit(self._connection, self._failure, grouped=group_commit)
        self._conn: Optional[sqlite3.Connection] = self._connect()
        try:
            migrate(self._path, self._conn)
        except BaseException:
            self._conn.close()
            raise
        reset_in_child(self)

    @property
    def path(self) -> Path:
        """The journal file."""
        return self._path

    @property
    def commit_counts(self) -> Tuple[int, int]:
        """``(commits, writes)`` made durable since opening: fewer commits (fsyncs) than writes when writes shared them."""
        return self._commits.commits, self._commits.writes

    def lock(self, *, exclusive: bool = False, timeout: Optional[float] = 30.0) -> JournalLock:
        """A :class:`JournalLock` for this journal's resolved file (not yet acquired)."""
        return JournalLock(self._resolved, exclusive=exclusive, timeout=timeout)

    def _now(self) -> int:
        return now_us() if self._clock is None else to_us(self._clock())

    def close(self) -> None:
        """Close the connection; later calls raise :class:`JournalError`."""
        with self._lock:
            self._closed = True
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> SqliteJournal:
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.close()

    # --- the engine's protocol --------------------------------------------------

    def begin(self, txn: Transaction, pre_states: Sequence[Optional[PreState]]) -> None:
        """Record intent, steps and pre-states of ``txn``; durable when this returns."""
        if len(pre_states) != len(txn.steps):
            raise JournalError(
                f"kensa journal {self._path}: transaction {txn.id} has {len(txn.steps)} steps "
                f"but {len(pre_states)} pre-states were given; pass one per step (None when not captured)"
            )
        txn_id = stored_text(txn.id)
        try:
            steps = dumps([{"mechanism": step.mechanism, "params": encode_tagged(step.params)} for step in txn.steps])
            pre_rows = []
            for index, pre in enumerate(pre_states):
                if pre is not None:
                    chunks = pre_state_chunks(pre)
                    pre_rows.append((index, chunks, bound_digest(b"pre", txn.id, index, *chunks)))
        except NotJsonLike as exc:
            raise JournalError(
                f"kensa journal {self._path}: transaction {txn.id} (rule {txn.rule}) holds a value that "
                f"cannot be stored exactly, {exc}; params and pre-states may hold only None, bool, int, "
                "float, str, bytes and lists/dicts (with str keys) of these"
            ) from None

        def write(conn: sqlite3.Connection) -> None:
            if conn.execute("SELECT 1 FROM transactions WHERE id = ?", (txn_id,)).fetchone() is not None:
                raise JournalError(
                    f"kensa journal {self._path}: transaction {txn.id} is already in the journal; "
                    "every transaction needs a new id"
                )
            conn.execute(
                "INSERT INTO transactions (id, seq, host, rule, transactional, steps, steps_sha256, created) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    txn_id,
                    schema.next_seq(conn),
                    stored_text(txn.host),
                    stored_text(txn.rule),
                    int(txn.transactional),
                    steps,
                    steps_digest(txn.id, steps),
                    self._now(),
                ),
            )
            for index, chunks, digest in pre_rows:
                insert_pre_state(conn, txn_id, index, chunks, digest)

        self._commits.write(f"record the intent of transaction {txn.id}", write)
        self._begun.add(txn.id)

    def finish(self, result: TransactionResult) -> None:
        """Record the terminal result; inserts the whole entry when ``begin`` was never called."""
        columns = result_values(result)
        txn_id = stored_text(result.txn_id)

        def write(conn: sqlite3.Connection) -> None:
            row = conn.execute("SELECT host, rule, status FROM transactions WHERE id = ?", (txn_id,)).fetchone()
            now = self._now()
            if row is None:
                conn.execute(
                    schema.insert_result_only_sql(),
                    (txn_id, schema.next_seq(conn), stored_text(result.host), stored_text(result.rule), now, *columns, now),
                )
                return
            if row["status"] is not None:
                raise JournalError(
                    f"kensa journal {self._path}: transaction {result.txn_id} already has a result "
                    f"({row['status']}); a transaction is finished once"
                )
            if result.txn_id not in self._begun:
                raise JournalError(
                    f"kensa journal {self._path}: transaction {result.txn_id} was interrupted in an earlier "
                    "run and its entry belongs to recovery; run 'kensa recover' (Engine.recover()) before "
                    "running it again"
                )
            self._check_same_transaction(row, result)
            conn.execute(schema.set_result_sql(), (*columns, now, 0, txn_id))

        self._commits.write(f"record the result of transaction {result.txn_id}", write)
        self._begun.discard(result.txn_id)

    # --- recovery and later rollback --------------------------------------------

    def interrupted(self) -> List[JournalEntry]:
        """Entries with intent but no terminal result, oldest first (by ``seq``), pre-states loaded.

        A corrupt entry is listed too, with ``corrupt`` saying why: reading
        its ``pre_states`` raises :class:`JournalCorruptError`, so recovery
        reports it by id and goes on with the others.
        """
        return self._entries("WHERE t.status IS NULL ORDER BY t.seq", (), "list interrupted transactions", load=True)

    def record_recovery(self, txn_id: str, result: TransactionResult) -> None:
        """Give an interrupted entry the result of its recovery (``recovered`` or ``rollback_failed``)."""
        columns = result_values(result)

        def write(conn: sqlite3.Connection) -> None:
            row = self._existing(conn, txn_id)
            if row["status"] is not None:
                raise JournalError(
                    f"kensa journal {self._path}: transaction {txn_id} is not interrupted: it ended as "
                    f"{row['status']}; only interrupted transactions are recovered"
                )
            self._check_same_transaction(row, result)
            conn.execute(schema.set_result_sql(), (*columns, self._now(), 1, stored_text(txn_id)))

        self._commits.write(f"record the recovery of transaction {txn_id}", write)

    def record_rollback(self, txn_id: str, result: TransactionResult) -> None:
        """Record that committed (or staged) ``txn_id`` was later rolled back; its result is kept."""
        columns = result_values(result)

        def write(conn: sqlite3.Connection) -> None:
            row = self._existing(conn, txn_id)
            if row["status"] not in (Status.COMMITTED.value, Status.STAGED.value):
                raise JournalError(
                    f"kensa journal {self._path}: transaction {txn_id} ended as {row['status'] or 'nothing yet'}; "
                    "only a committed or staged transaction can be rolled back later"
                )
            if conn.execute("SELECT 1 FROM later_rollbacks WHERE txn_id = ?", (stored_text(txn_id),)).fetchone():
                raise JournalError(
                    f"kensa journal {self._path}: transaction {txn_id} was already rolled back; "
                    "see get(txn_id).later_rollback"
                )
            conn.execute(
                schema.insert_later_rollback_sql(),
                (
                    stored_text(txn_id),
                    stored_text(result.txn_id),
                    stored_text(result.rule),
                    stored_text(result.host),
                    *columns,
                    self._now(),
                ),
            )

        self._commits.write(f"record the rollback of transaction {txn_id}", write)

    # --- reading ----------------------------------------------------------------

    def get(self, txn_id: str) -> JournalEntry:
        """The entry of ``txn_id``, pre-states loaded; :class:`JournalEntryNotFound` when there is none.

        A corrupt entry is returned with ``corrupt`` set; its ``pre_states`` raise.
        """
        entries = self._entries("WHERE t.id = ?", (stored_text(txn_id),), f"read transaction {txn_id}", load=True)
        if not entries:
            raise JournalEntryNotFound(f"kensa journal {self._path}: no transaction {txn_id!r} in the journal")
        return entries[0]

    def history(
        self,
        host: Optional[str] = None,
        rule: Optional[str] = None,
        status: Optional[Union[Status, str]] = None,
        since: Optional[datetime] = None,
        until: Optional[datetime] = None,
        limit: Optional[int] = None,
        *,
        after_seq: Optional[int] = None,
    ) -> List[JournalEntry]:
        """Entries newest first (by ``seq``), filtered by every argument given.

        ``status`` matches the terminal result (interrupted entries have none);
        ``after_seq`` keeps the entries created after the one with that
        ``seq``: this is how to ask what happened later, whatever the clock
        said. ``since`` (inclusive) and ``until`` (exclusive) bound the
        wall-clock time the entry was created (a naive datetime is local
        time): for display and retention, not for ordering. Pre-states are
        not read here; see :class:`JournalEntry`. An entry whose row cannot
        be read comes back with ``corrupt`` set.
        """
        clauses: List[str] = []
        params: List[Any] = []
        if host is not None:
            clauses.append("t.host = ?")
            params.append(stored_text(host))
        if rule is not None:
            clauses.append("t.rule = ?")
            params.append(stored_text(rule))
        if status is not None:
            clauses.append("t.status = ?")
            params.append(Status(status).value)
        schema.time_range("t.created", since, until, clauses, params)
        if after_seq is not None:
            clauses.append("t.seq > ?")
            params.append(int(after_seq))
        sql = ("WHERE " + " AND ".join(clauses) if clauses else "") + " ORDER BY t.seq DESC"
        if limit is not None:
            if limit < 0:
                raise InvalidJournalQuery(f"history(limit={limit}): limit must be >= 0 or None")
            sql += " LIMIT ?"
            params.append(limit)
        return self._entries(sql, tuple(params), "read the history", load=False)

    def verify(self, entries: Sequence[JournalEntry]) -> Dict[str, str]:
        """Check the pre-states of ``entries`` against their digests: ``{txn_id: why}`` for each corrupt one.

        Reads each pre-state once (one at a time) and keeps none of them.
        """
        corrupt: Dict[str, str] = {}
        for entry in entries:
            if entry.corrupt is not None:
                corrupt[entry.txn.id] = entry.corrupt
                continue
            if not entry.intent_recorded:
                continue
            try:
                self._load_pre_states(entry.txn.id, len(entry.txn.steps))
            except JournalCorruptError as exc:
                corrupt[entry.txn.id] = str(exc)
        return corrupt

    def prune(self, *, before: Optional[datetime] = None, keep_last: Optional[int] = None) -> PruneResult:
        """Delete finished entries created before ``before`` and/or beyond the ``keep_last`` newest.

        With both, an entry is deleted only when both select it. Pruning never
        deletes an interrupted entry (it is what recovery restores from), nor
        any entry created after the oldest interrupted one: recovery compares
        an interrupted transaction with what ran after it, so those must stay
        until it is recovered. :class:`PruneResult` says how many of each
        were kept. Freed space is reused by later entries; the file itself
        shrinks only with SQLite's ``VACUUM``.
        """
        if before is None and keep_last is None:
            raise InvalidJournalQuery("prune() needs before= or keep_last=; it deletes nothing by default")
        if keep_last is not None and keep_last < 0:
            raise InvalidJournalQuery(f"prune(keep_last={keep_last}): keep_last must be >= 0")
        pruning = None if before is None else to_us(before)
        return self._commits.write("prune old entries", lambda conn: delete_finished(conn, pruning, keep_last))

    # --- internals --------------------------------------------------------------

    def _failure(self, what: str, exc: BaseException) -> JournalError:
        return failure(self._path, what, exc)

    def _connect(self) -> sqlite3.Connection:
        return connect(self._path, self._resolved, create=self._create, busy_timeout=self._busy_timeout)

    def _after_fork_in_child(self) -> None:
        # Runs single-threaded in the child: the lock may have been held by a
        # parent thread at fork time, and the connection belongs to the parent.
        self._lock = threading.Lock()
        self._commits.reset()
        if self._conn is not None:
            self._inherited.append(self._conn)
            self._conn = None

    def _acquire(self) -> sqlite3.Connection:
        self._lock.acquire()
        try:
            if self._closed:
                raise JournalError(f"kensa journal {self._path} is closed; open a new SqliteJournal")
            if self._conn is None:
                self._conn = self._connect()
            return self._conn
        except BaseException:
            self._lock.release()
            raise

    @contextlib.contextmanager
    def _connection(self, durable: bool) -> Iterator[sqlite3.Connection]:
        """The connection, held alone for the ``with``; group commit runs its write transactions on it.

        With ``durable=False`` commits run with ``synchronous=NORMAL`` (no
        fsync of their own): their rows survive a process crash, and a power
        loss only once the next durable commit has synced the WAL after them.
        """
        conn = self._acquire()
        try:
            if not durable:
                conn.execute("PRAGMA synchronous=NORMAL")
            try:
                yield conn
            finally:
                if not durable:
                    self._restore_full_sync(conn)
        finally:
            self._lock.release()

    @contextlib.contextmanager
    def _transaction(self, what: str, begin: str) -> Iterator[sqlite3.Connection]:
        conn = self._acquire()
        try:
            with sql_transaction(conn, begin):
                yield conn
        except (sqlite3.Error, OSError) as exc:
            raise self._failure(what, exc) from exc
        finally:
            self._lock.release()

    def _restore_full_sync(self, conn: sqlite3.Connection) -> None:
        # Every other commit must stay fsync'ed: a connection that cannot be
        # put back to FULL is dropped, and the next use opens one with FULL.
        try:
            conn.execute("PRAGMA synchronous=FULL")
        except sqlite3.Error:
            conn.close()
            self._conn = None

    def _existing(self, conn: sqlite3.Connection, txn_id: str) -> sqlite3.Row:
        row: Optional[sqlite3.Row] = conn.execute(
            "SELECT host, rule, status FROM transactions WHERE id = ?", (stored_text(txn_id),)
        ).fetchone()
        if row is None:
            raise JournalEntryNotFound(f"kensa journal {self._path}: no transaction {txn_id!r} in the journal")
        return row

    def _check_same_transaction(self, row: sqlite3.Row, result: TransactionResult) -> None:
        recorded = (unstored_text(row["rule"]), unstored_text(row["host"]))
        if (result.rule, result.host) != recorded:
            raise JournalError(
                f"kensa journal {self._path}: the result for transaction {result.txn_id} names rule "
                f"{result.rule!r} on host {result.host!r}, but the journal recorded rule {recorded[0]!r} "
                f"on host {recorded[1]!r}; refusing to mix up two transactions"
            )

    def _entries(self, where: str, params: Tuple[Any, ...], what: str, *, load: bool) -> List[JournalEntry]:
        with self._transaction(what, "BEGIN") as conn:
            rows = conn.execute(schema.entry_query() + where, params).fetchall()
            if not load:
                return [entry_or_corrupt(self._path, row, self._lazy_pre_states) for row in rows]
            stored: Dict[str, List[sqlite3.Row]] = {}
            ids = [row["id"] for row in rows if row["steps"] is not None]
            # Stay well under SQLite's limit on bound parameters.
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                for ref in conn.execute(
                    f"SELECT txn_id, {schema.STATE_REFS} FROM pre_states WHERE txn_id IN ({', '.join('?' * len(chunk))})",
                    chunk,
                ):
                    stored.setdefault(unstored_text(ref["txn_id"]), []).append(ref)

            def loaded(txn_id: str, steps: int) -> Tuple[Optional[PreState], ...]:
                return pre_states_from(self._path, conn, txn_id, steps, stored.get(txn_id, []))

            return [entry_or_corrupt(self._path, row, loaded) for row in rows]

    def _lazy_pre_states(self, txn_id: str, steps: int) -> StoredPreStates:
        return StoredPreStates(load=lambda: self._load_pre_states(txn_id, steps))

    def _load_pre_states(self, txn_id: str, steps: int) -> Tuple[Optional[PreState], ...]:
        with self._transaction(f"read the pre-states of transaction {txn_id}", "BEGIN") as conn:
            refs = conn.execute(
                f"SELECT {schema.STATE_REFS} FROM pre_states WHERE txn_id = ?", (stored_text(txn_id),)
            ).fetchall()
            return pre_states_from(self._path, conn, txn_id, steps, refs)

    # --- audit sequence numbers -------------------------------------------------

    def record_audit_sequences(
        self, txn_id: str, sequences: Sequence[Tuple[str, Optional[int]]], *, pid: Optional[int] = None
    ) -> None:
        """Journal, in order, each ``(phase, seq)`` of ``txn_id``'s audit records.

        ``seq`` is the record's sequence number, or None when the emitter did
        not hand it to the kernel. ``pid`` (default: this process) is the
        emitting process the kernel writes into the record. Appends after rows
        recorded earlier for the same transaction (a later rollback or recovery).

        Not durable on its own: an fsync here would double a transaction's
        journal cost, so the rows are committed with ``synchronous=NORMAL``
        and become durable with the journal's next commit (see ``_connection``);
        when they share a commit with a durable write, they are durable with it.
        A power loss before then can lose them: reconcile checks only the
        records the journal holds, so it would not know those.
        """
        rows = audit_sequence_rows(self._path, txn_id, sequences)
        who = os.getpid() if pid is None else pid
        now = now_us()
        self._commits.write(
            f"record the audit sequence numbers of transaction {txn_id}",
            lambda conn: insert_audit_sequences(conn, txn_id, rows, who, now),
            durable=False,
        )

    def audit_sequences(self, txn_id: str) -> List[AuditSequence]:
        """The audit records journaled for ``txn_id``, in emission order (empty when none)."""
        with self._transaction(f"read the audit sequence numbers of {txn_id}", "BEGIN") as conn:
            return select_audit_sequences(conn, "WHERE txn_id = ?", (stored_text(txn_id),))

    def audit_sequences_between(
        self, since: Optional[datetime] = None, until: Optional[datetime] = None
    ) -> Dict[str, List[AuditSequence]]:
        """Audit records journaled from ``since`` (inclusive) to ``until`` (exclusive), by transaction.

        A naive datetime is local time, as in :meth:`history`.
        """
        clauses: List[str] = []
        params: List[Any] = []
        schema.time_range("recorded", since, until, clauses, params)
        where = "WHERE " + " AND ".join(clauses) if clauses else ""
        with self._transaction("read the audit sequence numbers", "BEGIN") as conn:
            items = select_audit_sequences(conn, where, tuple(params))
        found: Dict[str, List[AuditSequence]] = {}
        for item in items:
            found.setdefault(item.txn_id, []).append(item)
        return found
