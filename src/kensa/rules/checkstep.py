"""The step that carries a rule's own check into its transaction.

A rule's check is independent of its remediation: the remediation's steps can
all validate while the rule's check does not hold, and the check can hold while
a step would still change something. :meth:`kensa.rules.Rule.to_transaction`
therefore appends one :data:`~kensa.rules.model.RULE_CHECK` step
(:func:`~kensa.rules.model.verification_step`) whose handler is :class:`RuleCheck`:

* it decides compliance (``decides_compliance``): the engine skips the
  transaction, recording ``started, skipped``, when the rule's check already
  holds, whatever the other steps' validate says;
* its ``validate`` after apply is the rule's check, so a remediation after
  which the check does not hold is rolled back like any failed validation;
* it captures an empty pre-state, applies nothing and restores nothing, so a
  transactional rule stays transactional, and recovery and rollback by id find
  nothing of it to undo.

The checks are evaluated through the host object the engine gives (a remote
host reads over its connection); nothing here opens a local path.
:func:`kensa.factory.default_engine` registers the handler.
"""

from __future__ import annotations

from typing import Any, List, Mapping, Optional

from kensa.checks import evaluate_check
from kensa.errors import CheckError
from kensa.hosts.protocol import Host, ReadableHost
from kensa.model import Assessment, Drift, PreState, RollbackResult, StepResult
from kensa.rules.model import RULE_CHECK, Check

__all__ = ["RuleCheck"]


def _checks(params: Mapping[str, Any]) -> List[Check]:
    entries = params.get("checks")
    if not isinstance(entries, (list, tuple)) or not entries:
        raise CheckError(f"{RULE_CHECK}: 'checks' must list the rule's checks")
    found = []
    for entry in entries:
        if not isinstance(entry, Mapping) or not isinstance(entry.get("method"), str):
            raise CheckError(f"{RULE_CHECK}: each check needs a 'method' and its 'params'")
        found.append(Check(entry["method"], entry.get("params") or {}))
    return found


class RuleCheck:
    """Handler of the rule-check step: holds when every one of the rule's checks holds."""

    name = RULE_CHECK
    capturable = True
    decides_compliance = True

    def validate(self, host: ReadableHost, params: Mapping[str, Any]) -> bool:
        # A check this target cannot answer does not hold: the remediation cannot be verified.
        return all(evaluate_check(check, host).holds for check in _checks(params))

    def capture(self, host: ReadableHost, params: Mapping[str, Any]) -> PreState:
        _checks(params)
        return PreState(self.name, params, {})

    def apply(self, host: Host, params: Mapping[str, Any], pre: Optional[PreState]) -> StepResult:
        return StepResult(self.name, ok=True, changed=False, detail="changes nothing; the rule's check runs in validate")

    def rollback(self, host: Host, pre: PreState) -> RollbackResult:
        return RollbackResult(self.name, ok=True, detail="the rule's check changed nothing")

    def assess(self, host: ReadableHost, pre: PreState) -> Assessment:
        return Assessment(Drift.AT_PRE, ("the rule's check changed nothing",))

    def restore(self, host: Host, pre: PreState, assessment: Assessment, force: bool = False) -> RollbackResult:
        return self.rollback(host, pre)

    def planned(self, host: ReadableHost, pre: PreState) -> Mapping[str, Any]:
        return {}

    def settled(self, host: ReadableHost, pre: PreState, assessment: Assessment, force: bool = False) -> Mapping[str, Any]:
        return {}
