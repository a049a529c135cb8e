"""The durable journal: intent, exact pre-state and outcome of every transaction.

The kernel audit log is best-effort; this journal is the record of truth. The
engine calls :meth:`SqliteJournal.begin` after capture and before the first
apply, and :meth:`SqliteJournal.finish` with every terminal result. An entry
with intent but no result is a transaction that was interrupted (crash, kill,
power loss) while the host may have been half changed: recovery finds it with
:meth:`SqliteJournal.interrupted` and rolls it back from its stored pre-state.

Where the journal lives
    :func:`default_journal_path`: ``$KENSA_JOURNAL`` when set; otherwise
    ``/var/lib/kensa/journal.db`` when running as root; otherwise
    ``$XDG_STATE_HOME/kensa/journal.db``, which is
    ``~/.local/state/kensa/journal.db`` when ``XDG_STATE_HOME`` is unset or not
    an absolute path. The file is created with mode 0600 (pre-states may hold
    the contents of sensitive files); SQLite gives its ``-wal`` and ``-shm``
    files the same mode.

Durability
    WAL mode with ``synchronous=FULL``: a commit returns only after the WAL is
    fsync'ed. ``begin`` and ``finish`` are one SQL transaction each, so a
    transaction pays two fsync'ed commits (plus, now and then, the automatic
    WAL checkpoint, which is shared by all writers).

Threads and processes
    One connection per :class:`SqliteJournal`, opened with
    ``check_same_thread=False`` and guarded by a lock: SQLite serializes writers
    anyway, and one connection per journal keeps every call to one commit. A
    forked child never touches its parent's connection (SQLite forbids carrying
    one across ``fork``): it opens its own on first use. Several processes may
    share one journal file; SQLite's busy timeout orders their commits.

Runs and recovery
    :class:`JournalLock` is an ``flock`` on ``<journal path>.lock``: runs hold
    it shared, recovery holds it exclusive, so recovery never rolls back a
    transaction that a live run is still applying.

Schema
    ``PRAGMA user_version`` is the number of migrations applied; opening a
    journal applies the missing ones from ``_MIGRATIONS`` in order, in one SQL
    transaction with a write probe, and refuses a journal written by a newer
    kensa. Opening therefore fails, with the path and the cause, on a read-only
    or full filesystem before any transaction has changed the host.

Stored values
    Step parameters and pre-states (JSON-like values plus ``bytes``) are stored
    as tagged JSON: every JSON object in the stored text is a tag,
    ``{"$dict": {...}}`` for a mapping (key order kept) or ``{"$bytes":
    "<base64>"}`` for bytes, so any value, including bytes that are not UTF-8
    and dicts whose keys look like tags, reads back equal. Tuples read back as
    lists.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import sqlite3
import threading
import time
import weakref
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import TracebackType
from typing import (
    Any,
    Callable,
    Dict,
    Iterator,
    List,
    Mapping,
    Optional,
    Sequence,
    Set,
    Tuple,
    Type,
    Union,
)

from ._version import __version__
from .model import (
    KensaError,
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
    "SCHEMA_VERSION",
    "JournalEntry",
    "JournalEntryNotFound",
    "JournalError",
    "JournalLock",
    "JournalLockTimeout",
    "SqliteJournal",
    "default_journal_path",
]

PathArg = Union[str, "os.PathLike[str]"]

_WHAT_TO_DO = (
    "Check that the filesystem holding the journal is writable and has free space, "
    "or set KENSA_JOURNAL to a journal file elsewhere."
)


class JournalError(KensaError):
    """The journal could not be opened, read or written, or refused an inconsistent record."""


class JournalEntryNotFound(JournalError, LookupError):
    """The journal holds no transaction with the requested id."""


class JournalLockTimeout(JournalError, TimeoutError):
    """The run/recovery lock stayed held by someone else for longer than the timeout."""


def default_journal_path() -> Path:
    """Return where the journal lives unless told otherwise (see the module docstring)."""
    configured = os.environ.get("KENSA_JOURNAL")
    if configured:
        return Path(configured)
    if os.geteuid() == 0:
        return Path("/var/lib/kensa/journal.db")
    state_home = os.environ.get("XDG_STATE_HOME", "")
    # The XDG spec says relative values are invalid and must be ignored.
    base = Path(state_home) if os.path.isabs(state_home) else Path.home() / ".local" / "state"
    return base / "kensa" / "journal.db"


@dataclass(frozen=True)
class JournalEntry:
    """One transaction as the journal knows it.

    ``pre_states`` is aligned with ``txn.steps`` (None for a step that has no
    captured pre-state). ``result`` is None while the transaction is
    interrupted. ``intent_recorded`` is False for a transaction that ended
    before ``begin`` (skipped, errored in preflight): only its result is known,
    so ``txn.steps`` is empty and ``txn.transactional`` is not meaningful.
    ``recovered`` is True when ``result`` was written by recovery after an
    interruption. ``later_rollback`` is the result of rolling a committed
    transaction back by id afterwards; ``result`` keeps the original outcome.
    Timestamps are timezone-aware UTC, to the microsecond.
    """

    txn: Transaction
    pre_states: Tuple[Optional[PreState], ...]
    result: Optional[TransactionResult]
    created: datetime
    finished: Optional[datetime]
    intent_recorded: bool = True
    recovered: bool = False
    later_rollback: Optional[TransactionResult] = None
    later_rollback_at: Optional[datetime] = None

    @property
    def interrupted(self) -> bool:
        """True when intent was recorded but no terminal result ever was."""
        return self.intent_recorded and self.result is None


# --- stored values -------------------------------------------------------------

_BYTES_TAG = "$bytes"
_DICT_TAG = "$dict"


class _NotJsonLike(Exception):
    def __init__(self, value: Any) -> None:
        super().__init__()
        self.value = value
        self.where: List[str] = []

    def __str__(self) -> str:
        return f"{''.join(reversed(self.where)) or 'the value'}: {self.value!r} ({type(self.value).__name__})"


def _encode(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (bytes, bytearray)):
        return {_BYTES_TAG: base64.b64encode(value).decode("ascii")}
    if isinstance(value, Mapping):
        encoded: Dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                # json would turn 1 into "1": it would read back different.
                raise _NotJsonLike(key)
            try:
                encoded[key] = _encode(item)
            except _NotJsonLike as exc:
                exc.where.append(f"[{key!r}]")
                raise
        return {_DICT_TAG: encoded}
    if isinstance(value, (list, tuple)):
        items = []
        for index, item in enumerate(value):
            try:
                items.append(_encode(item))
            except _NotJsonLike as exc:
                exc.where.append(f"[{index}]")
                raise
        return items
    raise _NotJsonLike(value)


def _decode(value: Any) -> Any:
    if isinstance(value, list):
        return [_decode(item) for item in value]
    if isinstance(value, dict):
        ((tag, payload),) = value.items()
        if tag == _DICT_TAG:
            return {key: _decode(item) for key, item in payload.items()}
        if tag == _BYTES_TAG:
            return base64.b64decode(payload, validate=True)
        raise ValueError(f"unknown tag {tag!r} in a stored value")
    return value


def _dumps(value: Any) -> str:
    # ensure_ascii keeps lone surrogates (os.fsdecode of non-UTF-8 paths) as
    # \udcxx escapes; raw, they could not be stored as UTF-8 text at all.
    return json.dumps(value, separators=(",", ":"))


def _text(value: str) -> Union[str, bytes]:
    # A str that is not valid UTF-8 (lone surrogates, e.g. a non-UTF-8 path in
    # an error message) cannot be bound as TEXT; refusing it would lose a
    # terminal result, so it is stored as a BLOB that reads back exactly.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogatepass")
    return value


def _untext(value: Union[str, bytes]) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogatepass")
    return value


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _now_us() -> int:
    return time.time_ns() // 1000


def _to_datetime(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


def _to_us(moment: datetime) -> int:
    # A naive datetime means local time, as datetime.timestamp() has it.
    delta = moment.astimezone(timezone.utc) - _EPOCH
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def _result_columns(result: TransactionResult) -> Tuple[Any, ...]:
    """status, host_unchanged, error_type, error_message, error_phase, step_results, rollback_results, timings."""
    error = result.error
    return (
        Status(result.status).value,
        int(result.host_unchanged),
        None if error is None else _text(error.type),
        None if error is None else _text(error.message),
        None if error is None else Phase(error.phase).value,
        _dumps(
            [
                {"mechanism": s.mechanism, "ok": s.ok, "changed": s.changed, "staged": s.staged, "detail": s.detail}
                for s in result.steps
            ]
        ),
        _dumps([{"mechanism": r.mechanism, "ok": r.ok, "detail": r.detail} for r in result.rollbacks]),
        _dumps({Phase(phase).value: seconds for phase, seconds in result.timings.items()}),
    )


def _result_from(txn_id: str, rule: str, host: str, row: sqlite3.Row, prefix: str) -> TransactionResult:
    error_type = row[prefix + "error_type"]
    error = None
    if error_type is not None:
        error = TransactionError(
            type=_untext(error_type),
            message=_untext(row[prefix + "error_message"]),
            phase=Phase(row[prefix + "error_phase"]),
        )
    return TransactionResult(
        txn_id=txn_id,
        rule=rule,
        host=host,
        status=Status(row[prefix + "status"]),
        host_unchanged=bool(row[prefix + "host_unchanged"]),
        timings={Phase(phase): seconds for phase, seconds in json.loads(row[prefix + "timings"]).items()},
        steps=tuple(StepResult(**step) for step in json.loads(row[prefix + "step_results"])),
        rollbacks=tuple(RollbackResult(**rollback) for rollback in json.loads(row[prefix + "rollback_results"])),
        error=error,
    )


# --- schema --------------------------------------------------------------------

_RESULT_COLUMNS_DDL = """
    status TEXT{required},
    host_unchanged INTEGER{required},
    error_type TEXT,
    error_message TEXT,
    error_phase TEXT,
    step_results TEXT{required},
    rollback_results TEXT{required},
    timings TEXT{required}"""


def _create_schema(conn: sqlite3.Connection) -> None:
    # Times are integer microseconds since the epoch, UTC.
    conn.execute(
        """CREATE TABLE transactions (
    id TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    rule TEXT NOT NULL,
    transactional INTEGER,  -- NULL with steps: only the result was recorded
    steps TEXT,
    created INTEGER NOT NULL,
    recovered INTEGER NOT NULL DEFAULT 0,"""
        + _RESULT_COLUMNS_DDL.format(required="")
        + """,
    finished INTEGER
)"""
    )
    conn.execute("CREATE INDEX transactions_by_created ON transactions (created)")
    conn.execute("CREATE INDEX transactions_interrupted ON transactions (created) WHERE status IS NULL")
    conn.execute(
        """CREATE TABLE pre_states (
    txn_id TEXT NOT NULL REFERENCES transactions (id),
    step INTEGER NOT NULL,
    mechanism TEXT NOT NULL,
    params TEXT NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (txn_id, step)
)"""
    )
    conn.execute(
        """CREATE TABLE later_rollbacks (
    txn_id TEXT PRIMARY KEY REFERENCES transactions (id),
    result_txn_id TEXT NOT NULL,
    rule TEXT NOT NULL,
    host TEXT NOT NULL,"""
        + _RESULT_COLUMNS_DDL.format(required=" NOT NULL")
        + """,
    recorded INTEGER NOT NULL
)"""
    )
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")


# Each function takes the journal from version i to i + 1 inside the caller's
# SQL transaction. Append only: a released migration never changes.
_MIGRATIONS: List[Callable[[sqlite3.Connection], None]] = [_create_schema]

SCHEMA_VERSION = len(_MIGRATIONS)

_ENTRY_QUERY = """
SELECT t.id, t.host, t.rule, t.transactional, t.steps, t.created, t.recovered,
       t.status, t.host_unchanged, t.error_type, t.error_message, t.error_phase,
       t.step_results, t.rollback_results, t.timings, t.finished,
       r.result_txn_id AS rb_txn_id, r.rule AS rb_rule, r.host AS rb_host,
       r.status AS rb_status, r.host_unchanged AS rb_host_unchanged,
       r.error_type AS rb_error_type, r.error_message AS rb_error_message,
       r.error_phase AS rb_error_phase, r.step_results AS rb_step_results,
       r.rollback_results AS rb_rollback_results, r.timings AS rb_timings,
       r.recorded AS rb_recorded
FROM transactions AS t LEFT JOIN later_rollbacks AS r ON r.txn_id = t.id
"""

_SET_RESULT = """
UPDATE transactions SET status = ?, host_unchanged = ?, error_type = ?, error_message = ?,
    error_phase = ?, step_results = ?, rollback_results = ?, timings = ?, finished = ?, recovered = ?
WHERE id = ?
"""


def _create_private_file(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    # The new directory entry must survive a crash as well as the data in it.
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


_OPEN_JOURNALS: "weakref.WeakSet[SqliteJournal]" = weakref.WeakSet()


def _forget_connections_in_child() -> None:
    for journal in list(_OPEN_JOURNALS):
        journal._after_fork_in_child()


os.register_at_fork(after_in_child=_forget_connections_in_child)


class SqliteJournal:
    """The journal in one SQLite file; implements the engine's ``Journal`` protocol.

    Opening creates or migrates the schema and proves the file is writable,
    raising :class:`JournalError` (with the path and the cause) otherwise.
    Safe to share between threads; see the module docstring for processes.
    """

    def __init__(self, path: PathArg, *, busy_timeout: float = 30.0) -> None:
        self._path = Path(os.fspath(path))
        self._busy_timeout = busy_timeout
        self._lock = threading.Lock()
        self._closed = False
        # Connections inherited over fork: kept referenced so they are never
        # closed (or finalized) in the child.
        self._inherited: List[sqlite3.Connection] = []
        # Ids whose intent this object recorded and whose result it has not:
        # only these may be finished over an existing entry. Any other entry
        # without a result is an interrupted transaction that recovery owns.
        self._begun: Set[str] = set()
        self._conn: Optional[sqlite3.Connection] = self._connect()
        try:
            self._migrate(self._conn)
        except BaseException:
            self._conn.close()
            raise
        _OPEN_JOURNALS.add(self)

    @property
    def path(self) -> Path:
        """The journal file."""
        return self._path

    def lock(self, *, exclusive: bool = False, timeout: Optional[float] = 30.0) -> JournalLock:
        """A :class:`JournalLock` for this journal (not yet acquired)."""
        return JournalLock(self._path, exclusive=exclusive, timeout=timeout)

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
        txn_id = _text(txn.id)
        try:
            steps = _dumps([{"mechanism": step.mechanism, "params": _encode(step.params)} for step in txn.steps])
            pre_rows = [
                (txn_id, index, _text(pre.mechanism), _dumps(_encode(pre.params)), _dumps(_encode(pre.data)))
                for index, pre in enumerate(pre_states)
                if pre is not None
            ]
        except _NotJsonLike as exc:
            raise JournalError(
                f"kensa journal {self._path}: transaction {txn.id} (rule {txn.rule}) holds a value that "
                f"cannot be stored exactly, {exc}; params and pre-states may hold only None, bool, int, "
                "float, str, bytes and lists/dicts (with str keys) of these"
            ) from None
        with self._writing(f"record the intent of transaction {txn.id}") as conn:
            if conn.execute("SELECT 1 FROM transactions WHERE id = ?", (txn_id,)).fetchone() is not None:
                raise JournalError(
                    f"kensa journal {self._path}: transaction {txn.id} is already in the journal; "
                    "every transaction needs a new id"
                )
            conn.execute(
                "INSERT INTO transactions (id, host, rule, transactional, steps, created) VALUES (?, ?, ?, ?, ?, ?)",
                (txn_id, _text(txn.host), _text(txn.rule), int(txn.transactional), steps, _now_us()),
            )
            conn.executemany(
                "INSERT INTO pre_states (txn_id, step, mechanism, params, data) VALUES (?, ?, ?, ?, ?)", pre_rows
            )
        self._begun.add(txn.id)

    def finish(self, result: TransactionResult) -> None:
        """Record the terminal result; inserts the whole entry when ``begin`` was never called."""
        columns = _result_columns(result)
        txn_id = _text(result.txn_id)
        with self._writing(f"record the result of transaction {result.txn_id}") as conn:
            row = conn.execute("SELECT host, rule, status FROM transactions WHERE id = ?", (txn_id,)).fetchone()
            now = _now_us()
            if row is None:
                conn.execute(
                    "INSERT INTO transactions (id, host, rule, created, status, host_unchanged, error_type, "
                    "error_message, error_phase, step_results, rollback_results, timings, finished) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (txn_id, _text(result.host), _text(result.rule), now, *columns, now),
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
            conn.execute(_SET_RESULT, (*columns, now, 0, txn_id))
        self._begun.discard(result.txn_id)

    # --- recovery and later rollback --------------------------------------------

    def interrupted(self) -> List[JournalEntry]:
        """Entries with intent but no terminal result, oldest first."""
        return self._entries("WHERE t.status IS NULL ORDER BY t.created, t.rowid", (), "list interrupted transactions")

    def record_recovery(self, txn_id: str, result: TransactionResult) -> None:
        """Give an interrupted entry the result of its recovery (``recovered`` or ``rollback_failed``)."""
        columns = _result_columns(result)
        with self._writing(f"record the recovery of transaction {txn_id}") as conn:
            row = self._existing(conn, txn_id)
            if row["status"] is not None:
                raise JournalError(
                    f"kensa journal {self._path}: transaction {txn_id} is not interrupted: it ended as "
                    f"{row['status']}; only interrupted transactions are recovered"
                )
            self._check_same_transaction(row, result)
            conn.execute(_SET_RESULT, (*columns, _now_us(), 1, _text(txn_id)))

    def record_rollback(self, txn_id: str, result: TransactionResult) -> None:
        """Record that committed (or staged) ``txn_id`` was later rolled back; its result is kept."""
        columns = _result_columns(result)
        with self._writing(f"record the rollback of transaction {txn_id}") as conn:
            row = self._existing(conn, txn_id)
            if row["status"] not in (Status.COMMITTED.value, Status.STAGED.value):
                raise JournalError(
                    f"kensa journal {self._path}: transaction {txn_id} ended as {row['status'] or 'nothing yet'}; "
                    "only a committed or staged transaction can be rolled back later"
                )
            if conn.execute("SELECT 1 FROM later_rollbacks WHERE txn_id = ?", (_text(txn_id),)).fetchone():
                raise JournalError(
                    f"kensa journal {self._path}: transaction {txn_id} was already rolled back; "
                    "see get(txn_id).later_rollback"
                )
            conn.execute(
                "INSERT INTO later_rollbacks (txn_id, result_txn_id, rule, host, status, host_unchanged, "
                "error_type, error_message, error_phase, step_results, rollback_results, timings, recorded) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    _text(txn_id),
                    _text(result.txn_id),
                    _text(result.rule),
                    _text(result.host),
                    *columns,
                    _now_us(),
                ),
            )

    # --- reading ----------------------------------------------------------------

    def get(self, txn_id: str) -> JournalEntry:
        """The entry of ``txn_id``; :class:`JournalEntryNotFound` when there is none."""
        entries = self._entries("WHERE t.id = ?", (_text(txn_id),), f"read transaction {txn_id}")
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
    ) -> List[JournalEntry]:
        """Entries newest first, filtered by every argument given.

        ``status`` matches the terminal result (interrupted entries have none);
        ``since`` (inclusive) and ``until`` (exclusive) bound the time the
        entry was created; a naive datetime is local time.
        """
        clauses: List[str] = []
        params: List[Any] = []
        if host is not None:
            clauses.append("t.host = ?")
            params.append(_text(host))
        if rule is not None:
            clauses.append("t.rule = ?")
            params.append(_text(rule))
        if status is not None:
            clauses.append("t.status = ?")
            params.append(Status(status).value)
        if since is not None:
            clauses.append("t.created >= ?")
            params.append(_to_us(since))
        if until is not None:
            clauses.append("t.created < ?")
            params.append(_to_us(until))
        sql = ("WHERE " + " AND ".join(clauses) if clauses else "") + " ORDER BY t.created DESC, t.rowid DESC"
        if limit is not None:
            if limit < 0:
                raise ValueError(f"history(limit={limit}): limit must be >= 0 or None")
            sql += " LIMIT ?"
            params.append(limit)
        return self._entries(sql, tuple(params), "read the history")

    # --- internals --------------------------------------------------------------

    def _failure(self, what: str, exc: BaseException) -> JournalError:
        code = getattr(exc, "sqlite_errorname", None)
        cause = f"{exc} ({type(exc).__name__}{', ' + code if code else ''})"
        return JournalError(f"kensa journal {self._path}: could not {what}: {cause}. {_WHAT_TO_DO}")

    def _connect(self) -> sqlite3.Connection:
        try:
            _create_private_file(self._path)
            conn = sqlite3.connect(
                str(self._path), timeout=self._busy_timeout, isolation_level=None, check_same_thread=False
            )
        except (OSError, sqlite3.Error) as exc:
            raise self._failure("open it", exc) from exc
        try:
            conn.row_factory = sqlite3.Row
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise JournalError(
                    f"kensa journal {self._path}: SQLite could not switch it to WAL mode (it stays {mode}); "
                    "put the journal on a local filesystem that supports shared memory mappings"
                )
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
        except BaseException as exc:
            conn.close()
            if isinstance(exc, sqlite3.Error):
                raise self._failure("open it", exc) from exc
            raise
        return conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        known = len(_MIGRATIONS)
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                if version > known:
                    raise JournalError(
                        f"kensa journal {self._path} has schema version {version}, but this kensa "
                        f"({__version__}) knows versions up to {known}: it was written by a newer kensa. "
                        "Upgrade kensa, or set KENSA_JOURNAL to another journal file."
                    )
                if version == 0 and conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
                    raise JournalError(
                        f"kensa journal {self._path} is an SQLite database with tables but no kensa "
                        "schema version: it is not a kensa journal. Choose another path."
                    )
                for number in range(version, known):
                    try:
                        _MIGRATIONS[number](conn)
                    except sqlite3.Error as exc:
                        raise self._failure(
                            f"migrate the schema from version {number} to {number + 1} (nothing was changed)", exc
                        ) from exc
                if version != known:
                    conn.execute(f"PRAGMA user_version = {int(known)}")
                # The write probe: opening succeeds only if a commit does.
                conn.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('last_opened', ?)",
                    (f"kensa {__version__}, pid {os.getpid()}, {datetime.now(timezone.utc).isoformat()}",),
                )
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise self._failure("open it", exc) from exc

    def _after_fork_in_child(self) -> None:
        # Runs single-threaded in the child: the lock may have been held by a
        # parent thread at fork time, and the connection belongs to the parent.
        self._lock = threading.Lock()
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
    def _transaction(self, what: str, begin: str) -> Iterator[sqlite3.Connection]:
        conn = self._acquire()
        try:
            try:
                conn.execute(begin)
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    # The original error says more than a failed ROLLBACK would.
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                raise
        except (sqlite3.Error, OSError) as exc:
            raise self._failure(what, exc) from exc
        finally:
            self._lock.release()

    def _writing(self, what: str) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        # IMMEDIATE takes the write lock up front, so a busy journal waits at
        # BEGIN (under the busy timeout) instead of failing at the first write.
        return self._transaction(what, "BEGIN IMMEDIATE")

    def _existing(self, conn: sqlite3.Connection, txn_id: str) -> sqlite3.Row:
        row: Optional[sqlite3.Row] = conn.execute(
            "SELECT host, rule, status FROM transactions WHERE id = ?", (_text(txn_id),)
        ).fetchone()
        if row is None:
            raise JournalEntryNotFound(f"kensa journal {self._path}: no transaction {txn_id!r} in the journal")
        return row

    def _check_same_transaction(self, row: sqlite3.Row, result: TransactionResult) -> None:
        recorded = (_untext(row["rule"]), _untext(row["host"]))
        if (result.rule, result.host) != recorded:
            raise JournalError(
                f"kensa journal {self._path}: the result for transaction {result.txn_id} names rule "
                f"{result.rule!r} on host {result.host!r}, but the journal recorded rule {recorded[0]!r} "
                f"on host {recorded[1]!r}; refusing to mix up two transactions"
            )

    def _entries(self, where: str, params: Tuple[Any, ...], what: str) -> List[JournalEntry]:
        with self._transaction(what, "BEGIN") as conn:
            rows = conn.execute(_ENTRY_QUERY + where, params).fetchall()
            pre_states: Dict[str, Dict[int, PreState]] = {}
            ids = [row["id"] for row in rows if row["steps"] is not None]
            # Stay well under SQLite's limit on bound parameters.
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                for pre in conn.execute(
                    "SELECT txn_id, step, mechanism, params, data FROM pre_states "
                    f"WHERE txn_id IN ({', '.join('?' * len(chunk))})",
                    chunk,
                ):
                    pre_states.setdefault(_untext(pre["txn_id"]), {})[pre["step"]] = PreState(
                        mechanism=_untext(pre["mechanism"]),
                        params=_decode(json.loads(pre["params"])),
                        data=_decode(json.loads(pre["data"])),
                    )
        return [_entry_from(row, pre_states.get(_untext(row["id"]), {})) for row in rows]

    # --- audit sequence numbers -------------------------------------------------
    # Kept apart from the transaction tables: one row per audit record a
    # transaction emitted, so ``kensa audit reconcile`` can tell which of them
    # auditd's log holds. The table is created on first use.

    def record_audit_sequences(
        self, txn_id: str, sequences: Sequence[Tuple[str, Optional[int]]], *, pid: Optional[int] = None
    ) -> None:
        """Journal, in order, each ``(phase, seq)`` of ``txn_id``'s audit records.

        ``seq`` is the record's sequence number, or None when the emitter did
        not hand it to the kernel. ``pid`` (default: this process) is the
        emitting process the kernel writes into the record. Appends after rows
        recorded earlier for the same transaction (a later rollback or recovery).
        """
        rows = _audit_sequence_rows(self._path, txn_id, sequences)
        who = os.getpid() if pid is None else pid
        now = _now_us()
        what = f"record the audit sequence numbers of transaction {txn_id}"
        conn = self._acquire()
        try:
            # Not worth an fsync of its own (it would double a transaction's
            # journal cost): committed with synchronous=NORMAL, the rows are
            # durable with the next FULL commit. The setting is restored before
            # the lock is released, or the connection is dropped.
            conn.execute("PRAGMA synchronous=NORMAL")
            try:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute(_AUDIT_SEQUENCES_DDL)
                conn.execute(_AUDIT_SEQUENCES_INDEX)
                start = conn.execute(
                    "SELECT COALESCE(MAX(ordinal), -1) + 1 FROM audit_sequences WHERE txn_id = ?", (_text(txn_id),)
                ).fetchone()[0]
                conn.executemany(
                    "INSERT INTO audit_sequences (txn_id, ordinal, phase, seq, pid, recorded) VALUES (?, ?, ?, ?, ?, ?)",
                    [(_text(txn_id), start + i, phase, seq, who, now) for i, (phase, seq) in enumerate(rows)],
                )
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                raise
            finally:
                try:
                    conn.execute("PRAGMA synchronous=FULL")
                except sqlite3.Error:
                    conn.close()
                    self._conn = None  # reopened with synchronous=FULL on next use
        except (sqlite3.Error, OSError) as exc:
            raise self._failure(what, exc) from exc
        finally:
            self._lock.release()

    def audit_sequences(self, txn_id: str) -> List[AuditSequence]:
        """The audit records journaled for ``txn_id``, in emission order (empty when none)."""
        return self._audit_sequences("WHERE txn_id = ?", (_text(txn_id),), f"read the audit sequence numbers of {txn_id}")

    def audit_sequences_between(
        self, since: Optional[datetime] = None, until: Optional[datetime] = None
    ) -> Dict[str, List[AuditSequence]]:
        """Audit records journaled from ``since`` (inclusive) to ``until`` (exclusive), by transaction.

        A naive datetime is local time, as in :meth:`history`.
        """
        clauses: List[str] = []
        params: List[Any] = []
        if since is not None:
            clauses.append("recorded >= ?")
            params.append(_to_us(since))
        if until is not None:
            clauses.append("recorded < ?")
            params.append(_to_us(until))
        where = "WHERE " + " AND ".join(clauses) if clauses else ""
        found: Dict[str, List[AuditSequence]] = {}
        for item in self._audit_sequences(where, tuple(params), "read the audit sequence numbers"):
            found.setdefault(item.txn_id, []).append(item)
        return found

    def _audit_sequences(self, where: str, params: Tuple[Any, ...], what: str) -> List[AuditSequence]:
        with self._transaction(what, "BEGIN") as conn:
            exists = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'audit_sequences'").fetchone()
            if exists is None:
                return []
            rows = conn.execute(
                f"SELECT txn_id, phase, seq, pid, recorded FROM audit_sequences {where} ORDER BY recorded, txn_id, ordinal",
                params,
            ).fetchall()
        return [
            AuditSequence(_untext(r["txn_id"]), r["phase"], r["seq"], r["pid"], _to_datetime(r["recorded"])) for r in rows
        ]


def _entry_from(row: sqlite3.Row, pre_states: Mapping[int, PreState]) -> JournalEntry:
    txn_id, host, rule = _untext(row["id"]), _untext(row["host"]), _untext(row["rule"])
    intent_recorded = row["steps"] is not None
    steps: Tuple[Step, ...] = ()
    if intent_recorded:
        steps = tuple(Step(step["mechanism"], _decode(step["params"])) for step in json.loads(row["steps"]))
    txn = Transaction(
        rule=rule,
        steps=steps,
        host=host,
        id=txn_id,
        transactional=True if row["transactional"] is None else bool(row["transactional"]),
    )
    result = None if row["status"] is None else _result_from(txn_id, rule, host, row, "")
    later_rollback = None
    later_rollback_at = None
    if row["rb_txn_id"] is not None:
        later_rollback = _result_from(
            _untext(row["rb_txn_id"]), _untext(row["rb_rule"]), _untext(row["rb_host"]), row, "rb_"
        )
        later_rollback_at = _to_datetime(row["rb_recorded"])
    return JournalEntry(
        txn=txn,
        pre_states=tuple(pre_states.get(index) for index in range(len(steps))),
        result=result,
        created=_to_datetime(row["created"]),
        finished=None if row["finished"] is None else _to_datetime(row["finished"]),
        intent_recorded=intent_recorded,
        recovered=bool(row["recovered"]),
        later_rollback=later_rollback,
        later_rollback_at=later_rollback_at,
    )


# --- the run/recovery lock -----------------------------------------------------

_POLL_SECONDS = 0.05


def _lock_holders(fd: int) -> List[Tuple[int, str]]:
    """(pid, READ|WRITE) of the flock holders of ``fd``'s file, from /proc/locks."""
    st = os.fstat(fd)
    holders = []
    try:
        with open("/proc/locks", encoding="ascii", errors="replace") as locks:
            for line in locks:
                # "1: FLOCK  ADVISORY  WRITE 1234 fe:00:5678 0 EOF"; waiters carry "->".
                fields = line.split()
                if len(fields) < 6 or fields[1] != "FLOCK":
                    continue
                major, minor, inode = fields[5].split(":")
                if (int(major, 16), int(minor, 16), int(inode)) == (
                    os.major(st.st_dev),
                    os.minor(st.st_dev),
                    st.st_ino,
                ):
                    holders.append((int(fields[4]), fields[3]))
    except (OSError, ValueError):
        return []
    return holders


class JournalLock:
    """``flock`` on ``<journal path>.lock``: shared for runs, exclusive for recovery.

    A context manager; ``timeout`` is in seconds (None waits forever, 0 tries
    once). On timeout it raises :class:`JournalLockTimeout` naming the lock
    file and, when /proc/locks tells, the pids holding it. A forked child shares
    the lock with its parent until both have released or exited.
    """

    def __init__(self, journal_path: PathArg, *, exclusive: bool = False, timeout: Optional[float] = 30.0) -> None:
        self._path = Path(os.fspath(journal_path) + ".lock")
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
                f"kensa journal lock {self._path}: cannot open it: {exc}. {_WHAT_TO_DO}"
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
        holders = _lock_holders(fd)
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


# --- audit sequence numbers: the table and its rows ------------------------------

_AUDIT_SEQUENCES_DDL = """CREATE TABLE IF NOT EXISTS audit_sequences (
    txn_id TEXT NOT NULL,
    ordinal INTEGER NOT NULL,
    phase TEXT NOT NULL,
    seq INTEGER CHECK (seq IS NULL OR seq >= 1),
    pid INTEGER NOT NULL,
    recorded INTEGER NOT NULL,
    PRIMARY KEY (txn_id, ordinal)
)"""
_AUDIT_SEQUENCES_INDEX = "CREATE INDEX IF NOT EXISTS audit_sequences_by_recorded ON audit_sequences (recorded)"


class AuditSequenceError(JournalError, ValueError):
    """Audit sequence numbers given to the journal are malformed; nothing was written."""


@dataclass(frozen=True)
class AuditSequence:
    """One audit record a transaction emitted: its phase and sequence number (None: never sent)."""

    txn_id: str
    phase: str
    seq: Optional[int]
    pid: int
    recorded: datetime


def _audit_sequence_rows(
    path: Path, txn_id: str, sequences: Sequence[Tuple[str, Optional[int]]]
) -> List[Tuple[str, Optional[int]]]:
    if not isinstance(txn_id, str) or not txn_id:
        raise AuditSequenceError(f"kensa journal {path}: audit sequence numbers need a transaction id, got {txn_id!r}")
    rows: List[Tuple[str, Optional[int]]] = []
    for n, item in enumerate(sequences):
        try:
            phase, seq = item
        except (TypeError, ValueError):
            raise AuditSequenceError(
                f"kensa journal {path}: audit record {n} of transaction {txn_id}: expected (phase, seq), got {item!r}"
            ) from None
        if not isinstance(phase, str) or not phase:
            raise AuditSequenceError(f"kensa journal {path}: audit record {n} of transaction {txn_id}: bad phase {phase!r}")
        if seq is not None and (isinstance(seq, bool) or not isinstance(seq, int) or not 1 <= seq < 2**63):
            raise AuditSequenceError(
                f"kensa journal {path}: audit record {n} ({phase}) of transaction {txn_id}: "
                f"seq must be None or an int from 1 to 2**63-1, got {seq!r}"
            )
        rows.append((phase, seq))
    return rows
