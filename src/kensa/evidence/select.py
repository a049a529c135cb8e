"""Rules chosen by the framework references they carry (``--framework``, ``--control``)."""

from __future__ import annotations

from typing import List, Sequence

from kensa.rules import Reference, Rule

__all__ = ["reference_matches", "select_rules"]


def reference_matches(reference: Reference, frameworks: Sequence[str], controls: Sequence[str]) -> bool:
    """Whether ``reference`` is of one of ``frameworks`` and names one of ``controls`` (each: any when empty).

    Both compare without regard to case; a control matches its id exactly
    (``AC-2`` is not ``AC-2(1)``).
    """
    if frameworks and reference.framework.casefold() not in {f.casefold() for f in frameworks}:
        return False
    return not controls or reference.control.casefold() in {c.casefold() for c in controls}


def select_rules(rules: Sequence[Rule], frameworks: Sequence[str] = (), controls: Sequence[str] = ()) -> List[Rule]:
    """The rules with at least one reference matching both filters; every rule when neither is given."""
    if not frameworks and not controls:
        return list(rules)
    return [rule for rule in rules if any(reference_matches(r, frameworks, controls) for r in rule.references)]
