"""Pre-states in the ``pre_states`` table: written in pieces, read back while being checked.

Pre-states can hold whole files. Large ones are written into their BLOB in
pieces and read back from it while being checked and decoded (where sqlite3
has ``blobopen``, Python 3.11+), so neither holds an extra copy of a captured
file. Each carries a SHA-256 bound to its transaction and step, checked
whenever it is read.
"""

from __future__ import annotations

import contextlib
import io
import sqlite3
from pathlib import Path
from typing import Callable, ContextManager, Dict, Iterator, List, Optional, Sequence, Tuple, Union, cast, overload

from kensa.errors import JournalCorruptError
from kensa.journal.codec import STREAM_BLOB_BYTES, Source, Undecodable, Unpacker, bound_hasher, pre_state_of
from kensa.model import PreState

__all__ = ["StoredPreStates", "insert_pre_state", "pre_states_from"]


class StoredPreStates(Sequence[Optional[PreState]]):
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


def insert_pre_state(conn: sqlite3.Connection, txn_id: Union[str, bytes], index: int, chunks: List[bytes], digest: bytes) -> None:
    """Store one pre-state given as packed pieces; above the streaming size, into a zeroblob piece by piece."""
    size = sum(len(chunk) for chunk in chunks)
    blobopen = getattr(conn, "blobopen", None)
    if size < STREAM_BLOB_BYTES or blobopen is None:
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
            if len(chunk) >= STREAM_BLOB_BYTES:
                blob.write(b"".join(pending))
                pending = []
                blob.write(chunk)
            else:
                pending.append(chunk)
        blob.write(b"".join(pending))


def pre_states_from(
    path: Path, conn: sqlite3.Connection, txn_id: str, steps: int, refs: Sequence[sqlite3.Row]
) -> Tuple[Optional[PreState], ...]:
    """Verify and decode one entry's stored pre-states (``refs``: rows of ``schema.STATE_REFS``).

    :class:`JournalCorruptError` names the first bad one; ``path`` is the
    journal, for the message.
    """
    found: Dict[int, PreState] = {}
    for ref in refs:
        step = ref["step"]
        where = f"kensa journal {path}: transaction {txn_id}: the pre-state of step {step}"
        if not isinstance(step, int) or not 0 <= step < steps:
            raise JournalCorruptError(f"{where} is corrupt: it belongs to no step (the transaction has {steps})", txn_id)
        damaged = JournalCorruptError(
            f"{where} is corrupt: it fails its SHA-256 check (the journal row was damaged); "
            "it cannot be restored from the journal",
            txn_id,
        )
        if ref["kind"] != "blob":
            raise damaged
        digest = bound_hasher(b"pre", txn_id, step)
        with _open_state(conn, ref["ref"]) as source:
            unpacker = Unpacker(source, ref["size"], digest)
            try:
                value, problem = unpacker.whole(), ""
            except Undecodable as exc:
                unpacker.drain()
                value, problem = None, str(exc)
        if digest.digest() != ref["sha256"]:
            raise damaged
        try:
            if problem:
                raise Undecodable(problem)
            found[step] = pre_state_of(value)
        except (Undecodable, TypeError, ValueError) as exc:
            raise JournalCorruptError(f"{where} is corrupt: it cannot be decoded: {exc}", txn_id) from None
    return tuple(found.get(index) for index in range(steps))


def _open_state(conn: sqlite3.Connection, ref: int) -> ContextManager[Source]:
    """A reader of one stored pre-state: the BLOB itself where sqlite3 has blobopen, else its bytes."""
    blobopen = getattr(conn, "blobopen", None)
    if blobopen is not None:
        return cast(ContextManager[Source], blobopen("pre_states", "state", ref, readonly=True))
    (data,) = conn.execute("SELECT state FROM pre_states WHERE rowid = ?", (ref,)).fetchone()
    return contextlib.nullcontext(io.BytesIO(data))
