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
    :class:`JournalLock` is an ``flock`` on ``<journal path>.lock``, the
    journal path with its symlinks resolved (as SQLite resolves them to open
    the database): runs hold it shared, recovery holds it exclusive, so
    recovery never rolls back a transaction that a live run is still
    applying, whichever link each was given.

Order
    Every entry gets ``seq`` when it is created, from a counter kept in the
    journal: strictly increasing, never reused, even after pruning. Listings
    and "what ran after this entry" (``history(after_seq=...)``) go by it.
    Wall-clock times (``created``, ``finished``) are kept for people and for
    retention only: a clock stepped back (common after a crash, before NTP)
    must not make a later transaction look older.

Schema
    ``PRAGMA user_version`` is the number of migrations applied; opening a
    journal applies the missing ones from ``_MIGRATIONS`` in order, in one SQL
    transaction with a write probe, and refuses a journal written by a newer
    kensa. Opening therefore fails, with the path and the cause, on a read-only
    or full filesystem before any transaction has changed the host. Version 1
    journals (pre-states as base64 in JSON, ordered by wall clock) are
    converted in place when first opened.

Stored values
    Step parameters (small) are stored as tagged JSON text: every JSON object
    in it is a tag, ``{"$dict": {...}}`` for a mapping (key order kept) or
    ``{"$bytes": "<base64>"}`` for bytes. Pre-states, which can hold whole
    files, are stored as BLOBs in a compact binary form (see ``_pack``: a
    type byte per value, lengths as LEB128, bytes as raw bytes), in their own
    table, so listings never read them. Large ones are written into the BLOB
    in pieces and read back from it while being checked and decoded (where
    sqlite3 has ``blobopen``, Python 3.11+), so neither holds an extra copy
    of a captured file. Either way any JSON-like value plus ``bytes`` reads
    back equal (tuples read back as lists).

Integrity
    Each pre-state BLOB, and each entry's steps, carry a SHA-256 computed
    when they are written, bound to the transaction id and step index (a row
    copied onto another entry fails too), and checked whenever they are read.
    An entry that fails its check or cannot be decoded is returned marked
    ``corrupt`` (reading its pre-states raises :class:`JournalCorruptError`
    naming it); every other entry reads as usual, so recovery can go on with
    them. Listings check what they read (the entry's row);
    :meth:`SqliteJournal.verify` also checks the pre-states.

Retention
    :meth:`SqliteJournal.prune` deletes finished entries by age or count. It
    never deletes an interrupted entry, nor an entry created after one
    (recovery compares an interrupted transaction with what ran after it).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import io
import json
import os
import sqlite3
import struct
import threading
import time
import weakref
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import TracebackType
from typing import (
    Any,
    Callable,
    ContextManager,
    Dict,
    Iterator,
    List,
    Mapping,
    Optional,
    Protocol,
    Sequence,
    Set,
    Tuple,
    Type,
    Union,
    cast,
    overload,
)

from kensa.errors import AuditSequenceError, InvalidJournalQuery, JournalCorruptError, JournalEntryNotFound, JournalError, JournalLockTimeout, JournalNotFound
from kensa._version import __version__
from kensa.support.flocks import flock_holders
from kensa.model import (
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
    "InvalidJournalQuery",
    "JournalCorruptError",
    "JournalEntryNotFound",
    "JournalError",
    "JournalLock",
    "JournalLockTimeout",
    "JournalNotFound",
    "PruneResult",
    "SqliteJournal",
    "default_journal_path",
]

PathArg = Union[str, "os.PathLike[str]"]

_WHAT_TO_DO = (
    "Check that the filesystem holding the journal is writable and has free space, "
    "or set KENSA_JOURNAL to a journal file elsewhere."
)


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


class _StoredPreStates(Sequence[Optional[PreState]]):
    """An entry's pre-states left in the journal (read at each access) or unreadable there (raising at each access).

    Nothing read is kept: a caller walking a long history() once (recovery
    looking for later changes of a file) holds one entry's pre-states at a
    time, not every one it has seen.
    """

    def __init__(
        self,
        *,
        load: Optional[Callable[[], Tuple[Optional[PreState], ...]]] = None,
        corrupt: Optional[JournalCorruptError] = None,
    ) -> None:
        self._load = load
        self._corrupt = corrupt

    def _read(self) -> Tuple[Optional[PreState], ...]:
        if self._corrupt is None and self._load is not None:
            try:
                return self._load()
            except JournalCorruptError as exc:
                self._corrupt = exc
        if self._corrupt is None:
            return ()
        # A fresh exception each time: re-raising one instance would chain tracebacks.
        raise JournalCorruptError(str(self._corrupt), self._corrupt.txn_id)

    @overload
    def __getitem__(self, index: int) -> Optional[PreState]: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[Optional[PreState]]: ...

    def __getitem__(self, index: Union[int, slice]) -> Union[Optional[PreState], Sequence[Optional[PreState]]]:
        return self._read()[index]

    def __len__(self) -> int:
        return len(self._read())

    def __iter__(self) -> Iterator[Optional[PreState]]:
        return iter(self._read())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence):
            return NotImplemented
        return self._read() == tuple(other)

    def __repr__(self) -> str:
        # Never read (or raise) just to show an entry.
        return "<unreadable pre-states>" if self._corrupt is not None else "<pre-states in the journal>"


@dataclass(frozen=True)
class PruneResult:
    """What :meth:`SqliteJournal.prune` did.

    ``deleted``: entries removed. ``kept_interrupted``: selected entries kept
    because they are interrupted (recover them first). ``kept_for_recovery``:
    selected finished entries kept because they were created after an
    interrupted one, which recovery compares them with.
    """

    deleted: int
    kept_interrupted: int
    kept_for_recovery: int


@dataclass(frozen=True)
class JournalEntry:
    """One transaction as the journal knows it.

    ``seq`` is the entry's place in the journal: assigned when the entry is
    created (at ``begin``, or at ``finish`` for a result-only entry), strictly
    increasing, never reused. Order and "later than" are decided by ``seq``,
    never by ``created``, which is wall-clock time and can step back.

    ``pre_states`` is aligned with ``txn.steps`` (None for a step that has no
    captured pre-state). Entries from :meth:`SqliteJournal.get` and
    :meth:`SqliteJournal.interrupted` carry them loaded, as a tuple; entries
    from :meth:`SqliteJournal.history` carry a sequence that reads them from
    the (still open) journal at each access and keeps nothing, so listings
    never load pre-states and a walk over a long history holds one entry's at
    a time. Reading them raises :class:`JournalCorruptError` when they fail
    their SHA-256 check or cannot be decoded. They are left out of the
    entry's ``repr`` and equality (a pre-state can be a whole file). ``corrupt`` is None for a readable entry, else why it is not
    (then ``pre_states`` raises, and ``txn.steps`` is empty when the steps
    themselves are unreadable). ``result`` is None while the transaction is
    interrupted. ``intent_recorded`` is False for a transaction that ended
    before ``begin`` (skipped, errored in preflight): only its result is known,
    so ``txn.steps`` is empty and ``txn.transactional`` is not meaningful.
    ``recovered`` is True when ``result`` was written by recovery after an
    interruption. ``later_rollback`` is the result of rolling a committed
    transaction back by id afterwards; ``result`` keeps the original outcome.
    Timestamps are timezone-aware UTC, to the microsecond.
    """

    txn: Transaction
    pre_states: Sequence[Optional[PreState]] = field(repr=False, compare=False)
    result: Optional[TransactionResult]
    created: datetime
    finished: Optional[datetime]
    intent_recorded: bool = True
    recovered: bool = False
    later_rollback: Optional[TransactionResult] = None
    later_rollback_at: Optional[datetime] = None
    seq: int = 0
    corrupt: Optional[str] = None
    _result_recorded: bool = field(default=False, repr=False, compare=False)

    @property
    def interrupted(self) -> bool:
        """True when intent was recorded but no terminal result ever was."""
        return self.intent_recorded and self.result is None and not self._result_recorded


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


# Pre-states can hold whole files, so they are stored in a compact binary
# form rather than as base64 inside JSON text. A stored state is the format
# byte, then one value: a type byte and its payload. Lengths and counts are
# unsigned LEB128; an int is its minimal two's-complement big-endian bytes; a
# float is IEEE 754 binary64, big-endian; a str is UTF-8 (lone surrogates kept
# with surrogatepass); a dict stores its keys as str payloads, in order.
_STATE_FORMAT = 1
_NONE, _TRUE, _FALSE, _INT, _FLOAT, _STR, _BYTES, _LIST, _DICT = b"NTFifsbld"


class _Undecodable(ValueError):
    """A stored value that does not follow the format it claims."""


def _varint(number: int, out: List[bytes]) -> None:
    while True:
        low = number & 0x7F
        number >>= 7
        if number:
            out.append(bytes((low | 0x80,)))
        else:
            out.append(bytes((low,)))
            return


def _pack_into(value: Any, out: List[bytes]) -> None:
    if value is None:
        out.append(bytes((_NONE,)))
    elif value is True or value is False:
        out.append(bytes((_TRUE if value else _FALSE,)))
    elif isinstance(value, int):
        raw = value.to_bytes(value.bit_length() // 8 + 1, "big", signed=True)
        out.append(bytes((_INT,)))
        _varint(len(raw), out)
        out.append(raw)
    elif isinstance(value, float):
        out.append(bytes((_FLOAT,)) + struct.pack(">d", value))
    elif isinstance(value, str):
        out.append(bytes((_STR,)))
        _pack_str(value, out)
    elif isinstance(value, (bytes, bytearray)):
        out.append(bytes((_BYTES,)))
        _varint(len(value), out)
        out.append(bytes(value))
    elif isinstance(value, Mapping):
        out.append(bytes((_DICT,)))
        _varint(len(value), out)
        for key, item in value.items():
            if not isinstance(key, str):
                raise _NotJsonLike(key)
            _pack_str(key, out)
            try:
                _pack_into(item, out)
            except _NotJsonLike as exc:
                exc.where.append(f"[{key!r}]")
                raise
    elif isinstance(value, (list, tuple)):
        out.append(bytes((_LIST,)))
        _varint(len(value), out)
        for index, item in enumerate(value):
            try:
                _pack_into(item, out)
            except _NotJsonLike as exc:
                exc.where.append(f"[{index}]")
                raise
    else:
        raise _NotJsonLike(value)


def _pack_str(value: str, out: List[bytes]) -> None:
    raw = value.encode("utf-8", "surrogatepass")
    _varint(len(raw), out)
    out.append(raw)


def _pack_chunks(value: Any) -> List[bytes]:
    """``value`` (JSON-like plus bytes) in the stored binary form, as pieces: bytes values are not copied."""
    out = [bytes((_STATE_FORMAT,))]
    _pack_into(value, out)
    return out


def _pack(value: Any) -> bytes:
    """``value`` (JSON-like plus bytes) in the stored binary form."""
    return b"".join(_pack_chunks(value))


class _Source(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class _Unpacker:
    """Decodes one stored value from ``source`` (``size`` bytes), hashing every byte it reads.

    Reads come straight from the BLOB (or a buffer), so a large bytes value
    is copied once, into the bytes object that holds it.
    """

    def __init__(self, source: _Source, size: int, digest: "hashlib._Hash") -> None:
        self._source = source
        self._left = size
        self._pos = 0
        self._digest = digest

    def _take(self, count: int) -> bytes:
        if count > self._left:
            raise _Undecodable(f"truncated at byte {self._pos}: {count} more bytes announced, {self._left} left")
        data = self._source.read(count)
        if len(data) != count:
            raise _Undecodable(f"short read at byte {self._pos}: {len(data)} of {count} bytes")
        self._digest.update(data)
        self._left -= count
        self._pos += count
        return data

    def _varint(self) -> int:
        number = shift = 0
        while True:
            byte = self._take(1)[0]
            number |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return number
            shift += 7
            if shift > 63:
                raise _Undecodable(f"length at byte {self._pos} does not fit in 64 bits")

    def _str(self) -> str:
        try:
            return self._take(self._varint()).decode("utf-8", "surrogatepass")
        except UnicodeDecodeError as exc:
            raise _Undecodable(f"text before byte {self._pos} is not UTF-8: {exc.reason}") from None

    def _count(self) -> int:
        count = self._varint()
        # Every item takes at least one byte: a larger count is corrupt.
        if count > self._left:
            raise _Undecodable(f"count {count} at byte {self._pos} exceeds the remaining data")
        return count

    def _value(self) -> Any:
        kind = self._take(1)[0]
        if kind == _NONE:
            return None
        if kind in (_TRUE, _FALSE):
            return kind == _TRUE
        if kind == _INT:
            return int.from_bytes(self._take(self._varint()), "big", signed=True)
        if kind == _FLOAT:
            return float(struct.unpack(">d", self._take(8))[0])
        if kind == _STR:
            return self._str()
        if kind == _BYTES:
            return self._take(self._varint())
        if kind == _LIST:
            return [self._value() for _ in range(self._count())]
        if kind == _DICT:
            items: Dict[str, Any] = {}
            for _ in range(self._count()):
                key = self._str()
                items[key] = self._value()
            return items
        raise _Undecodable(f"unknown type byte {kind:#04x} at byte {self._pos - 1}")

    def whole(self) -> Any:
        """The one value the source holds, format byte first and nothing after it."""
        fmt = self._take(1) if self._left else b""
        if fmt != bytes((_STATE_FORMAT,)):
            raise _Undecodable(f"unknown stored format {fmt!r}")
        try:
            value = self._value()
        except RecursionError:
            raise _Undecodable("nested too deeply") from None
        if self._left:
            raise _Undecodable(f"{self._left} bytes left over after the value")
        return value

    def drain(self) -> None:
        """Hash what was not decoded, so a damaged value is told apart from one this code cannot read."""
        while self._left:
            self._take(min(self._left, _STREAM_BLOB_BYTES))


def _unpack(data: bytes) -> Any:
    """The value stored by :func:`_pack`; raises :class:`_Undecodable`."""
    return _Unpacker(io.BytesIO(data), len(data), hashlib.sha256()).whole()


def _hasher(kind: bytes, txn_id: str, index: int) -> "hashlib._Hash":
    """SHA-256 primed with what the stored bytes belong to, so a row moved to another entry or step fails its check."""
    return hashlib.sha256(kind + b"\0" + txn_id.encode("utf-8", "surrogatepass") + b"\0" + str(index).encode() + b"\0")


def _digest(kind: bytes, txn_id: str, index: int, *stored: bytes) -> bytes:
    """The SHA-256 of stored bytes (given whole or in pieces) bound to their transaction and step."""
    digest = _hasher(kind, txn_id, index)
    for piece in stored:
        digest.update(piece)
    return digest.digest()


def _pre_state_chunks(pre: PreState) -> List[bytes]:
    return _pack_chunks([pre.mechanism, pre.params, pre.data])


def _pre_state_blob(pre: PreState) -> bytes:
    return b"".join(_pre_state_chunks(pre))


# Above this size a pre-state is written into a zeroblob piece by piece
# (where sqlite3 has blobopen): joining it and binding the result would hold
# two more copies of a captured file in memory.
_STREAM_BLOB_BYTES = 1 << 20


def _insert_pre_state(conn: sqlite3.Connection, txn_id: Union[str, bytes], index: int, chunks: List[bytes], digest: bytes) -> None:
    size = sum(len(chunk) for chunk in chunks)
    blobopen = getattr(conn, "blobopen", None)
    if size < _STREAM_BLOB_BYTES or blobopen is None:
        conn.execute(
            "INSERT INTO pre_states (txn_id, step, state, sha256) VALUES (?, ?, ?, ?)",
            (txn_id, index, b"".join(chunks), digest),
        )
        return
    cursor = conn.execute(
        "INSERT INTO pre_states (txn_id, step, state, sha256) VALUES (?, ?, zeroblob(?), ?)",
        (txn_id, index, size, digest),
    )
    with blobopen("pre_states", "state", cursor.lastrowid) as blob:
        pending: List[bytes] = []
        for chunk in chunks:
            if len(chunk) >= _STREAM_BLOB_BYTES:
                blob.write(b"".join(pending))
                pending = []
                blob.write(chunk)
            else:
                pending.append(chunk)
        blob.write(b"".join(pending))


def _pre_state_of(value: Any) -> PreState:
    if not (isinstance(value, list) and len(value) == 3 and isinstance(value[0], str) and isinstance(value[1], dict)):
        raise _Undecodable("not a [mechanism, params, data] triple")
    return PreState(mechanism=value[0], params=value[1], data=value[2])


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


def _lenient_text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _untext(value: Union[str, bytes]) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogatepass")
    return value


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _now_us() -> int:
    return time.time_ns() // 1000


def _to_datetime(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


def _time_range(column: str, since: Optional[datetime], until: Optional[datetime], clauses: List[str], params: List[Any]) -> None:
    """Add ``since <= column < until`` (each bound when given) to a WHERE clause being built."""
    if since is not None:
        clauses.append(f"{column} >= ?")
        params.append(_to_us(since))
    if until is not None:
        clauses.append(f"{column} < ?")
        params.append(_to_us(until))


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


def _steps_digest(txn_id: str, steps: str) -> bytes:
    return _digest(b"steps", txn_id, 0, steps.encode("utf-8", "surrogatepass"))


def _sequence_digests_and_binary_pre_states(conn: sqlite3.Connection) -> None:
    """Version 2: ``seq`` orders entries, pre-states become digested BLOBs.

    Version 1 journals never deleted rows, so their rowids are the order in
    which entries were created: they become the ``seq`` of existing entries.
    Each old pre-state is converted one row at a time (a row can hold a large
    file). A row the old code could not read back either is kept, as its raw
    text with an empty digest, so it is reported corrupt by id instead of
    blocking the migration of the whole journal.
    """
    conn.execute("ALTER TABLE transactions ADD COLUMN seq INTEGER")
    conn.execute("ALTER TABLE transactions ADD COLUMN steps_sha256 BLOB")
    conn.execute("UPDATE transactions SET seq = rowid")
    digests = [
        (_steps_digest(_untext(txn_id), _untext(steps)), txn_id)
        for txn_id, steps in conn.execute("SELECT id, steps FROM transactions WHERE steps IS NOT NULL")
    ]
    conn.executemany("UPDATE transactions SET steps_sha256 = ? WHERE id = ?", digests)
    conn.execute("CREATE UNIQUE INDEX transactions_by_seq ON transactions (seq)")
    conn.execute("DROP INDEX transactions_interrupted")
    conn.execute("CREATE INDEX transactions_interrupted ON transactions (seq) WHERE status IS NULL")
    # The table keeps its name; the version 1 rows are converted out of the old one.
    conn.execute("ALTER TABLE pre_states RENAME TO pre_states_v1")
    conn.execute(
        """CREATE TABLE pre_states (
    txn_id TEXT NOT NULL REFERENCES transactions (id),
    step INTEGER NOT NULL,
    sha256 BLOB NOT NULL,  -- _digest(b"pre", txn_id, step, state)
    -- Last, so that SQLite can write a zeroblob here without expanding it
    -- in memory (see _insert_pre_state).
    state BLOB NOT NULL,   -- [mechanism, params, data], see _pack
    PRIMARY KEY (txn_id, step)
)"""
    )
    old = conn.cursor()
    for txn_id, step, mechanism, params, data in old.execute(
        "SELECT txn_id, step, mechanism, params, data FROM pre_states_v1 ORDER BY txn_id, step"
    ):
        try:
            pre = PreState(_untext(mechanism), _decode(json.loads(params)), _decode(json.loads(data)))
            blob = _pre_state_blob(pre)
            digest = _digest(b"pre", _untext(txn_id), step, blob)
        except (ValueError, TypeError, KeyError, _NotJsonLike):
            blob, digest = _untext(data).encode("utf-8", "surrogatepass"), b""
        conn.execute(
            "INSERT INTO pre_states (txn_id, step, state, sha256) VALUES (?, ?, ?, ?)", (txn_id, step, blob, digest)
        )
    conn.execute("DROP TABLE pre_states_v1")
    conn.execute(
        "INSERT OR REPLACE INTO meta (key, value) VALUES ('last_seq', (SELECT coalesce(max(seq), 0) FROM transactions))"
    )


# Each function takes the journal from version i to i + 1 inside the caller's
# SQL transaction. Append only: a released migration never changes.
_MIGRATIONS: List[Callable[[sqlite3.Connection], None]] = [_create_schema, _sequence_digests_and_binary_pre_states]

SCHEMA_VERSION = len(_MIGRATIONS)

_ENTRY_QUERY = """
SELECT t.id, t.seq, t.host, t.rule, t.transactional, t.steps, t.steps_sha256, t.created, t.recovered,
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

# What is needed to check and read a stored pre-state without loading it:
# typeof() and length() of a column are answered from the record header. A
# damaged row may hold text where a BLOB belongs: the digest is read as
# bytes so that the check reports it instead of a UTF-8 decode failing.
_STATE_REFS = "step, CAST(sha256 AS BLOB) AS sha256, typeof(state) AS kind, length(state) AS size, rowid AS ref"

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

    def __init__(
        self,
        path: PathArg,
        *,
        busy_timeout: float = 30.0,
        create: bool = True,
        clock: Optional[Callable[[], datetime]] = None,
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
        """A :class:`JournalLock` for this journal's resolved file (not yet acquired)."""
        return JournalLock(self._resolved, exclusive=exclusive, timeout=timeout)

    def _now(self) -> int:
        return _now_us() if self._clock is None else _to_us(self._clock())

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
            pre_rows = []
            for index, pre in enumerate(pre_states):
                if pre is not None:
                    chunks = _pre_state_chunks(pre)
                    pre_rows.append((index, chunks, _digest(b"pre", txn.id, index, *chunks)))
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
                "INSERT INTO transactions (id, seq, host, rule, transactional, steps, steps_sha256, created) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    txn_id,
                    _next_seq(conn),
                    _text(txn.host),
                    _text(txn.rule),
                    int(txn.transactional),
                    steps,
                    _steps_digest(txn.id, steps),
                    self._now(),
                ),
            )
            for index, chunks, digest in pre_rows:
                _insert_pre_state(conn, txn_id, index, chunks, digest)
        self._begun.add(txn.id)

    def finish(self, result: TransactionResult) -> None:
        """Record the terminal result; inserts the whole entry when ``begin`` was never called."""
        columns = _result_columns(result)
        txn_id = _text(result.txn_id)
        with self._writing(f"record the result of transaction {result.txn_id}") as conn:
            row = conn.execute("SELECT host, rule, status FROM transactions WHERE id = ?", (txn_id,)).fetchone()
            now = self._now()
            if row is None:
                conn.execute(
                    "INSERT INTO transactions (id, seq, host, rule, created, status, host_unchanged, error_type, "
                    "error_message, error_phase, step_results, rollback_results, timings, finished) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (txn_id, _next_seq(conn), _text(result.host), _text(result.rule), now, *columns, now),
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
        """Entries with intent but no terminal result, oldest first (by ``seq``), pre-states loaded.

        A corrupt entry is listed too, with ``corrupt`` saying why: reading
        its ``pre_states`` raises :class:`JournalCorruptError`, so recovery
        reports it by id and goes on with the others.
        """
        return self._entries("WHERE t.status IS NULL ORDER BY t.seq", (), "list interrupted transactions", load=True)

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
            conn.execute(_SET_RESULT, (*columns, self._now(), 1, _text(txn_id)))

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
                    self._now(),
                ),
            )

    # --- reading ----------------------------------------------------------------

    def get(self, txn_id: str) -> JournalEntry:
        """The entry of ``txn_id``, pre-states loaded; :class:`JournalEntryNotFound` when there is none.

        A corrupt entry is returned with ``corrupt`` set; its ``pre_states`` raise.
        """
        entries = self._entries("WHERE t.id = ?", (_text(txn_id),), f"read transaction {txn_id}", load=True)
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
            params.append(_text(host))
        if rule is not None:
            clauses.append("t.rule = ?")
            params.append(_text(rule))
        if status is not None:
            clauses.append("t.status = ?")
            params.append(Status(status).value)
        _time_range("t.created", since, until, clauses, params)
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
        clauses: List[str] = []
        params: List[Any] = []
        if before is not None:
            clauses.append("created < ?")
            params.append(_to_us(before))
        if keep_last is not None:
            clauses.append("seq NOT IN (SELECT seq FROM transactions ORDER BY seq DESC LIMIT ?)")
            params.append(keep_last)
        selected = " AND ".join(clauses)
        oldest_interrupted = "(SELECT min(seq) FROM transactions WHERE status IS NULL)"
        doomed = (
            f"SELECT id FROM transactions WHERE {selected} AND status IS NOT NULL "
            f"AND (seq < {oldest_interrupted} OR {oldest_interrupted} IS NULL)"
        )
        with self._writing("prune old entries") as conn:
            interrupted = conn.execute(
                f"SELECT count(*) FROM transactions WHERE {selected} AND status IS NULL", params
            ).fetchone()[0]
            held = conn.execute(
                f"SELECT count(*) FROM transactions WHERE {selected} AND status IS NOT NULL "
                f"AND seq > {oldest_interrupted}",
                params,
            ).fetchone()[0]
            # The largest seq ever given must outlive the entries holding it.
            conn.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('last_seq', "
                "(SELECT max(coalesce((SELECT max(seq) FROM transactions), 0), "
                "coalesce((SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'last_seq'), 0))))"
            )
            conn.execute(f"DELETE FROM pre_states WHERE txn_id IN ({doomed})", params)
            conn.execute(f"DELETE FROM later_rollbacks WHERE txn_id IN ({doomed})", params)
            deleted = conn.execute(f"DELETE FROM transactions WHERE id IN ({doomed})", params).rowcount
        return PruneResult(deleted=deleted, kept_interrupted=interrupted, kept_for_recovery=held)

    # --- internals --------------------------------------------------------------

    def _failure(self, what: str, exc: BaseException) -> JournalError:
        code = getattr(exc, "sqlite_errorname", None)
        cause = f"{exc} ({type(exc).__name__}{', ' + code if code else ''})"
        return JournalError(f"kensa journal {self._path}: could not {what}: {cause}. {_WHAT_TO_DO}")

    def _connect(self) -> sqlite3.Connection:
        try:
            if self._create:
                _create_private_file(self._resolved)
                target = str(self._resolved)
            else:
                # mode=rw: a journal deleted since __init__ is an error, not a new empty file.
                target = self._resolved.as_uri() + "?mode=rw"
            conn = sqlite3.connect(
                target, timeout=self._busy_timeout, isolation_level=None, check_same_thread=False, uri=not self._create
            )
        except (OSError, sqlite3.Error) as exc:
            raise self._failure("open it", exc) from exc
        try:
            conn.row_factory = sqlite3.Row
            # Text that is not UTF-8 can only come from a damaged row; decoded
            # leniently, it fails its digest or decode and is reported as that
            # entry's corruption instead of failing the whole query.
            conn.text_factory = _lenient_text
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

    def _entries(self, where: str, params: Tuple[Any, ...], what: str, *, load: bool) -> List[JournalEntry]:
        with self._transaction(what, "BEGIN") as conn:
            rows = conn.execute(_ENTRY_QUERY + where, params).fetchall()
            if not load:
                return [self._entry_or_corrupt(row, None) for row in rows]
            stored: Dict[str, List[sqlite3.Row]] = {}
            ids = [row["id"] for row in rows if row["steps"] is not None]
            # Stay well under SQLite's limit on bound parameters.
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                for ref in conn.execute(
                    f"SELECT txn_id, {_STATE_REFS} FROM pre_states WHERE txn_id IN ({', '.join('?' * len(chunk))})",
                    chunk,
                ):
                    stored.setdefault(_untext(ref["txn_id"]), []).append(ref)
            return [self._entry_or_corrupt(row, (conn, stored.get(_untext(row["id"]), []))) for row in rows]

    def _load_pre_states(self, txn_id: str, steps: int) -> Tuple[Optional[PreState], ...]:
        with self._transaction(f"read the pre-states of transaction {txn_id}", "BEGIN") as conn:
            refs = conn.execute(f"SELECT {_STATE_REFS} FROM pre_states WHERE txn_id = ?", (_text(txn_id),)).fetchall()
            return self._pre_states_from(conn, txn_id, steps, refs)

    def _pre_states_from(
        self, conn: sqlite3.Connection, txn_id: str, steps: int, refs: Sequence[sqlite3.Row]
    ) -> Tuple[Optional[PreState], ...]:
        """Verify and decode one entry's stored pre-states; :class:`JournalCorruptError` names the first bad one."""
        found: Dict[int, PreState] = {}
        for ref in refs:
            step = ref["step"]
            where = f"kensa journal {self._path}: transaction {txn_id}: the pre-state of step {step}"
            if not isinstance(step, int) or not 0 <= step < steps:
                raise JournalCorruptError(f"{where} is corrupt: it belongs to no step (the transaction has {steps})", txn_id)
            damaged = JournalCorruptError(
                f"{where} is corrupt: it fails its SHA-256 check (the journal row was damaged); "
                "it cannot be restored from the journal",
                txn_id,
            )
            if ref["kind"] != "blob":
                raise damaged
            digest = _hasher(b"pre", txn_id, step)
            with self._open_state(conn, ref["ref"]) as source:
                unpacker = _Unpacker(source, ref["size"], digest)
                try:
                    value, problem = unpacker.whole(), ""
                except _Undecodable as exc:
                    unpacker.drain()
                    value, problem = None, str(exc)
            if digest.digest() != ref["sha256"]:
                raise damaged
            try:
                if problem:
                    raise _Undecodable(problem)
                found[step] = _pre_state_of(value)
            except (_Undecodable, TypeError, ValueError) as exc:
                raise JournalCorruptError(f"{where} is corrupt: it cannot be decoded: {exc}", txn_id) from None
        return tuple(found.get(index) for index in range(steps))

    @staticmethod
    def _open_state(conn: sqlite3.Connection, ref: int) -> ContextManager[_Source]:
        """A reader of one stored pre-state: the BLOB itself where sqlite3 has blobopen, else its bytes."""
        blobopen = getattr(conn, "blobopen", None)
        if blobopen is not None:
            return cast(ContextManager[_Source], blobopen("pre_states", "state", ref, readonly=True))
        (data,) = conn.execute("SELECT state FROM pre_states WHERE rowid = ?", (ref,)).fetchone()
        return contextlib.nullcontext(io.BytesIO(data))

    def _entry_or_corrupt(
        self, row: sqlite3.Row, stored: Optional[Tuple[sqlite3.Connection, Sequence[sqlite3.Row]]]
    ) -> JournalEntry:
        """The entry of one row; a row that cannot be read gives an entry marked ``corrupt``."""
        txn_id, host, rule = _untext(row["id"]), _untext(row["host"]), _untext(row["rule"])
        try:
            return _entry_from(row, self._pre_state_source(txn_id, row, stored))
        except JournalCorruptError as exc:
            why = str(exc)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            why = (
                f"kensa journal {self._path}: transaction {txn_id}: its row is corrupt: it cannot be decoded: "
                f"{type(exc).__name__}: {exc}"
            )
        result: Optional[TransactionResult] = None
        with contextlib.suppress(ValueError, TypeError, KeyError, AttributeError):
            result = None if row["status"] is None else _result_from(txn_id, rule, host, row, "")
        return JournalEntry(
            txn=Transaction(rule=rule, steps=(), host=host, id=txn_id),
            result=result,
            created=_to_datetime(row["created"]) if isinstance(row["created"], int) else _EPOCH,
            finished=_to_datetime(row["finished"]) if isinstance(row["finished"], int) else None,
            seq=row["seq"],
            intent_recorded=row["steps"] is not None,
            recovered=bool(row["recovered"]),
            corrupt=why,
            pre_states=_StoredPreStates(corrupt=JournalCorruptError(why, txn_id)),
            _result_recorded=row["status"] is not None,
        )

    def _pre_state_source(
        self, txn_id: str, row: sqlite3.Row, stored: Optional[Tuple[sqlite3.Connection, Sequence[sqlite3.Row]]]
    ) -> Sequence[Optional[PreState]]:
        """Loaded pre-states when ``stored`` (a connection in a read transaction, and the entry's refs) is given, else a loader."""
        steps = row["steps"]
        if steps is None:
            return ()
        if row["steps_sha256"] != _steps_digest(txn_id, _untext(steps)):
            raise JournalCorruptError(
                f"kensa journal {self._path}: transaction {txn_id}: its steps are corrupt: they fail their "
                "SHA-256 check (the journal row was damaged)", txn_id
            )
        count = len(json.loads(steps))
        if stored is not None:
            return self._pre_states_from(stored[0], txn_id, count, stored[1])
        return _StoredPreStates(load=lambda: self._load_pre_states(txn_id, count))

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
        _time_range("recorded", since, until, clauses, params)
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


def _next_seq(conn: sqlite3.Connection) -> int:
    """The next entry's ``seq``: one above the largest in use or ever pruned (pruning records it in meta).

    Read from the seq index and meta, not counted in meta on every write: a
    write would dirty one more page in every begin's commit.
    """
    row = conn.execute(
        "SELECT max(coalesce((SELECT max(seq) FROM transactions), 0), "
        "coalesce((SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'last_seq'), 0))"
    ).fetchone()
    return int(row[0]) + 1


def _entry_from(row: sqlite3.Row, pre_states: Sequence[Optional[PreState]]) -> JournalEntry:
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
        result=result,
        created=_to_datetime(row["created"]),
        finished=None if row["finished"] is None else _to_datetime(row["finished"]),
        seq=row["seq"],
        intent_recorded=intent_recorded,
        recovered=bool(row["recovered"]),
        later_rollback=later_rollback,
        later_rollback_at=later_rollback_at,
        pre_states=pre_states,
        _result_recorded=row["status"] is not None,
    )


# --- the run/recovery lock -----------------------------------------------------

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
