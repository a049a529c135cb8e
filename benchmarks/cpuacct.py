"""CPU seconds of a group of processes and everything they start: a cgroup v1 ``cpuacct`` group.

On a shared machine the wall time of a run moves with other people's load;
the CPU its processes use moves much less. A :class:`CpuGroup` is a cpuacct
cgroup of its own: a process put in it (:meth:`CpuGroup.add`, or
:meth:`CpuGroup.enter` in a child before it execs) and everything it forks
afterwards, including daemons that detach (ssh's ControlPersist masters), is
counted; :meth:`CpuGroup.seconds` reads the total. The fleet benchmark keeps
one group for the rig's sshd servers (so every target-side process: sshd's
sessions, kensa's agents, Ansible's modules) and one per tool (its controller
processes and ssh clients). Without a cpuacct hierarchy (cgroup v2 only, not
root) the groups are off and report None.
"""

from __future__ import annotations

import os
from typing import Optional

_ROOT = "/sys/fs/cgroup/cpuacct"


class CpuGroup:
    """One cpuacct cgroup named ``name``; removed by :meth:`close` once its processes have left."""

    def __init__(self, name: str) -> None:
        self.path: Optional[str] = os.path.join(_ROOT, f"kensa-bench-{os.getpid()}-{name}")
        try:
            os.mkdir(self.path)
        except OSError:
            self.path = None

    def add(self, pid: int) -> None:
        """Put process ``pid`` (not its existing children) in the group."""
        if self.path is not None:
            with open(os.path.join(self.path, "cgroup.procs"), "w", encoding="ascii") as procs:
                procs.write(str(pid))

    def enter(self) -> None:
        """Put the calling process in the group (for ``preexec_fn``: before the child execs)."""
        self.add(os.getpid())

    def seconds(self) -> Optional[float]:
        """CPU seconds (user and system) used by the group's processes so far; None when off."""
        if self.path is None:
            return None
        with open(os.path.join(self.path, "cpuacct.usage"), encoding="ascii") as usage:
            return int(usage.read()) / 1e9

    def close(self) -> None:
        """Move any process still in the group back to the root group, and remove the group."""
        if self.path is None:
            return
        try:
            with open(os.path.join(self.path, "cgroup.procs"), encoding="ascii") as procs:
                left = [line.strip() for line in procs if line.strip()]
            for pid in left:
                try:
                    with open(os.path.join(_ROOT, "cgroup.procs"), "w", encoding="ascii") as root:
                        root.write(pid)
                except OSError:
                    continue
            os.rmdir(self.path)
        except OSError:
            pass
        self.path = None
