"""A run's outcomes as rows: the one view behind ``kensa report --format json|jsonl|csv`` and OSCAL.

An outcome is a check's :class:`~kensa.model.CheckResult` (a verdict) or a
remediation's :class:`~kensa.model.TransactionResult` (a terminal status).
:func:`outcome_row` gives each the same columns, with the references of its
rule; :func:`finding_state` says what it means for the controls it references.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

from kensa.evidence.record import reference_view, text
from kensa.model import CheckResult, Status, TransactionResult, Verdict
from kensa.rules import Rule

__all__ = ["COLUMNS", "Outcome", "finding_state", "outcome_row", "render_rows"]

Outcome = Union[CheckResult, TransactionResult]

#: The columns of a row, in CSV order.
COLUMNS = ("rule", "title", "host", "kind", "outcome", "finding", "txn", "host_unchanged", "references", "detail")

_SATISFIED = {Verdict.COMPLIANT.value, Status.COMMITTED.value, Status.SKIPPED.value}
_NOT_SATISFIED = {
    Verdict.NOT_COMPLIANT.value,
    Status.ROLLED_BACK.value,
    Status.PARTIALLY_APPLIED.value,
    Status.ROLLBACK_FAILED.value,
    Status.ERRORED.value,
    Status.STAGED.value,
    Status.RECOVERED.value,
    Status.MANUAL.value,
}


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def finding_state(outcome: str) -> Optional[str]:
    """``satisfied``, ``not-satisfied``, or None when the outcome says nothing of the control.

    A committed or skipped (already compliant) transaction satisfies its
    rule's controls; one that was rolled back, errored, is only staged
    (effective after a reboot) or waits for an operator (``manual``) does not. ``not_applicable``, ``unsupported``,
    ``not_assessable`` and ``error`` verdicts give no finding: kensa did not
    assess the control.
    """
    if outcome in _SATISFIED:
        return "satisfied"
    if outcome in _NOT_SATISFIED:
        return "not-satisfied"
    return None


def _detail(outcome: Outcome) -> str:
    if isinstance(outcome, CheckResult):
        return outcome.detail
    if outcome.error is not None:
        return f"{outcome.error.phase.value}: {outcome.error.message}"
    return "; ".join(s.detail for s in outcome.steps if (s.changed or s.skipped or outcome.status is Status.MANUAL) and s.detail)


def outcome_row(outcome: Outcome, rules: Mapping[str, Rule]) -> Dict[str, Any]:
    """One outcome as a JSON-ready row (see :data:`COLUMNS`); ``references`` is a list of reference views."""
    rule = rules.get(outcome.rule)
    check = isinstance(outcome, CheckResult)
    value = outcome.verdict.value if isinstance(outcome, CheckResult) else outcome.status.value
    return {
        "rule": text(outcome.rule),
        "title": text(rule.title) if rule is not None else "",
        "host": text(outcome.host),
        "kind": "check" if check else "transaction",
        "outcome": value,
        "finding": finding_state(value),
        "txn": None if isinstance(outcome, CheckResult) else text(outcome.txn_id),
        "host_unchanged": None if isinstance(outcome, CheckResult) else outcome.host_unchanged,
        "references": [] if rule is None else [reference_view(r) for r in rule.references],
        "detail": text(_detail(outcome)),
    }


def _reference_cell(references: Sequence[Mapping[str, Any]]) -> str:
    return " ".join(
        f"{r['framework']}:{r['control']}" + (f"@{r['profile']}" if r["profile"] else "") for r in references
    )


def render_rows(rows: Sequence[Mapping[str, Any]], fmt: str, run: Mapping[str, Any]) -> str:
    """``rows`` as ``json`` (one object: ``run`` and ``results``), ``jsonl`` (one row a line) or ``csv``.

    In CSV, ``references`` is ``framework:control[@profile]`` separated by
    spaces, booleans are ``true``/``false``, an absent value is empty, and a
    text cell that a spreadsheet would run as a formula (starting with ``=``,
    ``+``, ``-``, ``@``, a tab or a carriage return: rule titles and details
    come from rule files and targets) is prefixed with ``'``.
    """
    if fmt == "json":
        return json.dumps({"run": dict(run), "results": list(rows)}, indent=2, ensure_ascii=False) + "\n"
    if fmt == "jsonl":
        return "".join(json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n" for row in rows)
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(COLUMNS)
        for row in rows:
            cells: List[str] = []
            for column in COLUMNS:
                value = row[column]
                if column == "references":
                    cells.append(_reference_cell(value))
                elif isinstance(value, bool):
                    cells.append("true" if value else "false")
                elif isinstance(value, str) and value[:1] in _FORMULA_START:
                    cells.append("'" + value)
                else:
                    cells.append("" if value is None else str(value))
            writer.writerow(cells)
        return buffer.getvalue()
    raise ValueError(f"unknown report format {fmt!r}")
