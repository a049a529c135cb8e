"""Whether a rule applies to a target: its ``platforms`` against the target's os-release,
and the order, dependencies, conflicts and supersessions of a set of rules.

Platforms follow Kensa's semantics. A platform's ``family`` is compared with the
target's os-release ``ID``: ``rhel`` and ``redhat`` are one family; with
``derivatives`` (the default) the Enterprise Linux rebuilds ``centos``,
``rocky``, ``almalinux``/``alma`` and ``ol``/``oracle`` count as that family
too, and as each other. Ubuntu and Debian are different families, derivatives
or not. ``min_version``/``max_version`` bound the major version (the leading
digits of ``VERSION_ID``). A rule without platforms applies everywhere, and so
does every rule on a target whose os-release cannot be read (Kensa's rule: the
platform is unknown, so it cannot rule the rule out).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Set, Tuple

from kensa.errors import KensaError, RemoteHostError
from kensa.hosts.protocol import ReadableHost
from kensa.rules.model import Platform, Rule

__all__ = ["OsRelease", "Resolution", "platform_applies", "read_os_release", "resolve"]

_EL = frozenset({"rhel", "redhat", "centos", "rocky", "almalinux", "alma", "ol", "oracle"})
_RHEL = frozenset({"rhel", "redhat"})
_OS_RELEASE = ("/etc/os-release", "/usr/lib/os-release")


@dataclass(frozen=True)
class OsRelease:
    """The os-release fields applicability reads: ``ID``, ``VERSION_ID``, ``ID_LIKE``."""

    id: str
    version_id: str = ""
    id_like: Tuple[str, ...] = ()

    @property
    def major(self) -> Optional[int]:
        """The major version (leading digits of VERSION_ID), or None when it has none."""
        digits = re.match(r"\d+", self.version_id)
        return int(digits.group(0)) if digits else None

    def __str__(self) -> str:
        return f"{self.id} {self.version_id}".strip()


def parse_os_release(text: str) -> Optional[OsRelease]:
    """Parse os-release(5) text; None when it names no ``ID``."""
    fields: Dict[str, str] = {}
    for line in text.splitlines():
        name, sep, raw = line.strip().partition("=")
        if not sep or not re.fullmatch(r"[A-Z_][A-Z0-9_]*", name):
            continue
        try:
            words = shlex.split(raw, comments=False)
        except ValueError:
            continue
        fields[name] = words[0] if len(words) == 1 else " ".join(words)
    ident = fields.get("ID", "").strip().lower()
    if not ident:
        return None
    return OsRelease(ident, fields.get("VERSION_ID", "").strip(), tuple(fields.get("ID_LIKE", "").lower().split()))


def read_os_release(host: ReadableHost) -> Optional[OsRelease]:
    """The target's os-release (``/etc/os-release``, else ``/usr/lib/os-release``), read
    through ``host``; None when neither can be read or names no ID."""
    for path in _OS_RELEASE:
        try:
            data = host.read_bytes(path)
        except RemoteHostError:
            raise  # a lost connection or timeout says nothing about the target
        except KensaError:
            # /etc/os-release is a symlink to ../usr/lib/os-release on most systems:
            # the confined host refuses to follow it, so the second path answers.
            continue
        if data is not None:
            return parse_os_release(data.decode("utf-8", "replace"))
    return None


def _family_matches(family: str, host: str, derivatives: bool) -> bool:
    if family == host or (family in _RHEL and host in _RHEL):
        return True
    return derivatives and family in _EL and host in _EL


def platform_applies(platforms: Sequence[Platform], os_release: Optional[OsRelease]) -> Tuple[bool, str]:
    """Whether a rule with ``platforms`` applies to a target with ``os_release``, and why not."""
    if not platforms or os_release is None:
        return True, ""
    major = os_release.major
    for platform in platforms:
        if not _family_matches(platform.family.lower(), os_release.id, platform.derivatives):
            continue
        if major is not None and (major < platform.min_version or (platform.max_version is not None and major > platform.max_version)):
            continue
        return True, ""
    wanted = ", ".join(
        f"{p.family} {p.min_version}" + (f"-{p.max_version}" if p.max_version is not None else "+")
        for p in platforms
    )
    return False, f"the target runs {os_release}; the rule is for {wanted}"


@dataclass(frozen=True)
class Resolution:
    """A set of rules put in order: ``order`` lists the rules to evaluate, each after the
    rules it depends on; ``skipped`` maps a rule id to why it is not evaluated (a
    supersession, a dependency cycle); ``conflicts`` lists each pair of selected rules
    that declare each other mutually exclusive (rule, the one it conflicts with)."""

    order: Tuple[Rule, ...]
    skipped: Dict[str, str]
    conflicts: Tuple[Tuple[str, str], ...]


def resolve(rules: Sequence[Rule]) -> Resolution:
    """Order ``rules`` dependencies first (input order otherwise), drop the superseded
    ones and the members of dependency cycles, and list the declared conflicts."""
    by_id = {rule.id: rule for rule in rules}
    skipped: Dict[str, str] = {}
    for rule in rules:
        for old in rule.supersedes:
            if old in by_id and old not in skipped:
                skipped[old] = f"superseded by rule {rule.id}"
    conflicts: List[Tuple[str, str]] = []
    seen: Set[Tuple[str, str]] = set()
    for rule in rules:
        for other in rule.conflicts_with:
            pair = (min(rule.id, other), max(rule.id, other))
            if other in by_id and rule.id not in skipped and other not in skipped and pair not in seen:
                seen.add(pair)
                conflicts.append((rule.id, other))
    order: List[Rule] = []
    placed: Set[str] = set()
    visiting: List[str] = []

    def place(rule: Rule) -> None:
        if rule.id in placed or rule.id in skipped:
            return
        if rule.id in visiting:
            cycle = visiting[visiting.index(rule.id):] + [rule.id]
            for member in cycle[:-1]:
                skipped[member] = f"dependency cycle: {' -> '.join(cycle)}"
            return
        visiting.append(rule.id)
        for needed in rule.depends_on:
            if needed in by_id:
                place(by_id[needed])
        visiting.pop()
        if rule.id not in skipped:
            placed.add(rule.id)
            order.append(rule)

    for rule in rules:
        place(rule)
    return Resolution(tuple(order), skipped, tuple(conflicts))
