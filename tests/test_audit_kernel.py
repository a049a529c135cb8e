"""Records against the real kernel: delivery, ausearch, auditd stalls, forks, refusals."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
import uuid

import pytest

from conftest import (
    AuditListener,
    auditd_stopped,
    decode_value,
    kensa_records,
    parse_fields,
    require_audit,
    require_auditd,
    require_root,
)
import kensa.audit.emitter as audit
from kensa.audit.emitter import AuditEmitter, format_phase_record

# Changes, floods or reads the kernel's audit state: one at a time (tests/conftest.py).
pytestmark = pytest.mark.serial

HOSTILE = [
    "x res=success",
    "a'b res=success",
    'say "hi" res=success',
    "line\nbreak res=success",
    "nul\0res=success",
    "\u00e9\u00e8 r\u00e8gle",
    "y" * 10_240,
]


def real_emitter(mode: str, **kw: int) -> AuditEmitter:
    """An emitter that must be real here (root, audit in the kernel)."""
    require_root()
    em = audit.open_emitter(mode, **kw)  # type: ignore[arg-type]
    if not isinstance(em, AuditEmitter):
        require_audit(f"emission is off: {audit.status()}")
    assert isinstance(em, AuditEmitter)
    return em


@pytest.mark.smoke
@pytest.mark.parametrize("mode", ["async", "sync"])
def test_record_reaches_the_kernel_byte_for_byte(listener: AuditListener, mode: str) -> None:
    """Each mode delivers exactly the formatted body, last character included, as type 1005."""
    em = real_emitter(mode)
    txn = str(uuid.uuid4())
    em.emit_phase(txn, "validate", False, "ssh-disable-root-login", "web01")
    em.transaction(txn, "ssh-disable-root-login", "web01").emit("committed", True)
    assert em.flush(5)
    got = kensa_records(listener, txn, 2)
    assert [r.type for r in got] == [1005, 1005]
    assert got[0].body == format_phase_record(txn, "validate", False, "ssh-disable-root-login", "web01", seq=1).decode()
    assert got[1].body.endswith(" res=success")
    assert got[1].body == format_phase_record(txn, "committed", True, "ssh-disable-root-login", "web01", seq=2).decode()
    assert got[0].pid == os.getpid()
    em.close()


def ausearch(*args: str) -> str:
    # -ts recent: the last ten minutes, so a long-lived log does not slow the search.
    return subprocess.run(["ausearch", "-m", "USER", "-ts", "recent", *args], capture_output=True, text=True).stdout


def test_ausearch_reads_the_outcome() -> None:
    """auditd's log: --success no finds the failed phase, --success yes the successful one."""
    require_auditd()
    em = real_emitter("sync")
    txn = str(uuid.uuid4())
    em.emit_phase(txn, "apply", False, "r1", "h1")
    em.emit_phase(txn, "committed", True, "r1", "h1")
    deadline = time.monotonic() + 60  # auditd writes the log asynchronously
    failed = succeeded = ""
    while time.monotonic() < deadline:
        failed = ausearch("--success", "no", "-i")
        succeeded = ausearch("--success", "yes", "-i")
        if txn in failed and txn in succeeded:
            break
        time.sleep(0.3)
    failed_lines = [line for line in failed.splitlines() if txn in line]
    succeeded_lines = [line for line in succeeded.splitlines() if txn in line]
    assert len(failed_lines) == 1 and "phase=apply" in failed_lines[0]
    assert len(succeeded_lines) == 1 and "phase=committed" in succeeded_lines[0]
    em.close()


def test_hostile_ids_never_forge_a_field(listener: AuditListener) -> None:
    """Hostile rule ids and hosts arrive with exactly seven fields (seq included) and decode back."""
    em = real_emitter("sync")
    marker = uuid.uuid4().hex
    for i, hostile in enumerate(HOSTILE):
        em.emit_phase(f"{marker}-{i}", "apply", False, hostile, hostile)
    got = kensa_records(listener, marker, len(HOSTILE))
    assert len(got) == len(HOSTILE)
    for record, hostile in zip(got, HOSTILE):
        fields = parse_fields(record.body)
        assert [k for k, _ in fields] == ["op", "phase", "seq", "txn", "rule", "host", "res"]
        assert fields[-1] == ("res", "failed")
        raw = hostile.encode()
        assert raw.startswith(decode_value(fields[4][1]))
        assert raw.startswith(decode_value(fields[5][1]))
    em.close()


def test_auditd_stopped_never_blocks_the_caller(listener: AuditListener) -> None:
    """With auditd SIGSTOPped, 20,000 async emits all return while the kernel holds the
    sender (a caller the kernel could block would sleep up to backlog_wait_time on a
    full backlog), and every record is accounted for. How fast each emit is belongs
    to benchmarks/emission.py, not here."""
    pid = require_auditd()
    em = real_emitter("async", capacity=256 << 10)
    rec = em.transaction(str(uuid.uuid4()), "stall-test", "localhost")
    with auditd_stopped(pid):
        for i in range(20_000):
            rec.emit("apply", i % 2 == 0)
        during = em.stats()
    assert em.flush(120), em.stats()
    after = em.stats()
    assert during.emitted == 20_000
    assert after.sent + after.dropped + after.failed == after.emitted == 20_000
    assert after.failed == 0 and after.queued == 0
    # The first record that gets through after drops is preceded by a gap record.
    rec.emit("committed", True)
    assert em.flush(30)
    if after.dropped:
        assert em.stats().gaps >= 1
    em.close()


def test_full_ring_drops_and_announces_the_gap(listener: AuditListener) -> None:
    """A burst larger than the ring drops records, counts them, and gap records say how many.

    auditd stays healthy here: with it stopped the kernel drops records itself
    (gap records included), which no sender can see.
    """
    require_auditd()
    for _attempt in range(3):
        lost_before = kernel_lost()
        em = real_emitter("async", capacity=2048)
        rec = em.transaction(uuid.uuid4().hex, "gap-test", "localhost")
        for _ in range(2_000):
            rec.emit("apply", True)
        assert em.flush(120)
        rec.emit("committed", True)
        assert em.flush(30)
        em.close()
        s = em.stats()
        assert s.dropped > 0 and s.gaps > 0 and s.sent + s.dropped == s.emitted
        mine = f"pid={os.getpid()} "
        gaps = listener.wait_for(lambda r: "op=kensa_audit_gap" in r.text and mine in r.text, s.gaps)
        listener.forget()
        if kernel_lost() != lost_before:
            continue  # the kernel dropped records itself (its backlog was full): try again
        assert len(gaps) == s.gaps
        assert sum(int(dict(parse_fields(g.body))["dropped"]) for g in gaps) == s.dropped
        return
    pytest.fail("the kernel kept losing records (backlog full) in three attempts")


def kernel_lost() -> int:
    """The kernel's count of audit records it dropped itself."""
    out = subprocess.run(["auditctl", "-s"], capture_output=True, text=True, check=True).stdout
    return int(next(line.split()[1] for line in out.splitlines() if line.startswith("lost ")))


def test_forked_children_emit_their_own_records(listener: AuditListener) -> None:
    """Four forked children each emit 100 records that all arrive with their pids; the parent goes on."""
    em = real_emitter("async")
    marker = uuid.uuid4().hex
    em.emit_phase(f"{marker}-parent-before", "started", True)
    children = []
    for c in range(4):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                for n in range(100):
                    em.emit_phase(f"{marker}-child{c}-{n}", "apply", True)
                code = 0 if em.flush(10) and em.stats().sent == 100 else 2
            finally:
                os._exit(code)
        children.append(pid)
    statuses = [os.waitpid(pid, 0)[1] for pid in children]
    em.emit_phase(f"{marker}-parent-after", "committed", True)
    assert em.flush(10)
    assert statuses == [0, 0, 0, 0]
    got = kensa_records(listener, marker, 402, timeout=20)
    by_child = {c: [r for r in got if f"{marker}-child{c}-" in r.body] for c in range(4)}
    for c, pid in enumerate(children):
        assert len(by_child[c]) == 100
        assert {r.pid for r in by_child[c]} == {pid}
    parent = [r for r in got if "-parent-" in r.body]
    assert len(parent) == 2 and {r.pid for r in parent} == {os.getpid()}
    assert em.stats().sent == 2
    em.close()


PROBE = """
import json, sys
import kensa.audit.emitter as a
from kensa import _audit
em = a.open_emitter()
em.emit_phase("t", "started", True, "r", "h")
st = a.status()
# Bypass the up-front probe to exercise the kernel's refusal path too.
reason, err = _audit.ffi.new("int *"), _audit.ffi.new("int *")
k = _audit.lib.kensa_emitter_new(_audit.lib.KENSA_MODE_SYNC, 1005, 4096, reason, err)
raw = a.AuditEmitter(k, _audit.lib, _audit.ffi, "sync", 1005)
for _ in range(3):
    raw.emit_phase("t", "started", True, "r", "h")
s = raw.stats()
print(json.dumps({"emitter": type(em).__name__, "status": st.reason, "enabled": st.enabled,
                  "raw_reason": s.reason, "raw_sent": s.sent, "raw_failed": s.failed, "raw_dropped": s.dropped}))
"""


def run_probe(prefix: list) -> dict:
    import json

    out = subprocess.run([*prefix, sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_without_cap_audit_write_emission_is_off() -> None:
    """Without CAP_AUDIT_WRITE: a no-op emitter with the reason, and a raw emitter switched off by EPERM."""
    require_root()
    if shutil.which("setpriv") is None:
        require_audit("setpriv is not installed")
    res = run_probe(["setpriv", "--bounding-set=-audit_write", "--inh-caps=-audit_write"])
    assert res["emitter"] == "NoopEmitter" and res["status"] == "no_capability" and not res["enabled"]
    assert res["raw_reason"] == "refused_eperm"
    assert res["raw_sent"] == 0 and res["raw_failed"] >= 1 and res["raw_failed"] + res["raw_dropped"] == 3


def test_in_a_user_namespace_emission_is_off() -> None:
    """Inside unshare -U -r: a no-op emitter naming the namespace; the kernel's ECONNREFUSED switches a raw one off."""
    if shutil.which("unshare") is None:
        require_audit("unshare is not installed")
    probe = subprocess.run(["unshare", "-U", "-r", "true"], capture_output=True)
    if probe.returncode != 0:
        require_audit(f"user namespaces unavailable: {probe.stderr.decode().strip()}")
    res = run_probe(["unshare", "-U", "-r"])
    assert res["emitter"] == "NoopEmitter" and res["status"] == "user_namespace"
    assert res["raw_reason"] == "refused_econnrefused"
    assert res["raw_sent"] == 0 and res["raw_failed"] + res["raw_dropped"] == 3


def test_close_while_the_sender_is_stuck_is_bounded() -> None:
    """close() returns while the sender sits in the kernel with auditd stopped (it does not
    wait for the kernel to let the sender go)."""
    pid = require_auditd()
    em = real_emitter("async", capacity=64 << 10)
    rec = em.transaction("close-test", "r", "h")
    with auditd_stopped(pid):
        for _ in range(3_000):
            rec.emit("apply", True)
        closing = threading.Thread(target=em.close, args=(0.2,), daemon=True)
        closing.start()
        # A liveness guard, not a speed check: a close that waits on the kernel never returns here.
        closing.join(60)
        returned = not closing.is_alive()
    assert returned, "close() did not return while the sender was held by the kernel"
    rec.emit("apply", True)  # after close: counted as dropped, no error
    assert em.stats().reason == "closed"


def test_emission_is_best_effort_at_exit() -> None:
    """Records queued when the interpreter exits normally are flushed (bounded)."""
    require_root()
    marker = uuid.uuid4().hex
    lst = AuditListener(lossless=True)
    try:
        code = f"import kensa.audit as a\ne = a.open_emitter()\nfor i in range(50): e.emit_phase('{marker}', 'apply', True)\n"
        subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
        got = kensa_records(lst, marker, 50)
    finally:
        lst.close()
    assert len(got) == 50
