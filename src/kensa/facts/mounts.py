"""Mounts of a target: what is mounted now (``/proc/self/mounts`` of a process on the
target, so in the target's mount namespace) and what an image's /etc/fstab mounts."""

from __future__ import annotations

import errno
import re
from typing import Dict, List, Optional

from kensa.errors import HostAccessError
from kensa.hosts.protocol import ReadableHost

FSTAB = "/etc/fstab"
READ_TIMEOUT = 30.0
_ESCAPE = re.compile(r"\\([0-7]{3})")


def unescape(field: str) -> str:
    # The kernel and fstab write a space in a path as \040, a tab as \011.
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


def parse_table(text: str) -> Dict[str, List[str]]:
    """Mount point -> its options, from the lines of a mount table (/proc/self/mounts or
    fstab: device, mount point, type, options). A mount point listed twice keeps the
    last line: the mount on top."""
    table: Dict[str, List[str]] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 4 or fields[0].startswith("#"):
            continue
        point = unescape(fields[1])
        table[point.rstrip("/") or "/"] = fields[3].split(",")
    return table


def mounted(host: ReadableHost) -> Dict[str, List[str]]:
    """What is mounted on the running ``host`` now, as :func:`parse_table` reads it."""
    done = host.run(["cat", "/proc/self/mounts"], READ_TIMEOUT)
    if done.returncode != 0:
        raise HostAccessError(errno.EIO, f"cannot read /proc/self/mounts: {done.stderr.strip()[:300]}")
    return parse_table(done.stdout)


def fstab(host: ReadableHost) -> Optional[Dict[str, List[str]]]:
    """What the target's /etc/fstab mounts (None when it has none)."""
    data = host.read_bytes(FSTAB)
    return None if data is None else parse_table(data.decode("utf-8", "replace"))
