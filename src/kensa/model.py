"""The data that crosses kensa's boundaries: transactions, steps, phases, results.

Everything here is a frozen dataclass or a str-valued enum with a closed set of
members, so results can be compared, hashed where useful, logged and journaled
without surprises.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any, Literal, Mapping, Optional, Sequence, Tuple


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
    MANUAL = "manual"
    """Not compliant, and only an operator can remediate it (a ``manual`` step): nothing was applied."""

    def __str__(self) -> str:
        return self.value


class Verdict(str, enum.Enum):
    """What checking one rule on one host found (a closed set).

    ``compliant`` and ``not_compliant`` are definite verdicts. ``not_applicable``:
    the rule's platforms, ``when`` gates or dependencies say it does not apply
    there. ``not_assessable``: this kind of target cannot answer the check (a
    ``command`` check on an image root), with the reason. ``unsupported``: kensa
    cannot carry out the rule's check. ``error``: a real fault while checking.
    """

    COMPLIANT = "compliant"
    NOT_COMPLIANT = "not_compliant"
    NOT_APPLICABLE = "not_applicable"
    NOT_ASSESSABLE = "not_assessable"
    UNSUPPORTED = "unsupported"
    ERROR = "error"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Finding:
    """What evaluating a check (or a rule's checks) on a host found: a verdict and
    what it rests on, in words an operator can act on ("/etc/ssh/sshd_config:
    PermitRootLogin is 'yes', expected 'no'", "/etc/x: no such file").

    ``verdict`` is compliant, not_compliant or not_assessable (this kind of target
    cannot answer the check; ``detail`` says why). A fault while checking is raised,
    not returned.
    """

    verdict: Verdict
    detail: str = ""

    @property
    def holds(self) -> bool:
        """True only for a compliant verdict."""
        return self.verdict is Verdict.COMPLIANT

    def __bool__(self) -> bool:
        # A finding is always an object: ``if finding:`` would call every verdict compliant.
        raise TypeError("a Finding has no truth value: test .holds or .verdict")


@dataclass(frozen=True)
class CheckResult:
    """The verdict of one rule's check on one host, and what it rests on.

    ``check`` names what decided it: the check method that did not hold (or,
    compliant, every method that held, comma-separated), ``validate:<mechanism>``
    when the rule has no check and its steps' own validation decided, "" when no
    check ran. ``implementation`` is the one chosen (``implementations[1]``), ""
    when none was; ``source`` is the rule's file:line.
    """

    rule: str
    host: str
    verdict: Verdict
    detail: str = ""
    check: str = ""
    implementation: str = ""
    source: str = ""


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


class ServiceVerb(str, enum.Enum):
    """What a service action asks of the service manager (``systemctl <verb> UNIT``)."""

    RESTART = "restart"
    RELOAD = "reload"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class ServiceAction:
    """A service action a rule's remediation asks for once its change is in place.

    ``at_end`` False (``restart``/``reload``): right after the transaction commits;
    when it fails, a transactional rule's change is rolled back. ``at_end`` True
    (``notify``): once per host, verb and unit at the end of the run, however
    many rules asked for it.
    """

    verb: ServiceVerb
    unit: str
    at_end: bool = False


class ServiceStatus(str, enum.Enum):
    """What became of one service action (a closed set)."""

    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped"  # no service manager to ask: an image root, or systemd not running
    PENDING = "pending"  # a ``notify``: runs at the end of the run

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class ServiceOutcome:
    """One service action and what became of it; ``detail`` says why for failed and skipped."""

    verb: ServiceVerb
    unit: str
    status: ServiceStatus
    detail: str = ""


def new_transaction_id() -> str:
    """A fresh random transaction id (a UUID4 string)."""
    # Imported here: uuid imports platform, and a remote command would pay both before its first login.
    import uuid

    return str(uuid.uuid4())


@dataclass(frozen=True)
class Transaction:
    """An ordered list of steps applied to one host as a unit.

    ``host`` names the target (for the local host handlers: the target root);
    it is what serializes concurrent runs and what audit records carry.
    ``transactional`` rules must consist of capturable steps only.
    ``services`` are carried out after the steps commit (see :class:`ServiceAction`).
    """

    rule: str
    steps: Tuple[Step, ...]
    host: str = "localhost"
    id: str = field(default_factory=new_transaction_id)
    transactional: bool = True
    services: Tuple[ServiceAction, ...] = ()

    def __post_init__(self) -> None:
        for name in ("rule", "host", "id"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"Transaction.{name} must be a str, got {type(getattr(self, name)).__name__}")
        object.__setattr__(self, "steps", tuple(self.steps))
        object.__setattr__(self, "services", tuple(self.services))
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
    """Outcome of applying one step; ``skipped``: not applied, because its ``unless``
    command exited 0 (already done), so it changed nothing and has nothing to undo."""

    mechanism: str
    ok: bool
    changed: bool = False
    staged: bool = False
    detail: str = ""
    skipped: bool = False


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
    services: Tuple[ServiceOutcome, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "timings", MappingProxyType(dict(self.timings)))
        object.__setattr__(self, "steps", tuple(self.steps))
        object.__setattr__(self, "rollbacks", tuple(self.rollbacks))
        object.__setattr__(self, "services", tuple(self.services))


# --- what the journal gives back ------------------------------------------------


@dataclass(frozen=True)
class JournalEntry:
    """One transaction as the journal knows it.

    ``seq`` is the entry's place in the journal: assigned when the entry is
    created (at ``begin``, or at ``finish`` for a result-only entry), strictly
    increasing, never reused. Order and "later than" are decided by ``seq``,
    never by ``created``, which is wall-clock time and can step back.

    ``pre_states`` is aligned with ``txn.steps`` (None for a step that has no
    captured pre-state). Entries from ``SqliteJournal.get`` and
    ``SqliteJournal.interrupted`` carry them loaded, as a tuple; entries from
    ``SqliteJournal.history`` carry a sequence that reads them from the (still
    open) journal at each access and keeps nothing, so listings never load
    pre-states and a walk over a long history holds one entry's at a time.
    Reading them raises :class:`kensa.errors.JournalCorruptError` when they
    fail their SHA-256 check or cannot be decoded. They are left out of the
    entry's ``repr`` and equality (a pre-state can be a whole file).
    ``corrupt`` is None for a readable entry, else why it is not (then
    ``pre_states`` raises, and ``txn.steps`` is empty when the steps
    themselves are unreadable). ``result`` is None while the transaction is
    interrupted. ``intent_recorded`` is False for a transaction that ended
    before ``begin`` (skipped, errored in preflight): only its result is known,
    so ``txn.steps`` is empty and ``txn.transactional`` is not meaningful.
    ``recovered`` is True when ``result`` was written by recovery after an
    interruption. ``later_rollback`` is the result of rolling a committed
    transaction back by id afterwards; ``result`` keeps the original outcome.
    Timestamps are timezone-aware UTC, to the microsecond.
    """

    txn: Transaction
    pre_states: Sequence[Optional[PreState]] = field(repr=False, compare=False)
    result: Optional[TransactionResult]
    created: datetime
    finished: Optional[datetime]
    intent_recorded: bool = True
    recovered: bool = False
    later_rollback: Optional[TransactionResult] = None
    later_rollback_at: Optional[datetime] = None
    seq: int = 0
    corrupt: Optional[str] = None
    _result_recorded: bool = field(default=False, repr=False, compare=False)

    @property
    def interrupted(self) -> bool:
        """True when intent was recorded but no terminal result ever was."""
        return self.intent_recorded and self.result is None and not self._result_recorded


@dataclass(frozen=True)
class PruneResult:
    """What ``SqliteJournal.prune`` did.

    ``deleted``: entries removed. ``kept_interrupted``: selected entries kept
    because they are interrupted (recover them first). ``kept_for_recovery``:
    selected finished entries kept because they were created after an
    interrupted one, which recovery compares them with.
    """

    deleted: int
    kept_interrupted: int
    kept_for_recovery: int


@dataclass(frozen=True)
class AuditSequence:
    """One audit record a transaction emitted: its phase and sequence number (None: never sent).

    ``pid`` is the emitting process, as the kernel writes it into the record;
    ``recorded`` is when the journal stored the row (UTC).
    """

    txn_id: str
    phase: str
    seq: Optional[int]
    pid: int
    recorded: datetime


# --- what a host reports of a path -----------------------------------------------


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


@dataclass(frozen=True)
class RemoteTarget:
    """A host reached over SSH, and the root on it that kensa is confined to.

    :attr:`key` (``ssh://[user@]host[:port]/root``) is the host key under which
    its transactions run, are locked, journaled and audited (``host=``).
    ``identity_file`` is how to log in and ``python`` the interpreter kensa's
    agent runs with there (an absolute path; None: the first Python 3.6+ found,
    see :func:`kensa.hosts.payload.agent_command`); neither is part of the key.
    """

    host: str
    user: Optional[str] = None
    port: Optional[int] = None
    root: str = "/"
    identity_file: Optional[str] = None
    python: Optional[str] = None

    @property
    def key(self) -> str:
        """The canonical host key of this target."""
        user = f"{self.user}@" if self.user else ""
        port = f":{self.port}" if self.port is not None else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"ssh://{user}{host}{port}{self.root if self.root.startswith('/') else '/' + self.root}"


@dataclass(frozen=True)
class InventoryHost:
    """One host of an inventory file: its name there, the target it stands for, its groups.

    ``groups`` holds every group the host is in, directly or through a parent
    group's children, in the order the inventory defines them (``all`` is
    implied and not listed).
    """

    name: str
    target: RemoteTarget
    groups: Tuple[str, ...] = ()


# --- signed evidence ------------------------------------------------------------


@dataclass(frozen=True)
class EvidenceKeyPair:
    """A key pair ``kensa keygen`` wrote: its id (SHA-256 of the raw public key, hex) and its two files."""

    key_id: str
    private_path: str
    public_path: str


@dataclass(frozen=True)
class Verification:
    """What verifying one evidence file found.

    ``valid``: the file is in canonical form and its signature verifies with
    the public key it carries. ``trusted``: that key is one of the trusted keys
    the verifier was given (never true without them). ``problems`` names each
    thing found altered or wrong; empty when ``valid``. ``txn_id`` and
    ``key_id`` are what the file claims (empty when unreadable).
    """

    path: str
    valid: bool
    trusted: bool
    key_id: str = ""
    txn_id: str = ""
    problems: Tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "problems", tuple(self.problems))


@dataclass(frozen=True)
class RuleSource:
    """The rule a transaction ran, as it was loaded for the run: kept in the journal for its evidence.

    ``references`` are JSON-ready views of the rule's framework references
    (framework, control, profile, attributes); ``source_sha256`` is the
    SHA-256 of the rule file read for the run (None when it could not be
    read again). ``recorded`` is when the journal stored it (UTC).
    """

    txn_id: str
    rule: str
    title: str
    source_file: str
    source_sha256: Optional[str]
    references: Tuple[Mapping[str, Any], ...]
    recorded: Optional[datetime] = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "references", tuple(MappingProxyType(dict(r)) for r in self.references))
