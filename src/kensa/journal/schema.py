"""The journal's tables: their DDL, the migrations between versions, the SQL made from the result fields.

``PRAGMA user_version`` is the number of migrations applied; opening a journal
applies the missing ones from :data:`MIGRATIONS` in order, in one SQL
transaction. Version 1 journals (pre-states as base64 in JSON, ordered by wall
clock) are converted in place by the second migration.

The result columns of both ``transactions`` and ``later_rollbacks`` come from
:data:`kensa.journal.fields.RESULT_FIELDS`; every statement here names only
columns from that declaration or written out below, and binds every value.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime
from typing import Any, Callable, List, Optional

from kensa.journal import fields
from kensa.journal.codec import (
    NotJsonLike,
    bound_digest,
    decode_tagged,
    pre_state_blob,
    steps_digest,
    to_us,
    unstored_text,
)
from kensa.model import PreState

__all__ = [
    "LAST_SEQ",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "STATE_REFS",
    "adding_result_columns",
    "entry_query",
    "insert_later_rollback_sql",
    "insert_result_only_sql",
    "next_seq",
    "set_result_sql",
    "time_range",
]


def _result_ddl(*, required: bool, since: Optional[int] = None) -> str:
    return "".join(",\n    " + column.ddl(required=required) for column in fields.result_columns(since))


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
    recovered INTEGER NOT NULL DEFAULT 0"""
        + _result_ddl(required=False, since=1)
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
    host TEXT NOT NULL"""
        + _result_ddl(required=True, since=1)
        + """,
    recorded INTEGER NOT NULL
)"""
    )
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")


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
        (steps_digest(unstored_text(txn_id), unstored_text(steps)), txn_id)
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
    sha256 BLOB NOT NULL,  -- codec.bound_digest(b"pre", txn_id, step, state)
    -- Last, so that SQLite can write a zeroblob here without expanding it
    -- in memory (see kensa.journal.prestates).
    state BLOB NOT NULL,   -- [mechanism, params, data], see kensa.journal.codec.pack
    PRIMARY KEY (txn_id, step)
)"""
    )
    old = conn.cursor()
    for txn_id, step, mechanism, params, data in old.execute(
        "SELECT txn_id, step, mechanism, params, data FROM pre_states_v1 ORDER BY txn_id, step"
    ):
        try:
            pre = PreState(unstored_text(mechanism), decode_tagged(json.loads(params)), decode_tagged(json.loads(data)))
            blob = pre_state_blob(pre)
            digest = bound_digest(b"pre", unstored_text(txn_id), step, blob)
        except (ValueError, TypeError, KeyError, NotJsonLike):
            blob, digest = unstored_text(data).encode("utf-8", "surrogatepass"), b""
        conn.execute(
            "INSERT INTO pre_states (txn_id, step, state, sha256) VALUES (?, ?, ?, ?)", (txn_id, step, blob, digest)
        )
    conn.execute("DROP TABLE pre_states_v1")
    conn.execute(
        "INSERT OR REPLACE INTO meta (key, value) VALUES ('last_seq', (SELECT coalesce(max(seq), 0) FROM transactions))"
    )


def adding_result_columns(version: int) -> Callable[[sqlite3.Connection], None]:
    """The migration to ``version`` that adds the columns of the result fields declared with ``since=version``."""

    def add(conn: sqlite3.Connection) -> None:
        for table in ("transactions", "later_rollbacks"):
            for column in fields.result_columns(version):
                # Nullable by construction (see ResultField): existing rows read back None.
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {column.ddl(required=False)}")

    add.__name__ = add.__qualname__ = f"adding_result_columns_{version}"
    return add


# Each function takes the journal from version i to i + 1 inside the caller's
# SQL transaction. Append only: a released migration never changes.
MIGRATIONS: List[Callable[[sqlite3.Connection], None]] = [
    _create_schema, _sequence_digests_and_binary_pre_states, adding_result_columns(3),
]

SCHEMA_VERSION = len(MIGRATIONS)


def _names(prefix: str = "", alias: str = "") -> str:
    return ", ".join(f"{prefix}{column.name}{alias and f' AS {alias}{column.name}'}" for column in fields.result_columns())


def _marks(count: int) -> str:
    return ", ".join("?" * count)


def entry_query() -> str:
    """SELECT of entries with their later rollback (its result columns prefixed ``rb_``); a WHERE clause may follow."""
    return (
        "SELECT t.id, t.seq, t.host, t.rule, t.transactional, t.steps, t.steps_sha256, t.created, t.recovered, "
        f"{_names('t.')}, t.finished, "
        "r.result_txn_id AS rb_txn_id, r.rule AS rb_rule, r.host AS rb_host, "
        f"{_names('r.', 'rb_')}, r.recorded AS rb_recorded "
        "FROM transactions AS t LEFT JOIN later_rollbacks AS r ON r.txn_id = t.id "
    )


def set_result_sql() -> str:
    """UPDATE of an entry's result; binds the result values, finished, recovered, id."""
    assignments = "".join(f"{column.name} = ?, " for column in fields.result_columns())
    return f"UPDATE transactions SET {assignments}finished = ?, recovered = ? WHERE id = ?"


def insert_result_only_sql() -> str:
    """INSERT of an entry whose intent was never recorded; binds id, seq, host, rule, created, the result values, finished."""
    count = len(fields.result_columns())
    return f"INSERT INTO transactions (id, seq, host, rule, created, {_names()}, finished) VALUES ({_marks(count + 6)})"


def insert_later_rollback_sql() -> str:
    """INSERT of a later rollback; binds txn_id, result_txn_id, rule, host, the result values, recorded."""
    count = len(fields.result_columns())
    return (
        f"INSERT INTO later_rollbacks (txn_id, result_txn_id, rule, host, {_names()}, recorded) "
        f"VALUES ({_marks(count + 5)})"
    )


# What is needed to check and read a stored pre-state without loading it:
# typeof() and length() of a column are answered from the record header. A
# damaged row may hold text where a BLOB belongs: the digest is read as
# bytes so that the check reports it instead of a UTF-8 decode failing.
STATE_REFS = "step, CAST(sha256 AS BLOB) AS sha256, typeof(state) AS kind, length(state) AS size, rowid AS ref"


# The largest seq ever given: in use, or recorded in meta when pruning deleted it.
LAST_SEQ = (
    "max(coalesce((SELECT max(seq) FROM transactions), 0), "
    "coalesce((SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'last_seq'), 0))"
)


def next_seq(conn: sqlite3.Connection) -> int:
    """The next entry's ``seq``: one above the largest in use or ever pruned (pruning records it in meta).

    Read from the seq index and meta, not counted in meta on every write: a
    write would dirty one more page in every begin's commit.
    """
    row = conn.execute(f"SELECT {LAST_SEQ}").fetchone()
    return int(row[0]) + 1


def time_range(column: str, since: Optional[datetime], until: Optional[datetime], clauses: List[str], params: List[Any]) -> None:
    """Add ``since <= column < until`` (each bound when given) to a WHERE clause being built; ``column`` is a literal of the caller."""
    if since is not None:
        clauses.append(f"{column} >= ?")
        params.append(to_us(since))
    if until is not None:
        clauses.append(f"{column} < ?")
        params.append(to_us(until))
