"""The one declaration of a result's parts: the journal's tables, its statements, its row mapping and the CLI's view follow it."""

from __future__ import annotations

import contextlib
import io
import json
import sqlite3
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest

import kensa.journal.fields as fields
import kensa.journal.schema as schema
from kensa.cli.main import main, result_dict
from kensa.errors import JournalError
from kensa.journal.fields import Column, ResultField
from kensa.journal.store import SqliteJournal
from kensa.model import Phase, RollbackResult, Status, Step, StepResult, Transaction, TransactionError, TransactionResult

STEP_COUNT = ResultField(
    "step_count",
    (Column("step_count", "INTEGER", nullable=True),),
    store=lambda r: (len(r.steps),),
    show=lambda r: len(r.steps),
)


def _columns(path: Path, table: str) -> Dict[str, Tuple[str, bool]]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return {name: (kind, bool(notnull)) for _, name, kind, notnull, _, _ in conn.execute(f"PRAGMA table_info({table})")}


def _history_json(path: Path) -> List[Dict[str, Any]]:
    out = io.StringIO()
    assert main(["--journal", str(path), "--no-audit", "history", "--json"], out=out) == 0
    entries: List[Dict[str, Any]] = json.loads(out.getvalue())
    return entries


def _committed(txn: Transaction) -> TransactionResult:
    return TransactionResult(
        txn_id=txn.id,
        rule=txn.rule,
        host=txn.host,
        status=Status.COMMITTED,
        host_unchanged=False,
        timings={Phase.APPLY: 0.5},
        steps=(StepResult("file", ok=True, changed=True, detail="wrote"), StepResult("file", ok=True)),
    )


def test_a_part_added_to_the_declaration_is_created_stored_and_shown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A part added to RESULT_FIELDS gets a column in both result tables of a new journal, is written by finish, recovery and later rollback, and shows in history --json and result_dict."""
    monkeypatch.setattr(fields, "RESULT_FIELDS", (*fields.RESULT_FIELDS, STEP_COUNT))
    path = tmp_path / "journal.db"
    txn = Transaction(rule="r", host="h", steps=(Step("file", {"path": "/a"}), Step("file", {"path": "/b"})))
    result = _committed(txn)
    rollback = TransactionResult(
        txn_id="undo-1", rule="r", host="h", status=Status.ROLLED_BACK, host_unchanged=True,
        rollbacks=(RollbackResult("file", ok=True, detail="restored"),),
    )
    with SqliteJournal(path) as journal:
        journal.begin(txn, [None, None])
        journal.finish(result)
        journal.record_rollback(txn.id, rollback)
        assert journal.get(txn.id).result == result

    assert _columns(path, "transactions")["step_count"] == ("INTEGER", False)
    assert _columns(path, "later_rollbacks")["step_count"] == ("INTEGER", False)
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT step_count FROM transactions").fetchall() == [(2,)]
        assert conn.execute("SELECT step_count FROM later_rollbacks").fetchall() == [(0,)]
    (entry,) = _history_json(path)
    assert entry["result"]["step_count"] == 2
    assert entry["later_rollback"]["step_count"] == 0
    assert result_dict(result)["step_count"] == 2


def test_the_row_mapping_reads_the_parts_as_declared(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the error declared as one JSON column, a new journal has that column only, and results with and without an error read back equal."""
    error_json = ResultField(
        "error",
        (Column("error_json", "TEXT", nullable=True),),
        store=lambda r: (None if r.error is None else json.dumps([r.error.type, r.error.message, r.error.phase.value]),),
        show=lambda r: None if r.error is None else r.error.message,
        load=lambda text: None if text is None else TransactionError(*json.loads(text)[:2], Phase(json.loads(text)[2])),
    )
    monkeypatch.setattr(fields, "RESULT_FIELDS", tuple(error_json if f.name == "error" else f for f in fields.RESULT_FIELDS))
    path = tmp_path / "journal.db"
    failed_txn = Transaction(rule="r", host="h", steps=(Step("file", {"path": "/a"}),))
    failed = TransactionResult(
        txn_id=failed_txn.id, rule="r", host="h", status=Status.ERRORED, host_unchanged=True,
        error=TransactionError("ValueError", "bad 'value'", Phase.PREFLIGHT),
    )
    ok_txn = Transaction(rule="r2", host="h", steps=(Step("file", {"path": "/b"}),))
    with SqliteJournal(path) as journal:
        journal.finish(failed)  # a result-only entry: the INSERT of finish
        journal.begin(ok_txn, [None])
        journal.finish(_committed(ok_txn))  # the UPDATE of finish
        assert journal.get(failed_txn.id).result == failed
        assert journal.get(ok_txn.id).result == _committed(ok_txn)
    columns = _columns(path, "transactions")
    assert "error_json" in columns and "error_type" not in columns
    shown = {e["txn"]: e["result"]["error"] for e in _history_json(path)}
    assert shown == {failed_txn.id: "bad 'value'", ok_txn.id: None}


def test_a_part_added_by_a_migration_extends_an_existing_journal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A part declared since the next schema version, with adding_result_columns appended, adds its column to an existing journal; old rows read back as before."""
    path = tmp_path / "journal.db"
    old_txn = Transaction(rule="old", host="h", steps=(Step("file", {"path": "/a"}),))
    with SqliteJournal(path) as journal:
        journal.begin(old_txn, [None])
        journal.finish(_committed(old_txn))
    later = ResultField(
        "step_count",
        (Column("step_count", "INTEGER", nullable=True),),
        store=lambda r: (len(r.steps),),
        show=lambda r: len(r.steps),
        since=schema.SCHEMA_VERSION + 1,
    )
    monkeypatch.setattr(fields, "RESULT_FIELDS", (*fields.RESULT_FIELDS, later))
    monkeypatch.setattr(schema, "MIGRATIONS", [*schema.MIGRATIONS, schema.adding_result_columns(schema.SCHEMA_VERSION + 1)])
    new_txn = Transaction(rule="new", host="h", steps=(Step("file", {"path": "/b"}),))
    with SqliteJournal(path) as journal:
        assert journal.get(old_txn.id).result == _committed(old_txn)
        journal.begin(new_txn, [None])
        journal.finish(_committed(new_txn))
    assert "step_count" in _columns(path, "later_rollbacks")
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert dict(conn.execute("SELECT rule, step_count FROM transactions")) == {"old": None, "new": 2}


@pytest.mark.parametrize(
    "column",
    [("status; DROP TABLE meta", "TEXT"), ("Status", "TEXT"), ("1st", "TEXT"), ("note", "TEXT NOT NULL"), ("note", "BLOB")],
)
def test_a_column_that_is_not_a_plain_identifier_and_type_is_refused(column: Tuple[str, str]) -> None:
    """A declared column name or type that is not a plain lowercase identifier / INTEGER / TEXT raises JournalError naming it: nothing else can reach SQL text."""
    with pytest.raises(JournalError, match="journal column") as exc:
        Column(*column)
    assert repr(column[0]) in str(exc.value)


def test_a_part_added_by_a_migration_must_be_nullable() -> None:
    """A part with since > 1 and a NOT NULL column is refused: the rows written before it have no value."""
    with pytest.raises(JournalError, match="must be nullable"):
        ResultField("count", (Column("count", "INTEGER"),), store=lambda r: (0,), show=lambda r: 0, since=3)
