"""`kensa audit reconcile` against auditd's real log: which journaled records it holds, which it lost."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import List, Set, Tuple

import pytest

from conftest import AuditListener, auditd_stopped, kensa_records, parse_fields, require_audit, require_auditd
import kensa
import kensa.audit.emitter as audit
from kensa.errors import SinceError
from kensa.audit.reconcile import LOGGED, MISSING, NOT_SENT, parse_since, read_log, reconcile
from kensa.engine import Engine
from kensa.journal.store import SqliteJournal
from kensa.model import AuditSequence, Status, Step, Transaction
from test_engine_audit_kernel import SetValue, Store

# Changes, floods or reads the kernel's audit state: one at a time (tests/conftest.py).
pytestmark = pytest.mark.serial

SRC = str(Path(kensa.__file__).resolve().parent.parent)
Key = Tuple[str, str, int]  # txn, phase, seq


def real_emitter(capacity: int = 16 << 20) -> audit.AuditEmitter:
    """An async emitter that must be real here."""
    em = audit.open_emitter("async", capacity=capacity)
    if not isinstance(em, audit.AuditEmitter):
        require_audit(f"emission is off: {audit.status()}")
    assert isinstance(em, audit.AuditEmitter)
    return em


def engine_for(em: audit.AuditEmitter, journal: SqliteJournal) -> Engine:
    store = Store()
    return Engine({"set_value": SetValue()}, audit=em, journal=journal, hosts=lambda key: store)


def run_batch(engine: Engine, marker: str, n: int) -> None:
    for i in range(n):
        txn = Transaction(rule="reconcile", steps=(Step("set_value", {"key": f"k{i}", "value": "v"}),), host=f"{marker}-{i}")
        assert engine.run(txn).status is Status.COMMITTED


def wait_in_auditd_log(marker: str) -> None:
    """Emit a record after everything else and wait until auditd wrote it to its log."""
    em = audit.open_emitter("sync")
    em.emit_phase(marker, "started", True)
    em.close()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        out = subprocess.run(["ausearch", "-m", "USER", "-ts", "recent"], capture_output=True, text=True).stdout
        if marker in out:
            return
        time.sleep(0.5)
    pytest.fail("auditd never wrote the closing record to its log")


def ausearch_keys(txns: Set[str]) -> Set[Key]:
    """(txn, phase, seq) of kensa's records in auditd's log, as ausearch (not kensa) reads it."""
    out = subprocess.run(["ausearch", "-m", "USER", "-ts", "recent"], capture_output=True, text=True).stdout
    found: Set[Key] = set()
    for line in out.splitlines():
        if "op=kensa_transaction" not in line or f"pid={os.getpid()} " not in line:
            continue
        body = line[line.index("msg='") + 5 : line.rindex("'")]
        f = dict(parse_fields(body))
        txn = f["txn"].strip('"')
        if txn in txns:
            found.add((txn, f["phase"], int(f["seq"])))
    return found


def journaled_keys(journal: SqliteJournal, since: datetime) -> Set[Key]:
    return {(t, s.phase, s.seq) for t, items in journal.audit_sequences_between(since).items() for s in items if s.seq}


def reconciled(journal: SqliteJournal, since: datetime, state: str) -> Set[Key]:
    rec = reconcile(journal, since)
    return {(t.txn_id, r.phase, r.seq) for t in rec.transactions for r in t.records if r.state == state and r.seq}


def test_reconcile_with_auditd_healthy_reports_none_missing(tmp_path: Path) -> None:
    """Transactions run with auditd healthy: every journaled record is in the log; the CLI exits 0."""
    require_auditd()
    em = real_emitter()
    since = datetime.now() - timedelta(seconds=1)
    marker = uuid.uuid4().hex
    with SqliteJournal(tmp_path / "j.db") as journal:
        run_batch(engine_for(em, journal), marker, 20)
        assert em.flush(30)
        wait_in_auditd_log(uuid.uuid4().hex)
        rec = reconcile(journal, since)
    em.close()
    assert len(rec.transactions) == 20 and rec.complete
    assert rec.count(LOGGED) == 100 and rec.count(MISSING) == 0 and rec.count(NOT_SENT) == 0
    out = subprocess.run(
        [sys.executable, "-m", "kensa", "--journal", str(tmp_path / "j.db"), "audit", "reconcile", "--since", "10m", "--json"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": SRC},
    )
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["complete"] is True and doc["records"] == {"logged": 100, "missing": 0, "not_sent": 0}


def test_reconcile_names_exactly_the_records_auditd_lost(tmp_path: Path, listener: AuditListener) -> None:
    """auditd SIGSTOPped under a batch: reconcile's missing records are exactly those ausearch cannot find,

    each was seen by the multicast listener (kensa did send it), and every
    record the listener missed is reported missing.
    """
    pid = require_auditd()
    for _attempt in range(2):
        em = real_emitter()
        filler = real_emitter()
        since = datetime.now() - timedelta(seconds=1)
        marker = uuid.uuid4().hex
        journal = SqliteJournal(tmp_path / f"j-{marker}.db")
        engine = engine_for(em, journal)
        with auditd_stopped(pid):
            # Fill the kernel's queues first, so the batch's records are the ones it loses.
            rec = filler.transaction(f"{marker}-filler", "filler", "localhost")
            for _ in range(25_000):
                rec.emit("apply", True)
            run_batch(engine, marker, 200)
            em.flush(3)
        assert em.flush(180) and filler.flush(180)
        wait_in_auditd_log(uuid.uuid4().hex)
        journaled = journaled_keys(journal, since)
        txns = {t for t, _, _ in journaled}
        in_log = ausearch_keys(txns)
        missing = reconciled(journal, since, MISSING)
        logged = reconciled(journal, since, LOGGED)
        heard: Set[Key] = set()
        for r in kensa_records(listener, marker, 1000, timeout=5):
            f = dict(parse_fields(r.body))
            if f.get("op") == "kensa_transaction" and r.pid == os.getpid():
                heard.add((f["txn"].strip('"'), f["phase"], int(f["seq"])))
        em.close()
        filler.close()
        assert len(journaled) == 1000 and len(txns) == 200
        assert logged == journaled & in_log
        assert missing == journaled - in_log
        assert logged <= heard and (journaled - heard) <= missing
        if missing:
            cli = subprocess.run(
                [sys.executable, "-m", "kensa", "--journal", journal.path.as_posix(), "audit", "reconcile", "--since", since.isoformat()],
                capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": SRC},
            )
            journal.close()
            assert cli.returncode == 1, cli.stderr
            for txn, phase, seq in missing:
                line = next(l for l in cli.stdout.splitlines() if l.startswith(txn))
                assert f"{phase} (seq {seq}," in line
            return
        journal.close()
    pytest.fail("auditd lost no record of the batch in two attempts: nothing to reconcile")


def test_read_log_parses_quoted_hex_and_enriched_lines(tmp_path: Path) -> None:
    """The log reader decodes quoted and hex txn values and ignores ENRICHED suffixes and other records."""
    log = tmp_path / "audit.log"
    log.write_text(
        "type=USER msg=audit(1795802681.320:10): pid=42 uid=0 auid=4294967295 ses=4294967295 "
        "msg='op=kensa_transaction phase=apply seq=3 txn=\"t-1\" rule=\"r\" host=\"h\" res=success'\x1dUID=\"root\"\n"
        "type=USER msg=audit(1795802681.330:11): pid=42 uid=0 auid=4294967295 ses=4294967295 "
        "msg='op=kensa_transaction phase=committed seq=4 txn=6120622062 rule=\"r\" host=\"h\" res=success'\n"
        "type=USER msg=audit(1795802681.340:12): pid=42 uid=0 msg='op=kensa_audit_gap seq=5 dropped=7 res=failed'\n"
        "type=SYSCALL msg=audit(1795802681.350:13): arch=c000003e syscall=59 success=yes\n"
    )
    got = list(read_log([log]))
    assert [(r.op, r.phase, r.seq, r.txn, r.pid, r.dropped) for r in got] == [
        ("kensa_transaction", "apply", 3, "t-1", 42, 0),
        ("kensa_transaction", "committed", 4, "a b b", 42, 0),
        ("kensa_audit_gap", "", 5, None, 42, 7),
    ]


def test_since_accepts_iso_and_ages_and_refuses_the_rest() -> None:
    """--since takes an ISO 8601 time or an age (30m, 2h, 1d); anything else is a clear error."""
    now = datetime(2026, 12, 1, 10, 0, 0)
    assert parse_since("30m", now) == datetime(2026, 12, 1, 9, 30, 0)
    assert parse_since("1d", now) == datetime(2026, 11, 30, 10, 0, 0)
    assert parse_since("2026-12-01T09:15") == datetime(2026, 12, 1, 9, 15)
    for bad in ("yesterday", "10 minutes", "-5m", ""):
        with pytest.raises(SinceError, match="--since"):
            parse_since(bad)


def test_cli_reconcile_bad_since_is_bad_input(tmp_path: Path) -> None:
    """A malformed --since exits 2 with a message naming it, and creates no journal."""
    out = subprocess.run(
        [sys.executable, "-m", "kensa", "--journal", str(tmp_path / "j.db"), "audit", "reconcile", "--since", "soon"],
        capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": SRC},
    )
    assert out.returncode == 2 and "--since 'soon'" in out.stderr
    assert not (tmp_path / "j.db").exists()


def test_engine_journals_the_sequence_numbers_the_kernel_logged(tmp_path: Path, listener: AuditListener) -> None:
    """Each journaled (phase, seq) of a transaction is the record the kernel logged for it."""
    em = real_emitter()
    marker = uuid.uuid4().hex
    with SqliteJournal(tmp_path / "j.db") as journal:
        run_batch(engine_for(em, journal), marker, 3)
        assert em.flush(10)
        entries = journal.audit_sequences_between()
    em.close()
    assert len(entries) == 3
    logged: List[Tuple[str, str, int]] = []
    for r in kensa_records(listener, marker, 15):
        f = dict(parse_fields(r.body))
        logged.append((f["txn"].strip('"'), f["phase"], int(f["seq"])))
    journaled = [(t, s.phase, s.seq) for t, items in entries.items() for s in items]
    assert sorted(journaled) == sorted(logged)  # type: ignore[type-var]
    assert [s.phase for s in next(iter(entries.values()))] == ["started", "capture", "apply", "validate", "committed"]


class _Journaled:
    """Journaled audit records held in memory: what reconcile needs of a journal, and nothing else."""

    def __init__(self, sequences: dict) -> None:
        self.sequences = sequences
        self.asked: List[object] = []

    def audit_sequences_between(self, since: object = None) -> dict:
        self.asked.append(since)
        return self.sequences


def test_reconcile_reads_the_records_from_what_its_caller_passes(tmp_path: Path) -> None:
    """reconcile takes the journaled records from any object with audit_sequences_between (no journal package), asked with the caller's since, and checks each against the log."""
    log = tmp_path / "audit.log"
    body = 'op=kensa_transaction phase={} txn="t1" rule="r" host="h" res=success seq={}'
    log.write_text(
        "".join(
            f"type=USER msg=audit(1700000000.{n:03d}:{n}): pid=4242 uid=0 auid=0 ses=1 msg='{body.format(phase, seq)}'\n"
            for n, (phase, seq) in enumerate([("started", 1), ("committed", 3)])
        )
    )
    at = datetime(2026, 12, 1, 9, 30)
    source = _Journaled(
        {"t1": [AuditSequence("t1", "started", 1, 4242, at), AuditSequence("t1", "apply", 2, 4242, at),
                AuditSequence("t1", "validate", None, 4242, at), AuditSequence("t1", "committed", 3, 4242, at)]}
    )
    since = datetime(2023, 1, 1)
    rec = reconcile(source, since, [log])
    assert source.asked == [since]
    (check,) = rec.transactions
    assert [(r.phase, r.state) for r in check.records] == [
        ("started", LOGGED), ("apply", MISSING), ("validate", NOT_SENT), ("committed", LOGGED)
    ]


def test_the_reconcile_module_does_not_load_the_journal() -> None:
    """Importing kensa.audit.reconcile loads no module of kensa.journal: the journal is its caller's business."""
    out = subprocess.run(
        [sys.executable, "-c", "import sys, kensa.audit.reconcile; print(sorted(m for m in sys.modules if m.startswith('kensa.journal')))"],
        capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": SRC},
    )
    assert out.stdout.strip() == "[]"
