"""Per-step guards the engine consults before it captures anything: a step's ``unless``
command (any mechanism) and a step only an operator can carry out (``manual``)."""

from __future__ import annotations

from typing import Any, Optional

from kensa.facts.params import SHELL, command_line
from kensa.model import Step, StepResult

__all__ = ["UNLESS_TIMEOUT", "needs_operator", "unless_held"]


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
