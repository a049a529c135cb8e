"""The conditions a benchmark runs under: auditd healthy or stopped, a busy core.

Stopping auditd with SIGSTOP reproduces a hung audit daemon: the kernel's queue
fills and ``sendto`` on an audit socket sleeps. Every stop is undone in a
``finally`` (the runner turns SIGTERM and SIGHUP into KeyboardInterrupt so that
holds for them too), and afterwards the kernel backlog is given time to drain
so the next measurement starts from a healthy daemon.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from typing import Dict, Iterator, Optional


def is_root() -> bool:
    return os.geteuid() == 0


def audit_write_refusal() -> str:
    """Why this process cannot write audit records, or "" when it can.

    kensa's own probe (CAP_AUDIT_WRITE, user namespace, kernel audit) gates
    the peers too: a peer's ``sendto`` succeeds even when the kernel refuses
    the record, so its timing alone would not show the refusal.
    """
    import kensa.audit.emitter

    status = kensa.audit.status()
    if status.writable or status.reason in ("no_extension", "disabled"):
        # Without kensa's extension (or with it turned off) the peers can
        # still run; a refusal then shows when the peer is set up.
        return "" if is_root() else "needs root (CAP_AUDIT_WRITE) to write audit records"
    return status.detail


def audit_status() -> Dict[str, int]:
    """``auditctl -s`` as numbers (pid, backlog, lost, backlog_limit...), or {}."""
    if shutil.which("auditctl") is None or not is_root():
        return {}
    try:
        out = subprocess.run(["auditctl", "-s"], capture_output=True, text=True, timeout=5, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    status: Dict[str, int] = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1].isdigit():
            status[parts[0]] = int(parts[1])
    return status


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm", encoding="ascii", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return ""


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


def auditd_pid() -> Optional[int]:
    """The pid of the auditd the kernel talks to, or None when there is none."""
    pid = audit_status().get("pid", 0)
    if pid > 0 and _comm(pid) == "auditd":
        return pid
    return None


def kernel_lost() -> Optional[int]:
    """The kernel's count of audit records it dropped (``auditctl -s`` lost)."""
    return audit_status().get("lost")


def wait_backlog_drained(timeout_s: float = 10.0) -> bool:
    """Wait until the kernel's audit backlog is (nearly) empty."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if audit_status().get("backlog", 0) <= 1:
            return True
        time.sleep(0.05)
    return False


# A separate process resumes auditd when this one dies without its finally
# (SIGKILL, a crash) or keeps it stopped too long: the machine's audit trail
# must never stay hung because a benchmark did.
_WATCHDOG = """
import os, select, signal, sys
pid, limit = int(sys.argv[1]), float(sys.argv[2])
select.select([sys.stdin], [], [], limit)
os.kill(pid, signal.SIGCONT)
"""
MAX_STOP_SECONDS = 180.0


@contextlib.contextmanager
def auditd_stopped(pid: int) -> Iterator[None]:
    """auditd stopped by SIGSTOP for the duration of the block; always resumed."""
    watchdog = subprocess.Popen(
        [sys.executable, "-c", _WATCHDOG, str(pid), str(MAX_STOP_SECONDS)], stdin=subprocess.PIPE
    )
    try:
        os.kill(pid, signal.SIGSTOP)
        deadline = time.monotonic() + 2.0
        while _state(pid) != "T" and time.monotonic() < deadline:
            time.sleep(0.005)
        if _state(pid) != "T":
            raise RuntimeError(f"auditd (pid {pid}) did not stop after SIGSTOP; its state is {_state(pid)!r}")
        yield
    finally:
        # No KeyboardInterrupt between here and the SIGCONT.
        held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM, signal.SIGHUP})
        try:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGCONT)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)
        assert watchdog.stdin is not None
        watchdog.stdin.close()
        watchdog.wait()
        wait_backlog_drained()


@contextlib.contextmanager
def busy_core() -> Iterator[int]:
    """A subprocess spinning on a core for the duration of the block; yields its pid."""
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.1)  # let it get scheduled before measuring
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def source_state() -> Dict[str, object]:
    """The commit measured, and the files of kensa that differed from it."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(
            ["git", "-C", repo, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5
        )
        dirty = subprocess.run(
            ["git", "-C", repo, "status", "--porcelain", "--", "src", "csrc"], capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return {}
    if head.returncode != 0:
        return {}
    changed = sorted(line[3:] for line in dirty.stdout.splitlines() if line[3:].endswith((".py", ".c", ".h")))
    return {"commit": head.stdout.strip(), "uncommitted": changed}


def machine() -> Dict[str, object]:
    """Facts that give the absolute numbers their context."""
    status = audit_status()
    facts: Dict[str, object] = {
        "python": platform.python_version(),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "loadavg_at_start": os.getloadavg(),
        "root": is_root(),
        "auditd_running": auditd_pid() is not None,
        "source": source_state(),
    }
    for key in ("backlog_limit", "backlog_wait_time", "rate_limit", "failure"):
        if key in status:
            facts[f"audit_{key}"] = status[key]
    return facts
