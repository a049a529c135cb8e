"""What a check method is: a name, the schema of its fields, and a read-only test.

A test returns a :class:`~kensa.model.Finding`: whether the host holds and what
was seen there, built with :func:`holds_if` or :func:`not_compliant`. A test that
this kind of target cannot answer raises :class:`~kensa.errors.CheckNotAssessable`
with the reason (see :func:`live_only`); a real fault (an unreadable file, a
command that cannot run) raises its own KensaError.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Tuple

from kensa.errors import CheckNotAssessable, ParamError
from kensa.facts.params import Schema
from kensa.hosts.protocol import ReadableHost
from kensa.model import Finding, Verdict


def holds_if(holds: bool, detail: str) -> Finding:
    """A compliant or not compliant finding, saying what was found."""
    return Finding(Verdict.COMPLIANT if holds else Verdict.NOT_COMPLIANT, detail)


def not_compliant(detail: str) -> Finding:
    return Finding(Verdict.NOT_COMPLIANT, detail)


def live_only(host: ReadableHost, what: str) -> None:
    """Refuse, as not assessable, a check of running state (``what``) on a target that
    is not a running machine: under an image root it would read the controller."""
    if not host.is_live:
        raise CheckNotAssessable(
            f"{what} is state of a running system, and {host.root} is an image root, not a running host"
        )


@dataclass(frozen=True)
class CheckMethod:
    """A check method: ``test(host, fields)`` gets the fields as ``schema`` read them and
    returns what it found; it reads facts of the host and changes nothing."""

    schema: Schema
    test: Callable[[Any, Mapping[str, Any]], Finding]

    @property
    def name(self) -> str:
        return self.schema.owner

    def evaluate(self, host: ReadableHost, params: Mapping[str, Any]) -> Finding:
        """What the check finds on ``host``; ParamError for fields the schema refuses,
        CheckNotAssessable when this target cannot answer it."""
        return self.test(host, self.schema.read(params))

    def holds(self, host: ReadableHost, params: Mapping[str, Any]) -> bool:
        """Whether the check holds (not assessable counts as not holding)."""
        return self.evaluate(host, params).holds


COMPARATORS = ("==", "!=", "<", "<=", ">", ">=")


def comparator(value: Any) -> str:
    """A ``comparator`` field: one of ==, !=, <, <=, >, >= (a field reader)."""
    if value not in COMPARATORS:
        raise ParamError(f"must be one of {', '.join(COMPARATORS)}, got {value!r}")
    return str(value)


def compare(got: str, expected: str, how: Optional[str], fold_case: bool) -> Tuple[bool, str]:
    """Whether ``got`` satisfies ``how`` (== when None) against ``expected``, and, when it
    cannot be compared, why: the ordering comparators compare whole numbers only."""
    how = how or "=="
    if how in ("==", "!="):
        same = got.lower() == expected.lower() if fold_case else got == expected
        return same == (how == "=="), ""
    try:
        have, want = int(got.strip()), int(expected.strip())
    except ValueError:
        return False, f"{got!r} and {expected!r} are not both whole numbers, so '{how}' cannot hold"
    return {"<": have < want, "<=": have <= want, ">": have > want, ">=": have >= want}[how], ""


def expectation(how: Optional[str], expected: str) -> str:
    """How a detail says what was expected: "'no'" or ">= '14'"."""
    return repr(expected) if how in (None, "==") else f"{how} {expected!r}"
