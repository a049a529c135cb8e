"""Shared fixtures: the kernel's audit multicast listener (kensa.audit.listener) and audit gating.

Tests that need root or the kernel audit subsystem skip on a laptop but fail
when KENSA_REQUIRE_AUDIT=1 (CI sets it), so a broken CI machine cannot pass by
skipping.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest

from kensa.audit.listener import AuditListener, KernelRecord


def require_audit(why: str) -> None:
    """Skip, or fail under KENSA_REQUIRE_AUDIT=1, when a kernel facility is missing."""
    if os.environ.get("KENSA_REQUIRE_AUDIT") == "1":
        pytest.fail(f"KENSA_REQUIRE_AUDIT=1 but {why}")
    pytest.skip(why)


def require_root(why: str = "") -> None:
    """Skip, or fail under KENSA_REQUIRE_AUDIT=1, when not root."""
    if os.geteuid() != 0:
        require_audit(f"this test needs root{f' ({why})' if why else ''}")


def require_auditd() -> int:
    """The pid of the running auditd (needs root)."""
    require_root()
    if shutil.which("ausearch") is None:
        require_audit("ausearch is not installed")
    out = subprocess.run(["pgrep", "-x", "auditd"], capture_output=True, text=True)
    if out.returncode != 0:
        require_audit("auditd is not running")
    return int(out.stdout.split()[0])


@pytest.fixture
def listener() -> Iterator[AuditListener]:
    """A live multicast listener on the kernel's audit log (needs root); a loss of its own fails the test."""
    require_root()
    try:
        lst = AuditListener(lossless=True)
    except OSError as exc:
        require_audit(f"cannot listen to the kernel audit log: {exc}")
    try:
        yield lst
    finally:
        lst.close()


def kensa_records(listener: AuditListener, marker: str, count: int, timeout: float = 10.0) -> List[KernelRecord]:
    """kensa's records whose body contains marker."""
    return listener.wait_for(lambda r: r.type == 1005 and "op=kensa" in r.text and marker in r.text, count, timeout)


@contextmanager
def auditd_stopped(pid: Optional[int] = None) -> Iterator[int]:
    """auditd stopped by SIGSTOP for the duration; always resumed."""
    pid = pid if pid is not None else require_auditd()
    os.kill(pid, signal.SIGSTOP)
    try:
        yield pid
    finally:
        os.kill(pid, signal.SIGCONT)


def parse_fields(body: str) -> List[tuple]:
    """Split a record body into (key, value) pairs the way ausearch does: on spaces."""
    pairs = []
    for token in body.split(" "):
        key, sep, value = token.partition("=")
        pairs.append((key, value if sep else None))
    return pairs


def decode_value(value: str) -> bytes:
    """Undo kensa's encoding of one value: quoted text or uppercase hex."""
    if value.startswith('"') and value.endswith('"') and len(value) >= 2:
        return value[1:-1].encode("ascii")
    return bytes.fromhex(value)


Snapshot = Dict[str, Tuple[Any, ...]]


def snapshot_tree(top: Path) -> Snapshot:
    """Everything under ``top``: kind, mode, owner, bytes, xattrs, link targets (lstat, never followed)."""
    found: Snapshot = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in [".", *dirnames, *filenames] if dirpath == str(top) else [*dirnames, *filenames]:
            path = os.path.normpath(os.path.join(dirpath, name))
            rel = os.path.relpath(path, top)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                found[rel] = ("link", os.readlink(path))
                continue
            xattrs = tuple(sorted((n, os.getxattr(path, n, follow_symlinks=False)) for n in os.listxattr(path, follow_symlinks=False)))
            content = Path(path).read_bytes() if stat.S_ISREG(st.st_mode) else None
            kind = "file" if stat.S_ISREG(st.st_mode) else "dir" if stat.S_ISDIR(st.st_mode) else "other"
            found[rel] = (kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, content, xattrs)
    return found


@contextmanager
def tmpfs(tmp_path: Path, options: str) -> Iterator[Path]:
    """A tmpfs mounted with ``options`` (e.g. ``size=64k`` or ``ro``), always unmounted (needs root)."""
    require_root()
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mountpoint)], check=True)
    try:
        yield mountpoint
    finally:
        if subprocess.run(["umount", str(mountpoint)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(mountpoint)], check=False)
