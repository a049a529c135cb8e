"""What a target must offer: the :class:`Host` protocol, and :class:`StepRunner`.

:class:`ReadableHost` is every read a handler, a check or the engine makes of a
target; :class:`Host` adds the writes. :class:`kensa.hosts.local.LocalHost` (a
confined tree of this machine) meets :class:`Host`;
:class:`kensa.hosts.overlay.PlannedView` (a host as earlier steps of a
transaction will leave it) meets only :class:`ReadableHost`. Paths are always
absolute paths *inside* the target's root; every failure of an operation is a
:class:`kensa.errors.HostAccessError` (or a :class:`~kensa.errors.PathEscapeError`)
naming the path.

A :class:`StepRunner` runs one phase of one step *where the host is*:
``run_phase("config_set", Phase.CAPTURE, params)`` returns the step's
:class:`~kensa.model.PreState`, ``APPLY`` its :class:`~kensa.model.StepResult`,
``VALIDATE`` a bool, ``ROLLBACK`` its :class:`~kensa.model.RollbackResult`.
:class:`kensa.hosts.local.LocalStepRunner` calls the handler in this process
with the LocalHost.

A remote host is added by implementing :class:`StepRunner`, not by making
every file operation a network call. Its runner sends one framed request per
step phase (handler name, phase, params, the pre-state for apply and rollback,
and the files earlier steps plan to leave, for a capture) over the connection
to a kensa agent on the target; the agent runs the same handler there with a
LocalHost of its own root, confined by the same rules, and sends back the
result, or the error with its type and message. Everything that crosses is a
frozen dataclass of :mod:`kensa.model` (JSON-like values and bytes), so it
serializes the way the journal already stores it. A phase is then one round
trip, whatever number of files it reads and writes; the engine, the journal and
the audit emitter stay on the controller. The same agent can answer the
:class:`Host` calls themselves for checks, one round trip each.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, List, Mapping, Optional, Protocol, Sequence, Union, runtime_checkable

if TYPE_CHECKING:
    import subprocess

from kensa.model import FileInfo, Phase, PreState, RollbackResult, StepResult

__all__ = ["STEP_PHASES", "Host", "PhaseHandler", "PhaseOutcome", "ReadableHost", "StepRunner", "Transport"]


@runtime_checkable
class ReadableHost(Protocol):
    """Every read of a target kensa makes; nothing here changes it."""

    @property
    def root(self) -> str:
        """The target root's name, for messages, keys and audit ``host=``."""
        ...

    @property
    def run_root(self) -> str:
        """The root's path as the commands of :meth:`run` see it (``systemctl --root``,
        ``rpm --root``): where the target is, which for a remote host is not :attr:`root`."""
        ...

    @property
    def is_live(self) -> bool:
        """True when the target is the running machine itself: kernel state applies."""
        ...

    @property
    def identity(self) -> str:
        """A stable name of the target, usable in a file name: equal identities, same files."""
        ...

    @property
    def max_file_bytes(self) -> int:
        """Largest file whose bytes the host loads; a larger one is refused (EFBIG)."""
        ...

    def where(self, path: str) -> str:
        """``path`` as an operator should read it in a message."""
        ...

    def info(self, path: str, *, content: bool = False) -> Optional[FileInfo]:
        """What exists at ``path`` (None when nothing does); its bytes too when ``content``."""
        ...

    def read_file(self, path: str) -> Optional[FileInfo]:
        """The regular file at ``path`` with its bytes, or None when absent."""
        ...

    def read_bytes(self, path: str) -> Optional[bytes]:
        """The bytes of the regular file at ``path``, or None when absent."""
        ...

    def list_dir(self, path: str) -> Optional[List[str]]:
        """The names of the entries of the directory at ``path``, sorted; None when absent."""
        ...

    def leftover_temps(self, path: str) -> List[str]:
        """Temporary files an interrupted write of ``path`` left beside it."""
        ...

    def lookup_id(self, database: str, name: str) -> int:
        """Numeric id of ``name`` in the target's ``passwd`` or ``group`` database."""
        ...

    def run(self, argv: Sequence[str], timeout: float, *, stdin_file: Optional[str] = None) -> "subprocess.CompletedProcess[str]":
        """Run a command on the target (argument list, no shell), capturing its output; its
        standard input is closed, or with ``stdin_file`` the regular file at that path, opened
        under the root where the command runs (a command reading ``-`` then reads exactly it)."""
        ...

    def overlay(self, planned: Mapping[str, Optional[FileInfo]]) -> "ReadableHost":
        """A read-only view in which ``planned`` (path -> what will be there, None:
        absent) already holds."""
        ...


@runtime_checkable
class Host(ReadableHost, Protocol):
    """A target kensa can change: the reads and the writes."""

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
        """Atomically replace (or create) the regular file at ``path``."""
        ...

    def write_in_place(self, path: str, data: bytes) -> None:
        """Overwrite an existing regular file's bytes in place (kernel files under /proc/sys)."""
        ...

    def remove_file(self, path: str) -> None:
        """Unlink the regular file at ``path``; nothing there is not an error."""
        ...

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
        """Set what is given of mode, owner, group, exact xattrs and mtime of ``path``."""
        ...

    def remove_leftover_temps(self, path: str) -> List[str]:
        """Remove what :meth:`leftover_temps` lists; return what was removed."""
        ...


#: The phases a step runner runs, one call each.
STEP_PHASES = frozenset({Phase.CAPTURE, Phase.APPLY, Phase.VALIDATE, Phase.ROLLBACK})

#: What a phase returns: capture a PreState, apply a StepResult, validate a bool,
#: rollback a RollbackResult.
PhaseOutcome = Union[PreState, StepResult, bool, RollbackResult]


class PhaseHandler(Protocol):
    """The part of a handler a step runner calls: its four step phases.

    Capture and validate only read the host (the engine passes a planned view
    to a capture); apply and rollback write it.
    """

    name: str

    def capture(self, host: ReadableHost, params: Mapping[str, Any]) -> PreState: ...

    def apply(self, host: Host, params: Mapping[str, Any], pre: Optional[PreState]) -> StepResult: ...

    def validate(self, host: ReadableHost, params: Mapping[str, Any]) -> bool: ...

    def rollback(self, host: Host, pre: PreState) -> RollbackResult: ...


@runtime_checkable
class StepRunner(Protocol):
    """Runs one phase of one step where the host is: one round trip per phase."""

    def run_phase(
        self,
        handler: str,
        phase: Phase,
        params: Mapping[str, Any],
        pre: Optional[PreState] = None,
        planned: Optional[Mapping[str, Optional[FileInfo]]] = None,
    ) -> PhaseOutcome:
        """Run ``phase`` of the step of mechanism ``handler`` with ``params``.

        ``pre`` is the step's captured pre-state (apply may use it; rollback
        needs it). ``planned`` (capture and validate only) is what earlier steps
        of the transaction will leave: the phase sees the host through an
        overlay of it.
        """
        ...


@runtime_checkable
class Transport(Protocol):
    """How a command reaches a target: the system SSH client, or a plain subprocess.

    The agent's client uses a transport to start kensa's agent on the target;
    :mod:`kensa.hosts.ssh` is the OpenSSH one.
    """

    @property
    def name(self) -> str:
        """The target as messages name it (``user@host:port``)."""
        ...

    def spawn(self, argv: Sequence[str], ready: bytes, timeout: float) -> "subprocess.Popen[bytes]":
        """Start ``argv`` on the target with piped stdin and stdout.

        Runs it as root when the transport is set to use sudo, answering a sudo
        password prompt itself, and returns once the process wrote the line
        ``ready`` on stdout. Raises a :class:`kensa.errors.RemoteHostError`
        subclass naming the host otherwise (unreachable, login refused, changed
        host key, timeout, or the command's own error output).
        """
        ...

    def close(self) -> None:
        """End the connection (and its control master); calling it again does nothing."""
        ...
