"""Which rules run where: the target of a run, the capabilities detected on it, the
implementation of each rule that applies there, and the transactions they make."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Dict, FrozenSet, Iterable, List, Optional, Sequence, Tuple

from kensa.errors import KensaError, UsageError
from kensa.model import Transaction

__all__ = ["Target", "detect_capabilities", "implementation_for", "load", "target_for", "transactions_for"]


@dataclass(frozen=True)
class Target:
    """Where rules run: the host key the engine and audit records use, and its root."""

    key: str
    root: str


def target_for(root: Optional[str]) -> Target:
    if root is None:
        return Target("localhost", "/")
    path = os.path.abspath(root)
    if not os.path.isdir(path):
        raise UsageError(f"--root {root}: no such directory")
    return Target("localhost" if path == "/" else path, path)


def load(paths: Sequence[str]) -> List[Any]:
    from kensa.rules.load import load_rules

    for path in paths:
        if not os.path.exists(path):
            raise UsageError(f"{path}: no such rule file or directory")
    return load_rules(paths)


def detect_capabilities(host: Any) -> FrozenSet[str]:
    """Capabilities that ``when`` gates of rules can name, detected in the target root."""
    found = set()
    probes = {
        "sshd_config_d": "/etc/ssh/sshd_config.d",
        "sysctl_d": "/etc/sysctl.d",
        "audit_rules_d": "/etc/audit/rules.d",
    }
    for name, path in probes.items():
        try:
            if host.info(path) is not None:
                found.add(name)
        except KensaError:
            pass  # an unreadable or refused probe path means the capability is absent
    return frozenset(found)


def implementation_for(rule: Any, caps: FrozenSet[str]) -> Tuple[Any, str]:
    """The implementation of ``rule`` to run here, or None and why not."""
    impl = rule.select_implementation(caps)
    if impl is None or not impl.supported:
        return None, rule.unsupported_reason or "no implementation applies to this host"
    return impl, ""


def transactions_for(rules: Iterable[Any], target: Target, host: Any) -> Tuple[List[Transaction], List[Dict[str, Any]]]:
    """Transactions for the supported rules, and rows for the unsupported ones."""
    caps = detect_capabilities(host)
    txns: List[Transaction] = []
    unsupported: List[Dict[str, Any]] = []
    for rule in rules:
        impl, why_not = implementation_for(rule, caps)
        if impl is None:
            unsupported.append({"rule": rule.id, "status": "unsupported", "detail": why_not})
            continue
        txns.append(rule.to_transaction(target.key, impl))
    return txns, unsupported
