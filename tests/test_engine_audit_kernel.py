"""Every terminal status, as the kernel logged its phase records, in order."""

from __future__ import annotations

import uuid
from typing import Any, Dict, List, Mapping, Optional, Tuple

import pytest

from conftest import AuditListener, decode_value, kensa_records, parse_fields, require_audit
import kensa.audit.emitter as audit
from kensa.engine import Engine
from kensa.model import PreState, RollbackResult, Status, Step, StepResult, Transaction

# Changes, floods or reads the kernel's audit state: one at a time (tests/conftest.py).
pytestmark = pytest.mark.serial


class Store:
    """A dict standing in for a host."""

    def __init__(self) -> None:
        self.values: Dict[str, Any] = {}


class SetValue:
    """Capturable: sets values[key] = value. `fail_apply`, `lie`, `fail_rollback`, `staged` misbehave on purpose."""

    name = "set_value"
    capturable = True

    def capture(self, host: Store, params: Mapping[str, Any]) -> PreState:
        key = params["key"]
        return PreState(self.name, params, {"present": key in host.values, "value": host.values.get(key)})

    def apply(self, host: Store, params: Mapping[str, Any], pre: Optional[PreState]) -> StepResult:
        if params.get("fail_apply"):
            return StepResult(self.name, ok=False, detail="refused on purpose")
        host.values[params["key"]] = "wrong" if params.get("lie") else params["value"]
        return StepResult(self.name, ok=True, changed=True, staged=bool(params.get("staged")))

    def validate(self, host: Store, params: Mapping[str, Any]) -> bool:
        return host.values.get(params["key"]) == params["value"]

    def rollback(self, host: Store, pre: PreState) -> RollbackResult:
        if pre.params.get("fail_rollback"):
            return RollbackResult(self.name, ok=False, detail="cannot restore on purpose")
        if pre.data["present"]:
            host.values[pre.params["key"]] = pre.data["value"]
        else:
            host.values.pop(pre.params["key"], None)
        return RollbackResult(self.name, ok=True)


class RunOnce:
    """Not capturable: like a command that cannot be undone."""

    name = "run_once"
    capturable = False

    def capture(self, host: Store, params: Mapping[str, Any]) -> PreState:
        raise AssertionError("never captured")

    def apply(self, host: Store, params: Mapping[str, Any], pre: Optional[PreState]) -> StepResult:
        host.values.setdefault("ran", 0)
        host.values["ran"] += 1
        return StepResult(self.name, ok=True, changed=True)

    def validate(self, host: Store, params: Mapping[str, Any]) -> bool:
        return False

    def rollback(self, host: Store, pre: PreState) -> RollbackResult:
        raise AssertionError("never rolled back")


def step(**params: Any) -> Step:
    return Step("set_value", {"key": "k", "value": "v", **params})


# (status, steps, transactional, host values before, expected records)
CASES: List[Tuple[Status, List[Step], bool, Dict[str, Any], List[Tuple[str, str]]]] = [
    (Status.COMMITTED, [step()], True, {},
     [("started", "success"), ("capture", "success"), ("apply", "success"), ("validate", "success"), ("committed", "success")]),
    (Status.ROLLED_BACK, [step(), step(key="k2", fail_apply=True)], True, {},
     [("started", "success"), ("capture", "success"), ("apply", "failed"), ("rolled_back", "failed")]),
    (Status.ROLLED_BACK, [step(lie=True)], True, {},
     [("started", "success"), ("capture", "success"), ("apply", "success"), ("validate", "failed"), ("rolled_back", "failed")]),
    (Status.PARTIALLY_APPLIED, [Step("run_once", {}), step(fail_apply=True)], False, {},
     [("started", "success"), ("capture", "success"), ("apply", "failed"), ("partially_applied", "failed")]),
    (Status.ROLLBACK_FAILED, [step(fail_rollback=True), step(key="k2", fail_apply=True)], True, {},
     [("started", "success"), ("capture", "success"), ("apply", "failed"), ("rollback_failed", "failed")]),
    (Status.ERRORED, [Step("no_such_mechanism", {})], True, {},
     [("started", "success"), ("errored", "failed")]),
    (Status.SKIPPED, [step()], True, {"k": "v"},
     [("started", "success"), ("skipped", "success")]),
    (Status.STAGED, [step(staged=True)], True, {},
     [("started", "success"), ("capture", "success"), ("apply", "success"), ("staged", "success")]),
]


@pytest.mark.parametrize("mode", ["async", "sync"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0].value}-{len(c[1])}steps")
def test_record_sequence_from_the_kernel(listener: AuditListener, mode: str, case: Any) -> None:
    """The kernel logs the DESIGN.md record sequence for this status, in order, with txn, rule and host."""
    status, steps, transactional, before, expected = case
    emitter = audit.open_emitter(mode)
    if not isinstance(emitter, audit.AuditEmitter):
        require_audit(f"emission is off: {audit.status()}")
    store = Store()
    store.values.update(before)
    engine = Engine({"set_value": SetValue(), "run_once": RunOnce()}, audit=emitter, hosts=lambda key: store)
    txn = Transaction(rule="demo rule'x", steps=tuple(steps), host=f"web-{uuid.uuid4().hex[:8]}", transactional=transactional)
    result = engine.run(txn)
    assert result.status is status
    assert emitter.flush(10)
    records = kensa_records(listener, txn.id, len(expected))
    got = []
    for record in records:
        fields = dict(parse_fields(record.body))
        assert decode_value(fields["txn"]).decode() == txn.id
        assert decode_value(fields["rule"]).decode() == txn.rule
        assert decode_value(fields["host"]).decode() == txn.host
        got.append((fields["phase"], fields["res"]))
    assert got == expected
    assert engine.audit_errors == 0
    emitter.close()
