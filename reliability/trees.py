"""Target trees: building one, and an exact snapshot to compare it with."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Dict, Optional, Tuple

#: path -> (kind, full st_mode, uid, gid, bytes of a file or a link's target, xattrs)
Snapshot = Dict[str, Tuple[str, int, int, int, Optional[bytes], Tuple[Tuple[str, bytes], ...]]]

# Files a remediation typically touches, with owners, modes and xattrs that a
# careless restore would lose.
BASE_FILES: Dict[str, Tuple[bytes, int, int, int]] = {
    "etc/motd": (b"welcome\n", 0o644, 1001, 1002),
    "etc/issue.net": (b"Debian GNU/Linux\n", 0o644, 0, 0),
    "etc/ssh/sshd_config": (b"Port 22\nPermitRootLogin yes\nMatch User x\n  X11Forwarding no\n", 0o600, 0, 0),
    "etc/shadow": (b"root:*:19000:0:99999:7:::\n", 0o640, 0, 42),
    "etc/hosts.equiv": (b"+ +\n", 0o644, 7, 7),
    "etc/passwd": (b"root:x:0:0:root:/root:/bin/sh\n", 0o644, 0, 0),
    "etc/group": (b"root:x:0:\nshadow:x:42:\n", 0o644, 0, 0),
    "etc/audit/rules.d/10-base.rules": (b"-w /etc/passwd -p wa -k identity\n", 0o640, 0, 0),
    "proc/sys/net/ipv4/ip_forward": (b"1\n", 0o644, 0, 0),
    "proc/sys/kernel/kptr_restrict": (b"0\n", 0o644, 0, 0),
}
BASE_DIRS = ("etc/sysctl.d", "etc/app")


def make_root(path: Path) -> Path:
    """A small target tree (etc, a fake proc/sys) at ``path``; needs root for the owners."""
    for rel in BASE_DIRS:
        (path / rel).mkdir(parents=True, exist_ok=True)
    for rel, (content, mode, uid, gid) in BASE_FILES.items():
        target = path / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
        os.chown(target, uid, gid)
        target.chmod(mode)
        os.setxattr(target, "user.kensa-reliability", rel.encode())
    return path


def snapshot(root: Path) -> Snapshot:
    """Every entry under ``root``, without following symlinks."""
    found: Snapshot = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            data: Optional[bytes] = None
            if stat.S_ISLNK(st.st_mode):
                kind, data = "link", os.fsencode(os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                kind = "dir"
            elif stat.S_ISREG(st.st_mode):
                kind = "file"
                with open(path, "rb") as handle:
                    data = handle.read()
            else:
                kind = "other"
            try:
                names = sorted(os.listxattr(path, follow_symlinks=False))
                xattrs = tuple((x, os.getxattr(path, x, follow_symlinks=False)) for x in names)
            except OSError:
                xattrs = ()
            found[os.path.relpath(path, root)] = (kind, st.st_mode, st.st_uid, st.st_gid, data, xattrs)
    return found


def differences(before: Snapshot, after: Snapshot) -> Tuple[str, ...]:
    """Paths that differ, were added or went missing."""
    changed = sorted(p for p in before.keys() & after.keys() if before[p] != after[p])
    return tuple(
        [f"changed {p}" for p in changed]
        + [f"added {p}" for p in sorted(after.keys() - before.keys())]
        + [f"missing {p}" for p in sorted(before.keys() - after.keys())]
    )
