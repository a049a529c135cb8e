"""Per-step guards the engine consults before it captures anything: a step's ``unless``
command (any mechanism) and a step only an operator can carry out (``manual``); and, from
them, which step's check a transaction begins with (what a host may read ahead)."""

from __future__ import annotations

from typing import Any, Optional

from kensa.facts.params import SHELL, command_line
from kensa.engine.registry import Registry
from kensa.model import Step, StepResult, Transaction

__all__ = ["UNLESS_TIMEOUT", "first_check", "needs_operator", "unless_held"]


UNLESS_TIMEOUT = 60.0
"""Seconds a step's ``unless`` command may run; one that overruns is an error in the check phase."""


def unless_held(host: Any, step: Step) -> Optional[StepResult]:
    """The result of a step its ``unless`` command says is already done (it exited 0 on the
    target), or None: no ``unless``, it exited non-zero, or the target is an image root,
    where the command would read the controller rather than the image (the step then runs)."""
    value = step.params.get("unless")
    if value is None or not getattr(host, "is_live", False):
        return None
    argv = command_line(value)
    done = host.run(argv, UNLESS_TIMEOUT)
    if done.returncode != 0:
        return None
    shown = argv[-1] if argv[:2] == [SHELL, "-c"] else " ".join(argv)
    return StepResult(step.mechanism, ok=True, detail=f"not applied: its unless command {shown[:200]!r} exited 0", skipped=True)


def needs_operator(handler: Any) -> bool:
    """A step only an operator can carry out (``manual``): it has an ``instruction(params)``."""
    return getattr(handler, "needs_operator", False) is True


def first_check(registry: Registry, txn: Transaction, following: Optional[Transaction]) -> Optional[Step]:
    """The step whose check is the engine's first request in ``following`` (canonical), run right
    after ``txn`` on its host, when ``txn``'s last request on success is its one step's validate
    (one step, no services); else None. None too when ``following`` is another host's, its first
    step has an ``unless`` (run first) or a step of it decides compliance (checked first), or a
    mechanism is unknown (it errors in preflight, asking nothing)."""
    if following is None or len(txn.steps) != 1 or txn.services:
        return None
    if following.host != txn.host or not following.steps or "unless" in following.steps[0].params:
        return None
    try:
        if any(getattr(registry[step.mechanism], "decides_compliance", False) is True for step in following.steps):
            return None
    except LookupError:
        return None
    return following.steps[0]
