"""Service actions after a commit: ``systemctl restart|reload UNIT`` on the target.

A service manager is asked only where one runs: a live host (local or remote)
booted with systemd as PID 1. Elsewhere (an image root, a container or VM
without systemd running) the action is recorded as skipped with the reason:
the change itself stands, and nothing pretends the service picked it up.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from typing import Any, Callable, Dict, List, Optional, Tuple

from kensa.errors import KensaError
from kensa.facts.services import manager_running, systemctl
from kensa.support.afterfork import reset_in_child
from kensa.model import (
    Phase,
    ServiceAction,
    ServiceOutcome,
    ServiceStatus,
    Transaction,
    TransactionError,
    TransactionResult,
)

__all__ = ["Pending", "after_commit", "argv", "carry_out"]


def argv(action: ServiceAction) -> List[str]:
    """The systemctl arguments of ``action`` (its unit is a name the rule loader checked)."""
    return [action.verb.value, "--", action.unit]


def carry_out(host: Any, action: ServiceAction) -> ServiceOutcome:
    """Run ``action`` on ``host`` now; never raises (a failure is an outcome, with why)."""
    def outcome(status: ServiceStatus, detail: str) -> ServiceOutcome:
        return ServiceOutcome(action.verb, action.unit, status, detail)

    try:
        if not host.is_live:
            return outcome(ServiceStatus.SKIPPED, "an image root has no running service manager")
        if not manager_running(host):
            return outcome(ServiceStatus.SKIPPED, "systemd is not running on this host (no /run/systemd/system)")
        code, out, err = systemctl(host, argv(action))
    except (KensaError, OSError) as exc:
        return outcome(ServiceStatus.FAILED, f"systemctl {' '.join(argv(action))}: {exc}")
    if code != 0:
        said = (err or out).strip().splitlines()
        return outcome(ServiceStatus.FAILED, f"systemctl {' '.join(argv(action))} exited {code}: {' '.join(said)[:300]}")
    return outcome(ServiceStatus.DONE, f"systemctl {' '.join(argv(action))}")


class Pending:
    """The ``notify`` actions of committed transactions, per host, each once, in the order first
    asked. Safe to share between threads (runs on different hosts add at once) and across fork."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_host: Dict[str, Dict[Tuple[str, str], ServiceAction]] = {}
        reset_in_child(self)

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()

    def add(self, host_key: str, action: ServiceAction) -> None:
        with self._lock:
            self._by_host.setdefault(host_key, {}).setdefault((action.verb.value, action.unit), action)

    def take(self, host_key: Optional[str] = None) -> List[Tuple[str, Tuple[ServiceAction, ...]]]:
        """Every host key with its actions (only ``host_key``'s when given); those are no longer pending."""
        with self._lock:
            keys = list(self._by_host) if host_key is None else [host_key] if host_key in self._by_host else []
            return [(key, tuple(self._by_host.pop(key).values())) for key in keys]


def after_commit(
    txn: Transaction, host: Any, result: TransactionResult, undo: Callable[[TransactionError], TransactionResult],
    pending: Pending,
) -> TransactionResult:
    """``result`` (committed or staged) with the outcomes of ``txn``'s service actions.

    ``restart``/``reload`` run now, in order. When one fails and the rule is
    transactional, the service action was part of the change: ``undo`` rolls the
    change back, and the actions already attempted are asked again, so the service
    runs the restored configuration; the result is the rollback's, saying why.
    A non-transactional rule keeps its change, and the failure is reported in
    the outcomes. ``notify`` actions are queued in ``pending`` once the change stands.
    """
    outcomes: List[ServiceOutcome] = []
    attempted: List[ServiceAction] = []
    failed: Optional[ServiceOutcome] = None
    for action in txn.services:
        if action.at_end:
            continue
        attempted.append(action)
        done = carry_out(host, action)
        outcomes.append(done)
        if done.status is ServiceStatus.FAILED and failed is None:
            failed = done
            if txn.transactional:
                break  # the change is about to be undone: the later actions are moot
    if failed is not None and txn.transactional:
        cause = TransactionError("ServiceActionError", f"{failed.detail}; the rule's change was rolled back", Phase.COMMIT)
        undone = undo(cause)
        for action in attempted:
            again = carry_out(host, action)
            outcomes.append(replace(again, detail=f"after the rollback: {again.detail}"))
        return replace(undone, services=tuple(outcomes))
    for action in txn.services:
        if action.at_end:
            pending.add(txn.host, action)
            outcomes.append(ServiceOutcome(action.verb, action.unit, ServiceStatus.PENDING, "once, at the end of the run"))
    return replace(result, services=tuple(outcomes))
