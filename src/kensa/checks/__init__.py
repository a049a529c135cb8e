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
from types import MappingProxyType
from typing import Any, List, Mapping, Optional, Protocol, Sequence

from kensa.checks import commands, config, files, kernel, packages, security, services
from kensa.checks.method import CheckMethod, not_compliant
from kensa.checks.reading import observing
from kensa.errors import CheckError, CheckNotAssessable, KensaError
from kensa.facts.params import Schema
from kensa.model import Finding, Step, Verdict
from kensa.hosts.protocol import ReadableHost

CHECKS: Mapping[str, CheckMethod] = MappingProxyType(
    {
        method.name: method
        for family in (config, files, kernel, packages, services, security, commands)
        for method in family.METHODS
    }
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


Compliance = Finding
"""What :func:`compliance` returns (a :class:`kensa.model.Finding`)."""


def evaluate_check(check: CheckLike, host: Any, handlers: Any = None) -> Finding:
    """What one check finds on ``host``: compliant, not compliant or not assessable, with
    what was seen. Raises CheckError for a fault (an unsupported method, a file that
    cannot be read, a command that cannot run). ``handlers`` is accepted for callers of
    the older three-argument form and not used."""
    method = CHECKS.get(check.method)
    if method is None or not check.supported:
        raise CheckError(check.unsupported_reason or f"check method {check.method!r} is not supported")
    try:
        return method.evaluate(observing(host), check.params)
    except CheckNotAssessable as exc:
        return Finding(Verdict.NOT_ASSESSABLE, f"{check.method}: {exc}")
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


def compliance(impl: ImplementationLike, host: Any, handlers: Mapping[str, Validating]) -> Finding:
    """What ``impl``'s checks find on ``host`` (all must hold); without checks, whether
    every remediation step already validates.

    Every check is evaluated: one that does not hold makes the finding not compliant
    whatever the others do; otherwise a fault in one is raised (KensaError); otherwise
    one that cannot be answered here makes it not assessable.
    """
    if not impl.checks:
        for index, step in enumerate(impl.steps):
            if not step_holds(step, host, handlers):
                return not_compliant(f"step {index + 1} ({step.mechanism}) not in its desired state")
        return Finding(Verdict.COMPLIANT, "every remediation step is already in its desired state")
    findings: List[Finding] = []
    fault: Optional[KensaError] = None
    for check in impl.checks:
        try:
            findings.append(evaluate_check(check, host))
        except KensaError as exc:
            fault = fault or exc
    failed = [f.detail for f in findings if f.verdict is Verdict.NOT_COMPLIANT]
    if failed:
        return not_compliant("; ".join(failed))
    if fault is not None:
        raise fault
    unanswered = [f.detail for f in findings if f.verdict is Verdict.NOT_ASSESSABLE]
    if unanswered:
        return Finding(Verdict.NOT_ASSESSABLE, "; ".join(unanswered))
    return Finding(Verdict.COMPLIANT, "; ".join(f.detail for f in findings))


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
