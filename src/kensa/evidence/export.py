"""Export signed evidence of journaled transactions, one file per transaction.

The journal gives each transaction's entry and audit sequence numbers; the
rules given give its rule's references; the signing key is read from its own
file and never enters the journal.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from kensa.errors import EvidenceError, JournalEntryNotFound
from kensa.evidence.keys import SigningKey
from kensa.audit.reconcile import LoggedRecord, default_log_files, read_log
from kensa.errors import AuditLogError
from kensa.evidence.record import LogKey, evidence_payload
from kensa.evidence.sign import sign_payload
from kensa.journal.rulesources import read_rule_source
from kensa.journal.store import SqliteJournal
from kensa.model import JournalEntry
from kensa.rules import Rule

__all__ = ["evidence_file_name", "export_evidence", "logged_records", "rules_by_id", "select_entries"]

_PLAIN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")


def evidence_file_name(txn_id: str) -> str:
    """``<txn id>.evidence.json``; an id that is not a plain file name is replaced by its SHA-256."""
    if _PLAIN_ID.match(txn_id):
        return f"{txn_id}.evidence.json"
    return f"txn-{hashlib.sha256(txn_id.encode('utf-8', 'surrogatepass')).hexdigest()}.evidence.json"


def rules_by_id(rules: Iterable[Rule]) -> Dict[str, Rule]:
    """The rules keyed by id; :class:`EvidenceError` when two files define one id differently."""
    found: Dict[str, Rule] = {}
    for rule in rules:
        other = found.get(rule.id)
        if other is not None and other != rule:
            raise EvidenceError(f"rule {rule.id} is defined twice, at {other.source} and at {rule.source}; give one")
        found[rule.id] = rule
    return found


def select_entries(
    journal: SqliteJournal, txn_ids: Sequence[str], since: Optional[datetime]
) -> Tuple[List[JournalEntry], List[Tuple[str, str]]]:
    """The entries to export, oldest first, and those left out with why.

    Named transactions must exist and have a terminal result. With ``since``,
    every entry created since then; interrupted ones are left out (they have
    no result to vouch for yet).
    """
    if bool(txn_ids) == (since is not None):
        raise EvidenceError("evidence export: name transactions (TXN ...) or give --since, not both and not neither")
    left_out: List[Tuple[str, str]] = []
    if txn_ids:
        entries = []
        for txn_id in txn_ids:
            try:
                entries.append(journal.get(txn_id))
            except JournalEntryNotFound:
                raise EvidenceError(f"evidence export: no transaction {txn_id!r} in the journal {journal.path}") from None
        return entries, left_out
    entries = []
    for listed in reversed(journal.history(since=since)):
        if listed.interrupted:
            left_out.append((listed.txn.id, "interrupted: run 'kensa recover' first"))
            continue
        entries.append(journal.get(listed.txn.id))
    return entries, left_out


def logged_records(txn_ids: Iterable[str], files: Optional[Sequence[str]] = None) -> Dict[LogKey, LoggedRecord]:
    """The records of ``txn_ids`` in auditd's log (``files``, default: auditd.conf's log and its rotations)."""
    wanted = set(txn_ids)
    paths = [Path(f) for f in files] if files else default_log_files()
    for path in paths if files else ():
        if not path.exists():
            raise AuditLogError(2, f"auditd's log {path} does not exist")
    found: Dict[LogKey, LoggedRecord] = {}
    for record in read_log(paths):
        if record.op == "kensa_transaction" and record.txn in wanted and record.seq is not None:
            found[(record.txn, record.phase, record.seq, record.pid)] = record
    return found


def _write_atomically(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".evidence.json", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def export_evidence(
    journal: SqliteJournal,
    entries: Sequence[JournalEntry],
    rules: Mapping[str, Rule],
    key: SigningKey,
    out_dir: str,
    *,
    exported: Optional[datetime] = None,
    logged: Optional[Mapping[LogKey, LoggedRecord]] = None,
) -> List[Tuple[str, str]]:
    """Sign and write the evidence of each entry into ``out_dir``; ``(txn id, file)`` for each.

    The rule of each comes from the journal when a run kept it
    (:func:`kensa.cli.rulejournal.journal_rules`), else from ``rules``. Every payload is made
    before any file is written, so a transaction whose rule is in neither (or
    that cannot be evidence) stops the export with nothing written.
    """
    folder = Path(out_dir)
    if not folder.is_dir():
        raise EvidenceError(f"evidence export: --out {out_dir}: no such directory")
    signed: List[Tuple[str, bytes]] = []
    for entry in entries:
        rule = rules.get(entry.txn.rule)
        journaled = read_rule_source(journal.path, entry.txn.id)
        if rule is None and journaled is None:
            raise EvidenceError(
                f"evidence export: transaction {entry.txn.id} ran rule {entry.txn.rule!r}, which none of the rules "
                "given defines and the journal kept no copy of it; pass the rule files it ran with --rules"
            )
        payload = evidence_payload(
            entry, journal.audit_sequences(entry.txn.id), rule, journaled, exported=exported, logged=logged
        )
        signed.append((entry.txn.id, sign_payload(payload, key)))
    written = []
    for txn_id, data in signed:
        path = folder / evidence_file_name(txn_id)
        try:
            _write_atomically(path, data)
        except OSError as exc:
            raise EvidenceError(f"evidence export: cannot write {path}: {exc.strerror or exc}") from None
        written.append((txn_id, os.fspath(path)))
    return written

