"""The audit records each transaction emitted, kept so ``kensa audit reconcile`` can check auditd's log.

Kept apart from the transaction tables: one row per audit record, its phase
and sequence number (NULL when the emitter never handed it to the kernel) and
the emitting pid. The table is created on first use, so journals that never
emitted a record (and older ones) need no migration for it.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple

from kensa.errors import AuditSequenceError
from kensa.journal.codec import stored_text, to_datetime, unstored_text
from kensa.model import AuditSequence

__all__ = ["audit_sequence_rows", "insert_audit_sequences", "select_audit_sequences"]

_DDL = """CREATE TABLE IF NOT EXISTS audit_sequences (
    txn_id TEXT NOT NULL,
    ordinal INTEGER NOT NULL,
    phase TEXT NOT NULL,
    seq INTEGER CHECK (seq IS NULL OR seq >= 1),
    pid INTEGER NOT NULL,
    recorded INTEGER NOT NULL,
    PRIMARY KEY (txn_id, ordinal)
)"""
_INDEX = "CREATE INDEX IF NOT EXISTS audit_sequences_by_recorded ON audit_sequences (recorded)"


def audit_sequence_rows(
    path: Path, txn_id: str, sequences: Sequence[Tuple[str, Optional[int]]]
) -> List[Tuple[str, Optional[int]]]:
    """``sequences`` checked as ``(phase, seq)`` pairs; :class:`AuditSequenceError` names the first bad one."""
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


def insert_audit_sequences(
    conn: sqlite3.Connection, txn_id: str, rows: Sequence[Tuple[str, Optional[int]]], pid: int, recorded: int
) -> None:
    """Append ``rows`` (checked by :func:`audit_sequence_rows`) after those already kept for ``txn_id``; inside a write transaction."""
    conn.execute(_DDL)
    conn.execute(_INDEX)
    start = conn.execute(
        "SELECT COALESCE(MAX(ordinal), -1) + 1 FROM audit_sequences WHERE txn_id = ?", (stored_text(txn_id),)
    ).fetchone()[0]
    conn.executemany(
        "INSERT INTO audit_sequences (txn_id, ordinal, phase, seq, pid, recorded) VALUES (?, ?, ?, ?, ?, ?)",
        [(stored_text(txn_id), start + i, phase, seq, pid, recorded) for i, (phase, seq) in enumerate(rows)],
    )


def select_audit_sequences(conn: sqlite3.Connection, where: str, params: Tuple[Any, ...]) -> List[AuditSequence]:
    """The rows matching ``where`` (a clause of the caller's, values bound), by time, transaction and order; none without the table."""
    exists = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'audit_sequences'").fetchone()
    if exists is None:
        return []
    rows = conn.execute(
        f"SELECT txn_id, phase, seq, pid, recorded FROM audit_sequences {where} ORDER BY recorded, txn_id, ordinal",
        params,
    ).fetchall()
    return [
        AuditSequence(unstored_text(r["txn_id"]), r["phase"], r["seq"], r["pid"], to_datetime(r["recorded"])) for r in rows
    ]
