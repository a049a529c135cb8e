"""Target lock files: where the lock of a target is, and taking it without blocking.

One ``flock`` per target, in a private directory (mode 0700, owned by the
user; any other owner or mode is refused), in a file named by the SHA-256 of
the target's identity. The controller's :class:`kensa.hosts.targetlock.TargetLocks`
and kensa's agent on a target (which takes the lock a kensa run there takes
for the same root) share this module, so both name and open the same file.
It runs on Python 3.6, as the agent does, and keeps no state: the caller
holds the descriptor, and closing it releases the lock. Paths are strings:
``pathlib`` (with the ``urllib.parse`` and ``ipaddress`` it imports) was a
tenth of the agent's imports at its start.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import stat
from typing import Any, List, Optional, Tuple, Union

from kensa.errors import TargetLockError, TargetLockTimeout
from kensa.support.flocks import flock_holders

__all__ = ["SYSTEM_LOCK_DIRECTORY", "agent_lock_directory", "busy", "holders", "lock_name", "open_lock", "try_lock"]

#: Where root's target locks live, whatever journal a process uses.
SYSTEM_LOCK_DIRECTORY = "/run/kensa/targets"


def agent_lock_directory() -> str:
    """Where the agent takes its target's lock: root's :data:`SYSTEM_LOCK_DIRECTORY`, as a kensa run
    of root there does; another login user's ``~/.cache/kensa/targets``, which keeps out the
    controllers logging in as that user (that user's own runs lock next to their journal).
    A user whose home does not exist (a service account's ``/nonexistent``) locks in
    ``kensa-<uid>-targets`` of the temporary directory instead: :func:`open_lock` refuses
    it unless the user owns it with mode 0700."""
    if os.geteuid() == 0 and os.path.isdir(os.path.dirname(os.path.dirname(SYSTEM_LOCK_DIRECTORY))):
        return SYSTEM_LOCK_DIRECTORY
    home = os.path.expanduser("~")
    if not os.path.isdir(home):
        import tempfile  # only here: it imports shutil and random, a tenth of an agent's start

        return os.path.join(tempfile.gettempdir(), f"kensa-{os.geteuid()}-targets")
    return os.path.join(home, ".cache", "kensa", "targets")


def lock_name(key: str, identity: Any = None) -> str:
    """The lock file's name of the target ``key`` (``identity``, when given, names it instead)."""
    if identity is None:
        data = b"key:" + key.encode("utf-8", "surrogateescape")
    elif isinstance(identity, bytes):
        data = b"identity:" + identity
    else:
        text = identity if isinstance(identity, str) else repr(identity)
        data = b"identity:" + text.encode("utf-8", "surrogateescape")
    return hashlib.sha256(data).hexdigest() + ".lock"


def open_lock(directory: Union[str, "os.PathLike[str]"], name: str, key: str) -> Tuple[int, str]:
    """Open (creating it and its directory) the lock file ``name`` of target ``key``; (fd, path).

    Neither the directory nor the file is opened through a symlink; a directory
    another user could write, or a lock that is not a regular file, is a
    TargetLockError naming it."""
    directory = os.fspath(directory)
    path = os.path.join(directory, name)
    try:
        dir_fd = _open_directory(directory)
    except OSError as exc:
        raise TargetLockError(
            f"kensa target lock directory {directory} for host {key!r}: cannot open it: {exc.strerror or exc}"
        ) from exc
    try:
        # O_NOFOLLOW: a link planted at the lock path must not redirect the lock.
        fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
    except OSError as exc:
        raise TargetLockError(f"kensa target lock {path} for host {key!r}: cannot open it: {exc.strerror or exc}") from exc
    finally:
        os.close(dir_fd)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise TargetLockError(f"kensa target lock {path} for host {key!r} is not a regular file")
    except BaseException:
        os.close(fd)
        raise
    return fd, path


def _open_directory(directory: str) -> int:
    try:
        os.mkdir(directory, 0o700)
    except FileExistsError:
        pass
    except FileNotFoundError:
        os.makedirs(os.path.dirname(directory), mode=0o700, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            os.mkdir(directory, 0o700)
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    st = os.fstat(dir_fd)
    if st.st_uid != os.geteuid() or st.st_mode & 0o077:
        os.close(dir_fd)
        # Someone else could swap or hold our lock files: refuse rather than trust it.
        raise PermissionError(
            errno.EPERM,
            f"it must be a directory owned by uid {os.geteuid()} with mode 0700, but it is owned by uid "
            f"{st.st_uid} with mode {stat.S_IMODE(st.st_mode):04o}; remove it or fix its owner and mode",
        )
    return dir_fd


def try_lock(fd: int, key: str, path: Union[str, "os.PathLike[str]"]) -> bool:
    """Take the exclusive flock of ``fd`` if nobody holds it; False when another does."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as exc:
        raise TargetLockError(f"kensa target lock {path} for host {key!r}: flock failed: {exc.strerror}") from exc


def holders(fd: int) -> List[int]:
    """The pids holding the flock of ``fd``'s file (empty when /proc/locks cannot say)."""
    return [pid for pid, _ in flock_holders(fd)]


def busy(key: str, pids: List[int], path: str, timeout: Optional[float], where: str = "") -> TargetLockTimeout:
    """The error of a lock of target ``key`` not taken within ``timeout`` s; ``where`` says whose
    file ``path`` is when it is not this machine's (" on that host")."""
    by = ("held by pid " + ", ".join(str(pid) for pid in pids)) if pids else "holder unknown"
    return TargetLockTimeout(
        f"host {key!r} is being changed by another kensa process ({by}; lock file {path}{where}): could not take "
        f"its lock within {timeout:g}s; nothing was changed. Wait for that process to finish, then try again",
    )
