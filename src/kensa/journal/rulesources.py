"""The rule each transaction ran, as loaded for the run: id, title, file digest, references.

Kept so that a transaction's evidence names the framework references the
rule had when it ran, not those of whatever rule file is at hand when the
evidence is exported. A table of its own, created on first use (journals
without it read as holding no rule sources), one row per journaled transaction,
written after the run. Its rows are deleted with their transactions, by the
prune (:mod:`kensa.journal.retention`), which also removes any row left
without its entry (by an older kensa's prune).
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from typing import Optional, Sequence, Union

from kensa.journal.codec import now_us, stored_text, to_datetime, unstored_text
from kensa.journal.connection import connect, failure, sql_transaction
from kensa.model import RuleSource

__all__ = ["read_rule_source", "record_rule_sources"]

_DDL = """CREATE TABLE IF NOT EXISTS rule_sources (
    txn_id TEXT PRIMARY KEY,
    rule TEXT NOT NULL,
    title TEXT NOT NULL,
    source_file TEXT NOT NULL,
    source_sha256 TEXT,
    refs TEXT NOT NULL,
    recorded INTEGER NOT NULL
)"""

PathArg = Union[str, "os.PathLike[str]"]


def record_rule_sources(journal: PathArg, sources: Sequence[RuleSource], *, busy_timeout: float = 30.0) -> None:
    """Store ``sources`` in the existing journal at ``journal``: those of transactions it holds (a
    transaction recorded twice keeps its first)."""
    if not sources:
        return
    path = Path(os.fspath(journal))
    conn = connect(path, Path(os.path.realpath(path)), create=False, busy_timeout=busy_timeout)
    try:
        with sql_transaction(conn, "BEGIN IMMEDIATE"):
            conn.execute(_DDL)
            now = now_us()
            # Only for a transaction the journal holds: a planned one that never ran has no entry.
            conn.executemany(
                "INSERT OR IGNORE INTO rule_sources (txn_id, rule, title, source_file, source_sha256, refs, recorded) "
                "SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7 WHERE EXISTS (SELECT 1 FROM transactions WHERE id = ?1)",
                [
                    (stored_text(s.txn_id), stored_text(s.rule), stored_text(s.title), stored_text(s.source_file),
                     s.source_sha256, json.dumps([dict(r) for r in s.references], ensure_ascii=True, sort_keys=True), now)
                    for s in sources
                ],
            )
    except (sqlite3.Error, OSError) as exc:
        raise failure(path, "record the rule sources of the run", exc) from exc
    finally:
        conn.close()


def read_rule_source(journal: PathArg, txn_id: str, *, busy_timeout: float = 30.0) -> Optional[RuleSource]:
    """The rule source journaled for ``txn_id``, or None (none recorded, or a journal older than the table)."""
    path = Path(os.fspath(journal))
    conn = connect(path, Path(os.path.realpath(path)), create=False, busy_timeout=busy_timeout)
    try:
        exists = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'rule_sources'").fetchone()
        if exists is None:
            return None
        row = conn.execute("SELECT * FROM rule_sources WHERE txn_id = ?", (stored_text(txn_id),)).fetchone()
    except (sqlite3.Error, OSError) as exc:
        raise failure(path, f"read the rule source of transaction {txn_id}", exc) from exc
    finally:
        conn.close()
    if row is None:
        return None
    return RuleSource(
        txn_id=txn_id,
        rule=unstored_text(row["rule"]),
        title=unstored_text(row["title"]),
        source_file=unstored_text(row["source_file"]),
        source_sha256=row["source_sha256"],
        references=tuple(json.loads(row["refs"])),
        recorded=to_datetime(row["recorded"]),
    )
