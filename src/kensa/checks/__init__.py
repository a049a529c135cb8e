"""Evaluate a rule's checks against a host, without changing anything.

A check method is a fact of the host plus a comparison (:class:`CheckMethod`); the
families live in their own modules and :data:`CHECKS` is the one registry, from
which the rule loader derives the check methods it supports and their field
schemas. An implementation without checks is compliant when every remediation
step already validates.

Nothing here imports the rule model or the engine: a check is anything with a
``method``, ``params``, ``supported`` and ``unsupported_reason``; a handler is
anything with ``validate(host, params)``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Mapping, Protocol, Sequence

from kensa.checks import config, files, kernel
from kensa.checks.method import CheckMethod
from kensa.errors import CheckError, KensaError
from kensa.facts.params import Schema
from kensa.model import Step
from kensa.hosts.protocol import ReadableHost

CHECKS: Mapping[str, CheckMethod] = MappingProxyType(
    {method.name: method for method in (*config.METHODS, *files.METHODS, *kernel.METHODS)}
)
"""Check method name -> method, for every check kensa evaluates."""

SCHEMAS: Mapping[str, Schema] = MappingProxyType({name: method.schema for name, method in CHECKS.items()})
"""Check method name -> the schema of its fields."""


class CheckLike(Protocol):
    """What a check has to be evaluated (a rule's ``Check`` is one)."""

    @property
    def method(self) -> str: ...

    @property
    def params(self) -> Mapping[str, Any]: ...

    @property
    def supported(self) -> bool: ...

    @property
    def unsupported_reason(self) -> str: ...


class ImplementationLike(Protocol):
    """What compliance needs of a rule's implementation: its checks and its steps."""

    @property
    def checks(self) -> Sequence[CheckLike]: ...

    @property
    def steps(self) -> Sequence[Step]: ...


class Validating(Protocol):
    """A handler, as far as compliance needs one."""

    def validate(self, host: ReadableHost, params: Mapping[str, Any]) -> bool: ...


@dataclass(frozen=True)
class Compliance:
    """Whether a rule's implementation holds on a host, and why not."""

    compliant: bool
    detail: str = ""


def evaluate_check(check: CheckLike, host: Any) -> bool:
    """Whether one check holds on ``host``; raises CheckError when it cannot be evaluated."""
    method = CHECKS.get(check.method)
    if method is None or not check.supported:
        raise CheckError(check.unsupported_reason or f"check method {check.method!r} is not supported")
    try:
        return method.evaluate(host, check.params)
    except KensaError:
        raise
    except (OSError, ValueError, KeyError, re.error) as exc:
        raise CheckError(f"check {check.method} failed: {exc}") from exc


def step_holds(step: Step, host: Any, handlers: Mapping[str, Validating]) -> bool:
    """Whether ``step`` is already in its desired state (its handler's validate)."""
    handler = handlers.get(step.mechanism)
    if handler is None:
        raise CheckError(f"no handler for mechanism {step.mechanism!r}")
    return bool(handler.validate(host, step.params))


def compliance(impl: ImplementationLike, host: Any, handlers: Mapping[str, Validating]) -> Compliance:
    """Whether ``impl`` already holds on ``host`` (its checks, else its steps)."""
    if impl.checks:
        for check in impl.checks:
            if not evaluate_check(check, host):
                return Compliance(False, f"check {check.method} does not hold")
        return Compliance(True)
    for index, step in enumerate(impl.steps):
        if not step_holds(step, host, handlers):
            return Compliance(False, f"step {index + 1} ({step.mechanism}) not in its desired state")
    return Compliance(True)


__all__ = [
    "CHECKS",
    "SCHEMAS",
    "CheckLike",
    "CheckMethod",
    "Compliance",
    "ImplementationLike",
    "Validating",
    "compliance",
    "evaluate_check",
    "step_holds",
]
