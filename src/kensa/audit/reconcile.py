"""auditd's log read back, and reconciled with the journal.

Every record kensa hands to the kernel carries ``seq=N`` (one counter per
emitter), and the journal keeps, for each transaction, the phase and sequence
number of each record it emitted (or that the emitter never sent it). Reading
auditd's log then proves, per transaction and phase, which records the log
holds, which were lost after kensa sent them (the kernel or auditd dropped
them: auditd hung, backlog full), and which kensa's own emitter dropped (its
ring was full, audit was off), the last ones also announced in the log by
``op=kensa_audit_gap`` records.

The log is parsed here (auditd's plain line format, ``log_format = RAW`` or
``ENRICHED``), so no libaudit or auparse is needed.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Mapping, Optional, Protocol, Sequence, Set, Tuple

from kensa.errors import AuditLogError, SinceError
from kensa.model import AuditSequence

__all__ = [
    "AuditLogError",
    "JournaledSequences",
    "LoggedRecord",
    "Reconciliation",
    "RecordCheck",
    "SinceError",
    "TransactionCheck",
    "default_log_files",
    "parse_since",
    "read_log",
    "reconcile",
    "reconciliation_dict",
]

AUDITD_CONF = Path("/etc/audit/auditd.conf")
DEFAULT_LOG = Path("/var/log/audit/audit.log")

LOGGED = "logged"
MISSING = "missing"
NOT_SENT = "not_sent"

_LINE = re.compile(r"type=(\S+) msg=audit\((\d+)\.(\d+):(\d+)\): (.*)")
_AGE = re.compile(r"(\d+)([smhd])\Z")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


class JournaledSequences(Protocol):
    """Where :func:`reconcile` reads which audit records transactions emitted (a journal has it).

    It answers, by transaction id, the records journaled from ``since``
    (inclusive; None: from the start), in emission order.
    """

    def audit_sequences_between(self, since: Optional[datetime] = None) -> Mapping[str, Sequence[AuditSequence]]: ...


@dataclass(frozen=True)
class LoggedRecord:
    """One kensa record as auditd wrote it."""

    op: str
    phase: str
    seq: Optional[int]
    txn: Optional[str]
    pid: int
    dropped: int  # for op=kensa_audit_gap: how many records the emitter announced dropped
    time: float
    serial: int


@dataclass(frozen=True)
class RecordCheck:
    """One journaled record and where it is: ``logged``, ``missing`` (sent, not in the log) or ``not_sent``."""

    phase: str
    seq: Optional[int]
    pid: int
    state: str


@dataclass(frozen=True)
class TransactionCheck:
    """The records of one journaled transaction, each checked against the log."""

    txn_id: str
    records: Tuple[RecordCheck, ...]

    @property
    def missing(self) -> Tuple[RecordCheck, ...]:
        return tuple(r for r in self.records if r.state == MISSING)

    @property
    def not_sent(self) -> Tuple[RecordCheck, ...]:
        return tuple(r for r in self.records if r.state == NOT_SENT)


@dataclass(frozen=True)
class Reconciliation:
    """What ``kensa audit reconcile`` found."""

    since: Optional[datetime]
    log_files: Tuple[Path, ...]
    transactions: Tuple[TransactionCheck, ...]
    announced_drops: int  # sum of dropped= in the log's gap records from the same processes

    @property
    def complete(self) -> bool:
        """True when the log holds every record the journaled transactions emitted."""
        return all(not t.missing and not t.not_sent for t in self.transactions)

    def count(self, state: str) -> int:
        return sum(1 for t in self.transactions for r in t.records if r.state == state)


def parse_since(text: str, now: Optional[datetime] = None) -> datetime:
    """``--since``: an ISO 8601 time (naive: local time) or an age such as ``30m``, ``2h``, ``1d``."""
    value = text.strip()
    age = _AGE.match(value)
    if age:
        return (now or datetime.now()) - timedelta(**{_UNITS[age.group(2)]: int(age.group(1))})
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise SinceError(
            f"--since {text!r}: expected an ISO 8601 time (2026-12-01T09:30) or an age (90s, 30m, 2h, 1d)"
        ) from None


def default_log_files(conf: Path = AUDITD_CONF) -> List[Path]:
    """auditd's log (``log_file`` in auditd.conf) and its rotated files, oldest first."""
    log = DEFAULT_LOG
    try:
        for line in conf.read_text(encoding="utf-8", errors="replace").splitlines():
            key, sep, value = line.partition("=")
            if sep and key.strip() == "log_file" and value.strip():
                log = Path(value.strip())
    except OSError:
        pass  # no auditd.conf: auditd's own default
    rotated = []
    for entry in log.parent.glob(log.name + ".*") if log.parent.is_dir() else []:
        suffix = entry.name[len(log.name) + 1 :]
        if suffix.isdigit():
            rotated.append((int(suffix), entry))
    return [p for _, p in sorted(rotated, reverse=True)] + [log]


def _decode(value: str) -> str:
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        return value[1:-1]
    try:
        return bytes.fromhex(value).decode("utf-8", "surrogateescape")
    except ValueError:
        return value


def _parse(line: str) -> Optional[LoggedRecord]:
    if "op=kensa_" not in line:
        return None
    m = _LINE.match(line)
    if m is None:
        return None
    rest = m.group(5).split("\x1d", 1)[0]  # ENRICHED format appends interpreted fields
    start = rest.find("msg='")
    end = rest.rfind("'")
    if start < 0 or end <= start + 4:
        return None
    prefix = dict(_fields(rest[:start]))
    fields = dict(_fields(rest[start + 5 : end]))
    op = fields.get("op", "")
    if not op.startswith("kensa_"):
        return None
    try:
        pid = int(prefix.get("pid", "0"))
        seq = int(fields["seq"]) if "seq" in fields else None
        dropped = int(fields.get("dropped", "0"))
    except ValueError:
        return None
    txn = _decode(fields["txn"]) if "txn" in fields else None
    time = int(m.group(2)) + int(m.group(3)) / 1000
    return LoggedRecord(op, fields.get("phase", ""), seq, txn, pid, dropped, time, int(m.group(4)))


def _fields(text: str) -> Iterator[Tuple[str, str]]:
    for token in text.split(" "):
        key, sep, value = token.partition("=")
        if sep:
            yield key, value


def read_log(paths: Iterable[Path]) -> Iterator[LoggedRecord]:
    """kensa's records in the given log files, in file order."""
    for path in paths:
        try:
            f = open(path, encoding="utf-8", errors="replace")
        except FileNotFoundError:
            continue  # a rotated file may vanish between listing and reading
        except OSError as exc:
            raise AuditLogError(
                exc.errno, f"cannot read auditd's log {path}: {exc.strerror}; run as root or pass --log"
            ) from exc
        with f:
            for line in f:
                record = _parse(line)
                if record is not None:
                    yield record


def reconcile(
    journal: JournaledSequences,
    since: Optional[datetime] = None,
    log_files: Optional[Sequence[Path]] = None,
) -> Reconciliation:
    """Check every transaction journaled since ``since`` against auditd's log.

    ``journal`` is what the caller read the journaled records from (the CLI
    passes the :class:`kensa.journal.SqliteJournal` it opened).

    A journaled record is ``logged`` when the log holds a record of the same
    process, transaction, phase and sequence number; ``missing`` when kensa
    sent it and the log does not hold it; ``not_sent`` when kensa's emitter
    never handed it to the kernel.
    """
    files = tuple(log_files) if log_files is not None else tuple(default_log_files())
    if log_files is not None:
        for path in files:
            if not os.path.exists(path):
                raise AuditLogError(2, f"auditd's log {path} does not exist")
    journaled = journal.audit_sequences_between(since)
    wanted: Set[str] = set(journaled)
    pids = {item.pid for items in journaled.values() for item in items}
    seen: Set[Tuple[int, str, str, int]] = set()
    announced = 0
    floor = since.timestamp() if since is not None else None
    for record in read_log(files):
        if record.op == "kensa_audit_gap":
            if record.pid in pids and (floor is None or record.time >= floor - 60):
                announced += record.dropped
        elif record.txn in wanted and record.seq is not None:
            seen.add((record.pid, record.txn, record.phase, record.seq))
    checks = [
        TransactionCheck(txn_id, tuple(_check(txn_id, item, seen) for item in items))
        for txn_id, items in journaled.items()
    ]
    return Reconciliation(since, files, tuple(checks), announced)


def _check(txn_id: str, item: AuditSequence, seen: Set[Tuple[int, str, str, int]]) -> RecordCheck:
    if item.seq is None:
        state = NOT_SENT
    elif (item.pid, txn_id, item.phase, item.seq) in seen:
        state = LOGGED
    else:
        state = MISSING
    return RecordCheck(item.phase, item.seq, item.pid, state)


def reconciliation_dict(rec: Reconciliation) -> Dict[str, object]:
    """The JSON form of a reconciliation."""
    return {
        "since": rec.since.isoformat() if rec.since else None,
        "log_files": [str(p) for p in rec.log_files],
        "complete": rec.complete,
        "records": {s: rec.count(s) for s in (LOGGED, MISSING, NOT_SENT)},
        "announced_drops": rec.announced_drops,
        "transactions": [
            {
                "txn": t.txn_id,
                "records": [{"phase": r.phase, "seq": r.seq, "pid": r.pid, "state": r.state} for r in t.records],
            }
            for t in rec.transactions
        ],
    }
