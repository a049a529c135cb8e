"""A host as it will be once planned writes are made: :class:`PlannedView`.

A transaction captures all its steps before applying any. When two steps write
one file, the second must capture what the first will leave, not what is there
now, or its pre-state (what its rollback restores) and its recorded post-state
(what tells kensa's change from a later edit) would be wrong. The engine
captures each step through a view holding what the earlier steps plan.
"""

from __future__ import annotations

import errno
import os
from typing import TYPE_CHECKING, Any, List, Mapping, Optional, Protocol, Sequence

if TYPE_CHECKING:
    import subprocess

from kensa.errors import HostAccessError
from kensa.hosts.protocol import Host
from kensa.model import FileInfo


class _Inspects(Protocol):
    def info(self, path: str, *, content: bool = False) -> Optional[FileInfo]: ...

    def where(self, path: str) -> str: ...


class FileReaders:
    """``read_file`` and ``read_bytes`` over a host's own ``info`` and ``where``."""

    def read_file(self: _Inspects, path: str) -> Optional[FileInfo]:
        """The regular file at ``path`` with its bytes, or None when absent."""
        found = self.info(path, content=True)
        if found is not None and found.kind != "file":
            raise HostAccessError(errno.EISDIR, f"{self.where(path)} is a directory, not a file")
        return found

    def read_bytes(self: _Inspects, path: str) -> Optional[bytes]:
        """The bytes of the regular file at ``path``, or None when absent."""
        found = FileReaders.read_file(self, path)
        return None if found is None else found.content


# What a view refuses: it changes nothing.
_WRITES = frozenset({
    "write_file", "write_in_place", "remove_file", "set_meta", "remove_leftover_temps",
    "make_link", "remove_link", "make_dir", "remove_dir",
})


class PlannedView(FileReaders):
    """``host`` as it will be once ``planned`` (path -> what will be there, None for
    absent) is written: reads of a planned path answer from the plan, every other
    read goes to the host, and nothing can be written through it.

    It meets :class:`kensa.hosts.protocol.ReadableHost`, not :class:`~kensa.hosts.protocol.Host`.
    """

    def __init__(self, host: Host, planned: Mapping[str, Optional[FileInfo]]) -> None:
        self._host = host
        self._planned = {os.path.normpath(path): info for path, info in planned.items()}

    @property
    def base(self) -> Host:
        """The host this view lies over (a remote host's handlers send the plan to its agent)."""
        return self._host

    @property
    def planned_files(self) -> Mapping[str, Optional[FileInfo]]:
        """What this view says will be there: normalized path -> file (None: absent)."""
        return dict(self._planned)

    @property
    def root(self) -> str:
        return self._host.root

    @property
    def run_root(self) -> str:
        return self._host.run_root

    @property
    def is_live(self) -> bool:
        return self._host.is_live

    @property
    def identity(self) -> str:
        return self._host.identity

    @property
    def max_file_bytes(self) -> int:
        return self._host.max_file_bytes

    def where(self, path: str) -> str:
        return self._host.where(path)

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

    def list_dir(self, path: str) -> Optional[List[str]]:
        """The host's entries of ``path`` with the planned files of that directory
        added (or, planned absent, left out)."""
        listed = self._host.list_dir(path)
        directory = os.path.normpath(path)
        planned = {os.path.basename(key): info for key, info in self._planned.items() if os.path.dirname(key) == directory}
        added = {name for name, info in planned.items() if info is not None}
        if listed is None and not added:
            return None
        return sorted((set(listed or ()) | added) - {name for name, info in planned.items() if info is None})

    def leftover_temps(self, path: str) -> List[str]:
        return self._host.leftover_temps(path)

    def lookup_id(self, database: str, name: str) -> int:
        return self._host.lookup_id(database, name)

    def run(self, argv: Sequence[str], timeout: float, *, stdin_file: Optional[str] = None) -> "subprocess.CompletedProcess[str]":
        if stdin_file is not None and os.path.normpath(stdin_file) in self._planned:
            # The command runs on the host, which does not hold the planned file yet.
            raise HostAccessError(errno.EAGAIN, f"{self.where(stdin_file)} is only planned: no command can read it yet")
        if stdin_file is None:
            return self._host.run(argv, timeout)
        return self._host.run(argv, timeout, stdin_file=stdin_file)

    if not TYPE_CHECKING:
        # Hidden from type checkers, so a view never passes for a writable Host there.
        def __getattr__(self, name: str) -> Any:
            if name in _WRITES:
                raise AttributeError(f"{name}: a planned view of {self._host!r} is read-only")
            return getattr(self._host, name)

    def __repr__(self) -> str:
        return f"PlannedView({self._host!r}, {sorted(self._planned)!r})"
