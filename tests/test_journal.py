"""The SQLite journal: exact storage, recovery queries, schema, threads, locks, failures."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any, Iterator, List, Optional

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kensa.journal.codec as codec
import kensa.journal.schema as schema
import kensa.journal.store as journal_module
from kensa.errors import JournalCorruptError, JournalEntryNotFound, JournalError, JournalLockTimeout, KensaError
from kensa.journal import SCHEMA_VERSION, JournalLock, SqliteJournal, default_journal_path
from kensa.journal.connection import WAL_CHECKPOINT_PAGES
from conftest import tmpfs
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


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[SqliteJournal]:
    with SqliteJournal(tmp_path / "journal.db") as opened:
        yield opened


def make_txn(rule: str = "rule-1", host: str = "localhost", steps: int = 1) -> Transaction:
    return Transaction(rule=rule, host=host, steps=tuple(Step("file", {"path": f"/etc/f{i}"}) for i in range(steps)))


def make_pre(index: int = 0) -> PreState:
    return PreState("file", {"path": f"/etc/f{index}"}, {"content": b"old\n", "mode": 0o644})


def make_result(txn: Transaction, status: Status = Status.COMMITTED, **changes: Any) -> TransactionResult:
    fields: dict[str, Any] = dict(
        txn_id=txn.id,
        rule=txn.rule,
        host=txn.host,
        status=status,
        host_unchanged=status is not Status.COMMITTED,
    )
    fields.update(changes)
    return TransactionResult(**fields)




# --- exact storage -------------------------------------------------------------


def test_every_field_of_transaction_pre_state_and_result_reads_back_equal(journal: SqliteJournal) -> None:
    """Steps, params, pre-states (bytes with NULs, non-UTF-8, nested dicts, tag-like keys, key order) and every result field round-trip."""
    txn = Transaction(
        rule="sshd-permit-root-login",
        host="web-01",
        transactional=False,
        steps=(
            Step("file", {"path": "/etc/ssh/sshd_config", "mode": 0o600, "marker": b"\x00\xff"}),
            Step("service", {"name": "sshd", "args": ["reload", None, True, 1.5]}),
            Step("sysctl", {}),
        ),
    )
    data = {
        "zeta": b"\x00\x01\xfe\xff binary \x00",
        "alpha": b"\xc3\x28 not utf-8",
        "nested": {"z": {"deep": [b"\x00", {"k": None}], "e": ""}, "a": [1, -2, 2**70, 1e308, -0.0]},
        "$bytes": "a key that looks like a tag",
        "$dict": {"$bytes": b"tag-like key holding bytes"},
        "text": "caf\u00e9 \u2603 \x00 nul",
        "flags": [True, False, None],
        "empty": {},
    }
    pre_states = [
        PreState("file", {"path": "/etc/ssh/sshd_config"}, data),
        PreState("service", {"name": "sshd"}, {"active": True, "enabled": b""}),
        None,
    ]
    journal.begin(txn, pre_states)
    result = TransactionResult(
        txn_id=txn.id,
        rule=txn.rule,
        host=txn.host,
        status=Status.ROLLBACK_FAILED,
        host_unchanged=False,
        timings={Phase.CAPTURE: 0.001, Phase.APPLY: 0.25, Phase.ROLLBACK: 1 / 3},
        steps=(StepResult("file", ok=True, changed=True, staged=False, detail="written"), StepResult("service", ok=False)),
        rollbacks=(RollbackResult("file", ok=False, detail="read-back differs"),),
        error=TransactionError(type="OSError", message="[Errno 5] I/O error: '/etc/x'", phase=Phase.APPLY),
    )
    journal.finish(result)

    entry = journal.get(txn.id)

    assert entry.txn == txn
    assert entry.pre_states == tuple(pre_states)
    assert entry.result == result
    assert entry.intent_recorded and not entry.recovered and not entry.interrupted
    assert entry.later_rollback is None and entry.later_rollback_at is None
    assert entry.finished is not None and entry.finished >= entry.created
    stored = entry.pre_states[0]
    assert stored is not None
    assert list(stored.data) == list(data)
    assert list(stored.data["nested"]) == ["z", "a"]
    assert type(stored.data["zeta"]) is bytes
    assert list(result.timings) == list(entry.result.timings)


def test_strings_that_are_not_utf8_round_trip(journal: SqliteJournal) -> None:
    """Lone surrogates (os.fsdecode of non-UTF-8 paths) in ids, names, params and messages are stored exactly."""
    odd = os.fsdecode(b"/etc/\xff\xfe")
    txn = Transaction(rule="rule-" + odd, host="host-" + odd, steps=(Step("file", {odd: odd}),), id="id-" + odd)
    pre = PreState("file", {"path": odd}, {odd: [odd]})
    journal.begin(txn, [pre])
    result = make_result(
        txn,
        Status.ROLLED_BACK,
        error=TransactionError("OSError", f"cannot write {odd}", Phase.VALIDATE),
        steps=(StepResult("file", ok=False, detail=odd),),
    )
    journal.finish(result)

    entry = journal.get(txn.id)

    assert (entry.txn, entry.pre_states, entry.result) == (txn, (pre,), result)
    assert journal.history(host=txn.host, rule=txn.rule) == [entry]


json_like = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


def test_any_json_like_pre_state_reads_back_equal(tmp_path: Path) -> None:
    """Whatever JSON-like data (with bytes) a handler captures, the journal gives back an equal PreState."""
    with SqliteJournal(tmp_path / "journal.db") as journal:

        @settings(max_examples=150, deadline=None)
        @given(st.dictionaries(st.text(max_size=8), json_like, max_size=5))
        def check(data: dict[str, Any]) -> None:
            txn = make_txn()
            pre = PreState("file", {"path": "/etc/f0"}, data)
            journal.begin(txn, [pre])
            stored = journal.get(txn.id).pre_states[0]
            assert stored == pre
            assert stored is not None and list(stored.data) == list(data)

        check()


def test_values_that_cannot_be_stored_exactly_are_refused_before_anything_is_written(journal: SqliteJournal) -> None:
    """A set or a non-str dict key in a pre-state raises JournalError naming the transaction and where; no intent is recorded."""
    txn = make_txn()
    with pytest.raises(JournalError, match=rf"{txn.id}.*\['files'\]\[1\]: \{{1\}}"):
        journal.begin(txn, [PreState("file", {}, {"files": [1, {1}]})])
    with pytest.raises(JournalError, match=r"\['modes'\]: 1 \(int\)"):
        journal.begin(txn, [PreState("file", {}, {"modes": {1: "x"}})])
    with pytest.raises(JournalEntryNotFound):
        journal.get(txn.id)


def test_begin_needs_one_pre_state_per_step(journal: SqliteJournal) -> None:
    """Pre-states must align with steps (None for a step without one): a mismatch is refused."""
    txn = make_txn(steps=2)
    with pytest.raises(JournalError, match="2 steps but 1 pre-states"):
        journal.begin(txn, [make_pre()])
    assert journal.interrupted() == []


def test_finish_without_begin_records_the_result_alone(journal: SqliteJournal) -> None:
    """A transaction skipped or errored before begin gets a full entry from finish and is never interrupted."""
    txn = make_txn(rule="already-compliant", host="db-02")
    result = make_result(txn, Status.SKIPPED, timings={Phase.CHECK: 0.01})
    journal.finish(result)

    entry = journal.get(txn.id)

    assert entry.result == result
    assert not entry.intent_recorded and not entry.interrupted
    assert (entry.txn.id, entry.txn.rule, entry.txn.host, entry.txn.steps) == (txn.id, txn.rule, txn.host, ())
    assert entry.pre_states == ()
    assert entry.finished == entry.created
    assert journal.interrupted() == []


def test_a_transaction_is_begun_once_and_finished_once(journal: SqliteJournal) -> None:
    """A second begin or a second finish for one id is refused and the first record stays."""
    txn = make_txn()
    journal.begin(txn, [make_pre()])
    with pytest.raises(JournalError, match="already in the journal"):
        journal.begin(txn, [None])
    journal.finish(make_result(txn))
    with pytest.raises(JournalError, match="already has a result"):
        journal.finish(make_result(txn, Status.ROLLED_BACK))
    entry = journal.get(txn.id)
    assert entry.pre_states == (make_pre(),)
    assert entry.result is not None and entry.result.status is Status.COMMITTED


def test_a_result_naming_another_rule_or_host_is_refused(journal: SqliteJournal) -> None:
    """finish refuses a result whose rule/host differ from the recorded intent; the entry stays interrupted."""
    txn = make_txn(host="web-01")
    journal.begin(txn, [make_pre()])
    with pytest.raises(JournalError, match="refusing to mix up"):
        journal.finish(make_result(txn, host="web-02"))
    assert [entry.txn.id for entry in journal.interrupted()] == [txn.id]


def test_get_of_an_unknown_id_is_a_lookup_error(journal: SqliteJournal) -> None:
    """get raises JournalEntryNotFound, which is a JournalError, a KensaError and a LookupError, naming the id."""
    with pytest.raises(JournalEntryNotFound, match="no-such-txn") as caught:
        journal.get("no-such-txn")
    assert isinstance(caught.value, JournalError)
    assert isinstance(caught.value, KensaError)
    assert isinstance(caught.value, LookupError)


def test_begin_is_committed_when_it_returns(tmp_path: Path) -> None:
    """Intent and pre-state survive the process being killed right after begin: another process sees them as interrupted."""
    path = tmp_path / "journal.db"
    script = (
        "import os, signal, sys\n"
        "from kensa.journal import SqliteJournal\n"
        "from kensa.model import PreState, Step, Transaction\n"
        "j = SqliteJournal(sys.argv[1])\n"
        "t = Transaction(rule='r', steps=(Step('file', {'path': '/etc/x'}),), id='killed')\n"
        "j.begin(t, [PreState('file', {'path': '/etc/x'}, {'content': b'\\x00old'})])\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.run([sys.executable, "-c", script, str(path)], env=env, capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr

    with SqliteJournal(path) as journal:
        (entry,) = journal.interrupted()
    assert entry.txn.id == "killed"
    assert entry.pre_states == (PreState("file", {"path": "/etc/x"}, {"content": b"\x00old"}),)


def test_begin_and_finish_are_one_commit_each_on_a_wal_full_sync_journal(journal: SqliteJournal) -> None:
    """The journal runs in WAL with synchronous=FULL, and begin and finish each make exactly one commit."""
    conn = journal._conn
    assert conn is not None
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    statements: List[str] = []
    conn.set_trace_callback(statements.append)
    txn = make_txn(steps=3)
    journal.begin(txn, [make_pre(0), None, make_pre(2)])
    journal.finish(make_result(txn))
    conn.set_trace_callback(None)
    assert [s for s in statements if s.split()[0] in ("BEGIN", "COMMIT")] == ["BEGIN IMMEDIATE", "COMMIT"] * 2


def test_the_wal_file_stops_growing_early_in_a_run(tmp_path: Path) -> None:
    """A commit that extends the WAL file pays for the new size in its fsync: the WAL is
    checkpointed, then reused from its start, once it holds WAL_CHECKPOINT_PAGES pages, not
    SQLite's default thousand (4 MiB, more than a run of a hundred rules writes)."""
    path = tmp_path / "journal.db"
    pre = PreState("file", {"path": "/etc/f"}, {"content": os.urandom(3000), "mode": 0o644})
    with SqliteJournal(path) as journal:
        conn = journal._conn
        assert conn is not None
        page = conn.execute("PRAGMA page_size").fetchone()[0]
        for _ in range(300):
            txn = make_txn()
            journal.begin(txn, [pre])
            journal.finish(make_result(txn))
        wal_bytes = os.path.getsize(f"{path}-wal")
    # One commit's pages of slack past the checkpoint threshold.
    assert wal_bytes <= (WAL_CHECKPOINT_PAGES + 32) * (page + 24)


def test_the_journal_file_is_private(tmp_path: Path) -> None:
    """A new journal (and missing parent directories) are created; the file is mode 0600 since pre-states may be secrets."""
    path = tmp_path / "state" / "kensa" / "journal.db"
    SqliteJournal(path).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_closed_journal_refuses_calls(tmp_path: Path) -> None:
    """After close, calls raise JournalError saying the journal is closed."""
    journal = SqliteJournal(tmp_path / "journal.db")
    journal.close()
    with pytest.raises(JournalError, match="is closed"):
        journal.interrupted()


# --- recovery, later rollback, history ----------------------------------------


def test_interrupted_lists_entries_with_intent_and_no_result_oldest_first(journal: SqliteJournal) -> None:
    """Begun-but-unfinished transactions are interrupted, oldest first; finished and result-only ones are not."""
    txns = [make_txn(rule=f"rule-{i}") for i in range(4)]
    for txn in txns:
        journal.begin(txn, [make_pre()])
    journal.finish(make_result(txns[1]))
    journal.finish(make_result(make_txn(), Status.SKIPPED))

    interrupted = journal.interrupted()

    assert [entry.txn for entry in interrupted] == [txns[0], txns[2], txns[3]]
    assert all(entry.interrupted and entry.result is None and entry.finished is None for entry in interrupted)
    assert interrupted[0].pre_states == (make_pre(),)


def test_record_recovery_gives_an_interrupted_entry_its_result(journal: SqliteJournal) -> None:
    """Recovery's result closes the interrupted entry, marked recovered; it is no longer interrupted."""
    txn = make_txn()
    journal.begin(txn, [make_pre()])
    result = make_result(txn, Status.RECOVERED, rollbacks=(RollbackResult("file", ok=True),))

    journal.record_recovery(txn.id, result)

    entry = journal.get(txn.id)
    assert entry.result == result and entry.recovered and entry.finished is not None
    assert journal.interrupted() == []


def test_record_recovery_only_applies_to_interrupted_entries(journal: SqliteJournal) -> None:
    """Recovering a finished transaction is refused; recovering an unknown id is a lookup error."""
    txn = make_txn()
    journal.begin(txn, [make_pre()])
    journal.finish(make_result(txn))
    with pytest.raises(JournalError, match="is not interrupted: it ended as committed"):
        journal.record_recovery(txn.id, make_result(txn, Status.RECOVERED))
    with pytest.raises(JournalEntryNotFound):
        journal.record_recovery("missing", make_result(make_txn(), Status.RECOVERED))
    entry = journal.get(txn.id)
    assert entry.result is not None and entry.result.status is Status.COMMITTED and not entry.recovered


def test_record_rollback_keeps_the_original_result_and_adds_the_later_one(journal: SqliteJournal) -> None:
    """Rolling back a committed transaction by id keeps its committed result and adds the rollback's result."""
    txn = make_txn()
    journal.begin(txn, [make_pre()])
    committed = make_result(txn, timings={Phase.APPLY: 0.5})
    journal.finish(committed)
    rollback = make_result(txn, Status.ROLLED_BACK, rollbacks=(RollbackResult("file", ok=True, detail="restored"),))

    journal.record_rollback(txn.id, rollback)

    entry = journal.get(txn.id)
    assert entry.result == committed
    assert entry.later_rollback == rollback
    assert entry.later_rollback_at is not None and entry.finished is not None
    assert entry.later_rollback_at >= entry.finished
    with pytest.raises(JournalError, match="already rolled back"):
        journal.record_rollback(txn.id, rollback)


def test_record_rollback_needs_a_committed_or_staged_transaction(journal: SqliteJournal) -> None:
    """An interrupted or rolled-back transaction cannot be rolled back later; an unknown id is a lookup error."""
    open_txn, failed_txn = make_txn(), make_txn()
    journal.begin(open_txn, [make_pre()])
    journal.finish(make_result(failed_txn, Status.ROLLED_BACK))
    for txn, status in ((open_txn, "nothing yet"), (failed_txn, "rolled_back")):
        with pytest.raises(JournalError, match=f"ended as {status}"):
            journal.record_rollback(txn.id, make_result(txn, Status.ROLLED_BACK))
    with pytest.raises(JournalEntryNotFound):
        journal.record_rollback("missing", make_result(make_txn(), Status.ROLLED_BACK))


def test_history_is_newest_first_and_filters_by_host_rule_status_and_limit(journal: SqliteJournal) -> None:
    """history filters by host, rule, status (enum or value) and limit, combined with AND, newest first."""
    made = []
    for i, (host, rule, status) in enumerate(
        [
            ("web-01", "ssh", Status.COMMITTED),
            ("web-02", "ssh", Status.ROLLED_BACK),
            ("web-01", "ntp", Status.COMMITTED),
            ("web-01", "ssh", None),
            ("web-02", "ntp", Status.SKIPPED),
        ]
    ):
        txn = make_txn(rule=rule, host=host)
        if status is Status.SKIPPED:
            journal.finish(make_result(txn, status))
        else:
            journal.begin(txn, [make_pre()])
            if status is not None:
                journal.finish(make_result(txn, status))
        made.append(txn.id)
    newest_first = list(reversed(made))

    def ids(**filters: Any) -> List[str]:
        return [entry.txn.id for entry in journal.history(**filters)]

    assert ids() == newest_first
    assert ids(host="web-01") == [made[3], made[2], made[0]]
    assert ids(rule="ntp") == [made[4], made[2]]
    assert ids(status=Status.COMMITTED) == [made[2], made[0]]
    assert ids(status="rolled_back") == [made[1]]
    assert ids(host="web-01", rule="ssh", status="committed") == [made[0]]
    assert ids(limit=2) == newest_first[:2]
    assert ids(limit=0) == []
    assert ids(host="nowhere") == []
    with pytest.raises(ValueError):
        journal.history(status="bogus")
    with pytest.raises(ValueError):
        journal.history(limit=-1)


def test_history_since_is_inclusive_and_until_exclusive_on_creation_time(journal: SqliteJournal) -> None:
    """since/until bound the creation time; aware and naive (local) datetimes select the same entries."""
    for i in range(5):
        journal.finish(make_result(make_txn(rule=f"r{i}"), Status.SKIPPED))
    everything = journal.history()
    middle = everything[2].created

    since = journal.history(since=middle)
    until = journal.history(until=middle)

    assert since == [e for e in everything if e.created >= middle]
    assert until == [e for e in everything if e.created < middle]
    assert everything[2] in since and everything[2] not in until
    assert journal.history(since=middle, until=middle + timedelta(microseconds=1)) == [
        e for e in everything if e.created == middle
    ]
    naive_local = middle.astimezone().replace(tzinfo=None)
    assert journal.history(since=naive_local) == since


# --- schema and migrations -----------------------------------------------------


def user_version(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])


def test_an_empty_file_is_a_version_0_journal_and_gets_the_schema(tmp_path: Path) -> None:
    """Opening an empty (version 0) file applies every migration and the journal works."""
    path = tmp_path / "journal.db"
    path.write_bytes(b"")
    with SqliteJournal(path) as journal:
        journal.finish(make_result(make_txn(), Status.SKIPPED))
        assert len(journal.history()) == 1
    assert user_version(path) == SCHEMA_VERSION >= 1


def test_a_journal_from_a_newer_kensa_is_refused_untouched(tmp_path: Path) -> None:
    """A schema version above what this code knows raises JournalError naming both versions; the file is not changed."""
    path = tmp_path / "journal.db"
    SqliteJournal(path).close()
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(JournalError, match=rf"schema version {SCHEMA_VERSION + 1}.*up to {SCHEMA_VERSION}.*newer kensa"):
        SqliteJournal(path)
    assert user_version(path) == SCHEMA_VERSION + 1


def test_missing_migrations_are_applied_once_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A journal at the previous version gets the new migrations, in order, once; existing entries survive."""
    path = tmp_path / "journal.db"
    txn = make_txn()
    with SqliteJournal(path) as journal:
        journal.begin(txn, [make_pre()])
    calls: List[str] = []

    def add_note_column(conn: sqlite3.Connection) -> None:
        calls.append("note")
        conn.execute("ALTER TABLE transactions ADD COLUMN note TEXT")

    def fill_note(conn: sqlite3.Connection) -> None:
        calls.append("fill")
        conn.execute("UPDATE transactions SET note = 'migrated'")

    monkeypatch.setattr(schema, "MIGRATIONS", [*schema.MIGRATIONS, add_note_column, fill_note])
    with SqliteJournal(path) as journal:
        assert journal.interrupted()[0].txn == txn
    with SqliteJournal(path):
        pass

    assert calls == ["note", "fill"]
    assert user_version(path) == SCHEMA_VERSION + 2
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT note FROM transactions").fetchall() == [("migrated",)]


def test_a_failing_migration_leaves_the_journal_unchanged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """If a migration fails, no part of it or of earlier steps in the same open is kept, and the error says which step."""
    path = tmp_path / "journal.db"
    SqliteJournal(path).close()

    def half_done(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE extra (x)")
        conn.execute("SELECT * FROM no_such_table")

    monkeypatch.setattr(schema, "MIGRATIONS", [*schema.MIGRATIONS, half_done])
    with pytest.raises(JournalError, match=rf"from version {SCHEMA_VERSION} to {SCHEMA_VERSION + 1}"):
        SqliteJournal(path)
    assert user_version(path) == SCHEMA_VERSION
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'extra'").fetchone()[0] == 0


def test_files_that_are_not_kensa_journals_are_refused(tmp_path: Path) -> None:
    """A non-SQLite file and an SQLite database of something else raise JournalError naming the path."""
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a database" * 100)
    with pytest.raises(JournalError, match=str(garbage)):
        SqliteJournal(garbage)
    other = tmp_path / "other.db"
    with contextlib.closing(sqlite3.connect(other)) as conn:
        conn.execute("CREATE TABLE inventory (item)")
    with pytest.raises(JournalError, match="not a kensa journal"):
        SqliteJournal(other)


# --- threads and processes -----------------------------------------------------


def test_eight_threads_of_fifty_transactions_lose_no_rows(journal: SqliteJournal) -> None:
    """8 threads each beginning and finishing 50 transactions on one journal leave 400 complete entries."""
    start = threading.Barrier(8)
    made: List[List[TransactionResult]] = [[] for _ in range(8)]
    errors: List[BaseException] = []

    def run(worker: int) -> None:
        try:
            start.wait()
            for i in range(50):
                txn = make_txn(rule=f"w{worker}-{i}", host=f"host-{worker}")
                journal.begin(txn, [PreState("file", {}, {"n": i, "blob": bytes([worker, i, 0])})])
                result = make_result(txn)
                journal.finish(result)
                made[worker].append(result)
        except BaseException as exc:  # reported below: a thread's exception would vanish
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert journal.interrupted() == []
    entries = {entry.txn.id: entry for entry in journal.history()}
    assert len(entries) == 400
    for worker, results in enumerate(made):
        for i, result in enumerate(results):
            entry = entries[result.txn_id]
            assert entry.result == result
            assert entry.pre_states[0] is not None and entry.pre_states[0].data["blob"] == bytes([worker, i, 0])


def _write_from_child(journal: SqliteJournal, worker: int) -> None:
    for i in range(20):
        txn = make_txn(rule=f"child{worker}-{i}")
        journal.begin(txn, [make_pre()])
        journal.finish(make_result(txn))


def test_a_forked_child_writes_through_its_own_connection(journal: SqliteJournal) -> None:
    """Children forked while a parent thread is inside a journal call can use the journal; the parent sees every row."""
    context = multiprocessing.get_context("fork")
    children = [context.Process(target=_write_from_child, args=(journal, w)) for w in range(2)]
    # As if another thread were mid-commit at fork time: a child that reused
    # this lock (or the connection behind it) would wait forever.
    with journal._lock:
        for child in children:
            child.start()
    for child in children:
        child.join(timeout=120)  # a guard against hanging the suite, not a timing check
    for child in children:
        if child.exitcode is None:
            child.kill()
    assert [child.exitcode for child in children] == [0, 0]
    txn = make_txn(rule="parent")
    journal.begin(txn, [make_pre()])
    journal.finish(make_result(txn))
    assert len(journal.history(status="committed")) == 41
    assert journal.interrupted() == []


# --- the run/recovery lock -----------------------------------------------------

HOLD_LOCK = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX if sys.argv[2] == "exclusive" else fcntl.LOCK_SH)
print("locked", flush=True)
sys.stdin.read()
"""


@contextlib.contextmanager
def lock_held_by_other_process(lock_path: Path, mode: str) -> Iterator["subprocess.Popen[str]"]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(lock_path), mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "locked\n"
        yield proc
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait()


def test_recovery_blocks_runs_and_the_error_names_lock_file_and_holder(tmp_path: Path) -> None:
    """While another process holds the exclusive lock, a run's shared lock times out naming the lock file and that pid."""
    journal_path = tmp_path / "journal.db"
    lock = JournalLock(journal_path, timeout=0.2)
    assert lock.path == Path(str(journal_path) + ".lock")
    with lock_held_by_other_process(lock.path, "exclusive") as holder:
        with pytest.raises(JournalLockTimeout) as caught:
            lock.acquire()
    message = str(caught.value)
    assert str(lock.path) in message
    assert f"pid {holder.pid} (exclusive)" in message
    assert "recovery is in progress" in message
    assert isinstance(caught.value, TimeoutError) and isinstance(caught.value, JournalError)
    assert not lock.held
    with lock:
        assert lock.held


def test_runs_share_the_lock_and_block_recovery(tmp_path: Path) -> None:
    """Shared locks coexist; an exclusive lock times out while any is held and is granted once they are released."""
    journal_path = tmp_path / "journal.db"
    recovery = JournalLock(journal_path, exclusive=True, timeout=0)
    with JournalLock(journal_path, timeout=0), JournalLock(journal_path, timeout=0):
        with pytest.raises(JournalLockTimeout, match=rf"pid {os.getpid()} \(shared\).*a kensa run is using"):
            recovery.acquire()
    with lock_held_by_other_process(recovery.path, "shared") as holder:
        with pytest.raises(JournalLockTimeout, match=f"pid {holder.pid}"):
            recovery.acquire()
    with recovery:
        assert recovery.held and recovery.exclusive
    assert not recovery.held


def test_journal_lock_helper_locks_next_to_the_journal(journal: SqliteJournal) -> None:
    """SqliteJournal.lock gives a JournalLock on '<journal path>.lock' that excludes a second exclusive holder."""
    with journal.lock(exclusive=True, timeout=0) as held:
        assert held.path == Path(str(journal.path) + ".lock")
        with pytest.raises(JournalLockTimeout):
            journal.lock(timeout=0).acquire()


# --- location ------------------------------------------------------------------


def test_default_path_prefers_kensa_journal(monkeypatch: pytest.MonkeyPatch) -> None:
    """$KENSA_JOURNAL wins over every other rule."""
    monkeypatch.setenv("KENSA_JOURNAL", "/srv/kensa.db")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert default_journal_path() == Path("/srv/kensa.db")


def test_default_path_for_root_is_var_lib(monkeypatch: pytest.MonkeyPatch) -> None:
    """As root without $KENSA_JOURNAL the journal is /var/lib/kensa/journal.db."""
    monkeypatch.delenv("KENSA_JOURNAL", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", "/ignored/for/root")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert default_journal_path() == Path("/var/lib/kensa/journal.db")


@pytest.mark.parametrize(
    ("xdg_state_home", "expected"),
    [
        ("/home/u/state", "/home/u/state/kensa/journal.db"),
        (None, "/home/u/.local/state/kensa/journal.db"),
        ("relative/state", "/home/u/.local/state/kensa/journal.db"),
    ],
)
def test_default_path_for_users_follows_xdg_state_home(
    monkeypatch: pytest.MonkeyPatch, xdg_state_home: Optional[str], expected: str
) -> None:
    """Other users get $XDG_STATE_HOME/kensa/journal.db, or ~/.local/state/... when it is unset or relative."""
    monkeypatch.delenv("KENSA_JOURNAL", raising=False)
    monkeypatch.setenv("HOME", "/home/u")
    if xdg_state_home is None:
        monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    else:
        monkeypatch.setenv("XDG_STATE_HOME", xdg_state_home)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert default_journal_path() == Path(expected)


# --- read-only and full filesystems (root: mounts a tmpfs) ---------------------


def test_a_journal_on_a_read_only_filesystem_fails_to_open_naming_path_and_cause(tmp_path: Path) -> None:
    """Opening a new journal on a read-only filesystem raises JournalError with the path and the OS error."""
    with tmpfs(tmp_path, "size=64k,ro") as mountpoint:
        path = mountpoint / "journal.db"
        with pytest.raises(JournalError, match=rf"{path}.*Read-only file system"):
            SqliteJournal(path)


def test_an_existing_journal_remounted_read_only_fails_to_open(tmp_path: Path) -> None:
    """The write probe catches a journal that exists and is readable but can no longer be written."""
    with tmpfs(tmp_path, "size=1m") as mountpoint:
        path = mountpoint / "journal.db"
        with SqliteJournal(path) as journal:
            journal.finish(make_result(make_txn(), Status.SKIPPED))
        subprocess.run(["mount", "-o", "remount,ro", str(mountpoint)], check=True)
        with pytest.raises(JournalError, match=rf"{path}: could not open it: .*(readonly|read-only|unable to open)"):
            SqliteJournal(path)


def fill_up(directory: Path) -> Path:
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as out:
        for chunk in (65536, 4096, 512, 1):
            try:
                while True:
                    out.write(b"\0" * chunk)
            except OSError as exc:
                if exc.errno != 28:  # ENOSPC
                    raise
    return filler


def test_begin_on_a_full_filesystem_raises_and_records_nothing(tmp_path: Path) -> None:
    """On a full filesystem begin raises JournalError naming the path; no intent is kept and the journal works once space is freed."""
    with tmpfs(tmp_path, "size=512k") as mountpoint:
        path = mountpoint / "journal.db"
        with SqliteJournal(path) as journal:
            filler = fill_up(mountpoint)
            txn = make_txn()
            big = PreState("file", {"path": "/etc/big"}, {"content": os.urandom(256 * 1024)})
            with pytest.raises(JournalError, match=rf"{path}: could not record the intent of transaction {txn.id}: .*full"):
                journal.begin(txn, [big])
            with pytest.raises(JournalEntryNotFound):
                journal.get(txn.id)
            assert journal.interrupted() == []

            filler.unlink()
            journal.begin(txn, [PreState("file", {"path": "/etc/big"}, {"content": b"\x00small"})])
            assert [entry.txn.id for entry in journal.interrupted()] == [txn.id]


def test_opening_a_journal_in_use_on_a_full_filesystem_fails(tmp_path: Path) -> None:
    """A journal whose filesystem has filled up fails to open, naming the path, even while another process has it open."""
    with tmpfs(tmp_path, "size=512k") as mountpoint:
        path = mountpoint / "journal.db"
        SqliteJournal(path).close()
        # An open journal keeps its -wal and -shm files, so opening another
        # connection needs no new file: only a write can tell the disk is full.
        with SqliteJournal(path):
            fill_up(mountpoint)
            with pytest.raises(JournalError, match=rf"{path}: could not open it: .*full"):
                SqliteJournal(path)


def test_opening_a_journal_on_a_full_filesystem_fails(tmp_path: Path) -> None:
    """A new journal on a full filesystem fails to open with JournalError naming the path, before any transaction."""
    with tmpfs(tmp_path, "size=64k") as mountpoint:
        fill_up(mountpoint)
        path = mountpoint / "journal.db"
        with pytest.raises(JournalError, match=str(path)):
            SqliteJournal(path)


TAKE_JOURNAL_LOCK = """
import sys
from kensa.errors import JournalLockTimeout
from kensa.journal import JournalLock
lock = JournalLock(sys.argv[1], exclusive=sys.argv[2] == "exclusive", timeout=float(sys.argv[3]))
try:
    lock.acquire()
except JournalLockTimeout as exc:
    print("refused", exc, flush=True)
    sys.exit(0)
print("locked", flush=True)
sys.stdin.read()
"""


def kensa_process(*args: str) -> "subprocess.Popen[str]":
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    return subprocess.Popen(
        [sys.executable, "-c", TAKE_JOURNAL_LOCK, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )


@pytest.mark.parametrize("holder_mode, other_mode", [("shared", "exclusive"), ("exclusive", "shared")])
def test_a_lock_through_a_symlink_excludes_a_lock_through_the_file(tmp_path: Path, holder_mode: str, other_mode: str) -> None:
    """A run holding the lock through jl.db and a recovery trying through a symlink to it (and the reverse) exclude each other, in two real processes."""
    real = tmp_path / "jl.db"
    SqliteJournal(real).close()
    link = tmp_path / "link.db"
    link.symlink_to(real)
    holder = kensa_process(str(real), holder_mode, "5")
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        other = kensa_process(str(link), other_mode, "0")
        out, _ = other.communicate("")
        assert out.startswith("refused") and f"pid {holder.pid}" in out, out
    finally:
        holder.communicate("")
    assert JournalLock(link).path == JournalLock(real).path == Path(str(real) + ".lock")


def test_a_journal_opened_through_a_symlink_locks_the_file_it_opened(tmp_path: Path) -> None:
    """SqliteJournal.lock of a journal opened through a link is the lock of the real file, and the link is resolved once."""
    real = tmp_path / "jl.db"
    link = tmp_path / "link.db"
    link.symlink_to(real)
    with SqliteJournal(link) as through_link, SqliteJournal(real) as direct:
        with through_link.lock(exclusive=True, timeout=0):
            with pytest.raises(JournalLockTimeout):
                direct.lock(timeout=0).acquire()
        link.unlink()
        link.symlink_to(tmp_path / "elsewhere.db")
        through_link.finish(make_result(make_txn(), Status.SKIPPED))
    assert not (tmp_path / "elsewhere.db").exists()


# --- sequence order ------------------------------------------------------------


def test_history_and_interrupted_order_by_sequence_when_the_clock_steps_back(tmp_path: Path) -> None:
    """Entries created while the clock steps back an hour are still ordered as created; after_seq finds the later ones."""
    clock_now = [codec.to_datetime(codec.now_us())]
    with SqliteJournal(tmp_path / "journal.db", clock=lambda: clock_now[0]) as journal:
        txns = [make_txn(rule=f"r{i}") for i in range(3)]
        for txn in txns:
            journal.begin(txn, [make_pre()])
            clock_now[0] -= timedelta(hours=1)
        journal.finish(make_result(txns[1]))

        newest_first = journal.history()
        assert [e.txn.id for e in newest_first] == [t.id for t in reversed(txns)]
        assert [e.seq for e in newest_first] == sorted((e.seq for e in newest_first), reverse=True)
        assert newest_first[0].created < newest_first[-1].created
        assert [e.txn.id for e in journal.interrupted()] == [txns[0].id, txns[2].id]
        first = journal.get(txns[0].id)
        assert [e.txn.id for e in journal.history(after_seq=first.seq)] == [txns[2].id, txns[1].id]
        assert journal.history(after_seq=newest_first[0].seq) == []


def test_a_sequence_number_is_never_reused_after_pruning_the_newest(journal: SqliteJournal) -> None:
    """Pruning every finished entry and writing a new one gives it a larger seq than any before."""
    txn = make_txn()
    journal.finish(make_result(txn, Status.SKIPPED))
    old_seq = journal.get(txn.id).seq
    assert journal.prune(keep_last=0).deleted == 1
    again = make_txn()
    journal.finish(make_result(again, Status.SKIPPED))
    assert journal.get(again.id).seq > old_seq


# --- size: pre-states as BLOBs, never loaded for listings ----------------------------


@contextlib.contextmanager
def statements(journal: SqliteJournal) -> Iterator[List[str]]:
    """Every SQL statement the journal's connection runs inside the block."""
    seen: List[str] = []
    conn = journal._conn
    assert conn is not None
    conn.set_trace_callback(seen.append)
    try:
        yield seen
    finally:
        conn.set_trace_callback(None)


def test_history_reads_no_pre_state_and_reads_one_at_each_access(journal: SqliteJournal) -> None:
    """history() never queries the pre-state table; an entry's pre_states are read at each access, kept nowhere, and equal what was stored."""
    txn = make_txn(steps=2)
    pres = [PreState("file", {"path": "/etc/f0"}, {"content": bytes(range(256)) * 4096}), None]
    journal.begin(txn, pres)
    journal.finish(make_result(txn))
    with statements(journal) as seen:
        (entry,) = journal.history(limit=3)
    assert seen and not any("pre_state" in sql for sql in seen), seen
    with statements(journal) as seen:
        assert entry.pre_states == tuple(pres)
        assert entry.pre_states == tuple(pres)
    assert sum("pre_states" in sql for sql in seen) == 2


def test_pre_states_are_stored_as_binary_blobs_not_base64_text(journal: SqliteJournal) -> None:
    """A 1 MiB pre-state is one BLOB of little more than 1 MiB, not text."""
    content = os.urandom(1 << 20)
    txn = make_txn()
    journal.begin(txn, [PreState("file", {"path": "/etc/f0"}, {"content": content})])
    with contextlib.closing(sqlite3.connect(journal.path)) as conn:
        kind, size = conn.execute("SELECT typeof(state), length(state) FROM pre_states").fetchone()
    assert kind == "blob" and len(content) < size < len(content) + 100


def test_the_binary_codec_round_trips_and_rejects_damage() -> None:
    """codec.pack/unpack round-trip every kind of value; truncation, junk and unknown types are errors, not garbage."""
    value = {"a": [None, True, False, 0, -1, 2**200, -(2**70), 1.5, float("inf"), "x\udcff", b"\x00\xff"], "": {}}
    packed = codec.pack(value)
    assert codec.unpack(packed) == value
    for damaged in (packed[:-1], packed + b"\x00", b"\x02" + packed[1:], packed[:1] + b"Z", b""):
        with pytest.raises(codec.Undecodable):
            codec.unpack(damaged)


# --- corruption ----------------------------------------------------------------


def corrupt(path: Path, sql: str, *params: Any) -> None:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute(sql, params)
        conn.commit()


def test_a_damaged_pre_state_is_reported_by_id_and_the_others_still_read(tmp_path: Path) -> None:
    """One flipped byte in a stored pre-state: that entry is marked corrupt by id, its pre_states raise, every other entry reads."""
    path = tmp_path / "journal.db"
    txns = [make_txn(rule=f"r{i}") for i in range(3)]
    with SqliteJournal(path) as journal:
        for txn in txns:
            journal.begin(txn, [make_pre()])
    corrupt(
        path,
        "UPDATE pre_states SET state = substr(state, 1, 10) || X'00' || substr(state, 12) WHERE txn_id = ?",
        txns[1].id,
    )
    with SqliteJournal(path) as journal:
        interrupted = journal.interrupted()
        assert [e.txn.id for e in interrupted] == [t.id for t in txns]
        good0, bad, good2 = interrupted
        assert good0.corrupt is None and good0.pre_states == (make_pre(),) and good2.pre_states == (make_pre(),)
        assert bad.corrupt is not None and txns[1].id in bad.corrupt and "SHA-256" in bad.corrupt
        with pytest.raises(JournalCorruptError, match=txns[1].id) as caught:
            tuple(bad.pre_states)
        assert caught.value.txn_id == txns[1].id and isinstance(caught.value, KensaError)
        assert journal.get(txns[1].id).corrupt == bad.corrupt
        listed = journal.history()
        assert [e.corrupt for e in listed] == [None, None, None]  # listings do not read pre-states
        assert journal.verify(listed) == {txns[1].id: bad.corrupt}


def test_a_pre_state_moved_to_another_entry_fails_its_digest(tmp_path: Path) -> None:
    """Copying one entry's valid pre-state row over another's is detected: the digest binds it to its transaction and step."""
    path = tmp_path / "journal.db"
    first, second = make_txn(), make_txn()
    with SqliteJournal(path) as journal:
        journal.begin(first, [PreState("file", {"path": "/etc/a"}, {"content": b"a"})])
        journal.begin(second, [PreState("file", {"path": "/etc/b"}, {"content": b"b"})])
    corrupt(
        path,
        "UPDATE pre_states SET (state, sha256) = (SELECT state, sha256 FROM pre_states WHERE txn_id = ?) "
        "WHERE txn_id = ?",
        first.id,
        second.id,
    )
    with SqliteJournal(path) as journal:
        assert journal.get(first.id).corrupt is None
        assert "SHA-256" in (journal.get(second.id).corrupt or "")


def test_an_undecodable_transaction_row_is_listed_as_corrupt_without_raising(tmp_path: Path) -> None:
    """Garbage in a row's steps or result columns: history lists the entry as corrupt, with its id, host and rule; the rest read."""
    path = tmp_path / "journal.db"
    txns = [make_txn(rule=f"r{i}") for i in range(3)]
    with SqliteJournal(path) as journal:
        for txn in txns:
            journal.begin(txn, [make_pre()])
            journal.finish(make_result(txn))
    corrupt(path, "UPDATE transactions SET steps = 'not json' WHERE id = ?", txns[0].id)
    corrupt(path, "UPDATE transactions SET step_results = '[{' WHERE id = ?", txns[1].id)
    with SqliteJournal(path) as journal:
        third, second, first = journal.history()
        assert third.corrupt is None and third.result == make_result(txns[2])
        for entry, txn in ((first, txns[0]), (second, txns[1])):
            assert entry.corrupt is not None and txn.id in entry.corrupt
            assert (entry.txn.id, entry.txn.rule, entry.txn.host) == (txn.id, txn.rule, txn.host)
            assert not entry.interrupted
            with pytest.raises(JournalCorruptError):
                tuple(entry.pre_states)
        assert "SHA-256" in (first.corrupt or "")
        assert journal.interrupted() == []


# --- migration from schema version 1 ---------------------------------------------------


def test_a_version_1_journal_is_migrated_and_reads_back_what_the_old_code_wrote(tmp_path: Path) -> None:
    """tests/data/journal_v1.db (written by schema-1 kensa) opens, migrates to the current schema and reads back every entry, in order."""
    path = tmp_path / "journal.db"
    path.write_bytes((Path(__file__).parent / "data" / "journal_v1.db").read_bytes())
    assert user_version(path) == 1
    with SqliteJournal(path) as journal:
        entries = journal.history()
        assert [e.txn.id for e in entries] == ["v1-skipped", "v1-interrupted", "v1-rolled", "v1-committed"]
        assert [e.seq for e in entries] == [4, 3, 2, 1]
        assert all(e.corrupt is None for e in entries)
        committed = journal.get("v1-committed")
        assert committed.result is not None and committed.result.status is Status.COMMITTED
        assert committed.txn.steps[0].params == {"path": "/etc/ssh/sshd_config", "key": "PermitRootLogin", "value": "no"}
        assert committed.pre_states == (
            PreState(
                "config_set",
                {"path": "/etc/ssh/sshd_config"},
                {"path": "/etc/ssh/sshd_config", "content": b"PermitRootLogin yes\n\xff\x00", "mode": 0o600},
            ),
            PreState("file_content", {"path": "/etc/motd"}, {"path": "/etc/motd", "exists": False, "nested": {"$bytes": [1, 2]}}),
        )
        rolled = journal.get("v1-rolled")
        assert rolled.later_rollback is not None and rolled.later_rollback.status is Status.ROLLED_BACK
        (interrupted,) = journal.interrupted()
        assert interrupted.txn.id == "v1-interrupted" and interrupted.pre_states[0] == committed.pre_states[0]
        assert journal.get("v1-skipped").result.error.message == "bad \udcff rule"  # type: ignore[union-attr]
        newer = make_txn()
        journal.begin(newer, [make_pre()])
        assert journal.get(newer.id).seq == 5
        assert [e.txn.id for e in journal.history(after_seq=interrupted.seq)] == [newer.id, "v1-skipped"]
    assert user_version(path) == SCHEMA_VERSION == 3


def test_a_version_1_pre_state_the_old_code_could_not_read_migrates_as_corrupt(tmp_path: Path) -> None:
    """A damaged row in a version 1 journal does not block the migration: it comes out as that entry marked corrupt."""
    path = tmp_path / "journal.db"
    path.write_bytes((Path(__file__).parent / "data" / "journal_v1.db").read_bytes())
    corrupt(path, "UPDATE pre_states SET data = '{\"$bytes\": \"!!\"}' WHERE txn_id = 'v1-interrupted'")
    with SqliteJournal(path) as journal:
        (interrupted,) = journal.interrupted()
        assert interrupted.corrupt is not None and "v1-interrupted" in interrupted.corrupt
        assert journal.get("v1-committed").corrupt is None


# --- retention -----------------------------------------------------------------


def test_prune_deletes_old_finished_entries_and_never_an_interrupted_one(tmp_path: Path) -> None:
    """prune(before=) deletes finished entries older than the cut with their pre-states and later rollbacks; interrupted ones stay and are counted."""
    clock_now = [codec.to_datetime(codec.now_us()) - timedelta(days=10)]
    path = tmp_path / "journal.db"
    with SqliteJournal(path, clock=lambda: clock_now[0]) as journal:
        old_done, old_interrupted, old_rolled = make_txn(rule="done"), make_txn(rule="cut"), make_txn(rule="rolled")
        for txn in (old_done, old_rolled):
            journal.begin(txn, [make_pre()])
            journal.finish(make_result(txn))
        journal.record_rollback(old_rolled.id, make_result(old_rolled, Status.ROLLED_BACK))
        clock_now[0] += timedelta(days=9)
        journal.begin(old_interrupted, [make_pre()])
        journal.record_recovery(old_interrupted.id, make_result(old_interrupted, Status.RECOVERED))
        still_open = make_txn(rule="open")
        journal.begin(still_open, [make_pre()])
        clock_now[0] += timedelta(days=1)
        recent = make_txn(rule="recent")
        journal.finish(make_result(recent, Status.SKIPPED))

        pruned = journal.prune(before=clock_now[0] - timedelta(days=5))
        assert (pruned.deleted, pruned.kept_interrupted, pruned.kept_for_recovery) == (2, 0, 0)
        assert [e.txn.rule for e in journal.history()] == ["recent", "open", "cut"]

        pruned = journal.prune(before=clock_now[0] + timedelta(days=1))
        assert (pruned.deleted, pruned.kept_interrupted, pruned.kept_for_recovery) == (1, 1, 1)
        assert [e.txn.rule for e in journal.history()] == ["recent", "open"]
        assert journal.interrupted()[0].pre_states == (make_pre(),)
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT count(*) FROM pre_states").fetchone()[0] == 1
        assert conn.execute("SELECT count(*) FROM later_rollbacks").fetchone()[0] == 0


def test_prune_keep_last_keeps_the_newest_by_sequence(journal: SqliteJournal) -> None:
    """keep_last=N keeps the N newest entries by seq; bad arguments are refused and delete nothing."""
    txns = [make_txn(rule=f"r{i}") for i in range(5)]
    for txn in txns:
        journal.finish(make_result(txn, Status.SKIPPED))
    for bad in ({}, {"keep_last": -1}):
        with pytest.raises(ValueError, match="prune") as caught:
            journal.prune(**bad)
        assert isinstance(caught.value, JournalError)
    assert journal.prune(keep_last=2).deleted == 3
    assert [e.txn.rule for e in journal.history()] == ["r4", "r3"]


def test_prune_deletes_the_audit_sequences_and_rule_sources_of_what_it_deletes(tmp_path: Path) -> None:
    """An entry's audit sequence numbers and rule source go with it, at the prune itself; those of
    kept entries stay."""
    from kensa.journal.rulesources import read_rule_source, record_rule_sources
    from kensa.model import RuleSource

    path = tmp_path / "journal.db"
    txns = [make_txn(rule=f"r{i}") for i in range(3)]
    with SqliteJournal(path) as journal:
        for txn in txns:
            journal.finish(make_result(txn, Status.SKIPPED))
            journal.record_audit_sequences(txn.id, [("started", 7), ("skipped", 8)])
        record_rule_sources(path, [RuleSource(t.id, t.rule, "a title", "/rules/r.yml", None, ()) for t in txns])
        assert journal.prune(keep_last=1).deleted == 2
        assert [journal.audit_sequences(t.id) != [] for t in txns] == [False, False, True]
        assert sorted(journal.audit_sequences_between()) == [txns[2].id]
    assert [read_rule_source(path, t.id) is not None for t in txns] == [False, False, True]


def test_rule_sources_are_kept_only_for_transactions_the_journal_holds(tmp_path: Path) -> None:
    """A planned transaction that never ran (its dependency failed, the run was stopped) gets no rule
    source row; a row left without its entry (by an older kensa's prune) goes at the next prune."""
    from kensa.journal.rulesources import read_rule_source, record_rule_sources
    from kensa.model import RuleSource

    path = tmp_path / "journal.db"
    ran, planned_only, orphan = make_txn(rule="ran"), make_txn(rule="never-ran"), make_txn(rule="orphan")
    with SqliteJournal(path) as journal:
        journal.finish(make_result(ran, Status.SKIPPED))
        journal.finish(make_result(orphan, Status.SKIPPED))
        record_rule_sources(path, [RuleSource(t.id, t.rule, "a title", "/rules/r.yml", None, ()) for t in (ran, planned_only, orphan)])
        assert read_rule_source(path, planned_only.id) is None
        assert read_rule_source(path, ran.id) is not None and read_rule_source(path, orphan.id) is not None
        conn = sqlite3.connect(path)
        with conn:
            conn.execute("DELETE FROM transactions WHERE id = ?", (orphan.id,))
        conn.close()
        journal.prune(keep_last=5)
    assert read_rule_source(path, orphan.id) is None and read_rule_source(path, ran.id) is not None


def test_a_row_whose_text_is_not_utf8_is_listed_as_corrupt(tmp_path: Path) -> None:
    """Bytes that are not UTF-8 written into a text column mark that entry corrupt; the query and the other entries survive."""
    path = tmp_path / "journal.db"
    txns = [make_txn(rule=f"r{i}") for i in range(2)]
    with SqliteJournal(path) as journal:
        for txn in txns:
            journal.begin(txn, [make_pre()])
    corrupt(path, "UPDATE transactions SET steps = CAST(X'5bff5d' AS TEXT) WHERE id = ?", txns[0].id)
    with SqliteJournal(path) as journal:
        bad, good = journal.interrupted()
        assert bad.corrupt is not None and txns[0].id in bad.corrupt
        assert good.corrupt is None and good.pre_states == (make_pre(),)
        assert [e.txn.id for e in journal.history()] == [txns[1].id, txns[0].id]


# VmHWM, not getrusage: ru_maxrss survives exec, so it would report the
# (large) test process that spawned this one.
PEAK_RSS_OF_HISTORY = """
import io, sys
from kensa.cli.main import main
code = main(["--journal", sys.argv[1], "history", "--limit", "3", "--json"], out=io.StringIO())
assert code == 0, code
with open("/proc/self/status") as status:
    print(next(line.split()[1] for line in status if line.startswith("VmHWM:")))
"""


def test_kensa_history_on_a_journal_holding_a_64_mib_pre_state_never_loads_it(tmp_path: Path) -> None:
    """The peak RSS of `kensa history --limit 3` (a real process) is the same, within 16 MiB, whether an entry holds a 64 MiB pre-state or a tiny one."""

    def peak_kib(pre_state_bytes: int) -> int:
        path = tmp_path / f"journal-{pre_state_bytes}.db"
        with SqliteJournal(path) as journal:
            txn = make_txn()
            journal.begin(txn, [PreState("file", {"path": "/etc/f0"}, {"content": os.urandom(pre_state_bytes)})])
            journal.finish(make_result(txn))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
        proc = subprocess.run(
            [sys.executable, "-c", PEAK_RSS_OF_HISTORY, str(path)], capture_output=True, text=True, env=env, check=True
        )
        return int(proc.stdout.split()[-1])

    small, large = peak_kib(16), peak_kib(64 << 20)
    assert large - small < 16 << 10, (small, large)


def test_get_and_interrupted_load_pre_states_and_history_reads_them_from_the_open_journal(tmp_path: Path) -> None:
    """Entries from get() and interrupted() carry their pre-states (usable after close); a history() entry's access after close is a JournalError."""
    txn = make_txn()
    with SqliteJournal(tmp_path / "journal.db") as journal:
        journal.begin(txn, [make_pre()])
        got, (listed_interrupted,) = journal.get(txn.id), journal.interrupted()
        (listed,) = journal.history()
    assert got.pre_states == listed_interrupted.pre_states == (make_pre(),)
    with pytest.raises(JournalError, match="closed"):
        tuple(listed.pre_states)


PEAK_RSS_OF_BEGIN = """
import os, sys
from kensa.journal.store import SqliteJournal
from kensa.model import PreState, Step, Transaction

def peak_kib():
    with open("/proc/self/status") as status:
        return int(next(line.split()[1] for line in status if line.startswith("VmHWM:")))

content = os.urandom(int(sys.argv[2]))
with SqliteJournal(sys.argv[1]) as journal:
    before = peak_kib()
    txn = Transaction("r", (Step("file", {"path": "/etc/f0"}),))
    journal.begin(txn, [PreState("file", {"path": "/etc/f0"}, {"content": content})])
    print(peak_kib() - before)
"""


def test_begin_of_a_64_mib_pre_state_holds_no_copy_of_it(tmp_path: Path) -> None:
    """Journaling a 64 MiB pre-state (a real process) raises the peak RSS by far less than the pre-state itself: it is written in pieces, never joined or copied."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.run(
        [sys.executable, "-c", PEAK_RSS_OF_BEGIN, str(tmp_path / "journal.db"), str(64 << 20)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    if not hasattr(sqlite3.Connection, "blobopen"):
        pytest.skip("this Python's sqlite3 has no blobopen: large pre-states are bound whole")
    assert int(proc.stdout) < 16 << 10, proc.stdout


PEAK_RSS_OF_GET = """
import os, sys
from kensa.journal.store import SqliteJournal
from kensa.model import PreState, Step, Transaction

def peak_kib():
    with open("/proc/self/status") as status:
        return int(next(line.split()[1] for line in status if line.startswith("VmHWM:")))

size = int(sys.argv[2])
with SqliteJournal(sys.argv[1]) as journal:
    txn = Transaction("r", (Step("file", {"path": "/etc/f0"}),))
    journal.begin(txn, [PreState("file", {"path": "/etc/f0"}, {"content": os.urandom(size)})])
with SqliteJournal(sys.argv[1]) as journal:
    before = peak_kib()
    assert len(journal.get(txn.id).pre_states[0].data["content"]) == size
    print(peak_kib() - before)
"""


def test_get_of_a_64_mib_pre_state_holds_one_copy_of_it(tmp_path: Path) -> None:
    """Reading back a 64 MiB pre-state (a real process) raises the peak RSS by about the pre-state itself: it is read from the BLOB and checked as it is decoded, not loaded first."""
    if not hasattr(sqlite3.Connection, "blobopen"):
        pytest.skip("this Python's sqlite3 has no blobopen: stored pre-states are read whole")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.run(
        [sys.executable, "-c", PEAK_RSS_OF_GET, str(tmp_path / "journal.db"), str(64 << 20)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    assert int(proc.stdout) < (64 + 16) << 10, proc.stdout


class _WithoutBlobopen(sqlite3.Connection):
    blobopen = None  # as on Pythons before 3.11


def test_without_blobopen_large_pre_states_are_bound_and_read_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a sqlite3 without blobopen a pre-state above the streaming size is stored and read back equal, and damage is still found."""
    connect = sqlite3.connect
    monkeypatch.setattr(journal_module.sqlite3, "connect", lambda *a, **k: connect(*a, factory=_WithoutBlobopen, **k))
    content = os.urandom(codec.STREAM_BLOB_BYTES + 1)
    txn = make_txn()
    path = tmp_path / "journal.db"
    with SqliteJournal(path) as journal:
        journal.begin(txn, [PreState("file", {"path": "/etc/f0"}, {"content": content})])
        assert journal.get(txn.id).pre_states[0].data["content"] == content  # type: ignore[union-attr]
    corrupt(path, "UPDATE pre_states SET state = zeroblob(length(state))")
    with SqliteJournal(path) as journal:
        assert "SHA-256" in (journal.get(txn.id).corrupt or "")


def test_a_damaged_value_that_still_decodes_or_no_longer_decodes_fails_its_digest(tmp_path: Path) -> None:
    """Damage inside a bytes value (still decodable) and in a length prefix (no longer decodable) are both reported as a failed SHA-256 check."""
    path = tmp_path / "journal.db"
    inside, prefix = make_txn(rule="inside"), make_txn(rule="prefix")
    with SqliteJournal(path) as journal:
        for txn in (inside, prefix):
            journal.begin(txn, [PreState("file", {"path": "/etc/f0"}, {"content": b"x" * 100})])
    with contextlib.closing(sqlite3.connect(path)) as conn:
        (state,) = conn.execute("SELECT state FROM pre_states WHERE txn_id = ?", (inside.id,)).fetchone()
        flipped = bytearray(state)
        flipped[-5] ^= 0xFF
        conn.execute("UPDATE pre_states SET state = ? WHERE txn_id = ?", (bytes(flipped), inside.id))
        conn.execute("UPDATE pre_states SET state = ? WHERE txn_id = ?", (b"\x01\xff" + state[2:], prefix.id))
        conn.commit()
    assert codec.unpack(bytes(flipped))[2]["content"] != b"x" * 100
    with pytest.raises(codec.Undecodable):
        codec.unpack(b"\x01\xff" + state[2:])
    with SqliteJournal(path) as journal:
        for txn in (inside, prefix):
            assert "fails its SHA-256 check" in (journal.get(txn.id).corrupt or ""), txn.rule


def test_an_entry_shows_and_compares_without_reading_its_pre_states(tmp_path: Path) -> None:
    """repr() and == of entries never read pre-states: a corrupt entry can be printed, and a huge one is not dumped."""
    path = tmp_path / "journal.db"
    txn = make_txn()
    with SqliteJournal(path) as journal:
        journal.begin(txn, [PreState("file", {"path": "/etc/f0"}, {"content": b"s" * 100_000})])
        assert len(repr(journal.get(txn.id))) < 2000
    corrupt(path, "UPDATE pre_states SET sha256 = zeroblob(32)")
    with SqliteJournal(path) as journal:
        (listed,) = journal.history()
        assert "pre-states" not in repr(listed) and listed == journal.history()[0]
        damaged = journal.get(txn.id)
        assert damaged.corrupt is not None and txn.id in repr(damaged)
        with pytest.raises(JournalCorruptError):
            len(damaged.pre_states)
