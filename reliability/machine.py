"""The machine's audit configuration: read it, fault it, and always put it back.

Faults change only what they must for as short as they can: auditd is stopped
or killed for one half-batch, the backlog limit is lowered for one half-batch.
:meth:`AuditControl.restore` runs in the program's ``finally`` (SIGTERM and
SIGHUP are turned into KeyboardInterrupt so it runs then too) and puts back
what the program found at start: auditd running and not stopped, the backlog
limit, the rule list.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Tuple

AUDITD_START_SECONDS = 30.0


class MachineError(RuntimeError):
    """The audit configuration could not be read, changed or put back."""


@dataclass(frozen=True)
class AuditState:
    """What the program found, and must leave: auditd, backlog limit, rules."""

    auditd_pid: int  # 0 when no auditd runs
    auditd_stopped: bool
    kernel_pid: int  # the pid the kernel sends records to (auditctl -s)
    backlog_limit: int
    rules: Tuple[str, ...]


def _run(argv: List[str], timeout: float = 30.0) -> str:
    out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if out.returncode != 0:
        raise MachineError(f"{' '.join(argv)} failed ({out.returncode}): {out.stderr.strip() or out.stdout.strip()}")
    return out.stdout


def audit_status() -> Dict[str, str]:
    """``auditctl -s`` as a dict of its first two words per line."""
    found = {}
    for line in _run(["auditctl", "-s"]).splitlines():
        parts = line.split()
        if len(parts) >= 2:
            found[parts[0]] = parts[1]
    return found


def audit_rules() -> Tuple[str, ...]:
    lines = _run(["auditctl", "-l"]).splitlines()
    return tuple(line for line in lines if line.strip() and line.strip() != "No rules")


def auditd_pid() -> int:
    out = subprocess.run(["pgrep", "-x", "auditd"], capture_output=True, text=True, check=False)
    pids = [int(p) for p in out.stdout.split()]
    return pids[0] if pids else 0


def _proc_state(pid: int) -> str:
    """The one-letter state of ``pid`` in /proc ("" when it does not exist)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


def is_stopped(pid: int) -> bool:
    return _proc_state(pid) in ("T", "t")


class AuditControl:
    """Reads, faults and restores the audit configuration (root only)."""

    def __init__(self) -> None:
        self.available = os.geteuid() == 0 and shutil.which("auditctl") is not None
        self.why_not = "" if self.available else "needs root and auditctl"
        self.initial: Optional[AuditState] = self.state() if self.available else None
        self._stopped: List[int] = []
        self.actions: List[str] = []  # what restore() had to do, for the report

    def state(self) -> AuditState:
        status = audit_status()
        pid = auditd_pid()
        return AuditState(
            auditd_pid=pid,
            auditd_stopped=bool(pid) and is_stopped(pid),
            kernel_pid=int(status.get("pid", "0")),
            backlog_limit=int(status.get("backlog_limit", "0")),
            rules=audit_rules(),
        )

    def running_auditd(self) -> int:
        """The pid of a running, not stopped auditd; raises when there is none."""
        pid = auditd_pid()
        if not pid or is_stopped(pid):
            raise MachineError("auditd is not running (or is stopped by someone else): cannot fault it")
        return pid

    # -- faults ------------------------------------------------------------------

    @contextlib.contextmanager
    def auditd_stopped(self) -> Iterator[int]:
        """auditd stopped with SIGSTOP; always resumed."""
        pid = self.running_auditd()
        self._stopped.append(pid)
        os.kill(pid, signal.SIGSTOP)
        try:
            yield pid
        finally:
            self._resume(pid)

    @contextlib.contextmanager
    def auditd_killed(self) -> Iterator[int]:
        """auditd killed with SIGKILL; always started again with plain ``auditd``."""
        pid = self.running_auditd()
        os.kill(pid, signal.SIGKILL)
        try:
            _wait_gone(pid)
            yield pid
        finally:
            self.start_auditd()

    @contextlib.contextmanager
    def backlog_limit(self, limit: int) -> Iterator[None]:
        """The kernel's backlog limit set to ``limit``; always set back."""
        assert self.initial is not None
        _run(["auditctl", "-b", str(limit)])
        try:
            yield
        finally:
            _run(["auditctl", "-b", str(self.initial.backlog_limit)])

    # -- putting it back ------------------------------------------------------------

    def _resume(self, pid: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
        with contextlib.suppress(ValueError):
            self._stopped.remove(pid)

    def start_auditd(self) -> int:
        """Start ``auditd`` and wait until the kernel sends records to it.

        The kernel refuses a new auditd while it still believes the killed one
        is healthy, and finds out only when a delivery to it fails: a user
        message sent before each try makes it look.
        """
        deadline = time.monotonic() + AUDITD_START_SECONDS
        while time.monotonic() < deadline:
            pid = auditd_pid()
            if not pid:
                subprocess.run(["auditctl", "-m", "kensa reliability: restarting auditd"], capture_output=True, timeout=30, check=False)
                subprocess.run(["auditd"], capture_output=True, timeout=30, check=False)
                time.sleep(0.2)
                continue
            if int(audit_status().get("pid", "0")) == pid:
                return pid
            time.sleep(0.1)
        raise MachineError(f"auditd did not register with the kernel within {AUDITD_START_SECONDS:.0f} s")

    def restore(self) -> List[str]:
        """Put back what the program found at start; returns what differed (and was fixed)."""
        if self.initial is None:
            return []
        fixed = []
        for pid in list(self._stopped):
            self._resume(pid)
            fixed.append(f"resumed auditd {pid}")
        now = self.state()
        if self.initial.auditd_pid and not now.auditd_pid:
            self.start_auditd()
            fixed.append("started auditd")
        if now.backlog_limit != self.initial.backlog_limit:
            _run(["auditctl", "-b", str(self.initial.backlog_limit)])
            fixed.append(f"backlog_limit {now.backlog_limit} -> {self.initial.backlog_limit}")
        if now.rules != self.initial.rules:
            _run(["auditctl", "-D"])
            for rule in self.initial.rules:
                _run(["auditctl", *shlex.split(rule)])
            fixed.append("reloaded the audit rules")
        self.actions += fixed
        return fixed


def _wait_gone(pid: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # auditd is not our child: where nothing reaps it, it stays a zombie.
        if _proc_state(pid) in ("", "Z", "X"):
            return
        time.sleep(0.02)
    raise MachineError(f"auditd {pid} did not exit after SIGKILL within {timeout:.0f} s")
