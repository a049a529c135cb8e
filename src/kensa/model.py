"""The data that crosses kensa's boundaries: transactions, steps, phases, results.

Everything here is a frozen dataclass or a str-valued enum with a closed set of
members, so results can be compared, hashed where useful, logged and journaled
without surprises.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, Mapping, Optional, Tuple
from kensa.errors import KensaError


class Phase(str, enum.Enum):
    """A phase boundary of a transaction; ``value`` is what audit records carry."""

    STARTED = "started"
    PREFLIGHT = "preflight"
    CHECK = "check"
    CAPTURE = "capture"
    APPLY = "apply"
    VALIDATE = "validate"
    ROLLBACK = "rollback"
    COMMIT = "commit"

    def __str__(self) -> str:
        return self.value


class Status(str, enum.Enum):
    """Terminal status of a transaction (a closed set)."""

    COMMITTED = "committed"
    ROLLED_BACK = "rolled_back"
    PARTIALLY_APPLIED = "partially_applied"
    ROLLBACK_FAILED = "rollback_failed"
    ERRORED = "errored"
    STAGED = "staged"
    SKIPPED = "skipped"
    RECOVERED = "recovered"

    def __str__(self) -> str:
        return self.value


def _freeze(params: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(params))


@dataclass(frozen=True)
class Step:
    """One remediation step: a mechanism name and its parameters."""

    mechanism: str
    params: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.mechanism, str) or not self.mechanism:
            raise ValueError("Step.mechanism must be a non-empty string")
        object.__setattr__(self, "params", _freeze(self.params))


@dataclass(frozen=True)
class Transaction:
    """An ordered list of steps applied to one host as a unit.

    ``host`` names the target (for the local host handlers: the target root);
    it is what serializes concurrent runs and what audit records carry.
    ``transactional`` rules must consist of capturable steps only.
    """

    rule: str
    steps: Tuple[Step, ...]
    host: str = "localhost"
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    transactional: bool = True

    def __post_init__(self) -> None:
        for name in ("rule", "host", "id"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"Transaction.{name} must be a str, got {type(getattr(self, name)).__name__}")
        object.__setattr__(self, "steps", tuple(self.steps))
        for step in self.steps:
            if not isinstance(step, Step):
                raise TypeError(f"Transaction {self.id}: steps must be Step objects, got {type(step).__name__}")


@dataclass(frozen=True)
class PreState:
    """What a capturable handler recorded before changing anything.

    ``data`` holds only JSON-like values (None, bool, int, float, str, bytes, and
    lists/dicts of these), so a journal can store it exactly.
    """

    mechanism: str
    params: Mapping[str, Any]
    data: Mapping[str, Any]

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", _freeze(self.params))
        object.__setattr__(self, "data", _freeze(self.data))


class Drift(str, enum.Enum):
    """Where a changed target stands, compared with a step's pre-state and the state it wrote.

    ``AT_PRE``: nothing of the step's change is left, there is nothing to restore.
    ``AT_POST``: exactly as the step left it; restoring the pre-state loses nothing.
    ``OUTSIDE``: changed since, but only outside the step's footprint (its key's
    line, its appended line, the mode bits it set): revert the footprint, keep the rest.
    ``CONFLICT``: the step's own change was altered, or the state is unknown:
    restoring would destroy what kensa did not write.
    """

    AT_PRE = "at_pre"
    AT_POST = "at_post"
    OUTSIDE = "outside"
    CONFLICT = "conflict"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Assessment:
    """A capturable step's :class:`Drift`, what differs (naming paths), and the handler's own plan.

    ``plan`` is opaque to everyone but the handler that made it: it carries what
    that handler needs to restore exactly what it assessed.
    """

    drift: Drift
    details: Tuple[str, ...] = ()
    plan: Any = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "details", tuple(self.details))


@dataclass(frozen=True)
class StepResult:
    """Outcome of applying one step."""

    mechanism: str
    ok: bool
    changed: bool = False
    staged: bool = False
    detail: str = ""


@dataclass(frozen=True)
class RollbackResult:
    """Outcome of reversing one step; ``ok`` is true only when read-back verified it.

    ``kept`` names later changes that were left in place (the step's own change
    was reverted around them), so the host is not exactly in its pre-state.
    """

    mechanism: str
    ok: bool
    detail: str = ""
    kept: Tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "kept", tuple(self.kept))


@dataclass(frozen=True)
class TransactionError:
    """Why a transaction did not commit: exception type, message, phase."""

    type: str
    message: str
    phase: Phase


@dataclass(frozen=True)
class TransactionResult:
    """The terminal result of one transaction."""

    txn_id: str
    rule: str
    host: str
    status: Status
    host_unchanged: bool
    timings: Mapping[Phase, float] = field(default_factory=dict)
    steps: Tuple[StepResult, ...] = ()
    rollbacks: Tuple[RollbackResult, ...] = ()
    error: Optional[TransactionError] = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "timings", MappingProxyType(dict(self.timings)))
        object.__setattr__(self, "steps", tuple(self.steps))
        object.__setattr__(self, "rollbacks", tuple(self.rollbacks))


#: What a host path may hold that kensa manages: a regular file or a directory.
FileKind = Literal["file", "dir"]


@dataclass(frozen=True)
class FileInfo:
    """What exists at a path: kind, permissions, ownership, xattrs, a file's bytes,
    its modification time, and what a restore cannot bring back.

    A restore by a host's ``write_file`` renames a new file into place: the path
    gets a new inode (``ino`` changes) and, when ``nlink`` was above 1, is
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
