"""Shared fixtures: the kernel's audit multicast listener, real-component gating, test isolation.

Tests that need a real component (root, auditd, the kernel audit subsystem,
unshare, a compiler, the packaging tools ...) skip on a laptop but fail when
KENSA_REQUIRE_REAL=1 (CI sets it), so a broken CI machine cannot pass by
skipping.

Tests marked ``serial`` stop auditd, change the kernel's audit state, read it, or
count the records the kernel logged: under pytest-xdist they all go to one
worker (``--dist loadgroup``), so they never run concurrently with each other.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, NoReturn, Optional, Tuple

import pytest

from kensa.audit.listener import AuditListener, KernelRecord

#: The one switch: "1" makes every missing real component a failure instead of a skip.
REQUIRE_REAL = "KENSA_REQUIRE_REAL"
# The name this switch had when it covered kernel audit only; setting it now is refused
# so that nobody believes they get failures while tests quietly skip.
RETIRED_SWITCHES = ("KENSA_REQUIRE_AUDIT",)
SERIAL_GROUP = "serial"


def require_real_components() -> bool:
    """True when KENSA_REQUIRE_REAL=1; a value other than 1, 0 or empty is a usage error."""
    value = os.environ.get(REQUIRE_REAL, "")
    if value not in ("", "0", "1"):
        raise pytest.UsageError(f"{REQUIRE_REAL}={value!r}: set it to 1 (missing components fail) or 0/unset (they skip)")
    return value == "1"


def pytest_configure(config: pytest.Config) -> None:
    for name in RETIRED_SWITCHES:
        if name in os.environ:
            raise pytest.UsageError(f"{name} is no longer read: set {REQUIRE_REAL}=1 instead")
    require_real_components()


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: List[pytest.Item]) -> None:
    # pytest-xdist's loadgroup scheduler runs every test of one group on one worker, in order.
    # First, so the group is set before xdist's own hook reads it.
    serial = [item for item in items if item.get_closest_marker("serial") is not None]
    for item in serial:
        item.add_marker(pytest.mark.xdist_group(SERIAL_GROUP))
    # The serial tests are the longest chain of the run: collected first, they start first.
    items[:] = serial + [item for item in items if item.get_closest_marker("serial") is None]


def require_real(why: str) -> NoReturn:
    """Skip, or fail under KENSA_REQUIRE_REAL=1, because a real component is missing (``why`` says which)."""
    if require_real_components():
        pytest.fail(f"{REQUIRE_REAL}=1 but {why}")
    pytest.skip(why)


# Kernel-audit tests call it by this name; it is the same gate.
require_audit = require_real


def require_root(why: str = "") -> None:
    """Skip, or fail under KENSA_REQUIRE_REAL=1, when not root."""
    if os.geteuid() != 0:
        require_real(f"this test needs root{f' ({why})' if why else ''}")



def require_auditd() -> int:
    """The pid of the running auditd (needs root)."""
    require_root()
    if shutil.which("ausearch") is None:
        require_real("ausearch is not installed")
    out = subprocess.run(["pgrep", "-x", "auditd"], capture_output=True, text=True)
    if out.returncode != 0:
        require_real("auditd is not running")
    return int(out.stdout.split()[0])


@pytest.fixture
def listener() -> Iterator[AuditListener]:
    """A live multicast listener on the kernel's audit log (needs root); a loss of its own fails the test."""
    require_root()
    try:
        lst = AuditListener(lossless=True)
    except OSError as exc:
        require_real(f"cannot listen to the kernel audit log: {exc}")
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


@contextmanager
def kernel_backlog_wait(jiffies: int) -> Iterator[None]:
    """The kernel's backlog_wait_time set to ``jiffies`` for the duration; always put back.

    A sender the kernel holds sleeps out that whole time (60 s by default) even
    after auditd resumes, so a test that waits for the held records to drain
    shortens it rather than wait a minute.
    """
    from kensa.audit.emitter import kernel_status

    before = kernel_status().backlog_wait_time
    subprocess.run(["auditctl", "--backlog_wait_time", str(jiffies)], check=True, capture_output=True)
    try:
        yield
    finally:
        subprocess.run(["auditctl", "--backlog_wait_time", str(before)], check=True, capture_output=True)


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


def copy_live_tree(source: "os.PathLike[str] | str", dest: Path) -> None:
    """A copy of a directory other processes may be writing (this machine's /etc while a
    package test installs conffiles): links stay links, special files are left out, and so
    is an entry that vanishes between being listed and being copied."""
    os.makedirs(dest)
    try:
        entries = list(os.scandir(source))
    except FileNotFoundError:
        return
    for entry in entries:
        target = dest / entry.name
        try:
            if entry.is_symlink():
                os.symlink(os.readlink(entry.path), target)
            elif entry.is_dir(follow_symlinks=False):
                copy_live_tree(entry.path, target)
            elif entry.is_file(follow_symlinks=False):
                shutil.copy2(entry.path, target, follow_symlinks=False)
        except FileNotFoundError:
            continue
    try:
        shutil.copystat(source, dest, follow_symlinks=False)
    except FileNotFoundError:
        pass


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


@pytest.fixture(scope="session")
def sshd_rig() -> Iterator[Any]:
    """The session's :class:`tests.sshd.SshdRig` (test users, a user key; no server yet).

    Needs root, sshd, ssh and sudo; skips without them, fails under KENSA_REQUIRE_REAL=1.
    """
    from sshd import SshdRig, missing_components

    why = missing_components()
    if why is not None:
        require_real(why)
    with SshdRig(0) as rig:
        yield rig


@pytest.fixture
def sshd_host(sshd_rig: Any) -> Iterator[Any]:
    """A fresh running sshd of the rig for one test (stopped and removed afterwards)."""
    host = sshd_rig.add_host("host")
    try:
        yield host
    finally:
        host.remove()
