"""The one declaration of a transaction result's parts: how each is stored and shown.

:data:`RESULT_FIELDS` lists the parts of a :class:`~kensa.model.TransactionResult`
that the journal keeps: for each, its SQL columns, the bound values it is
stored as, how those read back, and its JSON-ready form. The journal's DDL, its
INSERT/UPDATE/SELECT statements and its row mapping, and the CLI's view of a
result (``kensa history --json``, ``kensa remediate --json``), are all made
from it, so a part added here is created, written, read and shown everywhere.

Column names come from this declaration only, and are checked to be plain
identifiers; values are always bound parameters.

Adding a part to a released schema: give it ``since=`` the schema version that
adds it and append ``kensa.journal.schema.adding_result_columns(version)`` to
the migrations; its columns must be nullable (rows written before have none),
and its ``load`` must accept None for them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

from kensa.errors import JournalError
from kensa.journal.codec import dumps, stored_text, unstored_text
from kensa.model import (
    Phase,
    RollbackResult,
    ServiceOutcome,
    ServiceStatus,
    ServiceVerb,
    Status,
    StepResult,
    TransactionError,
    TransactionResult,
)

__all__ = ["RESULT_FIELDS", "Column", "ResultField", "result_columns", "result_load", "result_values", "result_view"]

_IDENTIFIER = re.compile(r"[a-z][a-z0-9_]*\Z")
_SQL_TYPES = ("INTEGER", "TEXT")


@dataclass(frozen=True)
class Column:
    """One SQL column: a plain lowercase identifier, INTEGER or TEXT, and whether it may be NULL in a result."""

    name: str
    sql_type: str
    nullable: bool = False

    def __post_init__(self) -> None:
        # Column names are written into SQL text: only a plain identifier may get there.
        if not _IDENTIFIER.match(self.name) or self.sql_type not in _SQL_TYPES:
            raise JournalError(
                f"journal column {self.name!r} ({self.sql_type!r}): a column name must be lowercase letters, "
                f"digits and '_' starting with a letter, and its type one of {', '.join(_SQL_TYPES)}"
            )

    def ddl(self, *, required: bool) -> str:
        """``name TYPE`` with ``NOT NULL`` when a result is required and this column may not be empty."""
        return f"{self.name} {self.sql_type}{' NOT NULL' if required and not self.nullable else ''}"


@dataclass(frozen=True)
class ResultField:
    """One part of a result: ``name`` is its key in the CLI's view and the result attribute it loads into.

    ``store`` gives one bound value per column; ``load`` turns those values
    (read back, in column order) into the attribute's value, or is None for a
    part that is stored and shown only (derived from others); ``show`` gives
    the JSON-ready value. ``since`` is the schema version that added the columns.
    """

    name: str
    columns: Tuple[Column, ...]
    store: Callable[[TransactionResult], Tuple[Any, ...]]
    show: Callable[[TransactionResult], Any]
    load: Optional[Callable[..., Any]] = None
    since: int = 1

    def __post_init__(self) -> None:
        if self.since > 1 and not all(column.nullable for column in self.columns):
            raise JournalError(
                f"journal result field {self.name!r}: columns added by a migration (since={self.since}) must be "
                "nullable, rows written before it have no value"
            )


def _step_dicts(result: TransactionResult) -> List[Dict[str, Any]]:
    return [
        {"mechanism": s.mechanism, "ok": s.ok, "changed": s.changed, "staged": s.staged, "detail": s.detail,
         **({"skipped": True} if s.skipped else {})}
        for s in result.steps
    ]


def _rollback_dicts(result: TransactionResult) -> List[Dict[str, Any]]:
    # kept: the later changes a rollback by id left in place; absent (none) in older rows.
    return [{"mechanism": r.mechanism, "ok": r.ok, "detail": r.detail, **({"kept": list(r.kept)} if r.kept else {})}
            for r in result.rollbacks]


def _service_dicts(result: TransactionResult) -> List[Dict[str, Any]]:
    return [{"verb": s.verb.value, "unit": s.unit, "status": s.status.value, "detail": s.detail} for s in result.services]


def _load_services(text: Any) -> Tuple[ServiceOutcome, ...]:
    if text is None:
        return ()  # written before service actions were journaled
    return tuple(ServiceOutcome(ServiceVerb(s["verb"]), s["unit"], ServiceStatus(s["status"]), s["detail"]) for s in json.loads(text))


def _timings_dict(result: TransactionResult) -> Dict[str, float]:
    return {Phase(phase).value: seconds for phase, seconds in result.timings.items()}


def _error_dict(result: TransactionResult) -> Optional[Dict[str, str]]:
    error = result.error
    return None if error is None else {"type": error.type, "message": error.message, "phase": Phase(error.phase).value}


def _store_error(result: TransactionResult) -> Tuple[Any, ...]:
    error = result.error
    if error is None:
        return (None, None, None)
    return (stored_text(error.type), stored_text(error.message), Phase(error.phase).value)


def _load_error(type_: Any, message: Any, phase: Any) -> Optional[TransactionError]:
    if type_ is None:
        return None
    return TransactionError(type=unstored_text(type_), message=unstored_text(message), phase=Phase(phase))


# In the order of the CLI's view; the DDL of a new journal follows it too.
RESULT_FIELDS: Tuple[ResultField, ...] = (
    ResultField(
        "status",
        (Column("status", "TEXT"),),
        store=lambda r: (Status(r.status).value,),
        show=lambda r: Status(r.status).value,
        load=Status,
    ),
    ResultField(
        "host_unchanged",
        (Column("host_unchanged", "INTEGER"),),
        store=lambda r: (int(r.host_unchanged),),
        show=lambda r: r.host_unchanged,
        load=bool,
    ),
    ResultField(
        "timings",
        (Column("timings", "TEXT"),),
        store=lambda r: (dumps(_timings_dict(r)),),
        show=_timings_dict,
        load=lambda text: {Phase(phase): seconds for phase, seconds in json.loads(text).items()},
    ),
    ResultField(
        "steps",
        (Column("step_results", "TEXT"),),
        store=lambda r: (dumps(_step_dicts(r)),),
        show=_step_dicts,
        load=lambda text: tuple(StepResult(**step) for step in json.loads(text)),
    ),
    ResultField(
        "rollbacks",
        (Column("rollback_results", "TEXT"),),
        store=lambda r: (dumps(_rollback_dicts(r)),),
        show=_rollback_dicts,
        load=lambda text: tuple(RollbackResult(**rollback) for rollback in json.loads(text)),
    ),
    ResultField(
        "error",
        (Column("error_type", "TEXT", nullable=True), Column("error_message", "TEXT", nullable=True),
         Column("error_phase", "TEXT", nullable=True)),
        store=_store_error,
        show=_error_dict,
        load=_load_error,
    ),
    ResultField(
        "services",
        (Column("service_outcomes", "TEXT", nullable=True),),
        store=lambda r: (dumps(_service_dicts(r)),),
        show=_service_dicts,
        load=_load_services,
        since=3,
    ),
)


def result_columns(since: Optional[int] = None) -> Tuple[Column, ...]:
    """The columns of every declared part, in order; with ``since``, of the parts that version added."""
    return tuple(column for part in RESULT_FIELDS if since in (None, part.since) for column in part.columns)


def result_values(result: TransactionResult) -> Tuple[Any, ...]:
    """The bound values of ``result``, one per column of :func:`result_columns`, in order."""
    values: List[Any] = []
    for part in RESULT_FIELDS:
        stored = part.store(result)
        if len(stored) != len(part.columns):
            raise JournalError(
                f"journal result field {part.name!r} gave {len(stored)} values for {len(part.columns)} columns"
            )
        values.extend(stored)
    return tuple(values)


def result_load(txn_id: str, rule: str, host: str, value_of: Callable[[str], Any]) -> TransactionResult:
    """The result whose columns ``value_of(column name)`` reads back."""
    loaded = {
        part.name: part.load(*(value_of(column.name) for column in part.columns))
        for part in RESULT_FIELDS
        if part.load is not None
    }
    return TransactionResult(txn_id=txn_id, rule=rule, host=host, **loaded)


def result_view(result: TransactionResult) -> Dict[str, Any]:
    """The JSON-ready view of ``result``: its ids, then every declared part."""
    view: Dict[str, Any] = {"txn": result.txn_id, "rule": result.rule, "host": result.host}
    for part in RESULT_FIELDS:
        view[part.name] = part.show(result)
    return view
