"""Resolution of paths under a pinned target root: nothing a path names can lead outside it.

Every path a handler names is absolute and is resolved *inside* the target root,
one component at a time, with ``O_NOFOLLOW`` and directory file descriptors, so
neither ``..`` nor a symlink can lead outside it.

The root is opened once, when the :class:`ConfinedRoot` is made, following the
given path (so ``/proc/PID/root``, a "magic link", pins the root of that
process's mount namespace, which no path string could name), and held open as an
``O_PATH`` directory descriptor; every walk starts from it and it is never turned
back into a path. Renaming or swapping the root or one of its ancestors for a
symlink afterwards therefore cannot redirect kensa to another tree: it keeps
working on the directory it pinned (if that directory is deleted, operations fail
with :class:`HostAccessError`). :attr:`ConfinedRoot.name` is only the root's name
for messages and keys; :attr:`ConfinedRoot.identity` names the pinned directory
itself.

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
- Changing a file in place acts on its inode, which every hard link to it
  shares, and a link may live outside the root: :meth:`ConfinedRoot.refuse_shared_inode`
  refuses a regular file with more than one link under an image root.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from typing import Dict, FrozenSet, Iterator, List, Optional, Tuple

from kensa.errors import HostAccessError, HostSelectionError, KensaError, PathEscapeError
from kensa.hosts import syscalls
from kensa.hosts.syscalls import (
    KERNEL_STATE_FS,
    RESOLVE_BENEATH,
    RESOLVE_NO_SYMLINKS,
    RESOLVE_NO_XDEV,
    fs_type,
    mount_id,
    openat2,
)

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC
_CONFINED_RESOLVE = RESOLVE_NO_XDEV | RESOLVE_NO_SYMLINKS | RESOLVE_BENEATH


def _place(fd: int) -> Tuple[int, int, int]:
    """What an fd names, mount included: the same inode seen through another mount
    namespace (whose mounts over its subdirectories differ) is another place."""
    st = os.fstat(fd)
    return st.st_dev, st.st_ino, mount_id(fd)


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


def _kind_name(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISLNK, "a symlink"), (stat.S_ISDIR, "a directory"), (stat.S_ISREG, "a regular file")):
        if test(mode):
            return name
    return "a special file"


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


class ConfinedRoot:
    """A target root pinned as a directory descriptor, and walks confined beneath it.

    Raises :class:`HostSelectionError` when ``root`` (an absolute path) names no
    directory or its mount cannot be told.
    """

    def __init__(self, root: str) -> None:
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
        self.name = "/" if self._live else spelled if spelled and _place_of(spelled) == self._place else _light_normpath(root)

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
            mount = mount_id(self._pin.fd, unique=True)
        except OSError as exc:
            raise HostAccessError(exc.errno, f"cannot read the mount id of the target root {self.name}: {exc.strerror}") from exc
        return f"{dev}:{ino}:mnt{mount}"

    def where(self, path: str) -> str:
        """``path`` as the operator should read it in a message."""
        return path if self.is_live else f"{path} (under root {self.name})"

    def components(self, path: str) -> List[str]:
        """The names ``path`` walks through below the root, ``..`` resolved lexically."""
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
                        f"path {path!r} climbs above the target root {self.name} with '..'; refusing it",
                        path,
                        "..",
                    )
                parts.pop()
            else:
                parts.append(part)
        return parts

    def symlink_refusal(self, path: str, dir_fd: int, name: str) -> PathEscapeError:
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
    def parent(self, path: str) -> Iterator[Tuple[int, str]]:
        """Yield an fd of the directory holding ``path``'s final component, and that name."""
        parts = self.components(path)
        if not parts:
            raise HostAccessError(errno.EISDIR, f"path {path!r} names the target root itself, not a file")
        fd = self.open_root()
        try:
            for depth, name in enumerate(parts[:-1], 1):
                try:
                    next_fd = self._open_below(path, fd, name, DIR_FLAGS, "/" + "/".join(parts[:depth]))
                except KensaError:
                    raise
                except OSError as exc:
                    raise self._walk_error(path, fd, name, exc) from exc
                os.close(fd)
                fd = next_fd
            kernel_fs = None if self._live else KERNEL_STATE_FS.get(fs_type(fd))
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
        if self._live:
            return os.open(name, flags, dir_fd=dir_fd)
        if syscalls.openat2_works:
            try:
                return openat2(dir_fd, name, flags, _CONFINED_RESOLVE)
            except OSError as exc:
                if exc.errno == errno.EXDEV:
                    raise self._mount_refusal(path, where) from None
                if exc.errno != errno.ENOSYS:
                    raise
                # openat2 is now marked unusable here: compare mount ids instead.
        fd = os.open(name, flags, dir_fd=dir_fd)
        try:
            crossed = mount_id(fd) != self._place[2]
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
            return self.symlink_refusal(path, dir_fd, name)
        if st is not None and not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
            # e.g. ENXIO: a FIFO swapped in that has no reader
            return self.special_refusal(path, st.st_mode)
        if exc.errno == errno.ENOENT:
            return HostAccessError(
                exc.errno, f"path {self.where(path)}: directory {name!r} does not exist; create it first"
            )
        if exc.errno == errno.ENOTDIR:
            return HostAccessError(exc.errno, f"path {self.where(path)}: component {name!r} is not a directory")
        return HostAccessError(exc.errno, f"path {self.where(path)}: cannot open {name!r}: {exc.strerror}")

    def check_mtime(self, path: str, mtime_ns: Optional[int]) -> None:
        if mtime_ns is None:
            return
        if isinstance(mtime_ns, bool) or not isinstance(mtime_ns, int) or not -(1 << 63) <= mtime_ns < (1 << 63):
            raise HostAccessError(
                errno.EINVAL,
                f"mtime_ns {mtime_ns!r} for {self.where(path)} must be a whole number of nanoseconds since the epoch "
                "(a signed 64-bit value); nothing was changed",
            )

    def refuse_shared_inode(self, path: str, st: os.stat_result) -> None:
        """Refuse an in-place change of a multiply linked file of an image root."""
        if not self.is_live and stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
            raise HostAccessError(
                errno.EMLINK,
                f"{self.where(path)} has {st.st_nlink} hard links, and another link may be outside the root; "
                "kensa refuses to change it in place: replace it with a copy of its own (cp, then mv over it) first",
            )

    def special_refusal(self, path: str, mode: int) -> HostAccessError:
        return HostAccessError(
            errno.EINVAL,
            f"{self.where(path)} is {_kind_name(mode)}, neither a regular file nor a directory; "
            "kensa refuses to open or change it: remove it or point the rule at a regular file",
        )

    def open_final(self, path: str, dir_fd: int, name: str, flags: int) -> Optional[int]:
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
            raise self.symlink_refusal(path, dir_fd, name)
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
            raise self.special_refusal(path, st.st_mode)
        try:
            fd = self._open_below(path, dir_fd, name, flags, _light_normpath("/".join(self.components(path))))
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
            raise self.special_refusal(path, mode)
        return fd

    def open_root(self) -> int:
        """A new fd of the root directory itself (:meth:`parent` refuses to name it); the caller closes it."""
        try:
            fd = os.open(".", DIR_FLAGS, dir_fd=self._pin.fd)
            removed = os.fstat(fd).st_nlink == 0
        except OSError as exc:
            raise HostAccessError(exc.errno, f"cannot open the target root {self.name}: {exc.strerror}") from exc
        if removed:
            # The pinned directory was deleted: every path below it would look absent. ESTALE,
            # not ENOENT, so that no "nothing there" reading (parent_if_any) takes it for absence.
            os.close(fd)
            raise HostAccessError(errno.ESTALE, f"the target root {self.name} was removed after kensa opened it")
        return fd

    def listing(self, path: str, fd: int) -> List[str]:
        """The sorted names of the directory ``path`` open as ``fd``, which is closed."""
        try:
            return sorted(os.listdir(fd))
        except OSError as exc:
            raise HostAccessError(exc.errno, f"cannot list {self.where(path)}: {exc.strerror}") from exc
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def parent_if_any(self, path: str) -> Iterator[Optional[Tuple[int, str]]]:
        """Like :meth:`parent`, but None when a directory on the way does not exist (a removed
        root is still an error: :meth:`open_root` raises ESTALE for it)."""
        with contextlib.ExitStack() as stack:
            found: Optional[Tuple[int, str]]
            try:
                found = stack.enter_context(self.parent(path))
            except HostAccessError as exc:
                if exc.errno != errno.ENOENT:
                    raise
                found = None
            yield found

    def sibling(self, path: str, entry: str) -> str:
        """The path, inside the root, of ``entry`` in the directory holding ``path``."""
        return "/" + "/".join(self.components(path)[:-1] + [entry])
