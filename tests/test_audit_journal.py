"""The journal's audit sequence numbers: stored per transaction, in order, validated."""

from __future__ import annotations

import contextlib
import sqlite3
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from kensa.journal.store import SqliteJournal
from kensa.errors import AuditSequenceError, JournalError, KensaError
from kensa.model import Step, Transaction


def test_sequences_round_trip_in_order(tmp_path: Path) -> None:
    """Each (phase, seq) comes back in emission order, None kept for a record never sent."""
    with SqliteJournal(tmp_path / "j.db") as journal:
        journal.record_audit_sequences("t1", [("started", 7), ("capture", None), ("committed", 9)])
        got = journal.audit_sequences("t1")
    assert [(s.phase, s.seq) for s in got] == [("started", 7), ("capture", None), ("committed", 9)]
    assert {s.txn_id for s in got} == {"t1"} and all(s.pid > 0 for s in got)


def test_a_later_call_appends(tmp_path: Path) -> None:
    """A second call for the same transaction (a rollback later) appends after the first."""
    with SqliteJournal(tmp_path / "j.db") as journal:
        journal.record_audit_sequences("t1", [("started", 1), ("committed", 2)])
        journal.record_audit_sequences("t1", [("rolled_back", 40)], pid=4242)
        got = journal.audit_sequences("t1")
    assert [(s.phase, s.seq, s.pid) for s in got][-1] == ("rolled_back", 40, 4242)
    assert len(got) == 3


def test_range_query_groups_by_transaction(tmp_path: Path) -> None:
    """audit_sequences_between returns what was recorded in the range, by transaction."""
    with SqliteJournal(tmp_path / "j.db") as journal:
        assert journal.audit_sequences_between() == {}  # before the table exists
        journal.record_audit_sequences("a", [("started", 1)])
        journal.record_audit_sequences("b", [("started", 2), ("skipped", 3)])
        everything = journal.audit_sequences_between()
        future = journal.audit_sequences_between(datetime.now() + timedelta(hours=1))
        past = journal.audit_sequences_between(until=datetime.now() - timedelta(hours=1))
    assert sorted(everything) == ["a", "b"] and [s.seq for s in everything["b"]] == [2, 3]
    assert future == {} and past == {}


@pytest.mark.parametrize(
    "bad",
    [[("started",)], [("", 1)], [("started", 0)], [("started", "1")], [("started", True)], [("started", 2**63)], ["started"]],
)
def test_malformed_sequences_are_refused_and_nothing_is_written(tmp_path: Path, bad: list) -> None:
    """A malformed entry raises AuditSequenceError naming the transaction; no row of the call is written."""
    with SqliteJournal(tmp_path / "j.db") as journal:
        with pytest.raises(AuditSequenceError) as exc:
            journal.record_audit_sequences("t1", [("started", 5), *bad])
        assert journal.audit_sequences("t1") == []
    assert isinstance(exc.value, JournalError) and isinstance(exc.value, KensaError) and isinstance(exc.value, ValueError)
    assert "t1" in str(exc.value)


def test_recording_sequences_leaves_later_commits_fully_durable(tmp_path: Path) -> None:
    """The cheaper commit of sequence numbers does not leak into the journal's other writes (synchronous=FULL)."""
    with SqliteJournal(tmp_path / "j.db") as journal:
        journal.record_audit_sequences("t1", [("started", 1)])
        with pytest.raises(AuditSequenceError):
            journal.record_audit_sequences("t1", [("started", -1)])
        conn = journal._acquire()
        try:
            assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        finally:
            journal._lock.release()


def _watch_synchronous(path: Path, *tables: str) -> None:
    """Record, for every row inserted into ``tables``, the synchronous setting of the connection that wrote it."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE seen (tbl TEXT, synchronous INTEGER)")
        for table in tables:
            conn.execute(
                f"CREATE TRIGGER seen_{table} AFTER INSERT ON {table} BEGIN "
                f"INSERT INTO seen SELECT '{table}', synchronous FROM pragma_synchronous; END"
            )
        conn.commit()


def _seen(path: Path) -> list:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return conn.execute("SELECT tbl, synchronous FROM seen ORDER BY rowid").fetchall()


def test_sequences_commit_without_an_fsync_of_their_own_and_other_commits_keep_full(tmp_path: Path) -> None:
    """Sequence rows are written with synchronous=NORMAL (1), the entry written next with FULL (2): the trade-off stays confined to them."""
    path = tmp_path / "j.db"
    with SqliteJournal(path) as journal:
        journal.record_audit_sequences("t0", [("started", 1)])  # creates the table
        _watch_synchronous(path, "audit_sequences", "transactions")
        journal.record_audit_sequences("t1", [("started", 2)])
        journal.begin(Transaction(rule="r", steps=(Step("file", {"path": "/a"}),)), [None])
    assert _seen(path) == [("audit_sequences", 1), ("transactions", 2)]


def test_a_failed_sequence_commit_writes_nothing_and_restores_full(tmp_path: Path) -> None:
    """When SQLite refuses the sequence rows, JournalError names the transaction, none of its rows is kept, and the next commit is FULL again."""
    path = tmp_path / "j.db"
    with SqliteJournal(path) as journal:
        journal.record_audit_sequences("t0", [("started", 1)])
        _watch_synchronous(path, "transactions")
        with contextlib.closing(sqlite3.connect(path)) as conn:
            conn.execute(
                "CREATE TRIGGER refuse BEFORE INSERT ON audit_sequences WHEN NEW.txn_id = 'bad' "
                "BEGIN SELECT RAISE(ABORT, 'refused by a trigger'); END"
            )
            conn.commit()
        with pytest.raises(JournalError, match="audit sequence numbers of transaction bad") as exc:
            journal.record_audit_sequences("bad", [("started", 2), ("committed", 3)])
        assert "refused by a trigger" in str(exc.value)
        assert journal.audit_sequences("bad") == []
        journal.begin(Transaction(rule="r", steps=(Step("file", {"path": "/a"}),)), [None])
    assert _seen(path) == [("transactions", 2)]
