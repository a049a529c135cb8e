"""Reads and writes on open file descriptors, for :mod:`kensa.hosts.local`: xattrs, capped
reads, modification times, whole writes. It runs on the target's Python (3.6+) too."""

from __future__ import annotations

import errno
import os
from typing import Dict, List, Mapping, Optional

__all__ = ["read_capped", "read_xattrs", "set_exact_xattrs", "set_mtime", "write_all"]


def read_xattrs(fd: int) -> Dict[str, bytes]:
    try:
        names = os.listxattr(fd)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return {}
        raise
    return {name: os.getxattr(fd, name) for name in sorted(names)}


def set_exact_xattrs(fd: int, wanted: Mapping[str, bytes]) -> None:
    """Make the xattrs of ``fd`` exactly ``wanted``: set missing/different, drop extra."""
    current = read_xattrs(fd)
    for name in current:
        if name not in wanted:
            os.removexattr(fd, name)
    for name, value in wanted.items():
        if current.get(name) != value:
            os.setxattr(fd, name, value)


def read_capped(fd: int, size: int, cap: int) -> Optional[bytes]:
    """The bytes of ``fd`` (whose stat size is ``size``), or None when they pass ``cap``.

    One read of the stated size (plus one byte, to see growth) allocates the bytes
    once and returns them without a copy; the loop serves files whose stat size
    says nothing (procfs reports 0) or that grow while read.
    """
    chunks: List[bytes] = []
    total = 0
    want = size + 1 if size else 1 << 16
    while True:
        chunk = os.read(fd, min(want, cap - total + 1))
        if not chunk:
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
        total += len(chunk)
        if total > cap:
            return None
        chunks.append(chunk)
        want = 1 << 16


def set_mtime(fd: int, mtime_ns: int) -> None:
    # utime needs both times; the access time is kept as it is.
    os.utime(fd, ns=(os.fstat(fd).st_atime_ns, mtime_ns))


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
