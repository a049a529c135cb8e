"""audit_rule_set: audit rules are persisted in a rules file and loaded in the kernel.

Rules are ``-w`` watch or ``-a``/``-A`` syscall rule lines made only of the options
:mod:`kensa.facts.auditrules` allows for that kind; anything else (``-D``, ``-e``, ``-f``,
``-b``, deletions), first on the line or after a rule, is refused, since every
option on a line reaches auditctl and a control option could wipe, lock or arm
the whole audit configuration.

Rules that silence audit itself (an exclude rule that can match kensa's own
AUDIT_USER records, ``never`` on the task list, ...; see
:func:`kensa.facts.auditrules.silencing_reason`) are refused before anything is
captured or written, unless the step says it means it with
``allow_silencing: true``. Checking whether such a rule is present is allowed:
only writing it is refused.

Whether a rule is already present, in the file or in the kernel, is decided on
the normalised identity of :func:`kensa.facts.auditrules.rule_identity`, under
which auditctl's own spellings compare equal. Rollback never trusts that normalisation to delete anything: it deletes only the
lines of ``auditctl -l`` that were not listed at capture time and whose identity
is one of the rules this step loaded, using the kernel's own spelling, then
verifies that the listing equals the captured one exactly.

The kernel is touched only when the target is the live host (root "/") and
``auditctl -s`` works; an immutable configuration (``enabled 2``) gets the rules
persisted and a staged result (in effect after reboot).
"""

from __future__ import annotations

import shlex
from collections import Counter
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from kensa.audit.compiled import constant
from kensa.errors import KensaError, ParamError
from kensa.facts.auditrules import (
    DEFAULT_PERSIST_FILE,
    audit_rules,
    auditctl,
    identities,
    kernel_rules,
    missing,
    rule_identity,
    rules_hold,
    silencing_reason,
)
from kensa.facts.config import decode, encode
from kensa.facts.params import Field, Schema, absolute_path, as_given, boolean, path_as_text

from kensa.model import Assessment, Drift, PreState, RollbackResult, StepResult
from kensa.handlers.filestate import (
    Planned,
    Revert,
    StatePlan,
    assess_file,
    capture_file,
    combine,
    fidelity_notes,
    planned_file,
    post_state,
    restore_planned,
    restored,
    rollback_result,
    settled_files,
)
from kensa.hosts.protocol import Host, ReadableHost

__all__ = ["DEFAULT_PERSIST_FILE", "SCHEMA", "AuditRuleSet", "rule_identity"]

_DELETE = {"-w": "-W", "-a": "-d", "-A": "-d"}

SCHEMA = Schema(
    "audit_rule_set",
    {
        "rule": Field(audit_rules, required=True, written=as_given),
        "persist_file": Field(absolute_path, written=path_as_text),
        "allow_silencing": Field(boolean, written=as_given),
    },
)


def merge_lines(text: str, lines: Sequence[str]) -> str:
    if lines and text and not text.endswith("\n"):
        text += "\n"
    return text + "".join(line + "\n" for line in lines)


def revert_rules(added: Sequence[str]) -> Revert:
    """Undo only the appended rule lines: for each, the last line with its identity goes.
    None when one of them is no longer in the file."""

    def revert(now: bytes) -> Optional[bytes]:
        lines = decode(now).splitlines(keepends=True)
        for line in added:
            wanted = rule_identity(line)
            for index in range(len(lines) - 1, -1, -1):
                if identities([lines[index]]) == [wanted]:
                    del lines[index]
                    break
            else:
                return None
        return encode("".join(lines))

    return revert


class AuditRuleSet:
    """Persist rule lines (merged, never duplicated) and load them into the kernel."""

    name = "audit_rule_set"
    capturable = True

    schema = SCHEMA

    def _desired(self, params: Mapping[str, Any]) -> Tuple[List[str], str]:
        read = SCHEMA.read(params)
        return read["rule"], read["persist_file"] or DEFAULT_PERSIST_FILE

    def _refuse_silencing(self, params: Mapping[str, Any], rules: Sequence[str]) -> None:
        if SCHEMA.read(params)["allow_silencing"]:
            return
        for line in rules:
            reason = silencing_reason(line, constant("AUDIT_USER"))
            if reason is not None:
                raise ParamError(
                    f"{self.name}: rule {line!r} would silence audit: {reason}. Nothing was changed; "
                    "if that is intended, set allow_silencing: true on the step"
                )

    # -- the protocol ----------------------------------------------------------------

    def validate(self, host: ReadableHost, params: Mapping[str, Any]) -> bool:
        return rules_hold(host, *self._desired(params))

    def capture(self, host: ReadableHost, params: Mapping[str, Any]) -> PreState:
        rules, persist = self._desired(params)
        self._refuse_silencing(params, rules)
        state = capture_file(host, persist)
        lines_added = missing(rules, decode(state.get("content")).splitlines())
        kernel = kernel_rules(host)
        state["post"] = post_state(state, encode(merge_lines(decode(state.get("content")), lines_added)))
        data: Dict[str, Any] = {"persist": state, "lines_added": lines_added, "kernel": None}
        if kernel is not None:
            data["kernel"] = {
                "immutable": kernel["immutable"],
                "before": kernel["rules"],
                "rules_added": missing(rules, kernel["rules"]),
            }
        return PreState(self.name, params, data)

    def apply(self, host: Host, params: Mapping[str, Any], pre: Optional[PreState]) -> StepResult:
        rules, persist = self._desired(params)
        self._refuse_silencing(params, rules)
        text = decode(host.read_bytes(persist))
        lines = missing(rules, text.splitlines())
        if lines:
            host.write_file(persist, encode(merge_lines(text, lines)))
        where = host.where(persist)
        kernel = kernel_rules(host)
        if kernel is None:
            if host.is_live:
                return StepResult(self.name, ok=True, changed=bool(lines), staged=True,
                                  detail=f"audit is not available here; rules persisted in {where} only")
            return StepResult(self.name, ok=True, changed=bool(lines), detail=f"rules persisted in {where}")
        if kernel["immutable"]:
            return StepResult(self.name, ok=True, changed=bool(lines), staged=True,
                              detail=f"audit configuration is immutable (enabled 2): rules persisted in {where}, loaded at next boot")
        loaded = 0
        for line in missing(rules, kernel["rules"]):
            code, output = auditctl(host, shlex.split(line))
            if code != 0 and "exists" not in output:
                return StepResult(self.name, ok=False, changed=bool(lines or loaded), detail=f"auditctl {line}: {output}")
            loaded += code == 0
        return StepResult(self.name, ok=True, changed=bool(lines or loaded),
                          detail=f"{len(lines)} line(s) persisted in {where}, {loaded} rule(s) loaded")

    def rollback(self, host: Host, pre: PreState) -> RollbackResult:
        problems = self._rollback_file(host, pre.data["persist"], list(pre.data["lines_added"]))
        kernel = pre.data["kernel"]
        if kernel is not None and not kernel["immutable"]:
            problems += self._rollback_kernel(host, list(kernel["before"]), list(kernel["rules_added"]))
        return rollback_result(self.name, problems, fidelity_notes(host, [pre.data["persist"]]))

    def planned(self, host: ReadableHost, pre: PreState) -> Planned:
        state = pre.data["persist"]
        return planned_file(state, encode(merge_lines(decode(state.get("content")), list(pre.data["lines_added"]))))

    def settled(self, host: ReadableHost, pre: PreState, assessment: Assessment, force: bool = False) -> Planned:
        return settled_files(host, [pre.data["persist"]], assessment, force)

    def assess(self, host: ReadableHost, pre: PreState) -> Assessment:
        state, added = pre.data["persist"], list(pre.data["lines_added"])
        plans: List[Any] = [assess_file(host, state, state.get("post"), revert_rules(added))]
        kernel = pre.data["kernel"]
        if kernel is not None and not kernel["immutable"]:
            now = kernel_rules(host)
            if now is None:
                plans.append(StatePlan(Drift.CONFLICT, ("audit is no longer available: cannot check the kernel's rules",)))
            else:
                gone = missing(list(kernel["rules_added"]), now["rules"])
                others = Counter(now["rules"]) - Counter(kernel["before"])
                ours = set(identities(list(kernel["rules_added"])))
                foreign = [line for line in others.elements() if not ours.intersection(identities([line]))]
                kept = (f"kept later kernel audit rules: {foreign}",) if foreign else ()
                if len(gone) == len(kernel["rules_added"]):
                    plans.append(StatePlan(Drift.OUTSIDE, kept) if foreign else StatePlan(Drift.AT_PRE))
                elif gone:
                    plans.append(StatePlan(Drift.CONFLICT, (f"kernel audit rules kensa loaded were deleted since: {gone}",)))
                elif foreign:
                    plans.append(StatePlan(Drift.OUTSIDE, kept))
                else:
                    plans.append(StatePlan(Drift.AT_POST))
        return combine(plans)

    def restore(self, host: Host, pre: PreState, assessment: Assessment, force: bool = False) -> RollbackResult:
        file_plan = assessment.plan[0]
        problems = restore_planned(host, pre.data["persist"], file_plan, force)
        kernel = pre.data["kernel"]
        if len(assessment.plan) > 1 and kernel is not None:
            plan = assessment.plan[1]
            if plan.drift is Drift.CONFLICT and not force:
                problems.append(f"withheld: {'; '.join(plan.details)}")
            elif plan.drift is not Drift.AT_PRE:
                exact = plan.drift is not Drift.OUTSIDE
                problems += self._rollback_kernel(host, list(kernel["before"]), list(kernel["rules_added"]), exact)
        return restored(self.name, problems, assessment, force, fidelity_notes(host, [pre.data["persist"]]))

    def _rollback_file(self, host: Host, state: Mapping[str, Any], added: List[str]) -> List[str]:
        # Someone may have edited the file since apply: only this step's lines go then.
        try:
            plan = assess_file(host, state, state.get("post"), revert_rules(added))
        except (KensaError, OSError) as exc:
            return [f"reading {state['path']} failed: {exc}"]
        return restore_planned(host, state, plan, force=True)

    def _rollback_kernel(self, host: Host, before: List[str], added: List[str], exact: bool = True) -> List[str]:
        problems = []
        try:
            kernel = kernel_rules(host)
            if kernel is None:
                return ["audit is no longer available: cannot verify the kernel's rules"]
            ours = set(identities(added))
            for line in (Counter(kernel["rules"]) - Counter(before)).elements():
                if not ours.intersection(identities([line])):
                    continue
                tokens = shlex.split(line)
                code, output = auditctl(host, [_DELETE[tokens[0]], *tokens[1:]])
                if code != 0:
                    problems.append(f"auditctl could not delete {line!r}: {output}")
            kernel = kernel_rules(host)
        except (KensaError, OSError, ValueError) as exc:
            return [f"restoring the kernel's audit rules failed: {exc}"]
        now = [] if kernel is None else kernel["rules"]
        if not exact:
            # Rules loaded since by someone else stay: only kensa's must be gone, and
            # nothing that was there before may be missing.
            left = [line for line in added if line not in missing([line], now)]
            gone = list((Counter(before) - Counter(now)).elements())
            if left or gone:
                problems.append(f"after deleting kensa's rules: still loaded {left}, missing {gone}")
            return problems
        if now != before:
            extra = list((Counter(now) - Counter(before)).elements())
            gone = list((Counter(before) - Counter(now)).elements())
            problems.append(f"auditctl -l differs from before: extra {extra}, missing {gone}")
        return problems
