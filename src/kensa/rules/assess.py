"""Checking rules on a target, and choosing what remediation runs there.

:func:`check_rules` gives each rule one :class:`~kensa.model.CheckResult`, in the
order the rules were given; it only reads the target, through the host object
(a local tree, an image root or a remote host alike). In order:

1. superseded rules and members of a dependency cycle are not evaluated
   (``not_applicable`` and ``error``; see :func:`~kensa.rules.applicability.resolve`);
2. ``platforms`` against the target's os-release: ``not_applicable``;
3. the implementation whose ``when`` gate holds on the capabilities probed on
   the target (:mod:`kensa.rules.capabilities`), else the default one: none
   is ``not_applicable``; a gate naming a capability kensa cannot probe is
   ``unsupported``, since it cannot tell whether that gate holds;
4. ``depends_on``: a dependency that is not in the set or not ``compliant`` makes
   the rule ``not_applicable``, naming the dependency and its verdict;
5. the implementation's checks (all must hold), or without checks its steps'
   validation: ``compliant`` or ``not_compliant`` with the deciding check, or
   ``unsupported`` when kensa cannot evaluate them, ``not_assessable`` when the
   target cannot answer them, ``error`` for a fault. The first check that does not
   hold decides (the rest are not evaluated); else a fault; else one the target
   cannot answer.

:func:`plan_rules` makes the same decisions for remediation and gives the
transaction to run for each rule that gets one.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import AbstractSet, Any, List, Mapping, Optional, Sequence, Tuple, cast

from kensa.checks import Validating, evaluate_check, step_holds
from kensa.engine.registry import host_handlers
from kensa.errors import KensaError, RemoteHostError
from kensa.hosts.gather import gathered, prefetched
from kensa.hosts.protocol import ReadableHost
from kensa.model import CheckResult, Transaction, Verdict
from kensa.rules.applicability import OsRelease, Resolution, platform_applies, read_os_release, resolve
from kensa.rules.capabilities import PROBES, detect_capabilities
from kensa.rules.model import Implementation, Rule

__all__ = ["Planned", "TargetFacts", "check_rule", "check_rules", "choose", "observe", "plan_rules"]


@dataclass(frozen=True)
class TargetFacts:
    """What applicability reads of a target once: its os-release and its capabilities."""

    os_release: Optional[OsRelease]
    capabilities: AbstractSet[str]


def observe(host: ReadableHost) -> TargetFacts:
    """Read the target's os-release and probe its capabilities, through ``host``: for a remote
    host in a few batched round trips, with the answers reading one at a time would give
    (:func:`kensa.hosts.gather.gathered`)."""
    return gathered(host, lambda view: TargetFacts(read_os_release(view), detect_capabilities(view)))


@dataclass(frozen=True)
class Planned:
    """One rule's remediation: the transaction to run, or the verdict saying why none runs."""

    rule: Rule
    transaction: Optional[Transaction] = None
    verdict: Optional[CheckResult] = None


def _label(rule: Rule, impl: Implementation) -> str:
    index = next(i for i, candidate in enumerate(rule.implementations) if candidate is impl)
    return f"implementations[{index}]" + (" (default)" if impl.default else "")


def choose(rule: Rule, facts: TargetFacts, host_key: str) -> Tuple[Optional[Implementation], Optional[CheckResult]]:
    """The implementation of ``rule`` that applies on a target with ``facts``, or the
    verdict (not applicable, unsupported) saying why none does."""
    source = str(rule.source)
    applies, why = platform_applies(rule.platforms, facts.os_release)
    if not applies:
        return None, CheckResult(rule.id, host_key, Verdict.NOT_APPLICABLE, why, source=source)
    for impl in rule.implementations:
        gate = impl.when
        if gate is None:
            continue
        unprobed = sorted({*gate.all_of, *gate.any_of, *gate.none_of} - set(PROBES))
        if unprobed:
            detail = f"its 'when' gate names {', '.join(unprobed)}, which kensa cannot detect on a target"
            return None, CheckResult(rule.id, host_key, Verdict.UNSUPPORTED, detail, source=source)
        if gate.satisfied_by(facts.capabilities):
            return impl, None
    fallback = rule.default_implementation
    if fallback is None:
        detail = "no implementation applies: no 'when' gate holds on the target and the rule has no default"
        return None, CheckResult(rule.id, host_key, Verdict.NOT_APPLICABLE, detail, source=source)
    return fallback, None


def _read_checks(impl: Implementation, host: ReadableHost) -> None:
    """Evaluate ``impl``'s checks for what they read (see :func:`kensa.hosts.gather.prefetched`)."""
    for check in impl.checks:
        try:
            evaluate_check(check, host)
        except KensaError:
            continue


def _evaluate(rule: Rule, impl: Implementation, host: Any, host_key: str, handlers: Mapping[str, Validating],
              reads: Optional[ReadableHost] = None) -> CheckResult:
    """``rule``'s verdict by ``impl``: its checks read ``reads`` (default: ``host``, a view holding
    what they read), its steps validate with ``handlers`` on ``host``."""
    label, source = _label(rule, impl), str(rule.source)
    reads = host if reads is None else reads

    def result(verdict: Verdict, detail: str, decided: str) -> CheckResult:
        return CheckResult(rule.id, host_key, verdict, detail, decided, label, source)

    if not impl.checkable:
        return result(Verdict.UNSUPPORTED, impl.check_unsupported_reason, "")
    if not impl.checks:
        decided = ""
        try:
            for index, step in enumerate(impl.steps):
                decided = f"validate:{step.mechanism}"
                if not step_holds(step, host, handlers):
                    return result(Verdict.NOT_COMPLIANT, f"step {index + 1} ({step.mechanism}) is not in its desired state", decided)
        except KensaError as exc:
            return result(Verdict.ERROR, str(exc), decided)
        return result(Verdict.COMPLIANT, "every remediation step is already in its desired state",
                      ",".join(f"validate:{step.mechanism}" for step in impl.steps))
    # The first check that does not hold decides (the rest are not evaluated);
    # else a fault; else one this target cannot answer.
    fault: Optional[CheckResult] = None
    unanswered: Optional[CheckResult] = None
    held: List[str] = []
    for check in impl.checks:
        try:
            finding = evaluate_check(check, reads)
        except KensaError as exc:
            fault = fault or result(Verdict.ERROR, str(exc), check.method)
            continue
        if finding.verdict is Verdict.NOT_COMPLIANT:
            return result(Verdict.NOT_COMPLIANT, finding.detail or f"check {check.method} does not hold", check.method)
        if finding.verdict is Verdict.NOT_ASSESSABLE:
            unanswered = unanswered or result(Verdict.NOT_ASSESSABLE, finding.detail, check.method)
        elif finding.detail:
            held.append(finding.detail)
    if fault is not None or unanswered is not None:
        return fault or cast(CheckResult, unanswered)
    return result(Verdict.COMPLIANT, "; ".join(held), ",".join(check.method for check in impl.checks))


def _dependency_verdict(rule: Rule, results: Mapping[str, CheckResult], host_key: str) -> Optional[CheckResult]:
    for needed in rule.depends_on:
        found = results.get(needed)
        if found is None or found.verdict is not Verdict.COMPLIANT:
            state = "not in this rule set" if found is None else str(found.verdict)
            detail = f"depends on rule {needed}, which is {state}"
            return CheckResult(rule.id, host_key, Verdict.NOT_APPLICABLE, detail, source=str(rule.source))
    return None


def _skipped(rule: Rule, why: str, host_key: str) -> CheckResult:
    verdict = Verdict.ERROR if why.startswith("dependency cycle") else Verdict.NOT_APPLICABLE
    return CheckResult(rule.id, host_key, verdict, why, source=str(rule.source))


def check_rule(
    rule: Rule,
    host: ReadableHost,
    handlers: Mapping[str, Validating],
    *,
    host_key: str = "localhost",
    facts: Optional[TargetFacts] = None,
) -> CheckResult:
    """The verdict of ``rule`` alone on ``host``: steps 2, 3 and 5 of the module
    docstring (its dependencies and supersessions are the rule set's)."""
    facts = facts if facts is not None else observe(host)
    impl, verdict = choose(rule, facts, host_key)
    if verdict is not None or impl is None:
        return verdict or CheckResult(rule.id, host_key, Verdict.NOT_APPLICABLE, source=str(rule.source))
    reads = prefetched(host, [functools.partial(_read_checks, impl)]) if impl.checkable and impl.checks else host
    return _evaluate(rule, impl, host, host_key, host_handlers(handlers, host, ahead=False), reads)


def check_rules(
    rules: Sequence[Rule],
    host: ReadableHost,
    handlers: Mapping[str, Validating],
    *,
    host_key: str = "localhost",
    facts: Optional[TargetFacts] = None,
) -> List[CheckResult]:
    """One verdict per rule of ``rules`` on ``host`` (see the module docstring), in input order.

    ``handlers`` validate the steps of rules without checks, where the host is (a remote
    host's agent runs each validate in one round trip: :func:`kensa.engine.registry.host_handlers`);
    ``facts`` default to :func:`observe` of the host. Changes nothing.
    """
    handlers = host_handlers(handlers, host, ahead=False)  # a check captures nothing
    if facts is None:
        try:
            facts = observe(host)
        except RemoteHostError as exc:
            # The target could not be read at all (a lost connection, a timeout): every
            # rule is an error naming why, none is decided from facts never read.
            return [CheckResult(rule.id, host_key, Verdict.ERROR, str(exc)) for rule in rules]
    resolution = resolve(rules)
    chosen = {rule.id: choose(rule, facts, host_key) for rule in resolution.order}
    # What every check will read, fetched together: a few round trips to a remote host, not one per read.
    reads = prefetched(host, [functools.partial(_read_checks, impl) for impl, verdict in chosen.values()
                              if verdict is None and impl is not None and impl.checkable and impl.checks])
    # Skipped rules first: a rule depending on one of them then names its verdict.
    results = {rule.id: _skipped(rule, resolution.skipped[rule.id], host_key) for rule in rules if rule.id in resolution.skipped}
    for rule in resolution.order:
        impl, verdict = chosen[rule.id]
        if verdict is None:
            verdict = _dependency_verdict(rule, results, host_key)
        if verdict is None and impl is not None:
            verdict = _evaluate(rule, impl, host, host_key, handlers, reads)
        if verdict is not None:
            results[rule.id] = verdict
    return [results[rule.id] for rule in rules]


def plan_rules(
    rules: Sequence[Rule], host: ReadableHost, *, host_key: str = "localhost", facts: Optional[TargetFacts] = None
) -> Tuple[Resolution, List[Planned]]:
    """The remediation of each rule, dependencies first: its transaction on ``host_key``,
    or the verdict saying why it gets none. A rule that depends on another of the set
    gets its transaction too; the caller runs it only when the dependency's
    transaction held (:meth:`Rule.depends_on`); a dependency outside the set makes it
    not applicable. The resolution's conflicts are the caller's to refuse."""
    facts = facts if facts is not None else observe(host)
    resolution = resolve(rules)
    ids = {rule.id for rule in rules}
    planned: List[Planned] = []
    for rule in resolution.order:
        impl, verdict = choose(rule, facts, host_key)
        missing = next((needed for needed in rule.depends_on if needed not in ids), None)
        if verdict is None and missing is not None:
            detail = f"depends on rule {missing}, which is not in this rule set"
            verdict = CheckResult(rule.id, host_key, Verdict.NOT_APPLICABLE, detail, source=str(rule.source))
        if verdict is None and impl is not None and not impl.supported:
            verdict = CheckResult(rule.id, host_key, Verdict.UNSUPPORTED, impl.unsupported_reason, implementation=_label(rule, impl), source=str(rule.source))
        if verdict is not None or impl is None:
            planned.append(Planned(rule, verdict=verdict))
            continue
        planned.append(Planned(rule, transaction=rule.to_transaction(host_key, impl)))
    for rule in rules:
        if rule.id in resolution.skipped:
            planned.append(Planned(rule, verdict=_skipped(rule, resolution.skipped[rule.id], host_key)))
    return resolution, planned
