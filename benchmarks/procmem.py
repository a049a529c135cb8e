"""Peak memory of a tool run on the controller: its process tree, and the ssh clients it left running.

A fleet tool's memory is not one process: Ansible forks a worker per host in
flight, every tool runs ssh clients, and ssh's ControlPersist masters detach
from the tool (they are re-parented to init) while still serving it. So
:class:`PeakMemory` samples, every ``interval`` seconds, the processes that
descend from the tool's pid plus every ``ssh`` process whose command line
holds ``marker`` (a path only that run's ssh clients are given, such as its
control socket directory), and sums their PSS (proportional set size: pages
shared between forks are divided among them, so forks are not counted
twice; RSS where PSS cannot be read). Reports the peak sum, and the peak of
the tool's main process alone.
"""

from __future__ import annotations

import os
import threading
from typing import Dict, List, Optional, Set


def _children(pid: int) -> List[int]:
    found: List[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children", encoding="ascii") as handle:
                found.extend(int(word) for word in handle.read().split())
        except OSError:
            continue
    return found


def _tree(pid: int) -> Set[int]:
    seen: Set[int] = set()
    todo = [pid]
    while todo:
        current = todo.pop()
        if current not in seen:
            seen.add(current)
            todo.extend(_children(current))
    return seen


def _cmdline(pid: int) -> List[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return [part.decode("utf-8", "replace") for part in handle.read().split(b"\0") if part]
    except OSError:
        return []


def _ssh_clients(marker: str) -> Set[int]:
    found: Set[int] = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            argv = _cmdline(int(entry))
            if argv and os.path.basename(argv[0]) == "ssh" and any(marker in part for part in argv):
                found.add(int(entry))
    return found


def _kib(path: str, field: str) -> int:
    try:
        with open(path, encoding="ascii") as handle:
            for line in handle:
                if line.startswith(field):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def memory_kib(pid: int) -> int:
    """PSS of ``pid`` in KiB (RSS when smaps_rollup is unreadable; 0 when it has ended)."""
    return _kib(f"/proc/{pid}/smaps_rollup", "Pss:") or _kib(f"/proc/{pid}/status", "VmRSS:")


class PeakMemory:
    """Samples a run's memory on a thread of its own until :meth:`stop`."""

    def __init__(self, pid: int, marker: Optional[str], interval: float = 0.1) -> None:
        self.pid = pid
        self.marker = marker
        self.interval = interval
        self.peak_total_kib = 0
        self.peak_main_kib = 0
        self.peak_processes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kensa-bench-memory", daemon=True)
        self._thread.start()

    def sample(self) -> Dict[str, int]:
        """One sample now: total and main-process KiB, and how many processes were counted."""
        pids = _tree(self.pid)
        if self.marker:
            pids |= _ssh_clients(self.marker)
        main = memory_kib(self.pid)
        total = main + sum(memory_kib(pid) for pid in pids if pid != self.pid)
        self.peak_total_kib = max(self.peak_total_kib, total)
        self.peak_main_kib = max(self.peak_main_kib, main)
        self.peak_processes = max(self.peak_processes, len(pids))
        return {"total_kib": total, "main_kib": main, "processes": len(pids)}

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
