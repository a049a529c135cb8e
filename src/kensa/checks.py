"""Evaluate a rule's checks against a host, without changing anything.

Each supported check method mirrors what a handler validates, so ``kensa check``
and the engine's "already compliant" test agree: ``config_value`` is
``config_set``'s validation, ``file_permission`` is ``file_permissions``', and so
on. An implementation without checks is compliant when every remediation step
already validates.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping, Optional

from kensa.errors import CheckError, KensaError
from kensa.engine.protocols import Handler
from kensa.model import Step
from kensa.rules.load import Check, Implementation
from kensa.facts.sysctl import sysctl_path


@dataclass(frozen=True)
class Compliance:
    """Whether a rule's implementation holds on a host, and why not."""

    compliant: bool
    detail: str = ""


def _text(host: Any, path: str) -> Optional[str]:
    data = host.read_bytes(path)
    return None if data is None else data.decode("utf-8", "surrogateescape")


def _sysctl_value(host: Any, params: Mapping[str, Any]) -> bool:
    key = str(params["key"])
    current = _text(host, sysctl_path(key))
    # The kernel separates multi-value settings with tabs; rules write spaces.
    return current is not None and current.split() == str(params["expected"]).split()


def _content(host: Any, params: Mapping[str, Any]) -> bool:
    text = _text(host, params["path"])
    return text is not None and re.search(params["pattern"], text, re.MULTILINE) is not None


def _via(mechanism: str, **rename: str) -> Callable[[Any, Mapping[str, Any], Mapping[str, Handler]], bool]:
    """A check that is a handler's validation, with some fields renamed."""

    def evaluate(host: Any, params: Mapping[str, Any], handlers: Mapping[str, Handler]) -> bool:
        wanted = {rename.get(k, k): v for k, v in params.items()}
        return handlers[mechanism].validate(host, wanted)

    return evaluate


_METHODS: Dict[str, Callable[[Any, Mapping[str, Any], Mapping[str, Handler]], bool]] = {
    "config_value": _via("config_set", expected="value"),
    "file_permission": _via("file_permissions"),
    "file_exists": lambda host, p, h: host.info(p["path"]) is not None,
    "file_not_exists": _via("file_absent"),
    "file_content_match": lambda host, p, h: _content(host, p),
    "file_content_no_match": lambda host, p, h: not _content(host, p),
    "sysctl_value": lambda host, p, h: _sysctl_value(host, p),
    "audit_rule_exists": _via("audit_rule_set"),
}


def evaluate_check(check: Check, host: Any, handlers: Mapping[str, Handler]) -> bool:
    """Whether one check holds on ``host``; raises CheckError when it cannot be evaluated."""
    method = _METHODS.get(check.method)
    if method is None or not check.supported:
        reason = check.unsupported_reason or f"check method {check.method!r} is not supported"
        raise CheckError(reason)
    try:
        return bool(method(host, check.params, handlers))
    except KensaError:
        raise
    except (OSError, ValueError, KeyError, re.error) as exc:
        raise CheckError(f"check {check.method} failed: {exc}") from exc


def step_holds(step: Step, host: Any, handlers: Mapping[str, Handler]) -> bool:
    handler = handlers.get(step.mechanism)
    if handler is None:
        raise CheckError(f"no handler for mechanism {step.mechanism!r}")
    return bool(handler.validate(host, step.params))


def compliance(impl: Implementation, host: Any, handlers: Mapping[str, Handler]) -> Compliance:
    """Whether ``impl`` already holds on ``host`` (its checks, else its steps)."""
    if impl.checks:
        for check in impl.checks:
            if not evaluate_check(check, host, handlers):
                return Compliance(False, f"check {check.method} does not hold")
        return Compliance(True)
    for index, step in enumerate(impl.steps):
        if not step_holds(step, host, handlers):
            return Compliance(False, f"step {index + 1} ({step.mechanism}) not in its desired state")
    return Compliance(True)
