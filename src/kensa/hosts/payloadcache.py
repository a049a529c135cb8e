"""The controller's copy of a built agent payload, kept between runs.

Building the payload parses and rewrites every target-side module (about half a
second of CPU), which every ``kensa`` command that reaches a remote host paid
again. The built payload is kept in one file of the user running kensa,
``$XDG_CACHE_HOME/kensa/payload-<fingerprint>.bin`` (``~/.cache/kensa`` without
``XDG_CACHE_HOME``), where the fingerprint is the SHA-256 of this Python's
version and of the path, size, inode and change time (``st_ctime_ns``) of every
source file the payload can be built from (:data:`kensa.hosts.payload.TARGET_SIDE`,
the builder included). Any write to a file, or a file put in its place, sets its
change time, which no utility can set back (``touch`` and ``cp -p`` set only the
modification time): any change to them names another file. When one is written,
the :data:`KEEP_COPIES` last used (a copy read is touched) are kept and older ones
removed, so that two installs of one user (two virtual environments, an upgrade
being tried) do not rebuild their payload on every other run. Reading every source to hash it took about
ten milliseconds on each command's start, before its first login could begin.

The payload is code that runs on every target, so the file is used only when it
can be trusted as this user's own: the directory a real directory (never a
symlink) of this user with no access for others, the file a regular file of
this user with no access for others, and the SHA-256 in its header matching its
body (a torn or corrupted copy). Anything else is not used and the payload is
built; a refused directory is not written to. :func:`load` and :func:`store`
say what happened, which :class:`kensa.hosts.payload.Payload` keeps as its
``origin``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import sys
from typing import Iterable, Optional, Tuple

__all__ = ["KEEP_COPIES", "MAGIC", "cache_directory", "fingerprint", "load", "store"]

#: First line of a cached payload; the second is the SHA-256 of the rest (what :func:`store` was given).
MAGIC = b"kensa-payload 2\n"

#: Kept payloads at most, by modification time (set when one is read): the one just written and
#: the last used others.
KEEP_COPIES = 3


def fingerprint(package_dir: str, prefixes: Iterable[str]) -> str:
    """The SHA-256 naming a payload built from the sources under ``package_dir`` that the module
    name ``prefixes`` (``kensa.hosts``, ``kensa.model`` ...) cover, by this Python: from each
    file's path, size, inode and change time (see the module docstring), not its bytes."""
    digest = hashlib.sha256(MAGIC + sys.version.encode() + b"\0")
    paths = set()
    for prefix in prefixes:
        base = os.path.join(package_dir, *prefix.split(".")[1:])
        if os.path.isfile(base + ".py"):
            paths.add(base + ".py")
        for top, dirs, files in os.walk(base):
            dirs[:] = sorted(name for name in dirs if name != "__pycache__")
            paths.update(os.path.join(top, name) for name in files if name.endswith(".py"))
    for path in sorted(paths):
        st = os.stat(path)
        digest.update(f"{os.path.relpath(path, package_dir)}\0{st.st_size}\0{st.st_ino}\0{st.st_ctime_ns}\0".encode())
    return digest.hexdigest()


def cache_directory() -> str:
    """Where the payload is kept: ``$XDG_CACHE_HOME/kensa`` or ``~/.cache/kensa``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "kensa")


def _untrusted(st: os.stat_result, kind: int, path: str) -> Optional[str]:
    """Why ``st`` may not be trusted as this user's own, or None."""
    if stat.S_IFMT(st.st_mode) != kind:
        return f"{path} is not a {'directory' if kind == stat.S_IFDIR else 'regular file'}"
    if st.st_uid != os.geteuid():
        return f"{path} is owned by uid {st.st_uid}, not this user ({os.geteuid()})"
    if st.st_mode & 0o077:
        return f"{path} has mode {stat.S_IMODE(st.st_mode):04o}: others have access (it needs none)"
    return None


def _open_directory(create: bool) -> Tuple[Optional[int], str]:
    """(descriptor of the trusted cache directory or None, what was found)."""
    path = cache_directory()
    try:
        if create:
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            try:
                os.mkdir(path, 0o700)
            except FileExistsError:
                pass
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None, f"absent: {path}"
    except OSError as exc:
        return None, f"off: cannot open {path}: {exc.strerror}"
    why = _untrusted(os.fstat(fd), stat.S_IFDIR, path)
    if why is not None:
        os.close(fd)
        return None, f"refused: {why}"
    return fd, path


def _name(print_: str) -> str:
    return f"payload-{print_}.bin"


def _prune(dfd: int, name: str) -> None:
    """Remove the kept payloads other than ``name`` and the newest others, KEEP_COPIES in all."""
    others = []
    for entry in os.listdir(dfd):
        if entry != name and entry.startswith("payload-") and entry.endswith(".bin"):
            with contextlib.suppress(FileNotFoundError):  # another kensa removed it meanwhile
                others.append((os.stat(entry, dir_fd=dfd, follow_symlinks=False).st_mtime_ns, entry))
    for _, entry in sorted(others, reverse=True)[KEEP_COPIES - 1:]:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(entry, dir_fd=dfd)


def load(print_: str) -> Tuple[Optional[bytes], str]:
    """The cached payload bytes for fingerprint ``print_`` if they can be trusted (else None), and
    what was found."""
    dfd, where = _open_directory(create=False)
    if dfd is None:
        return None, where
    name = _name(print_)
    try:
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
        except FileNotFoundError:
            return None, f"absent: {where}/{name}"
        except OSError as exc:
            return None, f"refused: {where}/{name}: {exc.strerror}"
        with os.fdopen(fd, "rb") as handle:
            why = _untrusted(os.fstat(fd), stat.S_IFREG, f"{where}/{name}")
            if why is not None:
                return None, f"refused: {why}"
            data = handle.read()
    finally:
        os.close(dfd)
    head, _, rest = data.partition(b"\n")
    digest, _, body = rest.partition(b"\n")
    if head + b"\n" != MAGIC or hashlib.sha256(body).hexdigest().encode() != digest:
        return None, f"refused: {where}/{name} fails its hash"
    try:
        # Used now: the newest, as far as keeping the newest KEEP_COPIES goes.
        os.utime(os.path.join(where, name), follow_symlinks=False)
    except OSError as exc:
        return body, f"cached: {where}/{name} (its time of use could not be set: {exc.strerror})"
    return body, f"cached: {where}/{name}"


def store(print_: str, blob: bytes) -> str:
    """Keep ``blob`` as the payload of fingerprint ``print_`` (temporary file, then rename) and
    remove all but the newest others (:data:`KEEP_COPIES`); what happened. A failure only means it
    is not kept."""
    dfd, where = _open_directory(create=True)
    if dfd is None:
        return f"not kept ({where})"
    name = _name(print_)
    temporary = f".{name}.{os.getpid()}.tmp"
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dfd)
        try:
            view = memoryview(MAGIC + hashlib.sha256(blob).hexdigest().encode() + b"\n" + blob)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        os.rename(temporary, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        _prune(dfd, name)
        return f"kept: {where}/{name}"
    except OSError as exc:
        # Keeping the payload is an optimisation: its failure is reported, and a temporary
        # file that cannot be removed either is only a stray ``.payload-*.tmp``.
        with contextlib.suppress(OSError):
            os.unlink(temporary, dir_fd=dfd)
        return f"not kept ({where}: {exc.strerror})"
    finally:
        os.close(dfd)
