"""Group commit: concurrent journal writers share fsyncs, and each still learns the fate of its own write."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional


from kensa.errors import JournalError
from kensa.journal import SqliteJournal
from kensa.journal.connection import failure
from kensa.journal.groupcommit import GroupCommit
from kensa.model import PreState, Status, Step, Transaction, TransactionResult


def txn(name: str, steps: int = 2) -> Transaction:
    return Transaction(
        rule=f"rule-{name}", host="h", id=name, steps=tuple(Step("file", {"path": f"/etc/{name}/{i}"}) for i in range(steps))
    )


def pres(t: Transaction) -> List[Optional[PreState]]:
    return [PreState("file", dict(step.params), {"content": b"old " + t.id.encode()}) for step in t.steps]


def result(t: Transaction) -> TransactionResult:
    return TransactionResult(t.id, t.rule, t.host, Status.COMMITTED, False)


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 30
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting until {what}")
        time.sleep(0.005)


@contextlib.contextmanager
def sqlite_write_lock(path: Path) -> Iterator[sqlite3.Connection]:
    """Another connection holding the database's write lock, as another kensa process in a commit would."""
    other = sqlite3.connect(str(path), isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        yield other
    finally:
        other.execute("ROLLBACK")
        other.close()


def in_threads(calls: List[Callable[[], Any]]) -> List[Optional[BaseException]]:
    """Run each call on a thread of its own; what each raised (None when it returned)."""
    errors: List[Optional[BaseException]] = [None] * len(calls)

    def run(index: int) -> None:
        try:
            calls[index]()
        except BaseException as exc:  # collected for the assertions
            errors[index] = exc

    threads = [threading.Thread(target=run, args=(index,)) for index in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


def test_concurrent_writers_all_end_durable_and_ordered_by_sequence(tmp_path: Path) -> None:
    """16 threads x 20 begin+finish: every entry is complete when read by a fresh connection, each thread's in its own order."""
    path = tmp_path / "journal.db"
    with SqliteJournal(path) as journal:

        def worker(thread: int) -> None:
            for number in range(20):
                t = txn(f"t{thread:02d}-{number:02d}")
                journal.begin(t, pres(t))
                journal.finish(result(t))

        assert in_threads([lambda thread=thread: worker(thread) for thread in range(16)]) == [None] * 16
        commits, writes = journal.commit_counts
    assert writes == 16 * 20 * 2 and commits <= writes

    with SqliteJournal(path) as reader:
        entries = sorted(reader.history(), key=lambda entry: entry.seq)
        assert len(entries) == 320 and reader.interrupted() == []
        assert reader.verify(entries) == {}
    assert all(entry.result is not None and entry.result.status is Status.COMMITTED for entry in entries)
    seqs = [entry.seq for entry in entries]
    assert len(set(seqs)) == len(seqs)
    by_thread: Dict[str, List[str]] = {}
    for entry in entries:
        by_thread.setdefault(entry.txn.id[:3], []).append(entry.txn.id)
    assert all(ids == sorted(ids) for ids in by_thread.values())


def test_writes_queued_during_a_commit_share_the_next_one(tmp_path: Path) -> None:
    """While one write waits for the database, five more queue up; they are committed together: 6 writes, 2 commits."""
    path = tmp_path / "journal.db"
    with SqliteJournal(path) as journal:
        done: List[str] = []

        def begin(name: str) -> None:
            t = txn(name)
            journal.begin(t, pres(t))
            done.append(name)

        with sqlite_write_lock(path):
            first = threading.Thread(target=begin, args=("first",))
            first.start()
            # The first writer leads and waits for the lock; the rest queue behind it.
            wait_until(lambda: journal._commits._leading, "the first write leads")
            others = [threading.Thread(target=begin, args=(f"next{i}",)) for i in range(5)]
            for thread in others:
                thread.start()
            wait_until(lambda: journal._commits.waiting == 5, "five writes wait")
            assert done == []
        for thread in [first, *others]:
            thread.join()
        assert journal.commit_counts == (2, 6)
        assert sorted(done) == ["first"] + [f"next{i}" for i in range(5)]
        assert len(journal.interrupted()) == 6


def test_a_rejected_write_in_a_batch_fails_only_its_caller(tmp_path: Path) -> None:
    """Two begins of one id and three others in one batch: exactly one caller gets 'already in the journal', four entries are stored."""
    path = tmp_path / "journal.db"
    with SqliteJournal(path) as journal:
        with sqlite_write_lock(path):
            leader = threading.Thread(target=lambda: journal.begin(txn("lead"), pres(txn("lead"))))
            leader.start()
            wait_until(lambda: journal._commits._leading, "the first write leads")
            names = ["dup", "a", "dup", "b", "c"]
            outcome: List[List[Optional[BaseException]]] = []
            batch = threading.Thread(
                target=lambda: outcome.append(
                    in_threads([lambda name=name: journal.begin(txn(name), pres(txn(name))) for name in names])
                )
            )
            batch.start()
            wait_until(lambda: journal._commits.waiting == 5, "the batch is queued")
        leader.join()
        batch.join()
        errors = [error for error in outcome[0] if error is not None]
        assert len(errors) == 1 and isinstance(errors[0], JournalError)
        assert "transaction dup is already in the journal" in str(errors[0])
        assert journal.commit_counts == (2, 5)
        assert sorted(entry.txn.id for entry in journal.interrupted()) == ["a", "b", "c", "dup", "lead"]


def plain_commits(path: Path) -> GroupCommit:
    """A GroupCommit over a bare SQLite file with a parent/child table pair, FKs deferred to COMMIT."""
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
    conn.execute("CREATE TABLE child (id INTEGER PRIMARY KEY, parent INTEGER REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED)")
    lock = threading.Lock()

    @contextlib.contextmanager
    def connection(durable: bool) -> Iterator[sqlite3.Connection]:
        with lock:
            yield conn

    return GroupCommit(connection, lambda what, exc: failure(path, what, exc))


def batched(commits: GroupCommit, works: List[Callable[[sqlite3.Connection], Any]]) -> List[Optional[BaseException]]:
    """Run ``works`` as one batch: a first write holds the leader's seat until all of them are queued."""
    release = threading.Event()
    lead = threading.Thread(target=lambda: commits.write("hold", lambda conn: release.wait(30)))
    lead.start()
    wait_until(lambda: commits._leading, "the holder leads")
    outcome: List[List[Optional[BaseException]]] = []
    batch = threading.Thread(
        target=lambda: outcome.append(in_threads([lambda work=work: commits.write("test write", work) for work in works]))
    )
    batch.start()
    wait_until(lambda: commits.waiting == len(works), "the batch is queued")
    release.set()
    lead.join()
    batch.join()
    return outcome[0]


def test_a_failure_that_aborts_the_batch_transaction_fails_only_its_write(tmp_path: Path) -> None:
    """A write whose error ends the whole SQL transaction (as SQLite does on some I/O errors): the others are committed alone."""
    commits = plain_commits(tmp_path / "plain.db")

    def aborting(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO parent (id) VALUES (100)")
        conn.execute("ROLLBACK")
        raise sqlite3.OperationalError("disk I/O error")

    works = [lambda conn, i=i: conn.execute("INSERT INTO parent (id) VALUES (?)", (i,)) for i in range(3)]
    errors = batched(commits, [works[0], aborting, works[1], works[2]])
    assert [type(error).__name__ if error else None for error in errors] == [None, "JournalError", None, None]
    assert "could not test write: disk I/O error" in str(errors[1])
    with sqlite3.connect(str(tmp_path / "plain.db")) as check:
        assert [row[0] for row in check.execute("SELECT id FROM parent ORDER BY id")] == [0, 1, 2]


def test_a_commit_that_fails_is_retried_write_by_write(tmp_path: Path) -> None:
    """A batch whose COMMIT fails (a deferred foreign key of one write): that write fails, the others are committed."""
    commits = plain_commits(tmp_path / "plain.db")
    good = [lambda conn, i=i: conn.execute("INSERT INTO parent (id) VALUES (?)", (i,)) for i in range(3)]
    orphan = lambda conn: conn.execute("INSERT INTO child (id, parent) VALUES (1, 999)")  # noqa: E731
    errors = batched(commits, [good[0], orphan, good[1], good[2]])
    assert [error is None for error in errors] == [True, False, True, True]
    assert "FOREIGN KEY constraint failed" in str(errors[1])
    with sqlite3.connect(str(tmp_path / "plain.db")) as check:
        assert [row[0] for row in check.execute("SELECT id FROM parent ORDER BY id")] == [0, 1, 2]
        assert check.execute("SELECT count(*) FROM child").fetchone()[0] == 0


def test_an_interrupted_leader_hands_the_others_writes_to_the_next_leader(tmp_path: Path) -> None:
    """KeyboardInterrupt inside the leader's own write rolls the batch back, raises in the leader only; the rest commit after."""
    commits = plain_commits(tmp_path / "plain.db")
    release = threading.Event()
    raised: List[BaseException] = []

    def interrupted(conn: sqlite3.Connection) -> None:
        release.wait(30)
        conn.execute("INSERT INTO parent (id) VALUES (100)")
        raise KeyboardInterrupt

    def lead() -> None:
        try:
            commits.write("interrupted", interrupted)
        except KeyboardInterrupt as exc:
            raised.append(exc)

    holder = threading.Thread(target=lead)
    holder.start()
    wait_until(lambda: commits._leading, "the interrupted write leads")
    # Queued behind it: these go in the batch after, never lost.
    outcome: List[List[Optional[BaseException]]] = []
    works = [lambda conn, i=i: conn.execute("INSERT INTO parent (id) VALUES (?)", (i,)) for i in range(3)]
    batch = threading.Thread(target=lambda: outcome.append(in_threads([lambda w=w: commits.write("w", w) for w in works])))
    batch.start()
    wait_until(lambda: commits.waiting == 3, "three writes wait")
    release.set()
    holder.join()
    batch.join()
    assert len(raised) == 1 and outcome[0] == [None, None, None]
    with sqlite3.connect(str(tmp_path / "plain.db")) as check:
        assert [row[0] for row in check.execute("SELECT id FROM parent ORDER BY id")] == [0, 1, 2]


KILLED_WRITER = """
import sys, threading
from kensa.journal import SqliteJournal
from kensa.model import PreState, Status, Step, Transaction, TransactionResult
journal = SqliteJournal(sys.argv[1])
def worker(thread):
    for number in range(100000):
        t = Transaction(rule="r", host="h%d" % thread, id="t%d-%d" % (thread, number),
                        steps=tuple(Step("file", {"path": "/etc/f%d" % i}) for i in range(3)))
        journal.begin(t, [PreState("file", dict(s.params), {"content": b"x" * 4096}) for s in t.steps])
        if number % 2 == 0:
            journal.finish(TransactionResult(t.id, t.rule, t.host, Status.COMMITTED, False))
threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(8)]
for thread in threads:
    thread.start()
threading.Event().wait()
"""


def test_sigkill_during_batches_leaves_every_entry_complete_or_absent(tmp_path: Path) -> None:
    """A writer process of 8 threads killed with SIGKILL mid-run: every stored entry has all its pre-states, none is corrupt, recovery lists the unfinished ones."""
    path = tmp_path / "journal.db"
    SqliteJournal(path).close()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(path)], env=env, stderr=subprocess.PIPE)
    try:
        with SqliteJournal(path) as watcher:
            wait_until(lambda: len(watcher.history(limit=200)) >= 200, "the writer stored 200 entries")
    finally:
        proc.send_signal(signal.SIGKILL)
        _, stderr = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, stderr

    with SqliteJournal(path) as journal:
        entries = journal.history()
        interrupted = journal.interrupted()
        assert len(entries) >= 200
        assert journal.verify(entries) == {}
        assert all(entry.corrupt is None for entry in entries)
        for entry in interrupted:
            assert len(entry.pre_states) == 3 and all(pre is not None for pre in entry.pre_states)
        # Even-numbered transactions were finished right after begin; at most one per thread can be caught between.
        unfinished_even = [e for e in interrupted if int(e.txn.id.split("-")[1]) % 2 == 0]
        assert len(unfinished_even) <= 8
        assert {e.txn.id for e in interrupted} == {e.txn.id for e in entries if e.result is None}
