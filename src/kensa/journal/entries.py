"""Journal rows read back as :class:`~kensa.model.JournalEntry`, or as entries marked ``corrupt``.

An entry whose row fails its check or cannot be decoded is returned marked
``corrupt`` (reading its pre-states raises :class:`JournalCorruptError`
naming it); every other entry reads as usual, so recovery can go on with them.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path
from typing import Callable, Optional, Sequence, Tuple

from kensa.errors import JournalCorruptError
from kensa.journal import fields
from kensa.journal.codec import EPOCH, decode_tagged, steps_digest, to_datetime, unstored_text
from kensa.journal.prestates import StoredPreStates
from kensa.model import JournalEntry, PreState, Step, Transaction, TransactionResult

__all__ = ["PreStatesOf", "entry_or_corrupt"]

# Given an entry's id and its number of steps: its pre-states (loaded, or read on access).
PreStatesOf = Callable[[str, int], Sequence[Optional[PreState]]]


def _result_of(txn_id: str, rule: str, host: str, row: sqlite3.Row, prefix: str) -> TransactionResult:
    return fields.result_load(txn_id, rule, host, lambda column: row[prefix + column])


def entry_or_corrupt(path: Path, row: sqlite3.Row, pre_states_of: PreStatesOf) -> JournalEntry:
    """The entry of one row of ``schema.entry_query()``; a row that cannot be read gives an entry marked ``corrupt``."""
    txn_id, host, rule = unstored_text(row["id"]), unstored_text(row["host"]), unstored_text(row["rule"])
    try:
        return _entry_from(row, _pre_states(path, txn_id, row, pre_states_of))
    except JournalCorruptError as exc:
        why = str(exc)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        why = (
            f"kensa journal {path}: transaction {txn_id}: its row is corrupt: it cannot be decoded: "
            f"{type(exc).__name__}: {exc}"
        )
    result: Optional[TransactionResult] = None
    with contextlib.suppress(ValueError, TypeError, KeyError, AttributeError):
        result = None if row["status"] is None else _result_of(txn_id, rule, host, row, "")
    return JournalEntry(
        txn=Transaction(rule=rule, steps=(), host=host, id=txn_id),
        result=result,
        created=to_datetime(row["created"]) if isinstance(row["created"], int) else EPOCH,
        finished=to_datetime(row["finished"]) if isinstance(row["finished"], int) else None,
        seq=row["seq"],
        intent_recorded=row["steps"] is not None,
        recovered=bool(row["recovered"]),
        corrupt=why,
        pre_states=StoredPreStates(corrupt=JournalCorruptError(why, txn_id)),
        _result_recorded=row["status"] is not None,
    )


def _pre_states(path: Path, txn_id: str, row: sqlite3.Row, pre_states_of: PreStatesOf) -> Sequence[Optional[PreState]]:
    """The entry's pre-states once its steps pass their check; none for a result-only entry."""
    steps = row["steps"]
    if steps is None:
        return ()
    if row["steps_sha256"] != steps_digest(txn_id, unstored_text(steps)):
        raise JournalCorruptError(
            f"kensa journal {path}: transaction {txn_id}: its steps are corrupt: they fail their "
            "SHA-256 check (the journal row was damaged)", txn_id
        )
    return pre_states_of(txn_id, len(json.loads(steps)))


def _entry_from(row: sqlite3.Row, pre_states: Sequence[Optional[PreState]]) -> JournalEntry:
    txn_id, host, rule = unstored_text(row["id"]), unstored_text(row["host"]), unstored_text(row["rule"])
    intent_recorded = row["steps"] is not None
    steps: Tuple[Step, ...] = ()
    if intent_recorded:
        steps = tuple(Step(step["mechanism"], decode_tagged(step["params"])) for step in json.loads(row["steps"]))
    txn = Transaction(
        rule=rule,
        steps=steps,
        host=host,
        id=txn_id,
        transactional=True if row["transactional"] is None else bool(row["transactional"]),
    )
    result = None if row["status"] is None else _result_of(txn_id, rule, host, row, "")
    later_rollback = None
    later_rollback_at = None
    if row["rb_txn_id"] is not None:
        later_rollback = _result_of(
            unstored_text(row["rb_txn_id"]), unstored_text(row["rb_rule"]), unstored_text(row["rb_host"]), row, "rb_"
        )
        later_rollback_at = to_datetime(row["rb_recorded"])
    return JournalEntry(
        txn=txn,
        result=result,
        created=to_datetime(row["created"]),
        finished=None if row["finished"] is None else to_datetime(row["finished"]),
        seq=row["seq"],
        intent_recorded=intent_recorded,
        recovered=bool(row["recovered"]),
        later_rollback=later_rollback,
        later_rollback_at=later_rollback_at,
        pre_states=pre_states,
        _result_recorded=row["status"] is not None,
    )
