"""manual: a remediation only an operator can carry out. kensa never applies anything.

The rule's check still decides compliance. When it holds, the transaction is
``skipped`` as for any compliant rule; when it does not, the engine changes
nothing and ends the transaction ``manual`` (:class:`kensa.model.Status`), its
step's detail saying what the operator must do (the step's ``note``). Such a
rule counts as not remediated: not committed, and not an error either.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

from kensa.facts.params import Field, Schema, text
from kensa.hosts.protocol import Host, ReadableHost
from kensa.model import PreState, RollbackResult, StepResult

NO_NOTE = "the rule gives no instructions"

SCHEMA = Schema("manual", {"note": Field(text)})


class Manual:
    """A step that needs an operator: the engine reads ``needs_operator`` and applies nothing."""

    name = "manual"
    capturable = False
    needs_operator = True
    schema = SCHEMA

    def instruction(self, params: Mapping[str, Any]) -> str:
        """What the operator must do, on one line."""
        note = SCHEMA.read(params)["note"]
        return " ".join(note.split()) if note and note.strip() else NO_NOTE

    def validate(self, host: ReadableHost, params: Mapping[str, Any]) -> bool:
        # Nothing on the host says the operator did it; the rule's own check does.
        self.instruction(params)
        return False

    def apply(self, host: Host, params: Mapping[str, Any], pre: Optional[PreState]) -> StepResult:
        # The engine never applies a step that needs an operator; a caller that does gets nothing done.
        return StepResult(self.name, ok=False, changed=False, detail=f"an operator must act: {self.instruction(params)}")

    def capture(self, host: ReadableHost, params: Mapping[str, Any]) -> PreState:
        raise NotImplementedError(f"{self.name} is not capturable")

    def rollback(self, host: Host, pre: PreState) -> RollbackResult:
        raise NotImplementedError(f"{self.name} is not capturable")
