"""Retention: which finished entries pruning may delete, and deleting them.

Pruning never deletes an interrupted entry (it is what recovery restores
from), nor any entry created after the oldest interrupted one: recovery
compares an interrupted transaction with what ran after it. An entry's rows
in the tables created on first use (its audit sequence numbers, its rule
source) go with it.
"""

from __future__ import annotations

import sqlite3
from typing import Any, List, Optional

from kensa.journal.schema import LAST_SEQ
from kensa.model import PruneResult

__all__ = ["delete_finished"]

_OLDEST_INTERRUPTED = "(SELECT min(seq) FROM transactions WHERE status IS NULL)"

#: Tables of rows keyed by ``txn_id`` that a journal holds once something wrote them.
_CREATED_ON_USE = ("audit_sequences", "rule_sources")


def delete_finished(conn: sqlite3.Connection, before_us: Optional[int], keep_last: Optional[int]) -> PruneResult:
    """Delete the finished entries created before ``before_us`` and/or beyond the ``keep_last`` newest; inside a write transaction.

    At least one of the two is given (the caller checks); with both, an entry
    is deleted only when both select it.
    """
    clauses: List[str] = []
    params: List[Any] = []
    if before_us is not None:
        clauses.append("created < ?")
        params.append(before_us)
    if keep_last is not None:
        clauses.append("seq NOT IN (SELECT seq FROM transactions ORDER BY seq DESC LIMIT ?)")
        params.append(keep_last)
    selected = " AND ".join(clauses)
    doomed = (
        f"SELECT id FROM transactions WHERE {selected} AND status IS NOT NULL "
        f"AND (seq < {_OLDEST_INTERRUPTED} OR {_OLDEST_INTERRUPTED} IS NULL)"
    )
    interrupted = conn.execute(f"SELECT count(*) FROM transactions WHERE {selected} AND status IS NULL", params).fetchone()[0]
    held = conn.execute(
        f"SELECT count(*) FROM transactions WHERE {selected} AND status IS NOT NULL AND seq > {_OLDEST_INTERRUPTED}",
        params,
    ).fetchone()[0]
    # The largest seq ever given must outlive the entries holding it.
    conn.execute(f"INSERT OR REPLACE INTO meta (key, value) VALUES ('last_seq', (SELECT {LAST_SEQ}))")
    conn.execute(f"DELETE FROM pre_states WHERE txn_id IN ({doomed})", params)
    conn.execute(f"DELETE FROM later_rollbacks WHERE txn_id IN ({doomed})", params)
    deleted = conn.execute(f"DELETE FROM transactions WHERE id IN ({doomed})", params).rowcount
    # The rows of the deleted entries, and any an older kensa's prune left without their entry.
    for table in _CREATED_ON_USE:
        if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone():
            conn.execute(f"DELETE FROM {table} WHERE txn_id NOT IN (SELECT id FROM transactions)")
    return PruneResult(deleted=deleted, kept_interrupted=interrupted, kept_for_recovery=held)
