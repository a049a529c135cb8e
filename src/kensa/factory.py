"""The production wiring: the only place the real parts meet the engine.

:func:`default_engine` builds an :class:`~kensa.engine.Engine` from the built-in
handlers, local hosts, the SQLite journal, the cross-process target locks and the
kernel audit emitter. Each part is imported when it is called, so ``import
kensa`` stays free of cffi and sqlite.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any, Callable, Optional

from kensa.engine.events import EventBus
from kensa.engine.protocols import PhaseEmitter
from kensa.engine.run import Engine
from kensa.errors import WiringError

if TYPE_CHECKING:
    from kensa.hosts.protocol import Transport
    from kensa.hosts.remote import RemoteHosts
    from kensa.model import RemoteTarget

__all__ = ["NoAuditExtensionWarning", "default_engine"]


class NoAuditExtensionWarning(RuntimeWarning):
    """default_engine was asked to audit, but this kensa was installed without kensa._audit."""


def default_engine(
    journal_path: Optional[str] = None,
    *,
    audit: bool = True,
    events: Optional[EventBus] = None,
    target_lock_timeout: Optional[float] = None,
    remote: "Optional[Callable[[RemoteTarget], Transport]]" = None,
    connect_timeout: Optional[float] = None,
    operation_timeout: Optional[float] = None,
    agent_cache: bool = True,
    python_for: "Optional[Callable[[RemoteTarget], Optional[str]]]" = None,
    hosts: "Optional[RemoteHosts]" = None,
) -> Engine:
    """The production engine: built-in handlers, local hosts, SQLite journal, kernel audit.

    The registry holds the built-in mechanisms and the step that carries a rule's
    own check (:class:`kensa.rules.checkstep.RuleCheck`).

    Host keys are ``"localhost"`` (this machine, ``/``) or the absolute path of
    a target root (:func:`kensa.hosts.resolve_host`); spellings of one target are
    made one key (:func:`kensa.hosts.canonical_host_key`).
    ``journal_path``: default :func:`kensa.journal.default_journal_path`.
    ``audit=False`` turns kernel audit records off. Runs, rollbacks and
    recovery hold a cross-process lock of their target
    (:class:`kensa.hosts.TargetLocks`: root's in /run/kensa/targets, shared by every journal; else ``<journal>.targets/``), waiting
    at most ``target_lock_timeout`` seconds (None: the default,
    :data:`kensa.hosts.targetlock.DEFAULT_TIMEOUT`; ``float("inf")`` waits forever)
    for another process's transaction on it; for a remote target that is one deadline
    for the controller's lock and the target's own together.

    ``remote`` makes remote targets reachable: a function from a
    :class:`kensa.model.RemoteTarget` to the :class:`kensa.hosts.protocol.Transport`
    that reaches it (``kensa.hosts.ssh.SshTransport``'s, or a
    :class:`kensa.hosts.remote.SubprocessTransport`). Host keys
    ``ssh://[user@]host[:port]/root`` then run on that host through kensa's
    agent (:class:`kensa.hosts.remote.RemoteHosts`: one connection per host,
    replaced when it died), waiting ``connect_timeout`` seconds for it to
    start and ``operation_timeout`` for each step phase (None: the defaults of
    :mod:`kensa.hosts.remote`); ``agent_cache`` lets each agent keep its
    compiled payload on its host (:func:`kensa.hosts.remote.connect`); ``python_for``
    names a target's Python interpreter (an absolute path; None: the agent finds one).
    ``hosts`` is a :class:`kensa.hosts.remote.RemoteHosts` made already (one whose
    connections began early, :meth:`~kensa.hosts.remote.RemoteHosts.connect_early`),
    used instead of one made from ``remote`` and the options above (give one or the other). The parts are imported here,
    so ``import kensa`` stays free of cffi and sqlite; a part that cannot be
    imported raises :class:`WiringError` (an ImportError) naming it.
    """
    try:
        from kensa.handlers import default_registry
    except ImportError as exc:
        raise WiringError(f"default_engine needs kensa.handlers.default_registry: {exc}; reinstall kensa") from exc
    try:
        from kensa.hosts.local import resolve_host
    except ImportError as exc:
        raise WiringError(f"default_engine needs kensa.hosts.resolve_host: {exc}; reinstall kensa") from exc
    try:
        from kensa.journal.store import SqliteJournal, default_journal_path
    except ImportError as exc:
        raise WiringError(f"default_engine needs kensa.journal.SqliteJournal: {exc}; reinstall kensa") from exc
    emitter: Optional[PhaseEmitter] = None
    if audit:
        try:
            from kensa.audit.emitter import open_emitter
        except ImportError as exc:
            raise WiringError(f"default_engine needs kensa.audit.open_emitter: {exc}; reinstall kensa") from exc
        emitter = open_emitter()
        if getattr(emitter, "reason", "") == "no_extension":
            # An install built without a compiler falls back to pure Python; pip shows
            # that only with -v, so every engine that was asked to audit says it.
            warnings.warn(
                f"kensa writes no audit records: {getattr(emitter, 'detail', 'no C extension')}; this kensa was "
                "installed without its C extension: install a C compiler and the Python headers, then "
                "pip install --no-cache-dir --force-reinstall kensa (or install a kensa wheel)",
                NoAuditExtensionWarning,
                stacklevel=2,
            )

    try:
        from kensa.hosts.targetlock import DEFAULT_TIMEOUT, TargetLocks, target_lock_directory
    except ImportError as exc:
        raise WiringError(f"default_engine needs kensa.hosts.TargetLocks: {exc}; reinstall kensa") from exc

    resolver: Any = resolve_host
    if hosts is not None:
        if remote is not None:
            raise WiringError("default_engine was given both hosts and remote: give the RemoteHosts or the transport factory")
        resolver = hosts
    elif remote is not None:
        try:
            from kensa.hosts.remote import DEFAULT_CONNECT_TIMEOUT, DEFAULT_OPERATION_TIMEOUT, RemoteHosts
        except ImportError as exc:
            raise WiringError(f"default_engine needs kensa.hosts.remote.RemoteHosts: {exc}; reinstall kensa") from exc
        resolver = RemoteHosts(
            remote,
            connect_timeout=DEFAULT_CONNECT_TIMEOUT if connect_timeout is None else connect_timeout,
            operation_timeout=DEFAULT_OPERATION_TIMEOUT if operation_timeout is None else operation_timeout,
            agent_cache=agent_cache,
            python_for=python_for,
        )

    path = journal_path if journal_path is not None else default_journal_path()
    journal = SqliteJournal(path)
    timeout = DEFAULT_TIMEOUT if target_lock_timeout is None else target_lock_timeout
    locks = TargetLocks(target_lock_directory(path), timeout=timeout)
    try:
        from kensa.rules.checkstep import RuleCheck
    except ImportError as exc:
        raise WiringError(f"default_engine needs kensa.rules.checkstep.RuleCheck: {exc}; reinstall kensa") from exc
    # The step that carries a rule's own check (kensa.rules.Rule.to_transaction appends it).
    registry = {**default_registry(), RuleCheck.name: RuleCheck()}
    return Engine(
        registry, audit=emitter, journal=journal, hosts=resolver, events=events, target_lock=locks
    )
