"""Audit truth against the real kernel: what status() says, nothing lost at exit, close() stops.

Some tests here turn kernel audit off (``auditctl -e 0``), stop auditd or
SIGSTOP it: each keeps the window short and restores the machine in a
``finally``.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator

import pytest

from conftest import (
    AuditListener,
    auditd_stopped,
    kernel_backlog_wait,
    kensa_records,
    parse_fields,
    require_audit,
    require_auditd,
    require_root,
)
import kensa
import kensa.audit.emitter as audit
from kensa.errors import AuditArgumentError, KensaError
from kensa.audit.emitter import AuditEmitter
from test_audit_kernel import real_emitter

# Changes, floods or reads the kernel's audit state: one at a time (tests/conftest.py).
pytestmark = pytest.mark.serial

SRC = str(Path(kensa.__file__).resolve().parent.parent)


def auditctl_status() -> Dict[str, str]:
    """``auditctl -s`` as a dict: an oracle independent of kensa's AUDIT_GET."""
    if shutil.which("auditctl") is None:
        require_audit("auditctl is not installed")
    out = subprocess.run(["auditctl", "-s"], capture_output=True, text=True, check=True).stdout
    return {k: v.split()[0] for k, _, v in (line.partition(" ") for line in out.splitlines()) if v}


@contextmanager
def kernel_audit_disabled() -> Iterator[None]:
    """Kernel audit off (``auditctl -e 0``) for the duration; always restored."""
    require_root()
    before = auditctl_status()["enabled"]
    if before == "2":
        require_audit("kernel audit is locked (enabled 2): cannot switch it off to test")
    subprocess.run(["auditctl", "-e", "0"], check=True, capture_output=True)
    try:
        yield
    finally:
        subprocess.run(["auditctl", "-e", before], check=True, capture_output=True)


def wait_for(predicate: "object", timeout: float = 30.0) -> bool:
    """Poll predicate until it holds or timeout seconds passed; whether it held."""
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def live_auditd() -> bool:
    """Whether an auditd process runs (zombies, which no init may reap here, do not count)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)
            comm = fields[0].split("(", 1)[1]
        except (OSError, IndexError):
            continue
        if comm == "auditd" and fields[1].split()[0] != "Z":
            return True
    return False


@contextmanager
def auditd_terminated() -> Iterator[None]:
    """auditd stopped for real (SIGTERM: it unregisters), then started again; always restarted."""
    pid = require_auditd()
    os.kill(pid, signal.SIGTERM)
    try:
        assert wait_for(lambda: audit.kernel_status().pid == 0), "auditd did not unregister from the kernel"
        yield
    finally:
        wait_for(lambda: not live_auditd())
        if not live_auditd():
            subprocess.run(["auditd"], check=True)
        assert wait_for(lambda: audit.kernel_status().pid != 0), "auditd did not come back"
        # Others find auditd with pgrep, which also lists the old one until it is reaped.
        wait_for(lambda: subprocess.run(["pgrep", "-x", "auditd"], capture_output=True, text=True).stdout.split()
                 == [str(audit.kernel_status().pid)])


def sentinel(listener: AuditListener) -> None:
    """Send one record from a fresh emitter and wait for it: what was queued before has been logged."""
    mark = uuid.uuid4().hex
    em = real_emitter("sync")
    em.emit_phase(mark, "started", True)
    em.close()
    assert kensa_records(listener, mark, 1, timeout=60), "sentinel record never arrived"


# --- status() asks the kernel ---------------------------------------------------------


def test_status_is_off_and_records_are_discarded_while_kernel_audit_is_disabled(listener: AuditListener) -> None:
    """With ``auditctl -e 0``: status() is off and says what to do; an emitter counts its records as discarded."""
    em_marker = uuid.uuid4().hex
    with kernel_audit_disabled():
        st = audit.status()
        em = real_emitter("async")
        for _ in range(20):
            em.emit_phase(em_marker, "apply", True)
        assert em.flush(10)
        s = em.stats()
        em.close()
    assert st.state == "off" and not st.enabled and st.writable
    assert st.reason == "kernel_disabled" and "auditctl -e 1" in st.detail
    assert st.kernel is not None and st.kernel.enabled == 0
    assert s.discarded == 20 and s.sent == 0 and s.dropped == 20
    assert s.emitted == s.sent + s.dropped + s.failed
    sentinel(listener)
    assert listener.matching(lambda r: em_marker in r.text) == []
    assert audit.status().state == "on"


@pytest.mark.parametrize("mode", ["async", "sync"])
def test_a_running_emitter_follows_kernel_audit_off_and_on(listener: AuditListener, mode: str) -> None:
    """An emitter counts records as discarded while auditctl -e 0 holds, and sends again after it is undone."""
    em = real_emitter(mode)
    marker = uuid.uuid4().hex
    # Sleeps outlast the sender's re-read interval (KENSA_RECHECK_NS, 100 ms).
    for _ in range(10):
        em.emit_phase(marker, "apply", True)
    assert em.flush(10)
    with kernel_audit_disabled():
        time.sleep(0.3)
        for _ in range(30):
            em.emit_phase(marker, "apply", True)
        assert em.flush(10)
        off = em.stats()
    time.sleep(0.3)
    for _ in range(5):
        em.emit_phase(marker, "apply", True)
    assert em.flush(10)
    on = em.stats()
    em.close()
    sentinel(listener)
    assert (off.sent, off.discarded, off.kernel_enabled) == (10, 30, 0)
    assert (on.sent, on.discarded, on.kernel_enabled) == (15, 30, 1)
    assert on.emitted == on.sent + on.dropped + on.failed == 45
    assert len(listener.matching(lambda r: marker in r.text)) == 15


def test_status_names_no_audit_daemon_when_auditd_is_stopped() -> None:
    """With auditd stopped (pid 0 in the kernel): status() is on but says no audit daemon receives records."""
    with auditd_terminated():
        st = audit.status()
    assert st.reason == "no_audit_daemon" and st.state == "on"
    assert "no audit daemon" in st.detail and "kernel log" in st.detail
    assert st.kernel is not None and st.kernel.pid == 0


def test_status_is_on_with_auditd_running() -> None:
    """With auditd running: status() is on, and the kernel's figures match auditctl -s."""
    pid = require_auditd()
    st = audit.status()
    assert st.state == "on" and st.enabled and st.reason in ("on", "locked")
    assert st.kernel is not None and st.kernel.pid == pid
    oracle = auditctl_status()
    assert str(st.kernel.enabled) == oracle["enabled"] and str(st.kernel.backlog_limit) == oracle["backlog_limit"]


def test_status_without_cap_audit_control_is_unknown() -> None:
    """Without CAP_AUDIT_CONTROL the kernel cannot be asked: status() says unknown, and records are still sent."""
    require_root()
    if shutil.which("setpriv") is None:
        require_audit("setpriv is not installed")
    code = (
        "import json, kensa.audit as a\n"
        "s = a.status()\n"
        "em = a.open_emitter()\n"
        "for _ in range(5): em.emit_phase('no-control', 'apply', True)\n"
        "em.flush(10)\n"
        "e = em.stats()\n"
        "print(json.dumps([s.state, s.reason, s.writable, s.detail, e.sent, e.reason, e.kernel_enabled]))\n"
    )
    out = subprocess.run(
        ["setpriv", "--bounding-set=-audit_control", "--inh-caps=-audit_control", sys.executable, "-c", code],
        capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": SRC},
    )
    assert out.returncode == 0, out.stderr
    state, reason, writable, detail, sent, emitter_reason, kernel_enabled = json.loads(out.stdout)
    assert (state, reason, writable) == ("unknown", "kernel_state_unknown", True)
    assert "CAP_AUDIT_CONTROL" in detail
    # The kernel's refusal of AUDIT_GET is not a refusal of the records.
    assert (sent, emitter_reason, kernel_enabled) == (5, "on", -1)


def test_cli_audit_status_json_carries_the_kernel_figures_without_auditctl(tmp_path: Path) -> None:
    """`kensa audit status --json` reports the kernel's own figures with no auditctl on PATH."""
    require_auditd()
    empty = tmp_path / "bin"
    empty.mkdir()
    out = subprocess.run(
        [sys.executable, "-m", "kensa", "audit", "status", "--json"],
        capture_output=True, text=True, timeout=60, env={**os.environ, "PATH": str(empty), "PYTHONPATH": SRC},
    )
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    oracle = auditctl_status()
    kernel = doc["kernel"]
    assert set(kernel) >= {"enabled", "failure", "pid", "rate_limit", "backlog_limit", "lost", "backlog", "backlog_wait_time"}
    for key in ("enabled", "failure", "pid", "backlog_limit", "rate_limit", "backlog_wait_time"):
        assert str(kernel[key]) == oracle[key], key
    assert doc["state"] == "on"


# --- nothing lost at exit, nothing hanging --------------------------------------------

OUT_OF_SCOPE = """
import gc, sys
import kensa.audit.emitter as a
def batch():
    em = a.open_emitter()
    rec = em.transaction(sys.argv[1], "exit-test", "localhost")
    for _ in range(6000):
        rec.emit("apply", True)
batch()
gc.collect()
"""


def test_records_of_an_emitter_gone_out_of_scope_all_reach_the_kernel(listener: AuditListener) -> None:
    """6,000 records of a function-local emitter, collected before exit, all reach the kernel."""
    require_root()
    marker = uuid.uuid4().hex
    proc = subprocess.run(
        [sys.executable, "-c", OUT_OF_SCOPE, marker], capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": SRC},
    )
    assert proc.returncode == 0, proc.stderr
    got = kensa_records(listener, marker, 6000, timeout=60)
    assert len(got) == 6000
    assert "abandoned" not in proc.stderr


HELD_AT_EXIT = """
import sys, time
import kensa.audit.emitter as a
em = a.open_emitter(capacity=16 << 20)
rec = em.transaction(sys.argv[1], "exit-held", "localhost")
for _ in range(500):
    for _ in range(500):
        rec.emit("apply", True)
    k = a.kernel_status()
    if k.backlog_limit and k.backlog >= k.backlog_limit:
        break
    time.sleep(0.01)
else:
    sys.exit(3)
for _ in range(2000):
    rec.emit("apply", True)
"""


def test_records_abandoned_at_exit_are_reported_on_stderr() -> None:
    """With auditd SIGSTOPped, exit gives up at its deadline and says on stderr how many records it abandoned."""
    pid = require_auditd()
    # The process's exit waits for its sender, which the kernel holds for backlog_wait_time.
    with kernel_backlog_wait(100), auditd_stopped(pid):
        proc = subprocess.run(
            [sys.executable, "-c", HELD_AT_EXIT, uuid.uuid4().hex], capture_output=True, text=True, timeout=120,
            env={**os.environ, "PYTHONPATH": SRC},
        )
    assert proc.returncode == 0, proc.stderr
    line = next(line for line in proc.stderr.splitlines() if "abandoned at exit" in line)
    assert int(line.split("kensa: ", 1)[1].split()[0]) > 0


DRAIN_COUNT = """
import kensa.audit.emitter as a
em = a.open_emitter()
rec = em.transaction("drain-count", "r", "h")
for _ in range(5000):
    rec.emit("apply", True)
assert em.flush(60)
"""


def test_replies_are_drained_once_per_batch_not_per_record(tmp_path: Path) -> None:
    """strace of a 5,000-record burst: far fewer recvfrom calls than record sends."""
    require_auditd()
    if shutil.which("strace") is None:
        require_audit("strace is not installed")
    trace = tmp_path / "trace"
    proc = subprocess.run(
        ["strace", "-f", "-qq", "-s", "200", "-e", "trace=sendto,recvfrom", "-o", str(trace), sys.executable, "-c", DRAIN_COUNT],
        capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": SRC},
    )
    assert proc.returncode == 0, proc.stderr
    calls = trace.read_text().splitlines()
    sends = [c for c in calls if "sendto(" in c and "nlmsg_type=AUDIT_USER" in c]
    recvs = [c for c in calls if "recvfrom(" in c]
    assert len(sends) == 5000
    assert len(recvs) * 4 < len(sends), f"{len(recvs)} recvfrom for {len(sends)} sends"


def test_close_then_emit_sends_nothing(listener: AuditListener) -> None:
    """After close(), emitted records are counted as dropped and none reaches the kernel."""
    em = real_emitter("async")
    marker = uuid.uuid4().hex
    assert em.close(5)
    for _ in range(100):
        em.emit_phase(marker, "apply", True)
    s = em.stats()
    sentinel(listener)
    assert s.reason == "closed" and s.dropped == 100 and s.sent == 0
    assert listener.matching(lambda r: marker in r.text) == []


def fill_until_the_kernel_holds_the_sender(em: AuditEmitter, marker: str) -> None:
    """With auditd stopped: emit until the kernel's queue is over its backlog limit, then a little more.

    From then on the kernel holds every send (backlog_wait_time), so the
    sender sits in sendto with records left in the ring.
    """
    rec = em.transaction(marker, "hold-test", "localhost")
    for _ in range(500):
        for _ in range(500):
            rec.emit("apply", True)
        kernel = audit.kernel_status()
        if kernel.backlog_limit and kernel.backlog >= kernel.backlog_limit:
            for _ in range(2000):
                rec.emit("apply", True)
            return
        time.sleep(0.01)
    pytest.fail("the kernel's audit backlog never filled with auditd stopped")


def test_close_stops_a_sender_the_kernel_holds(listener: AuditListener) -> None:
    """close() with auditd SIGSTOPped: what was still queued is abandoned, not sent later by a detached sender."""
    pid = require_auditd()
    em = real_emitter("async", capacity=16 << 20)
    marker = uuid.uuid4().hex
    with auditd_stopped(pid):
        fill_until_the_kernel_holds_the_sender(em, marker)
        before = em.stats()
        em.close(0.1)
        at_close = em.stats()
    # Let a send the kernel held finish, then wait until the kernel logged it and
    # the sender accounted for the rest of what it held.
    sentinel(listener)
    for _ in range(600):
        if em.stats().queued == 0:
            break
        time.sleep(0.05)
    after = em.stats()
    got = listener.matching(lambda r: marker in r.text)
    assert before.queued > 0, "nothing was queued at close(): the sender was not held"
    # The sender books a batch when it finishes it, so sends made before close()
    # may be counted after it; what must hold is that the queue was abandoned
    # (dropped, not sent later) and every record is accounted for.
    assert after.queued == 0, after
    assert after.dropped > before.dropped, "records queued at close() were not abandoned"
    assert after.sent + after.dropped + after.failed == after.emitted == at_close.emitted
    assert len(got) <= after.sent


def test_flush_returns_by_its_timeout_while_auditd_is_stopped() -> None:
    """flush() gives up at its timeout, with records still queued, when auditd hangs; once
    auditd resumes (and the kernel's wait for its backlog ends) they all drain."""
    pid = require_auditd()
    em = real_emitter("async", capacity=16 << 20)
    with kernel_backlog_wait(100):
        with auditd_stopped(pid):
            fill_until_the_kernel_holds_the_sender(em, uuid.uuid4().hex)
            drained = em.flush(0.3)
            queued = em.stats().queued
        assert em.flush(120)
    em.close()
    assert not drained and queued > 0


def test_flush_has_a_finite_default_and_a_huge_timeout_cannot_overflow() -> None:
    """flush()'s default timeout is finite; 1e300 s is clamped, not an overflow; bad timeouts are refused."""
    default = inspect.signature(AuditEmitter.flush).parameters["timeout"].default
    assert isinstance(default, float) and 0 < default < 3600
    em = real_emitter("async")
    em.emit_phase("overflow-test", "apply", True)
    assert em.flush(1e300) is True
    assert em.close(1e300) is True
    for bad in (-1, float("nan"), "1", True):
        with pytest.raises(AuditArgumentError) as exc:
            em.flush(bad)  # type: ignore[arg-type]
        assert isinstance(exc.value, KensaError) and isinstance(exc.value, ValueError)
        assert "timeout" in str(exc.value)


def test_smallest_ring_carries_the_largest_record(listener: AuditListener) -> None:
    """An emitter asked for a 1-byte ring still sends a record of the longest allowed body."""
    em = real_emitter("async", capacity=1)
    marker = uuid.uuid4().hex
    em.emit_phase(marker, "apply", True, "r" * 20_000, "h")
    assert em.flush(10)
    s = em.stats()
    em.close()
    got = kensa_records(listener, marker, 1)
    assert s.sent == 1 and s.dropped == 0
    assert len(got) == 1 and len(got[0].body) > audit.MAX_BODY - 64


# --- gap-evident records --------------------------------------------------------------


def test_sequence_numbers_count_every_record_and_gap_records_carry_one(listener: AuditListener) -> None:
    """Records of one emitter carry seq 1..N without a hole, gap records included, and gaps sum the drops."""
    require_auditd()
    for _attempt in range(3):
        lost_before = audit.kernel_status().lost
        em = real_emitter("async", capacity=1)
        marker = uuid.uuid4().hex
        rec = em.transaction(marker, "seq-test", "localhost")
        for _ in range(2000):
            rec.emit("apply", True)
        assert em.flush(60)
        rec.emit("committed", True)
        assert em.flush(30)
        s = em.stats()
        em.close()
        mine = f"pid={os.getpid()} "
        expected = s.sent + s.gaps
        got = listener.wait_for(
            lambda r: mine in r.text and (marker in r.text or "op=kensa_audit_gap" in r.text) and "seq=" in r.text,
            expected,
        )
        listener.forget()
        if audit.kernel_status().lost != lost_before:
            continue  # the kernel dropped records itself: try again
        seqs = [int(dict(parse_fields(r.body))["seq"]) for r in got]
        gaps = [dict(parse_fields(r.body)) for r in got if "op=kensa_audit_gap" in r.body]
        assert s.dropped > 0 and s.gaps > 0
        assert sorted(seqs) == list(range(1, s.seq + 1)) and s.seq == expected
        assert len(gaps) == s.gaps and sum(int(g["dropped"]) for g in gaps) == s.dropped
        return
    pytest.fail("the kernel kept losing records in three attempts")


def test_ausearch_and_aureport_read_every_record_with_its_seq() -> None:
    """ausearch -i keeps seq=N as sent, and aureport lists every one of the records' events."""
    require_auditd()
    if shutil.which("aureport") is None:
        require_audit("aureport is not installed")
    em = real_emitter("sync")
    txn = uuid.uuid4().hex
    seqs = [em.emit_phase(txn, phase, ok, "r1", "h1") for phase, ok in (("started", True), ("apply", False), ("rolled_back", True))]
    em.close()
    deadline = time.monotonic() + 60
    lines = []
    while time.monotonic() < deadline:
        out = subprocess.run(["ausearch", "-m", "USER", "-ts", "recent", "-i"], capture_output=True, text=True).stdout
        lines = [line for line in out.splitlines() if txn in line]
        if len(lines) == 3:
            break
        time.sleep(0.3)
    assert len(lines) == 3
    for line, seq in zip(lines, seqs):
        assert f" seq={seq} " in line
    raw = subprocess.run(["ausearch", "-m", "USER", "-ts", "recent"], capture_output=True, text=True).stdout
    serials = [line.split(":", 2)[1].split(")")[0] for line in raw.splitlines() if txn in line]
    report = subprocess.run(["aureport", "-ts", "recent", "-e"], capture_output=True, text=True).stdout
    listed = {fields[3] for fields in (line.split() for line in report.splitlines()) if len(fields) > 4}
    assert len(serials) == 3 and set(serials) <= listed, (serials, report[-2000:])


def test_demo_says_why_no_record_was_logged_without_cap_audit_write() -> None:
    """Without CAP_AUDIT_WRITE the demo names the missing capability and says to run as root."""
    require_root()
    if shutil.which("setpriv") is None:
        require_audit("setpriv is not installed")
    out = subprocess.run(
        ["setpriv", "--bounding-set=-audit_write", "--inh-caps=-audit_write", sys.executable, "-m", "kensa", "demo"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": SRC},
    )
    line = next(line for line in out.stdout.splitlines() if line.startswith("audit records"))
    assert "none" in line and "CAP_AUDIT_WRITE" in line and "run the demo as root" in line


def test_demo_says_why_no_record_was_logged_with_kernel_audit_disabled() -> None:
    """With kernel audit disabled the demo says the kernel discards records and to start auditd or auditctl -e 1."""
    with kernel_audit_disabled():
        out = subprocess.run(
            [sys.executable, "-m", "kensa", "demo"], capture_output=True, text=True, timeout=120,
            env={**os.environ, "PYTHONPATH": SRC},
        )
    line = next(line for line in out.stdout.splitlines() if line.startswith("audit records"))
    assert "none" in line and "enabled 0" in line and "auditctl -e 1" in line


def test_demo_says_why_no_record_was_logged_without_the_extension(tmp_path: Path) -> None:
    """Without the compiled extension the demo says so and how to get it."""
    blocker = tmp_path / "sitecustomize.py"
    blocker.write_text(
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'kensa._audit':\n"
        "            raise ImportError('blocked for the test')\n"
        "sys.meta_path.insert(0, Block())\n"
    )
    out = subprocess.run(
        [sys.executable, "-m", "kensa", "demo"], capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{SRC}"},
    )
    line = next(line for line in out.stdout.splitlines() if line.startswith("audit records"))
    assert "none" in line and "kensa._audit" in line and "reinstall kensa" in line

