"""Targets: where a transaction's steps read and write.

:mod:`kensa.hosts.local` is the confined filesystem of this machine (``/`` or an
image root); :mod:`kensa.hosts.targetlock` serializes processes that write one
target. A remote host kind lives beside them and meets the same
:class:`kensa.hosts.protocol.Host` protocol.
"""

from kensa.errors import HostAccessError, HostSelectionError, PathEscapeError, TargetLockError, TargetLockTimeout
from kensa.hosts.local import FileInfo, LocalHost, PlannedView, canonical_host_key, resolve_host
from kensa.hosts.targetlock import TargetLocks

__all__ = [
    "FileInfo",
    "HostAccessError",
    "HostSelectionError",
    "LocalHost",
    "PathEscapeError",
    "PlannedView",
    "TargetLockError",
    "TargetLockTimeout",
    "TargetLocks",
    "canonical_host_key",
    "resolve_host",
]
