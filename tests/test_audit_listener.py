"""kensa.audit.listener against the real kernel: filters, losses that are never silent, closing."""

from __future__ import annotations

import errno
import subprocess
import sys
import time
import uuid
from typing import Iterator

import pytest

from conftest import require_audit, require_root
import kensa.audit.emitter as audit
from kensa.audit.compiled import constant
from kensa.audit.emitter import AuditEmitter
from kensa.audit.listener import AuditListener, KernelRecord
from kensa.errors import AuditListenerError


def sync_emitter(msg_type: int = audit.AUDIT_USER) -> AuditEmitter:
    """A real sync emitter (root, audit in the kernel)."""
    require_root()
    em = audit.open_emitter("sync", msg_type=msg_type)
    if not isinstance(em, AuditEmitter):
        require_audit(f"emission is off: {audit.status()}")
    assert isinstance(em, AuditEmitter)
    return em


def listening(**options: object) -> AuditListener:
    require_root()
    try:
        return AuditListener(**options)  # type: ignore[arg-type]
    except OSError as exc:
        require_audit(f"cannot listen to the kernel audit log: {exc}")
        raise


# In the serial group with the other kernel-audit tests: some of those stop auditd or fill the
# kernel's backlog, and a record sent meanwhile from the other worker would be lost.
pytestmark = pytest.mark.serial


@pytest.fixture
def marker() -> Iterator[str]:
    yield uuid.uuid4().hex


def test_records_are_kept_by_type_and_content(marker: str) -> None:
    """Only records of the listed types that contain the given bytes are kept, each with its body and pid."""
    other = constant("AUDIT_FIRST_USER_MSG")
    ours = listening(types={audit.AUDIT_USER}, containing=marker.encode())
    everything = listening()
    try:
        sync_emitter().emit_phase(marker, "apply", True, "listener-rule", "localhost")
        sync_emitter().emit_phase("not-this-one", "apply", True, "listener-rule", "localhost")
        sentinel = sync_emitter(other).emit_phase(marker, "committed", True, "listener-rule", "localhost")
        assert sentinel is not None
        # The sentinel, sent last, reached the unfiltered listener: everything before it did too.
        assert everything.wait_for(lambda r: marker in r.text and r.type == other, 1)
        got = ours.matching(lambda r: True)
    finally:
        ours.close()
        everything.close()
    assert len(got) == 1 and isinstance(got[0], KernelRecord)
    assert got[0].type == audit.AUDIT_USER
    assert got[0].body == audit.format_phase_record(marker, "apply", True, "listener-rule", "localhost", seq=1).decode()
    assert got[0].pid > 0


@pytest.mark.parametrize("lossless", [False, True], ids=["counting", "lossless"])
def test_an_overflowing_listener_never_answers_short_silently(marker: str, lossless: bool) -> None:
    """When the receive buffer overflows (ENOBUFS) the loss is counted with its error; a lossless listener raises instead of answering short."""
    lst = listening(receive_buffer=64 << 10, lossless=lossless, containing=marker.encode())
    em = sync_emitter()
    sent = 0

    def burst(_record: KernelRecord) -> bool:
        # A predicate runs under the listener's lock: while it runs the receiving
        # thread cannot store what it read, so the socket's small buffer fills.
        nonlocal sent
        if not sent:
            for _ in range(2000):
                sent += em.emit_phase(marker, "apply", True) is not None
            deadline = time.monotonic() + 10
            while audit.kernel_status().backlog and time.monotonic() < deadline:
                time.sleep(0.01)  # until the kernel has multicast the whole burst
        return True

    try:
        em.emit_phase(marker, "started", True)
        assert lst.wait_for(lambda r: True, 1)
        lst.matching(burst)
        assert sent == 2000
        deadline = time.monotonic() + 10
        while not lst.overruns and time.monotonic() < deadline:
            time.sleep(0.01)
        if lossless:
            with pytest.raises(AuditListenerError, match="lost records") as raised:
                lst.matching(lambda r: True)
            assert raised.value.errno == errno.ENOBUFS
    finally:
        lst.close()
    assert lst.overruns >= 1 and "ENOBUFS" in lst.last_error
    if not lossless:
        assert len(lst.matching(lambda r: True)) < 1 + sent


def test_closing_stops_receiving_and_keeps_what_was_collected(marker: str) -> None:
    """After close() nothing more is collected, what was collected stays readable, and forget() drops it."""
    lst = listening(containing=marker.encode())
    em = sync_emitter()
    em.emit_phase(marker, "apply", True)
    assert len(lst.wait_for(lambda r: True, 1)) == 1
    lst.close()
    em.emit_phase(marker, "committed", True)
    watcher = listening(containing=marker.encode())
    try:
        em.emit_phase(marker, "validate", True)
        assert watcher.wait_for(lambda r: "phase=validate" in r.text, 1)
    finally:
        watcher.close()
    assert [r.body.split()[1] for r in lst.matching(lambda r: True)] == ["phase=apply"]
    lst.forget()
    assert lst.matching(lambda r: True) == []


def test_without_the_right_to_listen_open_says_none() -> None:
    """AuditListener.open returns None, and the constructor raises AuditListenerError, where listening is refused (no CAP_AUDIT_READ)."""
    code = (
        "from kensa.audit.listener import AuditListener\n"
        "from kensa.errors import AuditListenerError\n"
        "assert AuditListener.open() is None\n"
        "try:\n    AuditListener()\nexcept AuditListenerError as e:\n    print('refused', e.errno)\n"
    )
    require_root()
    proc = subprocess.run(["setpriv", "--inh-caps=-all", "--bounding-set=-audit_read", sys.executable, "-c", code],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("refused ")
