"""Symlinks and directories of a confined tree: what ``systemctl enable`` and ``mask`` change.

Enabling a unit is a symlink in a ``.wants`` directory; masking one is a symlink
to /dev/null. A step that changes those must read every link exactly (its target
as text, never followed) and put back links and directories it removed or
created. :class:`SymlinkOps` gives a :class:`~kensa.hosts.local.LocalHost` those
operations under the same confinement as its files: the directory holding the
entry is reached through :class:`~kensa.hosts.confine.ConfinedRoot` (no symlink or
``..`` on the way, no mount crossed under an image root), and the entry itself is
acted on through that directory's descriptor, so a link is read or removed,
never followed.

Handlers reach these through :func:`link_host`, which names the host when it
cannot (a read-only planned view answers reads and refuses the writes).
"""

from __future__ import annotations

import errno
import os
import stat
from typing import Any, Callable, Optional, Protocol, runtime_checkable

from kensa.errors import HostAccessError
from kensa.hosts.confine import ConfinedRoot

__all__ = ["LinkHost", "LinkReader", "SymlinkOps", "link_host", "link_reader"]


@runtime_checkable
class LinkReader(Protocol):
    """A host that can read a symlink's target without following it."""

    def read_link(self, path: str) -> Optional[str]: ...


@runtime_checkable
class LinkHost(LinkReader, Protocol):
    """A host that can also create and remove symlinks and directories."""

    def make_link(self, path: str, target: str) -> None: ...

    def remove_link(self, path: str) -> None: ...

    def make_dir(self, path: str, mode: int, uid: int, gid: int) -> None: ...

    def remove_dir(self, path: str) -> None: ...


def link_reader(host: Any) -> LinkReader:
    """``host`` as a :class:`LinkReader`; a HostAccessError (ENOTSUP) naming it when it is not."""
    if not callable(getattr(host, "read_link", None)):
        raise HostAccessError(errno.ENOTSUP, f"{host!r} cannot read symlinks, which this step captures")
    return host  # type: ignore[no-any-return]


def link_host(host: Any) -> LinkHost:
    """``host`` as a :class:`LinkHost`; a HostAccessError (ENOTSUP) naming it when it is not."""
    for name in ("read_link", "make_link", "remove_link", "make_dir", "remove_dir"):
        if not callable(getattr(host, name, None)):
            raise HostAccessError(errno.ENOTSUP, f"{host!r} cannot {name.replace('_', ' ')}s, which this step needs")
    return host  # type: ignore[no-any-return]


def _lstat(dir_fd: int, name: str) -> Optional[os.stat_result]:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


class SymlinkOps:
    """Symlink and directory operations of a host confined by its ``_tree``."""

    _tree: ConfinedRoot

    def read_link(self, path: str) -> Optional[str]:
        """The target (as text) of the symlink at ``path``; None when nothing or no symlink is there."""
        with self._tree.parent_if_any(path) as found:
            if found is None:
                return None
            dir_fd, name = found
            st = _lstat(dir_fd, name)
            if st is None or not stat.S_ISLNK(st.st_mode):
                return None
            return os.readlink(name, dir_fd=dir_fd)

    def make_link(self, path: str, target: str) -> None:
        """Create the symlink ``path`` -> ``target``; anything already at ``path`` is refused (EEXIST)."""
        if not target or "\0" in target:
            raise HostAccessError(errno.EINVAL, f"symlink target {target!r} of {self._tree.where(path)} is empty or holds NUL")
        with self._tree.parent(path) as (dir_fd, name):
            os.symlink(target, name, dir_fd=dir_fd)
            os.fsync(dir_fd)

    def remove_link(self, path: str) -> None:
        """Remove the symlink at ``path`` (nothing there is not an error; anything else there is refused)."""
        self._remove(path, stat.S_ISLNK, errno.EINVAL, "a symlink")

    def make_dir(self, path: str, mode: int, uid: int, gid: int) -> None:
        """Create the directory ``path`` with exactly ``mode``, owner and group (EEXIST when something is there)."""
        with self._tree.parent(path) as (dir_fd, name):
            os.mkdir(name, 0o700, dir_fd=dir_fd)
            fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
            try:
                os.fchown(fd, uid, gid)
                os.fchmod(fd, mode)
            finally:
                os.close(fd)
            os.fsync(dir_fd)

    def remove_dir(self, path: str) -> None:
        """Remove the empty directory at ``path`` (nothing there is not an error; ENOTEMPTY when it holds entries)."""
        self._remove(path, stat.S_ISDIR, errno.ENOTDIR, "a directory")

    def _remove(self, path: str, is_kind: Callable[[int], bool], refusal: int, kind: str) -> None:
        with self._tree.parent_if_any(path) as found:
            if found is None:
                return
            dir_fd, name = found
            st = _lstat(dir_fd, name)
            if st is None:
                return
            if not is_kind(st.st_mode):
                raise HostAccessError(refusal, f"{self._tree.where(path)} is not {kind}; refusing to remove it")
            if stat.S_ISDIR(st.st_mode):
                os.rmdir(name, dir_fd=dir_fd)
            else:
                os.unlink(name, dir_fd=dir_fd)
            os.fsync(dir_fd)
