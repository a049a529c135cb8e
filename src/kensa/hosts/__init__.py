"""Targets: where a transaction's steps read and write.

:mod:`kensa.hosts.protocol` says what a target offers (:class:`Host`,
:class:`ReadableHost`) and how a step's phase runs where the target is
(:class:`StepRunner`). :mod:`kensa.hosts.local` is the confined filesystem of
this machine (``/`` or an image root), resolving paths with
:mod:`kensa.hosts.confine` over the system calls of :mod:`kensa.hosts.syscalls`;
:mod:`kensa.hosts.overlay` is a host as planned writes will leave it;
:mod:`kensa.hosts.targetlock` serializes processes that write one target.
:mod:`kensa.hosts.remote` reaches a remote target through kensa's agent
(:mod:`kensa.hosts.agent`, sent as :mod:`kensa.hosts.payload` builds it) and
meets the same protocols.
"""

from typing import TYPE_CHECKING

from kensa._exports import lazy_exports
from kensa.errors import HostAccessError, HostSelectionError, PathEscapeError, TargetLockError, TargetLockTimeout

if TYPE_CHECKING:
    from kensa.hosts.local import FileInfo, LocalHost, LocalStepRunner, PlannedView, canonical_host_key, resolve_host
    from kensa.hosts.protocol import Host, ReadableHost, StepRunner, Transport
    from kensa.hosts.remote import RemoteHost, RemoteHosts, SubprocessTransport, connect
    from kensa.hosts.targetlock import TargetLocks

# Imported on first use: a command on this machine's root needs no SSH transport, and a
# module such as kensa.hosts.protocol is imported without the rest of the package.
__getattr__, __dir__ = lazy_exports(__name__, globals(), {
    "kensa.hosts.local": ["FileInfo", "LocalHost", "LocalStepRunner", "PlannedView", "canonical_host_key", "resolve_host"],
    "kensa.hosts.protocol": ["Host", "ReadableHost", "StepRunner", "Transport"],
    "kensa.hosts.remote": ["RemoteHost", "RemoteHosts", "SubprocessTransport", "connect"],
    "kensa.hosts.targetlock": ["TargetLocks"],
})

__all__ = [
    "FileInfo",
    "Host",
    "HostAccessError",
    "HostSelectionError",
    "LocalHost",
    "LocalStepRunner",
    "PathEscapeError",
    "PlannedView",
    "ReadableHost",
    "RemoteHost",
    "RemoteHosts",
    "StepRunner",
    "SubprocessTransport",
    "TargetLockError",
    "TargetLockTimeout",
    "TargetLocks",
    "Transport",
    "canonical_host_key",
    "connect",
    "resolve_host",
]
