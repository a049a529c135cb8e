"""Who holds an ``flock``: read from /proc/locks, for messages that name the holder."""

from __future__ import annotations

import os
from typing import List, Tuple

__all__ = ["flock_holders"]


def flock_holders(fd: int) -> List[Tuple[int, str]]:
    """(pid, ``READ`` | ``WRITE``) of every flock held on ``fd``'s file; waiters are left out.

    Empty when /proc/locks cannot be read: the caller's message then names no pid.
    """
    st = os.fstat(fd)
    wanted = (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
    holders = []
    try:
        with open("/proc/locks", encoding="ascii", errors="replace") as locks:
            for line in locks:
                # "1: FLOCK  ADVISORY  WRITE 1234 fe:00:5678 0 EOF"; a waiter has "->" in field 1.
                fields = line.split()
                if len(fields) < 6 or fields[1] != "FLOCK":
                    continue
                major, minor, inode = fields[5].split(":")
                if (int(major, 16), int(minor, 16), int(inode)) == wanted:
                    holders.append((int(fields[4]), fields[3]))
    except (OSError, ValueError):
        return []
    return holders
