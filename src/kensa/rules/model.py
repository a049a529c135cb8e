"""The rule model: what a rule file becomes once loaded (frozen dataclasses)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import AbstractSet, Any, Mapping, Optional, Tuple, Union

from kensa.errors import RuleError
from kensa.model import ServiceAction, Step, Transaction

__all__ = [
    "RULE_CHECK",
    "CapabilityGate",
    "Check",
    "Implementation",
    "Platform",
    "Reference",
    "Rule",
    "RuleProblem",
    "RuleSet",
    "Severity",
    "SourceLocation",
    "verification_step",
]


class Severity(str, enum.Enum):
    """A rule's own severity rating (a closed set)."""

    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class SourceLocation:
    """Where a rule was read from: a file (or ``<string>``) and a 1-based line."""

    path: str
    line: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}"


@dataclass(frozen=True)
class Platform:
    """An OS family and the inclusive range of major versions a rule applies to."""

    family: str
    min_version: int
    max_version: Optional[int] = None
    derivatives: bool = True


@dataclass(frozen=True)
class Reference:
    """A control a rule implements, from its ``references`` mapping.

    ``framework`` is the mapping's key (``cis``, ``stig``, ``nist_800_53``,
    ``nist_800_171``, ...); ``control`` the control's id in that framework (a
    CIS section, a STIG id, a NIST control); ``profile`` the benchmark the id
    belongs to when the framework has one per platform (``rhel9``), else "";
    ``attributes`` the rest of the entry as text (CIS ``level``, STIG
    ``vuln_id`` and ``severity``, ...; a list, such as STIG ``cci``, as a tuple).
    """

    framework: str
    control: str
    profile: str = ""
    attributes: Mapping[str, Union[str, Tuple[str, ...]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "attributes", MappingProxyType(dict(self.attributes)))


@dataclass(frozen=True)
class CapabilityGate:
    """A ``when`` condition over the capabilities detected on a host.

    Satisfied when every ``all_of`` capability is present, at least one
    ``any_of`` capability is present (if any are listed), and no ``none_of``
    capability is present. A bare name in YAML is ``all_of=(name,)``.
    """

    all_of: Tuple[str, ...] = ()
    any_of: Tuple[str, ...] = ()
    none_of: Tuple[str, ...] = ()

    def satisfied_by(self, capabilities: AbstractSet[str]) -> bool:
        """Whether this gate holds on a host with ``capabilities``."""
        return (
            all(name in capabilities for name in self.all_of)
            and (not self.any_of or any(name in capabilities for name in self.any_of))
            and not any(name in capabilities for name in self.none_of)
        )


@dataclass(frozen=True)
class Check:
    """One verification: a Kensa check method and its fields."""

    method: str
    params: Mapping[str, Any] = field(default_factory=dict)
    supported: bool = True
    unsupported_reason: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", MappingProxyType(dict(self.params)))


@dataclass(frozen=True)
class Implementation:
    """A check and remediation variant of a rule.

    ``checks`` must all hold for the host to be compliant; empty means the
    remediation's own validation is the check. ``supported`` is false when a
    mechanism, check method or field is one kensa cannot carry out; the reason
    names it and where it is in the rule.
    """

    when: Optional[CapabilityGate]
    default: bool
    checks: Tuple[Check, ...]
    steps: Tuple[Step, ...]
    supported: bool = True
    unsupported_reason: str = ""
    services: Tuple[ServiceAction, ...] = ()  # after the steps commit (kensa.rules.services)

    @property
    def checkable(self) -> bool:
        """Whether kensa can check this implementation: its checks are all supported
        (without checks, its steps' own validation is the check, so they must be)."""
        if self.checks:
            return all(check.supported for check in self.checks)
        return self.supported

    @property
    def check_unsupported_reason(self) -> str:
        """Why this implementation cannot be checked ("" when it can)."""
        if self.checks:
            return "; ".join(check.unsupported_reason for check in self.checks if not check.supported)
        return self.unsupported_reason


@dataclass(frozen=True)
class Rule:
    """A remediation rule loaded from a rule file."""

    id: str
    title: str
    severity: Severity
    category: str
    tags: Tuple[str, ...]
    transactional: bool
    platforms: Tuple[Platform, ...]
    implementations: Tuple[Implementation, ...]
    source: SourceLocation
    description: str = ""
    references: Tuple[Reference, ...] = ()
    depends_on: Tuple[str, ...] = ()
    conflicts_with: Tuple[str, ...] = ()
    supersedes: Tuple[str, ...] = ()

    @property
    def supported(self) -> bool:
        """True when kensa can carry out every implementation of this rule."""
        return all(impl.supported for impl in self.implementations)

    @property
    def unsupported_reason(self) -> str:
        """Why the rule is not supported ("" when it is), per implementation."""
        return "; ".join(impl.unsupported_reason for impl in self.implementations if not impl.supported)

    @property
    def default_implementation(self) -> Optional[Implementation]:
        """The ``default: true`` implementation, if the rule has one."""
        for impl in self.implementations:
            if impl.default:
                return impl
        return None

    def select_implementation(self, capabilities: AbstractSet[str]) -> Optional[Implementation]:
        """The first implementation whose ``when`` gate holds, else the default one.

        Returns None only for a rule without a default whose gates all fail.
        """
        for impl in self.implementations:
            if impl.when is not None and impl.when.satisfied_by(capabilities):
                return impl
        return self.default_implementation

    def to_transaction(
        self, host: str = "localhost", implementation: Optional[Implementation] = None
    ) -> Transaction:
        """A transaction applying ``implementation`` (default: the default one) to ``host``.

        Raises RuleError when the implementation is not one of this rule's, or
        is not supported.
        """
        impl = implementation if implementation is not None else self.default_implementation
        if impl is None:
            raise RuleError(
                f"{self.source}: rule '{self.id}' has no default implementation; "
                "pass the one select_implementation() chose for the host"
            )
        if not any(candidate is impl or candidate == impl for candidate in self.implementations):
            raise RuleError(f"{self.source}: the implementation given is not one of rule '{self.id}'")
        if not impl.supported:
            raise RuleError(f"{self.source}: rule '{self.id}' cannot run here: {impl.unsupported_reason}")
        steps = impl.steps
        if impl.checks:
            steps += (verification_step(impl.checks),)
        return Transaction(rule=self.id, steps=steps, host=host, transactional=self.transactional, services=impl.services)


RULE_CHECK = "rule_check"
"""The mechanism of the step that carries a rule's own check into its transaction."""


def verification_step(checks: Tuple[Check, ...]) -> Step:
    """The last step of a rule's transaction: it changes nothing, and holds when every
    one of the rule's ``checks`` holds (:class:`kensa.rules.checkstep.RuleCheck`).
    The engine then skips the rule when its check already holds, and rolls the
    transaction back when the check does not hold after apply."""
    return Step(RULE_CHECK, {"checks": [{"method": c.method, "params": dict(c.params)} for c in checks]})


@dataclass(frozen=True)
class RuleProblem:
    """A rule file that did not load, or a rule that cannot run: where, what, and the
    rule's id when it was read (a file with an undefined variable has one)."""

    source: str
    message: str
    rule_id: str = ""


@dataclass(frozen=True)
class RuleSet:
    """What loading a set of rule files gave: the rules that loaded, in path order, and
    one problem per file that did not (the other files still load)."""

    rules: Tuple[Rule, ...]
    problems: Tuple[RuleProblem, ...] = ()

