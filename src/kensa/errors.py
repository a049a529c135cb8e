"""Every error kensa raises: one root, :class:`KensaError`, and its subclasses.

Catch ``KensaError`` for anything kensa refuses or fails at; each subclass also
derives from the built-in exception a caller would expect (``ValueError`` for
bad input, ``OSError`` for a host or journal fault, ``TimeoutError`` for a lock).
"""

from __future__ import annotations

from typing import Sequence, Tuple


# Raised by kensa.model

class KensaError(Exception):
    """Base class of every error kensa raises on purpose."""


# Raised by kensa.engine.run

class UnknownMechanismError(KensaError, LookupError):
    """A step names a mechanism no handler is registered for."""


class DuplicateMechanismError(KensaError, ValueError):
    """A mechanism name was registered twice."""


class NotCapturableError(KensaError, ValueError):
    """A transactional rule holds a step whose handler cannot capture its pre-state."""


class StepFailedError(KensaError, RuntimeError):
    """A handler reported that its step failed (names the error of such results)."""


class ValidationFailedError(KensaError, RuntimeError):
    """A step applied but its desired state does not hold (names the error of such results)."""


class RollbackFailedError(KensaError, RuntimeError):
    """A rollback did not restore its pre-state (names the error of such results)."""


class RollbackRefusedError(KensaError, RuntimeError):
    """Recovery or a rollback by id was refused before anything changed.

    The engine has no journal to read, the transaction is not one that can be
    rolled back (not committed, already rolled back), or the host drifted since
    the commit. ``drifted`` names the drifted paths or keys, if that was the cause.
    """

    def __init__(self, message: str, drifted: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.drifted: Tuple[str, ...] = tuple(drifted)


class WiringError(KensaError, ImportError):
    """:func:`default_engine` could not import one of the real parts it wires."""


# Raised by kensa.hosts.local and kensa.hosts.confine

class PathEscapeError(KensaError, PermissionError):
    """A path was refused because resolving it could leave (or bypass) the root."""

    def __init__(self, message: str, path: str = "", component: str = "") -> None:
        super().__init__(message)
        self.path = path
        self.component = component


class HostAccessError(KensaError, OSError):
    """A confined file operation failed (missing parent, wrong file type, I/O error)."""


class HostSelectionError(KensaError, ValueError):
    """A host key does not name a usable local target."""


# Raised by kensa.hosts.local (its step runner)

class StepPhaseError(KensaError, ValueError):
    """A step runner was asked for a phase it does not run, or without what that phase needs."""


# Raised by the remote host kinds (kensa.hosts.ssh, the agent's client)

class RemoteHostError(KensaError, OSError):
    """A remote target could not be reached or driven; ``host`` names it."""

    def __init__(self, message: str, host: str = "") -> None:
        super().__init__(message)
        self.host = host


class HostUnreachableError(RemoteHostError, ConnectionError):
    """No connection to the host: name resolution, refused connection, connect timeout."""


class HostAuthError(RemoteHostError, PermissionError):
    """The host refused the login, or sudo refused to run kensa's agent."""


class HostKeyError(RemoteHostError):
    """The host's key is unknown (with strict host keys) or differs from the known one."""


class HostConnectionLost(RemoteHostError, ConnectionError):
    """The connection or the agent on the host ended in the middle of an operation."""


class RemoteTimeoutError(RemoteHostError, TimeoutError):
    """An operation on the host took longer than its timeout."""


class AgentError(RemoteHostError):
    """The host cannot run kensa's agent (no Python 3, a payload hash mismatch, a protocol error)."""


# Raised by kensa.inventory

class InventoryError(KensaError, ValueError):
    """An inventory file, or a selection from it, is malformed; the message names file:line."""


# Raised by kensa.hosts.targetlock

class TargetLockError(KensaError, OSError):
    """The target lock could not be opened or taken; nothing was changed."""


class TargetLockTimeout(TargetLockError, TimeoutError):
    """Another process held the target's lock for longer than the timeout."""


# Raised by kensa.journal.store

class JournalError(KensaError):
    """The journal could not be opened, read or written, or refused an inconsistent record."""


class JournalEntryNotFound(JournalError, LookupError):
    """The journal holds no transaction with the requested id."""


class JournalLockTimeout(JournalError, TimeoutError):
    """The run/recovery lock stayed held by someone else for longer than the timeout."""


class JournalNotFound(JournalError, FileNotFoundError):
    """``SqliteJournal(path, create=False)`` was given a path where no journal exists."""


class JournalCorruptError(JournalError):
    """A journal entry's stored data fails its SHA-256 check or cannot be decoded.

    ``txn_id`` names the entry; the rest of the journal stays readable.
    """

    def __init__(self, message: str, txn_id: str) -> None:
        super().__init__(message)
        self.txn_id = txn_id


class InvalidJournalQuery(JournalError, ValueError):
    """A journal query or pruning was given an impossible argument (a negative limit)."""


class AuditSequenceError(JournalError, ValueError):
    """Audit sequence numbers given to the journal are malformed; nothing was written."""


# Raised by kensa.rules

class RuleError(KensaError, ValueError):
    """A rule file is malformed, unreadable, or clashes with another rule."""


class UndefinedVariableError(RuleError):
    """A rule uses ``{{ name }}`` variables that no variable source defines.

    ``names`` lists them, sorted; ``rule_id`` is the rule's id. The rule does not
    run: a template must never reach a host.
    """

    def __init__(self, message: str, names: Tuple[str, ...] = (), rule_id: str = "") -> None:
        super().__init__(message)
        self.names = tuple(names)
        self.rule_id = rule_id


class VariableFileError(RuleError):
    """A variable file (defaults, conf.d, per group, per host) or a --var is malformed."""


# Raised by kensa.checks

class CheckError(KensaError, ValueError):
    """A check could not be evaluated (unsupported method, unreadable target)."""


class CheckNotAssessable(KensaError):
    """This kind of target cannot answer a check (a ``command`` check on an image root,
    a service's running state without a running service manager); the message says why.

    Checks and facts raise it; evaluating a check turns it into a ``not_assessable``
    :class:`kensa.model.Finding` carrying the message, never into an error verdict."""


# Raised by kensa.facts.auditrules

class AuditRuleError(KensaError, ValueError):
    """A rule line is not one watch or syscall rule made of allowed options."""


# Raised by kensa.facts.sysctl

class SysctlKeyError(KensaError, ValueError):
    """A string is not a sysctl parameter name kensa accepts."""


# Raised by kensa.facts.params, the handlers and the checks

class ParamError(KensaError, ValueError):
    """A step's or a check's parameters are missing or ill-typed; nothing was changed.

    ``field`` names the parameter at fault ("" when no single one is), ``problem``
    says what is wrong with it without the owner and field (the rule loader puts
    its own file:line:field in front)."""

    def __init__(self, message: str, field: str = "", problem: str = "") -> None:
        super().__init__(message)
        self.field = field
        self.problem = problem or message


# Raised by the handlers

class MechanismUnavailable(KensaError, RuntimeError):
    """A mechanism cannot run on this target (its tool is not installed, or the target
    is an image root it cannot change safely); raised before anything changed."""


# Raised by kensa.handlers.audit_rule_set

class AuditControlError(KensaError, RuntimeError):
    """auditctl failed or printed something kensa cannot read."""


# Raised by kensa.audit.emitter

class AuditError(KensaError):
    """Base of the errors kensa.audit raises (only ever for the caller's input or a query)."""


class AuditArgumentError(AuditError, ValueError):
    """An argument to the audit API is invalid; nothing was changed."""


class AuditListenerError(AuditError, OSError):
    """The kernel audit log cannot be listened to, or the listener lost records (ENOBUFS)."""


class KernelStatusError(AuditError, OSError):
    """The kernel's audit status could not be read (``errno`` says why: EPERM without CAP_AUDIT_CONTROL)."""


# Raised by kensa.audit.reconcile

class AuditLogError(KensaError, OSError):
    """auditd's log could not be read (the path and the cause are in the message)."""


class SinceError(KensaError, ValueError):
    """A ``--since`` value is neither an ISO 8601 time nor an age."""


# Raised by kensa.cli.main

class UsageError(KensaError, ValueError):
    """Bad command-line input: a missing root, an unknown transaction id."""


# Raised by kensa.evidence

class EvidenceError(KensaError, ValueError):
    """Evidence that cannot be made, read or trusted: says which file and what is wrong with it."""


class EvidenceUnavailable(KensaError, ImportError):
    """Signing or verifying evidence needs the ``cryptography`` package (``pip install 'kensa[evidence]'``)."""


class KeyFileError(EvidenceError):
    """A signing or public key file that is missing, malformed, or readable by others than its owner."""
