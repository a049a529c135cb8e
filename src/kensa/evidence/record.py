"""The evidence of one transaction: what an assessor is shown, built from the journal and the rule.

:func:`evidence_payload` turns a journal entry, its audit sequence numbers and
the rule it ran into a JSON value of integers, strings, booleans and nulls
(see :mod:`kensa.evidence.canonical`): the rule id and the framework references
the rule carries, the host, each phase with its duration and result, the
digests of the pre- and post-state of everything the steps touched, the
terminal status, and the sequence numbers of the transaction's audit records.

What the journal holds and what it does not: phase durations are measured
with a monotonic clock and journaled per phase; wall-clock times are
journaled for the transaction (intent recorded, result recorded), not for
each phase. The rule (its references and the SHA-256 of its file) is
journaled after a run by ``kensa remediate`` and ``kensa report --remediate``
(:mod:`kensa.journal.rulesources`); for a transaction without it (run through
the Python API, or interrupted before the run ended) the rule is read from the
rules given at export, and ``rule.recorded`` says which.
"""

from __future__ import annotations

import hashlib
import os
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence, Tuple

from kensa._version import __version__
from kensa.errors import EvidenceError
from kensa.journal.codec import pre_state_blob
from kensa.model import AuditSequence, JournalEntry, Phase, PreState, RuleSource, TransactionResult
from kensa.rules import Reference, Rule

if TYPE_CHECKING:
    # Only annotated: writing a run's rule sources need not load the audit log reader.
    from kensa.audit.reconcile import LoggedRecord

__all__ = ["EVIDENCE_FORMAT", "LogKey", "evidence_payload", "file_digests", "reference_view", "rule_source", "text", "timestamp"]

#: How auditd's log records are looked up: transaction id, phase, seq, pid.
LogKey = Tuple[str, str, int, int]

#: The ``format`` of every payload this module makes.
EVIDENCE_FORMAT = "kensa-evidence/1"

# The phases a result can time, in the order they run.
_PHASE_ORDER = (Phase.PREFLIGHT, Phase.CHECK, Phase.CAPTURE, Phase.APPLY, Phase.VALIDATE, Phase.ROLLBACK, Phase.COMMIT)


def text(value: str) -> str:
    """``value`` as valid Unicode: bytes that were not UTF-8 (a lone surrogate) shown as ``\\xNN``."""
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def timestamp(moment: Optional[datetime]) -> Optional[str]:
    """RFC 3339 UTC time to the microsecond (``2026-12-01T14:50:00.000000Z``), or None."""
    if moment is None:
        return None
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def reference_view(reference: Reference) -> Dict[str, Any]:
    """A reference as JSON: framework, control, profile and its attributes (lists as lists)."""
    return {
        "framework": text(reference.framework),
        "control": text(reference.control),
        "profile": text(reference.profile),
        "attributes": {
            text(key): [text(v) for v in value] if isinstance(value, tuple) else text(value)
            for key, value in reference.attributes.items()
        },
    }


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _file_side(state: Mapping[str, Any]) -> Dict[str, Any]:
    side: Dict[str, Any] = {"exists": bool(state.get("exists"))}
    content = state.get("content")
    if isinstance(content, (bytes, bytearray)):
        side["sha256"] = _sha256(bytes(content))
    elif isinstance(state.get("sha256"), str):
        side["sha256"] = state["sha256"]
    for key in ("mode", "uid", "gid"):
        if isinstance(state.get(key), int) and not isinstance(state.get(key), bool):
            side[key] = int(state[key])
    return side


def file_digests(data: Any) -> List[Dict[str, Any]]:
    """Every captured file in a pre-state's data: its path, and its state before and after the step.

    A captured file is a mapping with a ``path`` and an ``exists`` flag (see
    :mod:`kensa.handlers.filestate`); ``before`` is as captured (the SHA-256
    of its bytes when they were captured), ``after`` is the state the step
    journaled it would leave (``post``), or None when none was journaled.
    """
    found: List[Dict[str, Any]] = []

    def walk(value: Any) -> None:
        if isinstance(value, Mapping):
            if isinstance(value.get("path"), str) and isinstance(value.get("exists"), bool):
                post = value.get("post")
                found.append({
                    "path": text(value["path"]),
                    "before": _file_side(value),
                    "after": _file_side(post) if isinstance(post, Mapping) else None,
                })
                return
            for item in value.values():
                walk(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                walk(item)

    walk(data)
    return found


def _step_view(index: int, mechanism: str, pre: Optional[PreState], result: Optional[TransactionResult]) -> Dict[str, Any]:
    outcome = None
    if result is not None and index < len(result.steps):
        step = result.steps[index]
        outcome = {"ok": step.ok, "changed": step.changed, "staged": step.staged, "detail": text(step.detail)}
    return {
        "index": index,
        "mechanism": text(mechanism),
        # The exact captured pre-state, as the journal stores it (kensa.journal.codec.pack).
        "captured_sha256": None if pre is None else _sha256(pre_state_blob(pre)),
        "files": [] if pre is None else file_digests(pre.data),
        "result": outcome,
    }


def _phase_views(result: TransactionResult) -> List[Dict[str, Any]]:
    failed = set()
    if result.error is not None:
        failed.add(result.error.phase)
    if Phase.ROLLBACK in result.timings:
        # A run rolls back only after apply or validate failed: the later of them
        # that ran is the one (the error may name the rollback instead).
        ran = [p for p in (Phase.APPLY, Phase.VALIDATE) if p in result.timings]
        if ran:
            failed.add(ran[-1])
        if not all(r.ok for r in result.rollbacks):
            failed.add(Phase.ROLLBACK)
    return [
        {
            "phase": phase.value,
            "duration_us": max(0, round(result.timings[phase] * 1_000_000)),
            "result": "failed" if phase in failed else "success",
        }
        for phase in _PHASE_ORDER
        if phase in result.timings
    ]


def _result_core(result: TransactionResult) -> Dict[str, Any]:
    error = result.error
    return {
        "status": result.status.value,
        "host_unchanged": result.host_unchanged,
        "phases": _phase_views(result),
        "rollbacks": [{"mechanism": text(r.mechanism), "ok": r.ok, "detail": text(r.detail),
                       **({"kept": [text(line) for line in r.kept]} if r.kept else {})} for r in result.rollbacks],
        "error": None if error is None else {"type": text(error.type), "message": text(error.message), "phase": error.phase.value},
    }


def _file_sha256(path: str) -> Optional[str]:
    try:
        with open(path, "rb") as handle:
            return _sha256(handle.read())
    except OSError:
        return None


def rule_source(txn_id: str, rule: Rule) -> RuleSource:
    """What the journal keeps of the rule ``txn_id`` runs: id, title, file and its SHA-256 now, references."""
    return RuleSource(
        txn_id=txn_id,
        rule=rule.id,
        title=rule.title,
        # Absolute: the run's working directory is not known when the evidence is exported.
        source_file=os.path.abspath(rule.source.path),
        source_sha256=_file_sha256(rule.source.path),
        references=tuple(reference_view(r) for r in rule.references),
    )


def _rule_view(txn: str, rule: Optional[Rule], journaled: Optional[RuleSource]) -> Dict[str, Any]:
    if journaled is not None:
        view: Dict[str, Any] = {
            "id": text(journaled.rule),
            "title": text(journaled.title),
            "source_file": text(journaled.source_file),
            "source_sha256": journaled.source_sha256,
            "references": [dict(r) for r in journaled.references],
            "recorded": "at_run",
        }
        if rule is not None:
            now = _file_sha256(rule.source.path)
            if now != journaled.source_sha256:
                # The assessor sees that the rule file given at export is not the one that ran.
                view["source_sha256_at_export"] = now
        return view
    if rule is None:
        raise EvidenceError(
            f"transaction {txn}: the journal holds no rule source for it and no rule was given; "
            "pass the rule files it ran with --rules"
        )
    return {
        "id": text(rule.id),
        "title": text(rule.title),
        "source_file": text(os.path.abspath(rule.source.path)),
        "source_sha256": _file_sha256(rule.source.path),
        "references": [reference_view(r) for r in rule.references],
        "recorded": "at_export",
    }


def evidence_payload(
    entry: JournalEntry,
    audit: Sequence[AuditSequence],
    rule: Optional[Rule],
    journaled: Optional[RuleSource] = None,
    *,
    exported: Optional[datetime] = None,
    logged: Optional[Mapping[LogKey, LoggedRecord]] = None,
) -> Dict[str, Any]:
    """The evidence payload of ``entry``; :class:`EvidenceError` when it cannot be evidence (yet).

    The rule's part comes from ``journaled`` (the rule as it ran) when the
    journal kept it, else from ``rule`` (read at export), which must be the
    rule the transaction ran (same id). An interrupted or corrupt entry is
    refused: it has no terminal result to vouch for. ``logged`` (auditd's log
    read, by :data:`LogKey`) adds to each audit record the kernel's time and
    serial of it, or None where the log lacks it.
    """
    txn = entry.txn
    if entry.corrupt is not None:
        raise EvidenceError(f"transaction {txn.id}: its journal entry is corrupt, no evidence is made from it: {entry.corrupt}")
    if entry.result is None:
        raise EvidenceError(
            f"transaction {txn.id} (rule {txn.rule}) has no terminal result (interrupted): run 'kensa recover' first"
        )
    if rule is not None and rule.id != txn.rule:
        raise EvidenceError(f"transaction {txn.id} ran rule {txn.rule!r}, not {rule.id!r}")
    pres: Sequence[Optional[PreState]] = entry.pre_states if entry.intent_recorded else ()
    later = entry.later_rollback
    return {
        "format": EVIDENCE_FORMAT,
        "kensa_version": __version__,
        "exported_at": timestamp(exported or datetime.now(timezone.utc)),
        "transaction": {
            "id": text(txn.id),
            "journal_seq": entry.seq,
            "transactional": txn.transactional if entry.intent_recorded else None,
            "intent_recorded_at": timestamp(entry.created) if entry.intent_recorded else None,
            "finished_at": timestamp(entry.finished),
            "recovered": entry.recovered,
        },
        "rule": _rule_view(txn.id, rule, journaled),
        "host": text(txn.host),
        **_result_core(entry.result),
        "steps": [
            _step_view(i, step.mechanism, pres[i] if i < len(pres) else None, entry.result)
            for i, step in enumerate(txn.steps)
        ],
        "later_rollback": None if later is None else {
            **_result_core(later),
            "transaction": text(later.txn_id),
            "recorded_at": timestamp(entry.later_rollback_at),
        },
        "audit_log_read": logged is not None,
        "audit_records": [_audit_view(txn.id, a, logged) for a in audit],
    }


def _audit_view(txn_id: str, record: AuditSequence, logged: Optional[Mapping[LogKey, LoggedRecord]]) -> Dict[str, Any]:
    view: Dict[str, Any] = {"phase": text(record.phase), "seq": record.seq, "pid": record.pid,
                            "journaled_at": timestamp(record.recorded)}
    if logged is not None:
        found = None if record.seq is None else logged.get((txn_id, record.phase, record.seq, record.pid))
        # The kernel's own time and serial of the record, as auditd logged them: ausearch -a SERIAL finds it.
        view["logged_at"] = None if found is None else timestamp(datetime.fromtimestamp(found.time, timezone.utc))
        view["audit_serial"] = None if found is None else found.serial
    return view
