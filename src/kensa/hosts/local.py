"""Confined access to a local filesystem tree: the live host ("/") or an image root.

Every path a handler names is absolute and is resolved *inside* the target root,
one component at a time, with ``O_NOFOLLOW`` and directory file descriptors, so
neither ``..`` nor a symlink can lead outside it.

The root is opened once, when the :class:`LocalHost` is made, following the given
path (so ``/proc/PID/root``, a "magic link", pins the root of that process's mount
namespace, which no path string could name), and held open as an ``O_PATH``
directory descriptor; every walk starts from it and it is never turned back into a
path. Renaming or swapping the root or one of its ancestors for a symlink afterwards
therefore cannot redirect kensa to another tree: it keeps working on the directory
it pinned (if that directory is deleted, operations fail with
:class:`HostAccessError`). :attr:`LocalHost.root` is only the root's name for
messages and keys; :attr:`LocalHost.identity` names the pinned directory itself.
Every ``OSError`` of a file operation reaches the caller as a :class:`HostAccessError`.

Size cap: reads that load a file's bytes (``read_file``, ``read_bytes``,
``info(content=True)``) refuse a file larger than ``max_file_bytes``
(:data:`DEFAULT_MAX_FILE_BYTES`, 64 MiB, unless the caller passes another value to
:class:`LocalHost` or :func:`resolve_host`) with a :class:`HostAccessError`
(``errno.EFBIG``) naming the path, its size and the cap. Capture reads before
apply, so such a file is refused before anything changes. Bytes are read in one
allocation of the file's size, never in chunks joined into a second copy.

Path policy:

- ``..`` is resolved lexically before the walk; a ``..`` that would climb above the
  root is refused with :class:`PathEscapeError`. Lexical resolution is exact here
  because every component walked must be a real directory (see the next rule).
- kensa never follows a symlink in a target path: a symlink in any component,
  parent or final, is refused with :class:`PathEscapeError` naming the component
  and its target. An in-root symlink would be safe to follow, but refusing is simple
  to verify, and a remediation that writes through a link the operator did not
  expect is worse than one that stops and says why.
- Mounts: the live host ("/" of this process's mount namespace) spans mounts by
  nature (/boot, /proc, /var), so walks there cross them. Under any other root (an
  image, or another namespace's root) a walk never enters another mount: a mount
  point inside the root, directory or file (a bind mount of something outside, a
  procfs at its /proc), is refused with :class:`PathEscapeError` naming it. This
  uses ``openat2`` with ``RESOLVE_NO_XDEV | RESOLVE_NO_SYMLINKS | RESOLVE_BENEATH``,
  or, on kernels without it (ENOSYS), a comparison of each opened entry's mount id
  with the root's. A real procfs (or sysfs, cgroupfs, debugfs, tracefs,
  securityfs, configfs, bpffs, efivarfs) is refused under such a root even when no
  mount point is crossed (a root that is itself on one), so an image root never
  changes the running kernel.
- Writes are atomic: a temporary file in the same directory (created through the
  directory fd with ``O_EXCL|O_NOFOLLOW``), written, fsynced, given its owner,
  extended attributes and mode, renamed over the target, and the directory fsynced.
  Rewriting an existing file keeps its mode, owner, group and extended attributes
  (including ``security.selinux``) unless the caller sets them. Because the rename
  replaces the directory entry, a file with several hard links is detached from the
  others. The temporary name (``.NAME.kensa-`` and 12 hex digits; a long NAME is cut
  and given a hash of itself) always fits NAME_MAX, and
  :meth:`LocalHost.remove_leftover_temps` removes the ones a killed write left.
- Changing a file in place (``set_meta``, ``write_in_place``) acts on its inode,
  which every hard link to it shares, and a link may live outside the root. So on
  an image root (not the live host "/") a regular file with more than one link is
  refused there, naming the link count. On the live host every link is on the
  machine being remediated anyway, and /proc/sys files have one link.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import os
import platform
import secrets
import stat
import subprocess
from dataclasses import dataclass, field
from typing import Any, Dict, FrozenSet, Iterator, List, Literal, Mapping, Optional, Sequence, Tuple

from kensa.errors import HostAccessError, HostSelectionError, KensaError, PathEscapeError

#: Mode of a file kensa creates when the caller gives none (the usual /etc default).
DEFAULT_FILE_MODE = 0o644

#: Largest file (bytes) a LocalHost loads by default: 64 MiB. Configuration files
#: are far smaller; a larger one is refused before anything changes rather than
#: held in memory (and journaled) whole.
DEFAULT_MAX_FILE_BYTES = 64 << 20

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC
# O_NONBLOCK keeps an open of a FIFO planted at the path from hanging; O_NOCTTY keeps
# a terminal device from becoming this process's controlling terminal.
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
# No O_TRUNC: the file type is checked on the open fd before anything is truncated.
_WRITE_IN_PLACE_FLAGS = os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC

# Kernel ABI values (linux/openat2.h, linux/stat.h, linux/magic.h, fcntl.h). Python has
# no binding for openat2, statx or fstatfs, so they are called through ctypes.
_RESOLVE_NO_XDEV = 0x01
_RESOLVE_NO_SYMLINKS = 0x04
_RESOLVE_BENEATH = 0x08
_CONFINED_RESOLVE = _RESOLVE_NO_XDEV | _RESOLVE_NO_SYMLINKS | _RESOLVE_BENEATH
_STATX_MNT_ID = 0x1000
_STATX_MNT_ID_UNIQUE = 0x4000
_AT_EMPTY_PATH = 0x1000
# Filesystems whose files are the running kernel's state (linux/magic.h): under an
# image root, writing one would change this machine, not the image.
_KERNEL_STATE_FS = {
    0x9FA0: "procfs",
    0x62656572: "sysfs",
    0x27E0EB: "cgroupfs",
    0x63677270: "cgroup2fs",
    0x64626720: "debugfs",
    0x74726163: "tracefs",
    0x73636673: "securityfs",
    0x62656570: "configfs",
    0xCAFE4A11: "bpffs",
    0xDE5E81E4: "efivarfs",
}
# openat2 has number 437 on every architecture that uses the unified syscall table;
# elsewhere (alpha, unknown machines) the mount-id comparison is used instead.
_SYS_OPENAT2 = 437 if platform.machine() in (
    "x86_64", "amd64", "i386", "i686", "aarch64", "arm64", "armv7l", "armv8l", "ppc64le", "ppc64", "s390x", "riscv64",
) else None

_libc = ctypes.CDLL(None, use_errno=True)


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


class _Statx(ctypes.Structure):
    # Only the fields read here are named; the kernel fills 256 bytes.
    _fields_ = [("stx_mask", ctypes.c_uint32), ("_head", ctypes.c_uint8 * 140), ("stx_mnt_id", ctypes.c_uint64),
                ("_tail", ctypes.c_uint8 * 104)]


# Set to False (in this process and its children) once the kernel answers ENOSYS.
_openat2_works = _SYS_OPENAT2 is not None


def _oserror(name: str = "") -> OSError:
    code = ctypes.get_errno()
    return OSError(code, os.strerror(code), name) if name else OSError(code, os.strerror(code))


def _openat2(dir_fd: int, name: str, flags: int, resolve: int) -> int:
    """openat2(2): open ``name`` under ``dir_fd`` with the given RESOLVE_* rules."""
    how = _OpenHow(flags, 0, resolve)
    fd = _libc.syscall(ctypes.c_long(_SYS_OPENAT2 or -1), ctypes.c_int(dir_fd), ctypes.c_char_p(os.fsencode(name)),
                       ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how)))
    if fd < 0:
        raise _oserror(name)
    return int(fd)


def _mount_id(fd: int, unique: bool = False) -> int:
    """The id of the mount ``fd`` lives on (statx; /proc/self/fdinfo when statx lacks it).

    The plain id is what /proc/self/mountinfo lists and may be reused after an
    unmount; ``unique`` asks for the never-reused 64-bit id where the kernel has it.
    """
    statx = getattr(_libc, "statx", None)
    if statx is not None:
        buf = _Statx()
        mask = _STATX_MNT_ID_UNIQUE if unique else _STATX_MNT_ID
        if statx(ctypes.c_int(fd), ctypes.c_char_p(b""), ctypes.c_int(_AT_EMPTY_PATH), ctypes.c_uint(mask),
                 ctypes.byref(buf)) != 0:
            raise _oserror()
        if buf.stx_mask & mask:
            return int(buf.stx_mnt_id)
        if unique:
            return _mount_id(fd)
    with open(f"/proc/self/fdinfo/{fd}", encoding="ascii") as info:
        for line in info:
            if line.startswith("mnt_id:"):
                return int(line.split()[1])
    raise OSError(errno.ENOTSUP, "the kernel reports no mount id for a file descriptor")


def _fs_type(fd: int) -> int:
    """statfs(2) f_type of the filesystem ``fd`` lives on."""
    buf = (ctypes.c_long * 32)()  # struct statfs is smaller; f_type is its first word
    if _libc.fstatfs(ctypes.c_int(fd), ctypes.byref(buf)) != 0:
        raise _oserror()
    return int(buf[0]) & 0xFFFFFFFF


def _place(fd: int) -> Tuple[int, int, int]:
    """What an fd names, mount included: the same inode seen through another mount
    namespace (whose mounts over its subdirectories differ) is another place."""
    st = os.fstat(fd)
    return st.st_dev, st.st_ino, _mount_id(fd)


def _place_of(path: str) -> Optional[Tuple[int, int, int]]:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return _place(fd)
    finally:
        os.close(fd)


def _spelling(path: str) -> str:
    """``path`` with its symlinks resolved as text, the way realpath does, except a
    link the kernel follows somewhere its text does not name (a /proc "magic link"
    such as /proc/PID/root of another mount namespace): that link is kept as
    written, since its text ("/") would name this machine's own root."""
    pending = [part for part in reversed(path.split("/")) if part]
    done = "/"
    hops = 0
    while pending:
        name = pending.pop()
        if name == ".":
            continue
        if name == "..":
            done = os.path.dirname(done)
            continue
        here = os.path.join(done, name)
        if not stat.S_ISLNK(os.lstat(here).st_mode):
            done = here
            continue
        hops += 1
        if hops > 40:
            raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)
        text = os.readlink(here)
        if _place_of(os.path.join(done, text)) == _place_of(here):
            if text.startswith("/"):
                done = "/"
            pending.extend(part for part in reversed(text.split("/")) if part)
        else:
            done = here
    return done


# A temporary file is ".NAME.kensa-" plus 12 random hex digits. A name too long for
# that within NAME_MAX (255 bytes on every Linux filesystem kensa targets) is cut to
# 218 bytes and followed by 16 hex digits of its SHA-256, so each file's temps have a
# pattern of their own that no other file's temps can match.
_NAME_MAX = 255
_TEMP_TAG = ".kensa-"
_TEMP_RANDOM_HEX = 12
_TEMP_HASH_HEX = 16


def _temp_prefix(name: str) -> str:
    """What every temporary name kensa makes for the file ``name`` starts with."""
    raw = os.fsencode(name)
    if 1 + len(raw) + len(_TEMP_TAG) + _TEMP_RANDOM_HEX <= _NAME_MAX:
        return f".{name}{_TEMP_TAG}"
    keep = _NAME_MAX - (1 + len(_TEMP_TAG) + _TEMP_HASH_HEX + 1 + _TEMP_RANDOM_HEX)
    digest = hashlib.sha256(raw).hexdigest()[:_TEMP_HASH_HEX]
    return f".{os.fsdecode(raw[:keep])}{_TEMP_TAG}{digest}-"


def _is_temp_of(entry: str, name: str) -> bool:
    prefix = _temp_prefix(name)
    tail = entry[len(prefix):]
    return (entry.startswith(prefix) and len(tail) == _TEMP_RANDOM_HEX
            and all(c in "0123456789abcdef" for c in tail))


FileKind = Literal["file", "dir"]


@dataclass(frozen=True)
class FileInfo:
    """What exists at a path: kind, permissions, ownership, xattrs, a file's bytes,
    its modification time, and what a restore cannot bring back.

    A restore by :meth:`LocalHost.write_file` renames a new file into place: the
    path gets a new inode (``ino`` changes) and, when ``nlink`` was above 1, is
    detached from its other hard links. A caller compares these to say so honestly.
    """

    kind: FileKind
    mode: int  # permission bits only (stat.S_IMODE)
    uid: int
    gid: int
    xattrs: Mapping[str, bytes] = field(default_factory=dict)
    content: Optional[bytes] = None  # read only for regular files, when asked
    mtime_ns: int = 0  # modification time, ns since the epoch
    ino: int = 0
    nlink: int = 0


def _kind_name(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISLNK, "a symlink"), (stat.S_ISDIR, "a directory"), (stat.S_ISREG, "a regular file")):
        if test(mode):
            return name
    return "a special file"


def _read_xattrs(fd: int) -> Dict[str, bytes]:
    try:
        names = os.listxattr(fd)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return {}
        raise
    return {name: os.getxattr(fd, name) for name in sorted(names)}


def _set_exact_xattrs(fd: int, wanted: Mapping[str, bytes]) -> None:
    """Make the xattrs of ``fd`` exactly ``wanted``: set missing/different, drop extra."""
    current = _read_xattrs(fd)
    for name in current:
        if name not in wanted:
            os.removexattr(fd, name)
    for name, value in wanted.items():
        if current.get(name) != value:
            os.setxattr(fd, name, value)


def _read_capped(fd: int, size: int, cap: int) -> Optional[bytes]:
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


def _set_mtime(fd: int, mtime_ns: int) -> None:
    # utime needs both times; the access time is kept as it is.
    os.utime(fd, ns=(os.fstat(fd).st_atime_ns, mtime_ns))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class _PinnedDir:
    """An O_PATH descriptor of a directory, closed when the last holder lets it go.

    The given path is followed, magic links included: ``/proc/PID/root`` pins the
    root of that process's mount namespace, which no path string could name.
    """

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)

    def __del__(self) -> None:
        with contextlib.suppress(OSError, AttributeError):
            os.close(self.fd)

    def __copy__(self) -> "_PinnedDir":
        return self  # copies share the one descriptor; it is closed once

    def __deepcopy__(self, memo: Dict[int, object]) -> "_PinnedDir":
        return self


def _light_normpath(path: str) -> str:
    """``path`` without empty and "." components; ".." is kept (lexical ".." is wrong
    after a magic link)."""
    return "/" + "/".join(part for part in path.split("/") if part not in ("", "."))


def _listed_mount_ids() -> Optional[FrozenSet[int]]:
    """Ids of the mounts of this process's mount namespace (None when /proc is not readable)."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as mounts:
            return frozenset(int(line.split(" ", 1)[0]) for line in mounts if line.strip())
    except (OSError, ValueError):
        return None


class LocalHost:
    """File, sysctl and command access to a local tree, confined to ``root``."""

    def __init__(self, root: str = "/", *, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES) -> None:
        if not isinstance(root, str) or not os.path.isabs(root):
            raise HostSelectionError(f"target root {root!r} must be an absolute path")
        if isinstance(max_file_bytes, bool) or not isinstance(max_file_bytes, int) or max_file_bytes < 0:
            raise HostSelectionError(f"max_file_bytes {max_file_bytes!r} must be a whole number of bytes, 0 or more")
        #: Largest file whose bytes this host loads (read_file, read_bytes, info(content=True)).
        self.max_file_bytes = max_file_bytes
        try:
            self._pin = _PinnedDir(root)
        except OSError as exc:
            raise HostSelectionError(f"target root {root!r} does not exist or is not a directory ({exc.strerror})") from None
        try:
            self._place = _place(self._pin.fd)
            live = _place_of("/")
        except OSError as exc:
            raise HostSelectionError(f"cannot tell which mount the target root {root!r} is on: {exc.strerror}") from None
        self._live = live == self._place
        try:
            spelled = _spelling(root)
        except OSError:
            spelled = ""
        # The name is for people (messages, keys, audit host=); it never opens anything.
        # When it cannot be shown to name the pinned directory, the given spelling is kept.
        self.root = "/" if self._live else spelled if spelled and _place_of(spelled) == self._place else _light_normpath(root)

    def __repr__(self) -> str:
        return f"LocalHost(root={self.root!r})"

    def __reduce__(self) -> Tuple[Any, Tuple[str, int]]:
        # A descriptor means nothing in another process: resolve the root again there.
        return (_rebuild, (self.root, self.max_file_bytes))

    @property
    def is_live(self) -> bool:
        """True when the target is this machine itself (the root directory of this
        process's mount namespace, however spelled): kernel state applies."""
        return self._live

    @property
    def identity(self) -> str:
        """A stable name of the pinned target directory, safe to use in a file name.

        ``"DEV:INO"`` (device and inode numbers of the root directory) when the root
        lies on a mount of this process's mount namespace, so every spelling and
        every bind mount of one tree is one identity. A root reached in another
        mount namespace (``/proc/PID/root``) adds ``":mntID"``, the kernel's id of
        that mount, since the same inode there may show other files under it. Two
        LocalHosts with equal identities change the same files: key a per-target,
        cross-process lock on it. It holds while the target directory exists.
        """
        dev, ino, mount = self._place
        listed = _listed_mount_ids()
        if listed is not None and mount in listed:
            return f"{dev}:{ino}"
        try:
            mount = _mount_id(self._pin.fd, unique=True)
        except OSError as exc:
            raise HostAccessError(exc.errno, f"cannot read the mount id of the target root {self.root}: {exc.strerror}") from exc
        return f"{dev}:{ino}:mnt{mount}"

    def where(self, path: str) -> str:
        """``path`` as the operator should read it in a message."""
        return path if self.is_live else f"{path} (under root {self.root})"

    def overlay(self, planned: Mapping[str, Optional[FileInfo]]) -> "PlannedView":
        """A read-only view of this host in which the files of ``planned`` (path ->
        what will be there, None for absent) already look as given; see :class:`PlannedView`."""
        return PlannedView(self, planned)

    # -- path resolution -------------------------------------------------------

    def _components(self, path: str) -> List[str]:
        if not isinstance(path, str) or not path.startswith("/") or "\0" in path:
            raise HostAccessError(
                errno.EINVAL, f"path {path!r} must be an absolute path (inside the target root) without NUL bytes"
            )
        try:
            os.fsencode(path)
        except UnicodeEncodeError:
            raise HostAccessError(
                errno.EINVAL, f"path {path!r} holds a character no file name can hold (a lone surrogate)"
            ) from None
        parts: List[str] = []
        for part in path.split("/"):
            if part in ("", "."):
                continue
            if part == "..":
                if not parts:
                    raise PathEscapeError(
                        f"path {path!r} climbs above the target root {self.root} with '..'; refusing it",
                        path,
                        "..",
                    )
                parts.pop()
            else:
                parts.append(part)
        return parts

    def _symlink_refusal(self, path: str, dir_fd: int, name: str) -> PathEscapeError:
        try:
            target = os.readlink(name, dir_fd=dir_fd)
        except OSError:
            target = "?"
        return PathEscapeError(
            f"path {self.where(path)}: component {name!r} is a symlink (-> {target}); "
            "kensa never follows or writes through symlinks in target paths: point the rule at the real file",
            path,
            name,
        )

    @contextlib.contextmanager
    def _parent(self, path: str) -> Iterator[Tuple[int, str]]:
        """Yield an fd of the directory holding ``path``'s final component, and that name."""
        parts = self._components(path)
        if not parts:
            raise HostAccessError(errno.EISDIR, f"path {path!r} names the target root itself, not a file")
        try:
            fd = os.open(".", _DIR_FLAGS, dir_fd=self._pin.fd)
        except OSError as exc:
            raise HostAccessError(exc.errno, f"cannot open the target root {self.root}: {exc.strerror}") from exc
        try:
            for depth, name in enumerate(parts[:-1], 1):
                try:
                    next_fd = self._open_below(path, fd, name, _DIR_FLAGS, "/" + "/".join(parts[:depth]))
                except KensaError:
                    raise
                except OSError as exc:
                    raise self._walk_error(path, fd, name, exc) from exc
                os.close(fd)
                fd = next_fd
            kernel_fs = None if self._live else _KERNEL_STATE_FS.get(_fs_type(fd))
            if kernel_fs is not None:
                raise PathEscapeError(
                    f"path {self.where(path)} is on a real {kernel_fs}, which is the running kernel's state, not the "
                    "image's; kensa refuses it under an image root: remediate the live host for kernel settings",
                    path,
                    parts[-2] if len(parts) > 1 else parts[-1],
                )
            yield fd, parts[-1]
        except KensaError:
            raise
        except OSError as exc:
            # Whatever the operation, the caller sees a KensaError naming the path.
            raise HostAccessError(exc.errno, f"{self.where(path)}: {exc.strerror or exc}") from exc
        finally:
            os.close(fd)

    def _open_below(self, path: str, dir_fd: int, name: str, flags: int, where: str) -> int:
        """Open the entry ``name`` of ``dir_fd``; under an image root never into another mount.

        The live host spans mounts by nature (/boot, /proc, /var may each be one),
        so there a walk crosses them. Under an image root (or another mount
        namespace's root) a mount point is where another filesystem, or a bind
        mount of a directory from anywhere, begins: crossing it would change files
        that are not the image's, so it is refused with :class:`PathEscapeError`
        naming the mount point. ``where`` is the entry's path inside the root.
        """
        global _openat2_works
        if self._live:
            return os.open(name, flags, dir_fd=dir_fd)
        if _openat2_works:
            try:
                return _openat2(dir_fd, name, flags, _CONFINED_RESOLVE)
            except OSError as exc:
                if exc.errno == errno.EXDEV:
                    raise self._mount_refusal(path, where) from None
                if exc.errno != errno.ENOSYS:
                    raise
                _openat2_works = False  # kernel before 5.6, or a seccomp filter: compare mount ids
        fd = os.open(name, flags, dir_fd=dir_fd)
        try:
            crossed = _mount_id(fd) != self._place[2]
        except OSError:
            os.close(fd)
            raise
        if crossed:
            os.close(fd)
            raise self._mount_refusal(path, where)
        return fd

    def _mount_refusal(self, path: str, mount_point: str) -> PathEscapeError:
        return PathEscapeError(
            f"path {self.where(path)}: {mount_point} is a mount point (another filesystem or a bind mount) inside the "
            "image root; kensa does not cross mounts there, since what is mounted may belong to another system: "
            "point --root at that filesystem itself, or unmount it",
            path,
            mount_point,
        )

    def _walk_error(self, path: str, dir_fd: int, name: str, exc: OSError) -> KensaError:
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except OSError:
            st = None
        if st is not None and stat.S_ISLNK(st.st_mode):
            return self._symlink_refusal(path, dir_fd, name)
        if st is not None and not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
            # e.g. ENXIO: a FIFO swapped in that has no reader
            return self._special_refusal(path, st.st_mode)
        if exc.errno == errno.ENOENT:
            return HostAccessError(
                exc.errno, f"path {self.where(path)}: directory {name!r} does not exist; create it first"
            )
        if exc.errno == errno.ENOTDIR:
            return HostAccessError(exc.errno, f"path {self.where(path)}: component {name!r} is not a directory")
        return HostAccessError(exc.errno, f"path {self.where(path)}: cannot open {name!r}: {exc.strerror}")

    def _check_mtime(self, path: str, mtime_ns: Optional[int]) -> None:
        if mtime_ns is None:
            return
        if isinstance(mtime_ns, bool) or not isinstance(mtime_ns, int) or not -(1 << 63) <= mtime_ns < (1 << 63):
            raise HostAccessError(
                errno.EINVAL,
                f"mtime_ns {mtime_ns!r} for {self.where(path)} must be a whole number of nanoseconds since the epoch "
                "(a signed 64-bit value); nothing was changed",
            )

    def _refuse_shared_inode(self, path: str, st: os.stat_result) -> None:
        """Refuse an in-place change of a multiply linked file of an image root."""
        if not self.is_live and stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
            raise HostAccessError(
                errno.EMLINK,
                f"{self.where(path)} has {st.st_nlink} hard links, and another link may be outside the root; "
                "kensa refuses to change it in place: replace it with a copy of its own (cp, then mv over it) first",
            )

    def _special_refusal(self, path: str, mode: int) -> HostAccessError:
        return HostAccessError(
            errno.EINVAL,
            f"{self.where(path)} is {_kind_name(mode)}, neither a regular file nor a directory; "
            "kensa refuses to open or change it: remove it or point the rule at a regular file",
        )

    def _open_final(self, path: str, dir_fd: int, name: str, flags: int) -> Optional[int]:
        """Open the final component with ``flags`` (which include O_NOFOLLOW); None if absent.

        Only a regular file or a directory is opened: the type is checked before the
        open (opening a device runs its driver) and again on the open fd (the entry
        may have been swapped in between), and a special file is closed unread.
        """
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self._walk_error(path, dir_fd, name, exc) from exc
        if stat.S_ISLNK(st.st_mode):
            raise self._symlink_refusal(path, dir_fd, name)
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
            raise self._special_refusal(path, st.st_mode)
        try:
            fd = self._open_below(path, dir_fd, name, flags, _light_normpath("/".join(self._components(path))))
        except FileNotFoundError:
            return None
        except KensaError:
            raise
        except OSError as exc:
            raise self._walk_error(path, dir_fd, name, exc) from exc
        try:
            mode = os.fstat(fd).st_mode
        except OSError as exc:
            os.close(fd)
            raise HostAccessError(exc.errno, f"cannot stat {self.where(path)}: {exc.strerror}") from exc
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            os.close(fd)
            raise self._special_refusal(path, mode)
        return fd

    # -- reading -----------------------------------------------------------------

    def info(self, path: str, *, content: bool = False) -> Optional[FileInfo]:
        """What exists at ``path`` (None when nothing does); bytes too when ``content``.

        Refuses a symlink and anything that is neither a regular file nor a directory.
        """
        with self._parent(path) as (dir_fd, name):
            fd = self._open_final(path, dir_fd, name, _READ_FLAGS)
            if fd is None:
                return None
            try:
                st = os.fstat(fd)
                kind: FileKind
                kind = "file" if stat.S_ISREG(st.st_mode) else "dir"  # _open_final refused the rest
                data = self._load(path, fd, st.st_size) if content and kind == "file" else None
                return FileInfo(
                    kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, _read_xattrs(fd), data,
                    mtime_ns=st.st_mtime_ns, ino=st.st_ino, nlink=st.st_nlink,
                )
            finally:
                os.close(fd)

    def _load(self, path: str, fd: int, size: int) -> bytes:
        cap = self.max_file_bytes
        data = None if size > cap else _read_capped(fd, size, cap)
        if data is None:
            shown = f"{size} bytes" if size > cap else f"more than {cap} bytes (it grew, or its size is not stated)"
            raise HostAccessError(
                errno.EFBIG,
                f"{self.where(path)} is {shown}, above the cap of {cap} bytes on files kensa loads; refusing to read "
                "it, nothing was changed: raise the cap (LocalHost max_file_bytes) if this file is meant to be managed",
            )
        return data

    def read_file(self, path: str) -> Optional[FileInfo]:
        """The regular file at ``path`` with its bytes, or None when absent."""
        found = self.info(path, content=True)
        if found is not None and found.kind != "file":
            raise HostAccessError(errno.EISDIR, f"{self.where(path)} is a directory, not a file")
        return found

    def read_bytes(self, path: str) -> Optional[bytes]:
        """The bytes of the regular file at ``path``, or None when absent."""
        found = self.read_file(path)
        return None if found is None else found.content

    # -- writing -----------------------------------------------------------------

    def write_file(
        self,
        path: str,
        data: bytes,
        *,
        mode: Optional[int] = None,
        uid: Optional[int] = None,
        gid: Optional[int] = None,
        xattrs: Optional[Mapping[str, bytes]] = None,
        mtime_ns: Optional[int] = None,
    ) -> None:
        """Atomically replace (or create) the regular file at ``path`` with ``data``.

        Unset ``mode``/``uid``/``gid``/``xattrs`` keep those of the file being
        replaced; for a new file they default to 0644, this process's ids, and
        whatever the kernel gives a new file (e.g. the SELinux default context).
        Given ``xattrs`` become the file's exact set. ``mtime_ns`` sets the
        modification time (a restore passes the captured one); unset, the new
        bytes get the time of this write.
        """
        self._check_mtime(path, mtime_ns)
        with self._parent(path) as (dir_fd, name):
            old_fd = self._open_final(path, dir_fd, name, _READ_FLAGS)
            old: Optional[os.stat_result] = None
            old_xattrs: Optional[Dict[str, bytes]] = None
            if old_fd is not None:
                try:
                    old = os.fstat(old_fd)
                    if not stat.S_ISREG(old.st_mode):
                        raise HostAccessError(
                            errno.EISDIR, f"{self.where(path)} exists and is not a regular file; refusing to replace it"
                        )
                    old_xattrs = _read_xattrs(old_fd)
                finally:
                    os.close(old_fd)
            if mode is None:
                mode = stat.S_IMODE(old.st_mode) if old else DEFAULT_FILE_MODE
            if uid is None:
                uid = old.st_uid if old else os.geteuid()
            if gid is None:
                gid = old.st_gid if old else os.getegid()
            if xattrs is None:
                xattrs = old_xattrs
            self._replace(path, dir_fd, name, data, mode, uid, gid, xattrs, mtime_ns)

    def _replace(
        self,
        path: str,
        dir_fd: int,
        name: str,
        data: bytes,
        mode: int,
        uid: int,
        gid: int,
        xattrs: Optional[Mapping[str, bytes]],
        mtime_ns: Optional[int],
    ) -> None:
        tmp = _temp_prefix(name) + secrets.token_hex(_TEMP_RANDOM_HEX // 2)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(tmp, flags, 0o600, dir_fd=dir_fd)
        except OSError as exc:
            raise HostAccessError(exc.errno, f"cannot create a temporary file next to {self.where(path)}: {exc.strerror}") from exc
        renamed = False
        try:
            try:
                _write_all(fd, data)
                os.fsync(fd)
                # chown clears set-id bits and security.capability, so it comes first;
                # an ACL xattr rewrites group bits, so the mode comes last.
                os.fchown(fd, uid, gid)
                if xattrs is not None:
                    _set_exact_xattrs(fd, xattrs)
                os.fchmod(fd, mode)
                if mtime_ns is not None:
                    _set_mtime(fd, mtime_ns)  # after the last write of the bytes
                os.fsync(fd)
            finally:
                os.close(fd)
            # A symlink planted at the final name after the check is replaced, never written through.
            os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            renamed = True
            os.fsync(dir_fd)
        except OSError as exc:
            raise HostAccessError(exc.errno, f"cannot write {self.where(path)}: {exc.strerror}") from exc
        finally:
            if not renamed:
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=dir_fd)

    def write_in_place(self, path: str, data: bytes) -> None:
        """Overwrite an existing regular file's bytes in place (for /proc/sys, where rename
        cannot work; its files are regular files). Anything else is refused before a byte
        of it is truncated."""
        with self._parent(path) as (dir_fd, name):
            fd = self._open_final(path, dir_fd, name, _WRITE_IN_PLACE_FLAGS)
            if fd is None:
                raise HostAccessError(errno.ENOENT, f"{self.where(path)} does not exist")
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    raise HostAccessError(errno.EISDIR, f"{self.where(path)} is a directory, not a file; refusing to write it")
                self._refuse_shared_inode(path, st)
                os.ftruncate(fd, 0)
                _write_all(fd, data)
            except KensaError:
                raise
            except OSError as exc:
                raise HostAccessError(exc.errno, f"cannot write {data!r} to {self.where(path)}: {exc.strerror}") from exc
            finally:
                os.close(fd)

    def remove_file(self, path: str) -> None:
        """Unlink the regular file at ``path`` (refusing symlinks and directories)."""
        with self._parent(path) as (dir_fd, name):
            try:
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                return
            if stat.S_ISLNK(st.st_mode):
                raise self._symlink_refusal(path, dir_fd, name)
            if not stat.S_ISREG(st.st_mode):
                raise HostAccessError(errno.EISDIR, f"{self.where(path)} is not a regular file; refusing to remove it")
            fd = self._open_final(path, dir_fd, name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)  # refuses a mount point
            if fd is None:
                return
            os.close(fd)
            try:
                os.unlink(name, dir_fd=dir_fd)
                os.fsync(dir_fd)
            except OSError as exc:
                raise HostAccessError(exc.errno, f"cannot remove {self.where(path)}: {exc.strerror}") from exc

    def leftover_temps(self, path: str) -> List[str]:
        """Temporary files kensa's own writes of ``path`` left in its directory.

        A write killed between creating its temporary file and renaming it (SIGKILL,
        power loss) leaves ``.NAME.kensa-XXXXXXXXXXXX`` behind. Only regular files
        whose names match exactly what :meth:`write_file` makes for this ``path``
        are listed (paths inside the root, sorted); symlinks, directories and other
        files' temps are not, and nothing is followed. A directory that does not
        exist holds none.
        """
        with self._parent_if_any(path) as found:
            if found is None:
                return []
            dir_fd, name = found
            return [self._sibling(path, entry) for entry in self._temps_in(dir_fd, name)]

    def remove_leftover_temps(self, path: str) -> List[str]:
        """Remove what :meth:`leftover_temps` lists for ``path``; return what was removed."""
        removed = []
        with self._parent_if_any(path) as found:
            if found is None:
                return []
            dir_fd, name = found
            for entry in self._temps_in(dir_fd, name):
                try:
                    st = os.stat(entry, dir_fd=dir_fd, follow_symlinks=False)
                    if not stat.S_ISREG(st.st_mode):
                        continue  # swapped since the listing: not kensa's
                    os.unlink(entry, dir_fd=dir_fd)
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    raise HostAccessError(
                        exc.errno, f"cannot remove kensa's leftover {self.where(self._sibling(path, entry))}: {exc.strerror}"
                    ) from exc
                removed.append(self._sibling(path, entry))
            if removed:
                os.fsync(dir_fd)
        return removed

    @contextlib.contextmanager
    def _parent_if_any(self, path: str) -> Iterator[Optional[Tuple[int, str]]]:
        """Like :meth:`_parent`, but None when a directory on the way does not exist."""
        with contextlib.ExitStack() as stack:
            found: Optional[Tuple[int, str]]
            try:
                found = stack.enter_context(self._parent(path))
            except HostAccessError as exc:
                if exc.errno != errno.ENOENT:
                    raise
                found = None
            yield found

    def _temps_in(self, dir_fd: int, name: str) -> List[str]:
        found = []
        with os.scandir(dir_fd) as entries:
            for entry in entries:
                if _is_temp_of(entry.name, name) and entry.is_file(follow_symlinks=False):
                    found.append(entry.name)
        return sorted(found)

    def _sibling(self, path: str, entry: str) -> str:
        return "/" + "/".join(self._components(path)[:-1] + [entry])

    def set_meta(
        self,
        path: str,
        *,
        mode: Optional[int] = None,
        uid: Optional[int] = None,
        gid: Optional[int] = None,
        xattrs: Optional[Mapping[str, bytes]] = None,
        mtime_ns: Optional[int] = None,
    ) -> None:
        """Set owner, group, exact xattrs, mode and modification time (ns) of the file
        or directory at ``path``; what is None is left as it is."""
        self._check_mtime(path, mtime_ns)
        with self._parent(path) as (dir_fd, name):
            fd = self._open_final(path, dir_fd, name, _READ_FLAGS)
            if fd is None:
                raise HostAccessError(errno.ENOENT, f"{self.where(path)} does not exist")
            try:
                before = os.fstat(fd)
                self._refuse_shared_inode(path, before)
                if uid is not None or gid is not None:
                    os.fchown(fd, -1 if uid is None else uid, -1 if gid is None else gid)
                    if mode is None:
                        # chown dropped any set-id bits the caller did not ask to change.
                        mode = stat.S_IMODE(before.st_mode)
                if xattrs is not None:
                    _set_exact_xattrs(fd, xattrs)
                if mode is not None:
                    os.fchmod(fd, mode)
                if mtime_ns is not None:
                    _set_mtime(fd, mtime_ns)
            except KensaError:
                raise
            except OSError as exc:
                raise HostAccessError(exc.errno, f"cannot change {self.where(path)}: {exc.strerror}") from exc
            finally:
                os.close(fd)

    # -- names and commands --------------------------------------------------

    def lookup_id(self, database: str, name: str) -> int:
        """Numeric id of ``name`` in the target root's /etc/passwd or /etc/group."""
        if database not in ("passwd", "group"):
            raise ValueError(f"unknown id database {database!r}")
        path = f"/etc/{database}"
        data = self.read_bytes(path)
        if data is None:
            raise HostAccessError(errno.ENOENT, f"cannot resolve {name!r}: {self.where(path)} does not exist")
        for line in data.decode("utf-8", "replace").splitlines():
            fields = line.split(":")
            if len(fields) >= 3 and fields[0] == name and fields[2].isdigit():
                return int(fields[2])
        raise HostAccessError(errno.ENOENT, f"{name!r} is not listed in {self.where(path)}; use a name it lists or a numeric id")

    def run(self, argv: Sequence[str], timeout: float) -> "subprocess.CompletedProcess[str]":
        """Run a command on this machine (argument list, no shell), capturing its output."""
        try:
            return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)
        except FileNotFoundError as exc:
            raise HostAccessError(errno.ENOENT, f"command {argv[0]!r} not found") from exc
        except subprocess.TimeoutExpired as exc:
            raise HostAccessError(errno.ETIMEDOUT, f"command {list(argv)!r} timed out after {timeout} s") from exc


def _rebuild(root: str, max_file_bytes: int) -> LocalHost:
    return LocalHost(root, max_file_bytes=max_file_bytes)


class PlannedView:
    """This host as it will be once some planned writes are made: reads of a planned
    path answer from the plan, every other read goes to the host, and nothing can be
    written through it.

    A transaction captures all its steps before applying any. When two steps write
    one file, the second must capture what the first will leave, not what is there
    now, or its pre-state (what its rollback restores) and its recorded post-state
    (what tells kensa's change from a later edit) would be wrong. The engine
    captures each step through a view holding what the earlier steps plan.
    """

    def __init__(self, host: "LocalHost", planned: Mapping[str, Optional[FileInfo]]) -> None:
        self._host = host
        self._planned = {os.path.normpath(path): info for path, info in planned.items()}

    def __getattr__(self, name: str) -> Any:
        if name in ("write_file", "write_in_place", "remove_file", "set_meta", "remove_leftover_temps"):
            raise AttributeError(f"{name}: a planned view of {self._host!r} is read-only")
        return getattr(self._host, name)

    def overlay(self, planned: Mapping[str, Optional[FileInfo]]) -> "PlannedView":
        return PlannedView(self._host, {**self._planned, **planned})

    def info(self, path: str, *, content: bool = False) -> Optional[FileInfo]:
        key = os.path.normpath(path)
        if key not in self._planned:
            return self._host.info(path, content=content)
        found = self._planned[key]
        if found is None or content or found.content is None:
            return found
        return FileInfo(found.kind, found.mode, found.uid, found.gid, found.xattrs, None, found.mtime_ns, found.ino, found.nlink)

    # The host's own readers, over this view's info().
    read_file = LocalHost.read_file
    read_bytes = LocalHost.read_bytes

    def __repr__(self) -> str:
        return f"PlannedView({self._host!r}, {sorted(self._planned)!r})"


def resolve_host(key: str, *, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES) -> LocalHost:
    """The local target a transaction's ``host`` key names.

    ``"localhost"`` is this machine (root "/"); an absolute path is a tree to
    remediate in place (an image or container root), which must be a directory.
    """
    if key == "localhost":
        return LocalHost("/", max_file_bytes=max_file_bytes)
    if isinstance(key, str) and key.startswith("/"):
        return LocalHost(key, max_file_bytes=max_file_bytes)
    raise HostSelectionError(f"host {key!r} is neither 'localhost' nor an absolute path to a target root")


def canonical_host_key(key: str) -> str:
    """One spelling per target: ``"localhost"`` for this machine's root, else the
    root's real path (:attr:`LocalHost.root`).

    ``"/srv/r"``, ``"/srv/r/"``, ``"/srv/./r"`` and a symlink to it name one
    tree; the engine locks, journals and audits it under the key returned
    here, so runs on it serialize and recovery sees every change to it. A root
    reached through a magic link (``/proc/PID/root`` of another mount namespace)
    keeps that link in its key, never collapsing to "localhost". Keys that name
    no directory are returned as given (resolving them is the error).
    """
    if isinstance(key, str) and key.startswith("/"):
        try:
            host = LocalHost(key)
        except HostSelectionError:
            return key
        return "localhost" if host.is_live else host.root
    return key


# The engine canonicalizes host keys with the resolver's own function.
resolve_host.canonical_key = canonical_host_key  # type: ignore[attr-defined]
