"""What recovery and rollback by id learn from the journal: order by sequence, corrupt entries.

Real handlers in a temporary root and a real SQLite journal. An
interrupted transaction is made in-process by a journal whose ``finish``
raises a BaseException: the host is changed and the entry has no result, as a
kill just before the terminal write leaves it.
"""

from __future__ import annotations

import contextlib
import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

import pytest

from kensa.errors import RollbackRefusedError
from kensa.engine import Engine
from kensa.handlers import default_registry
from kensa.hosts.local import resolve_host
from kensa.journal.store import SqliteJournal
from kensa.model import Status, Step, Transaction, TransactionResult


class SteppableClock:
    """A wall clock that an operator (or a crash before NTP) can step back."""

    def __init__(self) -> None:
        self.now = datetime.now(timezone.utc)

    def __call__(self) -> datetime:
        return self.now


class Crash(BaseException):
    """Stands for the process dying."""


class DiesBeforeFinish(SqliteJournal):
    def finish(self, result: TransactionResult) -> None:
        raise Crash


def make_root(base: Path) -> Path:
    root = base / "root"
    (root / "etc/ssh").mkdir(parents=True)
    (root / "etc/motd").write_bytes(b"welcome\n")
    (root / "etc/ssh/sshd_config").write_bytes(b"Port 22\nPermitRootLogin yes\n")
    return root


def motd(root: Path, text: str) -> Transaction:
    return Transaction("motd", (Step("file_content", {"path": "/etc/motd", "content": text}),), host=str(root))


def sshd(root: Path, key: str, value: str) -> Transaction:
    step = Step("config_set", {"path": "/etc/ssh/sshd_config", "key": key, "value": value, "separator": " "})
    return Transaction("sshd-" + key, (step,), host=str(root))


def interrupt(journal_path: Path, txn: Transaction, **journal_options: Any) -> str:
    """Run ``txn`` to the end but never record its result, as if killed before the terminal write."""
    with DiesBeforeFinish(journal_path, **journal_options) as journal:
        engine = Engine(default_registry(), journal=journal, hosts=resolve_host)
        with pytest.raises(Crash):
            engine.run(txn)
    return txn.id


@contextlib.contextmanager
def engine_on(journal_path: Path, **journal_options: Any) -> Iterator[Engine]:
    with SqliteJournal(journal_path, **journal_options) as journal:
        yield Engine(default_registry(), journal=journal, hosts=resolve_host)


# --- order by sequence ---------------------------------------------------------------


def test_recovery_withholds_a_later_commit_made_after_the_clock_stepped_back(tmp_path: Path) -> None:
    """A transaction committed after an interrupted one, but with the clock stepped back an hour, is still later: recovery withholds instead of overwriting it."""
    root, journal_path, clock = make_root(tmp_path), tmp_path / "journal.db", SteppableClock()
    interrupted = interrupt(journal_path, motd(root, "half\n"), clock=clock)
    clock.now -= timedelta(hours=1)
    with engine_on(journal_path, clock=clock) as engine:
        later = engine.run(motd(root, "operator wants this\n"))
        assert later.status is Status.COMMITTED
        journal = engine.journal
        assert isinstance(journal, SqliteJournal)
        assert journal.get(later.txn_id).created < journal.get(interrupted).created

        (result,) = engine.recover()

        assert (result.txn_id, result.status, result.host_unchanged) == (interrupted, Status.ROLLBACK_FAILED, False)
        assert later.txn_id in result.rollbacks[0].detail and "/etc/motd" in result.rollbacks[0].detail
        assert (root / "etc/motd").read_bytes() == b"operator wants this\n"
        assert journal.get(later.txn_id).result.status is Status.COMMITTED  # type: ignore[union-attr]


def test_rollback_by_id_keeps_a_later_commit_made_after_the_clock_stepped_back(tmp_path: Path) -> None:
    """Rolling back the first of two edits of one file never undoes the second, even when the second was stamped an hour earlier."""
    root, journal_path, clock = make_root(tmp_path), tmp_path / "journal.db", SteppableClock()
    with engine_on(journal_path, clock=clock) as engine:
        first = engine.run(sshd(root, "PermitRootLogin", "no"))
        clock.now -= timedelta(hours=1)
        second = engine.run(sshd(root, "MaxAuthTries", "3"))
        assert (first.status, second.status) == (Status.COMMITTED, Status.COMMITTED)
        # Refused (the later edit is named) or reverted around the later edit:
        # either way the later commit stays.
        with contextlib.suppress(RollbackRefusedError):
            engine.rollback(first.txn_id)
    assert b"MaxAuthTries 3" in (root / "etc/ssh/sshd_config").read_bytes()


# --- corrupt entries -------------------------------------------------------------------


def damage_pre_state(journal_path: Path, txn_id: str) -> None:
    with contextlib.closing(sqlite3.connect(journal_path)) as conn:
        conn.execute("UPDATE pre_states SET sha256 = zeroblob(32) WHERE txn_id = ?", (txn_id,))
        conn.commit()


def test_recovery_reports_a_corrupt_entry_by_id_and_recovers_the_rest(tmp_path: Path) -> None:
    """Engine.recover(): the corrupt interrupted entry is errored (host not called unchanged) naming it and stays interrupted; the other is recovered."""
    journal_path = tmp_path / "journal.db"
    root_a, root_b = make_root(tmp_path / "a"), make_root(tmp_path / "b")
    damaged = interrupt(journal_path, motd(root_a, "a\n"))
    intact = interrupt(journal_path, motd(root_b, "b\n"))
    damage_pre_state(journal_path, damaged)
    with engine_on(journal_path) as engine:
        results = {r.txn_id: r for r in engine.recover()}
        assert (results[intact].status, results[intact].host_unchanged) == (Status.RECOVERED, True)
        assert (root_b / "etc/motd").read_bytes() == b"welcome\n"
        bad = results[damaged]
        assert (bad.status, bad.host_unchanged) == (Status.ERRORED, False)
        assert bad.error is not None and damaged in bad.error.message and "SHA-256" in bad.error.message
        assert (root_a / "etc/motd").read_bytes() == b"a\n"
        assert [r.txn_id for r in engine.recover()] == [damaged]


def test_an_older_entry_is_not_restored_over_a_later_corrupt_one_on_the_same_host(tmp_path: Path) -> None:
    """When a later interrupted entry on the same host is unreadable, what it touched is unknown: the older one is not restored either."""
    journal_path = tmp_path / "journal.db"
    root = make_root(tmp_path)
    older = interrupt(journal_path, sshd(root, "PermitRootLogin", "no"))
    later = interrupt(journal_path, motd(root, "later\n"))
    damage_pre_state(journal_path, later)
    config = (root / "etc/ssh/sshd_config").read_bytes()
    with engine_on(journal_path) as engine:
        results = {r.txn_id: r for r in engine.recover()}
    assert {r.status for r in results.values()} == {Status.ERRORED}
    assert later in results[older].error.message  # type: ignore[union-attr]
    assert (root / "etc/ssh/sshd_config").read_bytes() == config
