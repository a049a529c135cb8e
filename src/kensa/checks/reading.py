"""How checks read a target: a path whose directories do not exist holds nothing.

A host refuses a read whose parent directory is missing (``directory 'etc' does not
exist``), which is right for a handler about to write there. A check asks what is
there, and the honest answer is nothing: :class:`Observing` answers None (absent)
for such a read (and for one through a file, as if it were a directory), so a check of a missing file says not compliant, "no such file",
instead of failing. Every other refusal (a symlink, an escape from the root, a file
above the size cap) is passed on unchanged.
"""

from __future__ import annotations

import errno
import subprocess
from typing import Any, Callable, List, Mapping, Optional, Sequence, TypeVar

from kensa.errors import HostAccessError
from kensa.hosts.overlay import FileReaders
from kensa.hosts.protocol import ReadableHost
from kensa.model import FileInfo

T = TypeVar("T")


def _absent_if_missing(read: Callable[[], Optional[T]]) -> Optional[T]:
    try:
        return read()
    except HostAccessError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return None
        raise


class Observing(FileReaders):
    """``host`` for a check: the same reads, with a missing directory on the way read as absence
    (``read_file`` and ``read_bytes`` go through :meth:`info`)."""

    def __init__(self, host: ReadableHost) -> None:
        self.host = host

    @property
    def root(self) -> str:
        return self.host.root

    @property
    def run_root(self) -> str:
        return self.host.run_root

    @property
    def is_live(self) -> bool:
        return self.host.is_live

    @property
    def identity(self) -> str:
        return self.host.identity

    @property
    def max_file_bytes(self) -> int:
        return self.host.max_file_bytes

    def where(self, path: str) -> str:
        return self.host.where(path)

    def info(self, path: str, *, content: bool = False) -> Optional[FileInfo]:
        return _absent_if_missing(lambda: self.host.info(path, content=content))

    def list_dir(self, path: str) -> Optional[List[str]]:
        return _absent_if_missing(lambda: self.host.list_dir(path))

    def leftover_temps(self, path: str) -> List[str]:
        return self.host.leftover_temps(path)

    def lookup_id(self, database: str, name: str) -> int:
        return self.host.lookup_id(database, name)

    def run(self, argv: Sequence[str], timeout: float, *, stdin_file: Optional[str] = None) -> "subprocess.CompletedProcess[str]":
        if stdin_file is None:
            return self.host.run(argv, timeout)
        return self.host.run(argv, timeout, stdin_file=stdin_file)

    def overlay(self, planned: Mapping[str, Optional[FileInfo]]) -> ReadableHost:
        return Observing(self.host.overlay(planned))

    def __repr__(self) -> str:
        return f"Observing({self.host!r})"


def observing(host: Any) -> ReadableHost:
    """``host`` as checks read it (see :class:`Observing`)."""
    return host if isinstance(host, Observing) else Observing(host)
