"""The transaction engine against in-memory handlers on a dict-backed fake host."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Set, Tuple

import pytest

import kensa
from kensa.errors import DuplicateMechanismError, UnknownMechanismError
from kensa import default_engine
from kensa.engine import Engine, Handler, Registry
from kensa.engine.events import EventBus
from kensa.model import (
    Phase,
    PreState,
    RollbackResult,
    Status,
    Step,
    StepResult,
    Transaction,
    TransactionResult,
)

SRC = Path(__file__).resolve().parent.parent / "src"


class FakeHost:
    """A host whose whole state is a dict of key -> value."""

    def __init__(self, **values: str) -> None:
        self.values: Dict[str, str] = dict(values)


class SetValue:
    """Capturable: host.values[key] == value. ``fail`` in params injects a failure."""

    name = "set_value"
    capturable = True

    def __init__(self) -> None:
        self.calls: List[Tuple[str, str]] = []

    def capture(self, host: FakeHost, params: Mapping[str, Any]) -> PreState:
        self.calls.append(("capture", params["key"]))
        if params.get("fail") == "capture":
            raise OSError("disk on fire")
        if params.get("fail") == "capture_interrupt":
            raise KeyboardInterrupt
        key = params["key"]
        return PreState(self.name, params, {"present": key in host.values, "value": host.values.get(key)})

    def apply(self, host: FakeHost, params: Mapping[str, Any], pre: Optional[PreState]) -> StepResult:
        self.calls.append(("apply", params["key"]))
        fail = params.get("fail")
        host.values[params["key"]] = params["value"]
        if fail == "apply_raises":
            raise PermissionError("read-only file system")
        if fail == "apply_interrupt":
            raise KeyboardInterrupt
        if fail == "apply_exit":
            raise SystemExit(3)
        if fail == "apply_false":
            return StepResult(self.name, ok=False, changed=True, detail="value would not stick")
        return StepResult(self.name, ok=True, changed=True, staged=fail == "staged")

    def validate(self, host: FakeHost, params: Mapping[str, Any]) -> bool:
        self.calls.append(("validate", params["key"]))
        if params.get("fail") in ("validate_false", "staged"):
            return False
        return bool(host.values.get(params["key"]) == params["value"])

    def rollback(self, host: FakeHost, pre: PreState) -> RollbackResult:
        key = pre.params["key"]
        self.calls.append(("rollback", key))
        fail = pre.params.get("fail")
        if fail == "rollback_raises":
            raise OSError("cannot restore")
        if fail == "rollback_false":
            return RollbackResult(self.name, ok=False, detail="read-back differs")
        if pre.data["present"]:
            host.values[key] = pre.data["value"]
        else:
            host.values.pop(key, None)
        return RollbackResult(self.name, ok=True)


class OneWay:
    """Not capturable: sets a value it can never take back."""

    name = "one_way"
    capturable = False

    def __init__(self) -> None:
        self.calls: List[Tuple[str, str]] = []

    def capture(self, host: FakeHost, params: Mapping[str, Any]) -> PreState:
        raise AssertionError("the engine must never capture a non-capturable step")

    def apply(self, host: FakeHost, params: Mapping[str, Any], pre: Optional[PreState]) -> StepResult:
        self.calls.append(("apply", params["key"]))
        assert pre is None
        if params.get("fail") == "apply_false_unchanged":
            return StepResult(self.name, ok=False, changed=False, detail="refused before changing anything")
        host.values[params["key"]] = params["value"]
        return StepResult(self.name, ok=True, changed=True)

    def validate(self, host: FakeHost, params: Mapping[str, Any]) -> bool:
        return bool(host.values.get(params["key"]) == params["value"])

    def rollback(self, host: FakeHost, pre: PreState) -> RollbackResult:
        raise AssertionError("the engine must never roll back a non-capturable step")


class Recorder:
    def __init__(self, records: List[Tuple[str, bool]]) -> None:
        self.records = records

    def emit(self, phase: str, ok: bool) -> None:
        self.records.append((phase, ok))


class RecordingEmitter:
    """Keeps what transaction() was given and every (phase, ok) emitted."""

    def __init__(self) -> None:
        self.opened: List[Tuple[str, str, str]] = []
        self.records: List[Tuple[str, bool]] = []

    def transaction(self, txn: str, rule: str, host: str) -> Recorder:
        self.opened.append((txn, rule, host))
        return Recorder(self.records)


class RecordingJournal:
    """In-memory journal; can be told to fail in begin or finish."""

    def __init__(self, fail_begin: bool = False, fail_finish: bool = False) -> None:
        self.fail_begin = fail_begin
        self.fail_finish = fail_finish
        self.begun: List[Tuple[Transaction, List[Optional[PreState]], Dict[str, str]]] = []
        self.finished: List[TransactionResult] = []
        self.host: Optional[FakeHost] = None

    def begin(self, txn: Transaction, pre_states: Sequence[Optional[PreState]]) -> None:
        snapshot = dict(self.host.values) if self.host is not None else {}
        self.begun.append((txn, list(pre_states), snapshot))
        if self.fail_begin:
            raise OSError("journal disk full")

    def finish(self, result: TransactionResult) -> None:
        self.finished.append(result)
        if self.fail_finish:
            raise OSError("journal disk full")


def step(key: str, value: str = "new", fail: Optional[str] = None, mechanism: str = "set_value") -> Step:
    params: Dict[str, Any] = {"key": key, "value": value}
    if fail is not None:
        params["fail"] = fail
    return Step(mechanism, params)


def make_engine(
    host: Optional[FakeHost] = None, **kwargs: Any
) -> Tuple[Engine, FakeHost, SetValue, OneWay]:
    host = host if host is not None else FakeHost(a="old-a", b="old-b")
    set_value, one_way = SetValue(), OneWay()
    kwargs.setdefault("hosts", lambda key: host)
    engine = Engine(Registry([set_value, one_way]), **kwargs)
    return engine, host, set_value, one_way


def outcome(result: TransactionResult) -> Tuple[Any, ...]:
    """Everything about a result but its timings."""
    return (result.status, result.host_unchanged, result.steps, result.rollbacks, result.error)


# --- record sequences, one per terminal status ----------------------------------------


def run_recorded(txn: Transaction, host: Optional[FakeHost] = None) -> Tuple[TransactionResult, RecordingEmitter, FakeHost]:
    emitter = RecordingEmitter()
    engine, fake, _, _ = make_engine(host, audit=emitter)
    result = engine.run(txn)
    assert emitter.opened == [(txn.id, txn.rule, txn.host)]
    assert engine.audit_errors == 0
    return result, emitter, fake


def test_committed_records_and_result() -> None:
    """A committed run emits started, capture, apply, validate, committed (all ok) and changes the host."""
    txn = Transaction("r-commit", (step("a"), step("b")), host="web01")
    result, emitter, host = run_recorded(txn)
    assert emitter.records == [
        ("started", True), ("capture", True), ("apply", True), ("validate", True), ("committed", True)
    ]
    assert result.status is Status.COMMITTED
    assert (result.txn_id, result.rule, result.host) == (txn.id, "r-commit", "web01")
    assert result.host_unchanged is False and result.error is None and result.rollbacks == ()
    assert [s.ok for s in result.steps] == [True, True]
    assert host.values == {"a": "new", "b": "new"}
    assert set(result.timings) == {Phase.PREFLIGHT, Phase.CHECK, Phase.CAPTURE, Phase.APPLY, Phase.VALIDATE}
    assert all(t >= 0 for t in result.timings.values())


def test_apply_failure_rolls_back_in_reverse() -> None:
    """A step reporting ok=False stops apply; attempted steps roll back last first; no validate record."""
    txn = Transaction("r-apply", (step("a"), step("b", fail="apply_false"), step("c")))
    result, emitter, host = run_recorded(txn)
    assert emitter.records == [("started", True), ("capture", True), ("apply", False), ("rolled_back", False)]
    assert result.status is Status.ROLLED_BACK and result.host_unchanged is True
    assert host.values == {"a": "old-a", "b": "old-b"}
    assert [s.ok for s in result.steps] == [True, False]
    assert [r.ok for r in result.rollbacks] == [True, True]
    assert result.error is not None and result.error.phase is Phase.APPLY
    assert result.error.type == "StepFailedError" and "value would not stick" in result.error.message


def test_apply_exception_is_a_failed_step_and_rolls_back() -> None:
    """A handler raising in apply becomes a failed step naming the exception; the host is restored."""
    txn = Transaction("r-raise", (step("a"), step("b", fail="apply_raises")))
    result, emitter, host = run_recorded(txn)
    assert emitter.records[-2:] == [("apply", False), ("rolled_back", False)]
    assert result.status is Status.ROLLED_BACK and result.host_unchanged is True
    assert host.values == {"a": "old-a", "b": "old-b"}
    assert result.steps[1].ok is False and "PermissionError" in result.steps[1].detail
    assert result.error is not None and result.error.type == "PermissionError"
    assert "read-only file system" in result.error.message


def test_validate_failure_records_and_rolls_back() -> None:
    """Validation failing after a clean apply emits validate(False), then rolls back."""
    txn = Transaction("r-validate", (step("a"), step("b", fail="validate_false")))
    result, emitter, host = run_recorded(txn)
    assert emitter.records == [
        ("started", True), ("capture", True), ("apply", True), ("validate", False), ("rolled_back", False)
    ]
    assert result.status is Status.ROLLED_BACK and result.host_unchanged is True
    assert host.values == {"a": "old-a", "b": "old-b"}
    assert result.error is not None and result.error.phase is Phase.VALIDATE
    assert result.error.type == "ValidationFailedError"


def test_partially_applied_when_a_one_way_step_ran() -> None:
    """A non-transactional rule whose applied one-way step cannot be reversed ends partially_applied."""
    txn = Transaction(
        "r-partial",
        (step("a"), step("x", mechanism="one_way"), step("b", fail="apply_false")),
        transactional=False,
    )
    result, emitter, host = run_recorded(txn)
    assert emitter.records == [("started", True), ("capture", True), ("apply", False), ("partially_applied", False)]
    assert result.status is Status.PARTIALLY_APPLIED and result.host_unchanged is False
    assert host.values == {"a": "old-a", "b": "old-b", "x": "new"}
    assert [r.mechanism for r in result.rollbacks] == ["set_value", "set_value"]
    assert result.error is not None and result.error.phase is Phase.APPLY


def test_one_way_step_that_reports_no_change_allows_rolled_back() -> None:
    """A non-capturable step failing with changed=False is trusted: the rest rolls back, host unchanged."""
    txn = Transaction(
        "r-oneway-refused",
        (step("a"), step("x", mechanism="one_way", fail="apply_false_unchanged")),
        transactional=False,
    )
    result, emitter, host = run_recorded(txn)
    assert emitter.records[-1] == ("rolled_back", False)
    assert result.status is Status.ROLLED_BACK and result.host_unchanged is True
    assert host.values == {"a": "old-a", "b": "old-b"}


def test_rollback_failure_is_rollback_failed_and_other_rollbacks_still_run() -> None:
    """A rollback that raises gives rollback_failed, host_unchanged False; earlier steps still roll back."""
    txn = Transaction("r-rbfail", (step("a"), step("b", fail="rollback_raises"), step("c", fail="apply_false")))
    result, emitter, host = run_recorded(txn)
    assert emitter.records == [("started", True), ("capture", True), ("apply", False), ("rollback_failed", False)]
    assert result.status is Status.ROLLBACK_FAILED and result.host_unchanged is False
    assert [r.ok for r in result.rollbacks] == [True, False, True]
    assert "OSError" in result.rollbacks[1].detail
    assert host.values["a"] == "old-a" and "c" not in host.values
    assert result.error is not None and result.error.phase is Phase.ROLLBACK
    assert result.error.type == "RollbackFailedError" and "step 2 (set_value)" in result.error.message


def test_rollback_reporting_not_ok_is_rollback_failed() -> None:
    """A rollback returning ok=False (read-back differs) also gives rollback_failed."""
    txn = Transaction("r-rbfalse", (step("a", fail="rollback_false"), step("b", fail="apply_raises")))
    result, _, _ = run_recorded(txn)
    assert result.status is Status.ROLLBACK_FAILED and result.host_unchanged is False


def test_unknown_mechanism_is_errored_before_anything_runs() -> None:
    """A step naming an unregistered mechanism: started, errored(False); no handler is called."""
    txn = Transaction("r-unknown", (step("a"), step("b", mechanism="no_such_thing")))
    emitter = RecordingEmitter()
    engine, host, set_value, _ = make_engine(audit=emitter)
    result = engine.run(txn)
    assert emitter.records == [("started", True), ("errored", False)]
    assert result.status is Status.ERRORED and result.host_unchanged is True
    assert result.error is not None and result.error.type == "UnknownMechanismError"
    assert result.error.phase is Phase.PREFLIGHT and "no_such_thing" in result.error.message
    assert set_value.calls == [] and host.values == {"a": "old-a", "b": "old-b"}


def test_transactional_rule_with_one_way_step_is_errored() -> None:
    """A transactional rule holding a non-capturable step is refused in preflight."""
    txn = Transaction("r-txn-oneway", (step("a"), step("x", mechanism="one_way")))
    engine, host, set_value, one_way = make_engine()
    result = engine.run(txn)
    assert result.status is Status.ERRORED and result.host_unchanged is True
    assert result.error is not None and result.error.type == "NotCapturableError"
    assert set_value.calls == [] and one_way.calls == []


def test_host_resolution_error_is_errored() -> None:
    """An exception while resolving the host key gives errored (preflight) naming the host."""

    def no_host(key: str) -> Any:
        raise LookupError(f"unknown host {key}")

    emitter = RecordingEmitter()
    engine, _, set_value, _ = make_engine(audit=emitter, hosts=no_host)
    result = engine.run(Transaction("r-host", (step("a"),), host="ghost"))
    assert emitter.records == [("started", True), ("errored", False)]
    assert result.status is Status.ERRORED and result.host_unchanged is True
    assert result.error is not None and result.error.phase is Phase.PREFLIGHT and "'ghost'" in result.error.message
    assert set_value.calls == []


def test_capture_exception_is_errored_and_host_unchanged() -> None:
    """An exception in capture gives errored, host_unchanged True, no apply, records started+errored."""
    txn = Transaction("r-capture", (step("a"), step("b", fail="capture")))
    emitter = RecordingEmitter()
    journal = RecordingJournal()
    engine, host, set_value, _ = make_engine(audit=emitter, journal=journal)
    result = engine.run(txn)
    assert emitter.records == [("started", True), ("errored", False)]
    assert result.status is Status.ERRORED and result.host_unchanged is True
    assert result.error is not None and result.error.phase is Phase.CAPTURE and "disk on fire" in result.error.message
    assert not any(call[0] == "apply" for call in set_value.calls)
    assert journal.begun == [] and [r.status for r in journal.finished] == [Status.ERRORED]


def test_already_compliant_is_skipped_without_capture() -> None:
    """When every step already holds: started, skipped(True); no capture, no apply, finish only."""
    txn = Transaction("r-skip", (step("a", "old-a"), step("b", "old-b", fail=None)))
    emitter = RecordingEmitter()
    journal = RecordingJournal()
    engine, _, set_value, _ = make_engine(audit=emitter, journal=journal)
    result = engine.run(txn)
    assert emitter.records == [("started", True), ("skipped", True)]
    assert result.status is Status.SKIPPED and result.host_unchanged is True and result.error is None
    assert [c[0] for c in set_value.calls] == ["validate", "validate"]
    assert journal.begun == [] and [outcome(r) for r in journal.finished] == [outcome(result)]


def test_staged_records_and_validates_only_unstaged_steps() -> None:
    """A step reporting staged=True: started, capture, apply, staged(True); the staged step is not validated."""
    txn = Transaction("r-staged", (step("a"), step("b", fail="staged")))
    result, emitter, host = run_recorded(txn)
    assert emitter.records == [("started", True), ("capture", True), ("apply", True), ("staged", True)]
    assert result.status is Status.STAGED and result.host_unchanged is False and result.error is None
    assert host.values == {"a": "new", "b": "new"}


def test_staged_with_a_failing_unstaged_step_rolls_back() -> None:
    """Staging does not excuse the other steps: a failing validation still rolls everything back."""
    txn = Transaction("r-staged-bad", (step("a", fail="validate_false"), step("b", fail="staged")))
    result, emitter, host = run_recorded(txn)
    assert emitter.records[-2:] == [("validate", False), ("rolled_back", False)]
    assert result.status is Status.ROLLED_BACK and host.values == {"a": "old-a", "b": "old-b"}


def test_empty_transaction_is_skipped() -> None:
    """A transaction without steps has nothing to do: skipped."""
    result, emitter, _ = run_recorded(Transaction("r-empty", ()))
    assert emitter.records == [("started", True), ("skipped", True)]
    assert result.status is Status.SKIPPED


# --- journal --------------------------------------------------------------------------


def test_journal_begin_once_before_apply_with_aligned_pre_states() -> None:
    """begin is called once, before any apply, with one pre-state per step (None for one-way steps)."""
    host = FakeHost(a="old-a")
    journal = RecordingJournal()
    journal.host = host
    engine, _, _, _ = make_engine(host, journal=journal)
    txn = Transaction("r-journal", (step("a"), step("x", mechanism="one_way"), step("b")), transactional=False)
    result = engine.run(txn)
    assert result.status is Status.COMMITTED
    assert len(journal.begun) == 1
    begun_txn, pres, snapshot = journal.begun[0]
    assert begun_txn is txn
    assert snapshot == {"a": "old-a"}  # nothing applied yet when begin ran
    assert pres[1] is None
    assert pres[0] is not None and pres[0].data == {"present": True, "value": "old-a"}
    assert pres[2] is not None and pres[2].data == {"present": False, "value": None}
    assert journal.finished[0].status is Status.COMMITTED and journal.finished[0].txn_id == txn.id
    assert Phase.COMMIT in result.timings


def test_journal_begin_failure_applies_nothing() -> None:
    """If begin raises: errored (capture phase), host_unchanged True, no apply; the result is still finished."""
    journal = RecordingJournal(fail_begin=True)
    emitter = RecordingEmitter()
    engine, host, set_value, _ = make_engine(journal=journal, audit=emitter)
    result = engine.run(Transaction("r-begin", (step("a"),)))
    assert emitter.records == [("started", True), ("errored", False)]
    assert result.status is Status.ERRORED and result.host_unchanged is True
    assert result.error is not None and result.error.type == "OSError" and "journal disk full" in result.error.message
    assert not any(call[0] == "apply" for call in set_value.calls)
    assert host.values == {"a": "old-a", "b": "old-b"}
    assert [r.status for r in journal.finished] == [Status.ERRORED]


def test_journal_finish_failure_turns_committed_into_errored() -> None:
    """If finish raises for a committed result: errored with the cause (commit phase), real host_unchanged kept."""
    journal = RecordingJournal(fail_finish=True)
    emitter = RecordingEmitter()
    engine, host, _, _ = make_engine(journal=journal, audit=emitter)
    result = engine.run(Transaction("r-finish", (step("a"),)))
    assert journal.finished[0].status is Status.COMMITTED
    assert result.status is Status.ERRORED and result.host_unchanged is False
    assert result.error is not None and result.error.phase is Phase.COMMIT and result.error.type == "OSError"
    assert "committed" in result.error.message and "journal disk full" in result.error.message
    assert [s.ok for s in result.steps] == [True]
    assert emitter.records[-2:] == [("validate", True), ("errored", False)]
    assert host.values["a"] == "new"


def test_journal_finish_failure_after_rollback_keeps_host_unchanged() -> None:
    """A rolled-back result the journal cannot record is errored but still host_unchanged True."""
    engine, _, _, _ = make_engine(journal=RecordingJournal(fail_finish=True))
    result = engine.run(Transaction("r-finish-rb", (step("a", fail="apply_false"),)))
    assert result.status is Status.ERRORED and result.host_unchanged is True
    assert result.error is not None and "rolled_back" in result.error.message and len(result.rollbacks) == 1


# --- interrupts -----------------------------------------------------------------------


@pytest.mark.parametrize("fail, exc_type", [("apply_interrupt", KeyboardInterrupt), ("apply_exit", SystemExit)])
def test_interrupt_in_apply_rolls_back_records_and_propagates(fail: str, exc_type: type) -> None:
    """KeyboardInterrupt (or SystemExit) inside apply: the applied steps and the interrupted one roll
    back, the result is journaled and emitted, then the exception propagates."""
    journal = RecordingJournal()
    emitter = RecordingEmitter()
    engine, host, _, _ = make_engine(journal=journal, audit=emitter)
    txn = Transaction("r-ctrl-c", (step("a"), step("b", fail=fail), step("c")))
    with pytest.raises(exc_type):
        engine.run(txn)
    assert host.values == {"a": "old-a", "b": "old-b"}
    assert emitter.records == [("started", True), ("capture", True), ("apply", False), ("rolled_back", False)]
    assert len(journal.finished) == 1
    final = journal.finished[0]
    assert final.status is Status.ROLLED_BACK and final.host_unchanged is True
    assert final.error is not None and final.error.type == exc_type.__name__
    assert [r.ok for r in final.rollbacks] == [True, True]


def test_interrupt_before_apply_records_errored_and_propagates() -> None:
    """KeyboardInterrupt during capture: nothing applied, errored (capture) journaled and emitted, re-raised."""
    journal = RecordingJournal()
    emitter = RecordingEmitter()
    engine, host, set_value, _ = make_engine(journal=journal, audit=emitter)
    with pytest.raises(KeyboardInterrupt):
        engine.run(Transaction("r-ctrl-c-early", (step("a", fail="capture_interrupt"),)))
    assert emitter.records == [("started", True), ("errored", False)]
    (final,) = journal.finished
    assert final.status is Status.ERRORED and final.host_unchanged is True
    assert final.error is not None and final.error.phase is Phase.CAPTURE
    assert not any(call[0] == "apply" for call in set_value.calls)


# --- emitters and subscribers that misbehave ---------------------------------------


SCENARIOS = [
    (step("a"), step("b")),
    (step("a"), step("b", fail="apply_false")),
    (step("a"), step("b", fail="validate_false")),
    (step("a", fail="rollback_raises"), step("b", fail="apply_raises")),
    (step("a"), step("b", fail="staged")),
    (step("a", "old-a"),),
    (step("a", fail="capture"),),
    (step("a", mechanism="nope"),),
]


def outcomes(**engine_kwargs: Any) -> List[Tuple[Any, ...]]:
    found = []
    for steps in SCENARIOS:
        engine, _, _, _ = make_engine(**engine_kwargs)
        found.append(outcome(engine.run(Transaction("r-same", steps, id="fixed-id"))))
    return found


class RaisingEmitter:
    def __init__(self, where: str) -> None:
        self.where = where

    def transaction(self, txn: str, rule: str, host: str) -> Any:
        if self.where == "transaction":
            raise RuntimeError("emitter broken")
        if self.where == "returns_none":
            return None
        return self

    def emit(self, phase: str, ok: bool) -> None:
        raise OSError("emit broken")


@pytest.mark.parametrize("where", ["transaction", "emit", "returns_none"])
def test_misbehaving_emitter_changes_no_outcome(where: str) -> None:
    """An emitter raising in transaction() or emit(), or returning junk, leaves every outcome identical
    and is counted in audit_errors."""
    expected = outcomes()
    emitter = RaisingEmitter(where)
    assert outcomes(audit=emitter) == expected
    engine, _, _, _ = make_engine(audit=emitter)
    engine.run(Transaction("r", (step("a"),)))
    assert engine.audit_errors >= 1 and engine.last_audit_error is not None


def test_raising_and_blocking_subscribers_change_no_outcome() -> None:
    """A subscriber that raises and one that blocks forever leave every outcome identical;
    the raise is counted, the blocked queue drops and counts."""
    expected = outcomes()
    release = threading.Event()

    def raising(event: Any) -> None:
        raise ValueError("subscriber bug")

    def blocking(event: Any) -> None:
        release.wait()

    bus = EventBus()
    bad = bus.subscribe(raising)
    stuck = bus.subscribe(blocking, maxsize=1)
    try:
        assert outcomes(events=bus) == expected
        assert bad.close(timeout=5.0)
        assert bad.errors > 0 and isinstance(bad.last_error, ValueError)
        assert stuck.dropped > 0
    finally:
        release.set()
        bus.close(timeout=5.0)


# --- concurrency ----------------------------------------------------------------------


class Probe:
    """Capturable handler whose step ``n`` holds once it has been applied."""

    name = "probe"
    capturable = True

    def __init__(self) -> None:
        self.applied: Set[str] = set()

    def capture(self, host: Any, params: Mapping[str, Any]) -> PreState:
        return PreState(self.name, params, {})

    def apply(self, host: Any, params: Mapping[str, Any], pre: Optional[PreState]) -> StepResult:
        self.applied.add(params["n"])
        return StepResult(self.name, ok=True)

    def validate(self, host: Any, params: Mapping[str, Any]) -> bool:
        return params["n"] in self.applied

    def rollback(self, host: Any, pre: PreState) -> RollbackResult:
        return RollbackResult(self.name, ok=True)


class OverlapProbe(Probe):
    """Counts how many runs are inside apply at once."""

    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()
        self.inside = 0
        self.most = 0

    def apply(self, host: Any, params: Mapping[str, Any], pre: Optional[PreState]) -> StepResult:
        with self.lock:
            self.inside += 1
            self.most = max(self.most, self.inside)
        time.sleep(0.002)  # widen the window in which an overlap would be seen
        with self.lock:
            self.inside -= 1
        return super().apply(host, params, pre)


class Rendezvous(Probe):
    """Each apply waits at a two-party barrier: it passes only if two runs are inside apply together."""

    def __init__(self) -> None:
        super().__init__()
        self.barrier = threading.Barrier(2, timeout=10.0)

    def apply(self, host: Any, params: Mapping[str, Any], pre: Optional[PreState]) -> StepResult:
        self.barrier.wait()
        return super().apply(host, params, pre)


def test_same_host_runs_from_eight_threads_never_overlap() -> None:
    """Eight threads running transactions on one host key are serialized by the host lock."""
    probe = OverlapProbe()
    engine = Engine(Registry([probe]))
    results: List[TransactionResult] = []
    errors: List[BaseException] = []

    def worker(t: int) -> None:
        try:
            for i in range(5):
                results.append(engine.run(Transaction("r", (Step("probe", {"n": f"{t}-{i}"}),), host="same")))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(results) == 40 and all(r.status is Status.COMMITTED for r in results)
    assert probe.most == 1


def test_run_many_serializes_same_host() -> None:
    """run_many never runs two transactions of one host at the same time, whatever the workers."""
    probe = OverlapProbe()
    engine = Engine(Registry([probe]))
    txns = [Transaction("r", (Step("probe", {"n": str(i)}),), host="same") for i in range(20)]
    results = engine.run_many(txns, workers=8)
    assert all(r.status is Status.COMMITTED for r in results)
    assert probe.most == 1


def test_different_hosts_run_in_parallel() -> None:
    """run_many runs two hosts at once: both applies meet at a two-party barrier, so both commit
    (run one after the other, the barrier would time out and the steps would fail)."""
    engine = Engine(Registry([Rendezvous()]))
    txns = [Transaction("r", (Step("probe", {"n": h}),), host=h) for h in ("h1", "h2")]
    results = engine.run_many(txns, workers=2)
    assert [r.status for r in results] == [Status.COMMITTED, Status.COMMITTED], [r.error for r in results]


def test_run_many_returns_results_in_input_order() -> None:
    """Results line up with the input, across hosts and within a host."""
    hosts = {name: FakeHost() for name in ("h1", "h2", "h3")}
    engine = Engine(Registry([SetValue()]), hosts=hosts.__getitem__)
    txns = [Transaction(f"rule-{i}", (step(f"k{i}"),), host=f"h{1 + i % 3}") for i in range(12)]
    results = engine.run_many(txns, workers=3)
    assert [r.txn_id for r in results] == [t.id for t in txns]
    assert all(r.status is Status.COMMITTED for r in results)
    assert hosts["h1"].values == {"k0": "new", "k3": "new", "k6": "new", "k9": "new"}


def test_run_many_rejects_bad_worker_counts() -> None:
    """workers must be a positive int."""
    engine, _, _, _ = make_engine()
    with pytest.raises(ValueError):
        engine.run_many([], workers=0)


# --- registry, events wiring, imports ---------------------------------------------


def test_registry_refuses_duplicates_and_names_unknown_mechanisms() -> None:
    """Registering a name twice is an error; looking up an unknown name says what is registered."""
    registry = Registry([SetValue()])
    with pytest.raises(DuplicateMechanismError):
        registry.register(SetValue())
    with pytest.raises(UnknownMechanismError, match="set_value"):
        registry["missing"]
    with pytest.raises(TypeError):
        registry.register(object())  # type: ignore[arg-type]
    assert isinstance(SetValue(), Handler) and "set_value" in registry and len(registry) == 1


def test_engine_accepts_a_plain_mapping_of_handlers() -> None:
    """A name -> handler mapping (what kensa.handlers.default_registry returns) works as a registry."""
    engine = Engine({"set_value": SetValue()}, hosts=lambda key: FakeHost())
    assert engine.run(Transaction("r", (step("a"),))).status is Status.COMMITTED


def test_subscriber_sees_phase_and_terminal_events() -> None:
    """engine.subscribe delivers the boundary events in order, then the terminal event with the result."""
    engine, _, _, _ = make_engine()
    seen: List[Any] = []
    sub = engine.subscribe(seen.append)
    result = engine.run(Transaction("r-events", (step("a"),), host="web01"))
    assert sub.close(timeout=5.0)
    assert [(getattr(e, "phase", None) or e.status, e.ok) for e in seen] == [
        (Phase.STARTED, True), (Phase.CAPTURE, True), (Phase.APPLY, True), (Phase.VALIDATE, True),
        (Status.COMMITTED, True),
    ]
    assert all((e.txn_id, e.rule, e.host) == (result.txn_id, "r-events", "web01") for e in seen)
    assert seen[-1].result == result


def test_import_engine_loads_no_audit_cffi_or_sqlite() -> None:
    """`import kensa.engine` (and `import kensa`) pull in neither kensa._audit, cffi nor sqlite3."""
    code = (
        "import sys, kensa, kensa.engine\n"
        "bad = [m for m in ('kensa._audit', 'kensa.audit', 'cffi', '_cffi_backend', 'sqlite3', '_sqlite3')"
        " if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True,
        env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"},
    )
    assert out.stdout.strip() == ""


def test_public_names() -> None:
    """The engine's public names are reachable from the package."""
    assert kensa.Engine is Engine and kensa.Registry is Registry and kensa.default_engine is default_engine
    for name in ("Transaction", "Step", "Status", "Phase", "TransactionResult"):
        assert hasattr(kensa, name)


def test_default_engine_wires_the_real_parts(tmp_path: Path) -> None:
    """default_engine builds an engine with the built-in handlers, local hosts, canonical host keys
    and the SQLite journal at journal_path."""
    engine = default_engine(journal_path=str(tmp_path / "journal.db"), audit=False)
    try:
        assert "file_content" in engine.registry
        assert str(engine.hosts(str(tmp_path)).root) == str(tmp_path)
        assert str(engine.hosts("localhost").root) == "/"
        assert engine.host_key(str(tmp_path) + "/./") == str(tmp_path)
        assert engine.host_key("/") == "localhost"
        assert (tmp_path / "journal.db").exists()
    finally:
        engine.journal.close()  # type: ignore[union-attr]


class _AmbiguousTruth:
    def __bool__(self) -> bool:
        raise ValueError("truth value is ambiguous")


class _UnprintableError(Exception):
    def __str__(self) -> str:
        raise RuntimeError("__str__ failed")


class _Misbehaving:
    """Validates False first (so the run proceeds), then returns something whose truth raises;
    apply raises an exception whose str() raises when asked to."""

    name, capturable = "misbehaving", True

    def __init__(self, unprintable: bool) -> None:
        self.unprintable = unprintable
        self.calls = 0

    def validate(self, host: Any, params: Mapping[str, Any]) -> Any:
        self.calls += 1
        return False if self.calls == 1 else _AmbiguousTruth()

    def capture(self, host: Any, params: Mapping[str, Any]) -> PreState:
        return PreState(self.name, params, {})

    def apply(self, host: Any, params: Mapping[str, Any], pre: Optional[PreState]) -> StepResult:
        if self.unprintable:
            raise _UnprintableError()
        return StepResult(self.name, ok=True, changed=True)

    def rollback(self, host: Any, pre: PreState) -> RollbackResult:
        return RollbackResult(self.name, ok=True)


@pytest.mark.parametrize("unprintable", [False, True])
def test_odd_handler_values_never_escape_run(unprintable: bool) -> None:
    """A validate result whose truth raises, or an exception whose str() raises, is a failed
    step rolled back, never an exception out of Engine.run."""
    engine = Engine({"misbehaving": _Misbehaving(unprintable)})
    result = engine.run(Transaction("r", (Step("misbehaving"),)))
    assert result.status is Status.ROLLED_BACK and result.host_unchanged
    assert result.error is not None


def test_transaction_fields_must_be_strings() -> None:
    """A non-str rule, host or id is refused when the Transaction is built, not deep in a run."""
    for field in ("rule", "host", "id"):
        kwargs: Dict[str, Any] = {"rule": "r", "steps": (), field: ["x"]}
        with pytest.raises(TypeError, match=f"Transaction.{field} must be a str"):
            Transaction(**kwargs)


def test_kensa_engine_keeps_the_names_it_exported_before_the_split() -> None:
    """kensa.engine still exports what it did as one module: the engine's errors (now defined
    in kensa.errors), its protocols and Engine. default_engine moved up to kensa.factory (the
    engine never imports the real parts) and is kensa.default_engine, as the README says."""
    import kensa.engine as package
    import kensa.factory

    exported_before = [
        "DuplicateMechanismError", "Engine", "Handler", "Journal", "NotCapturableError", "PhaseEmitter",
        "PhaseRecorder", "Registry", "Restorable", "RollbackFailedError", "RollbackRefusedError",
        "StepFailedError", "TargetLock", "UnknownMechanismError", "ValidationFailedError", "WiringError",
    ]
    assert [name for name in exported_before if not hasattr(package, name)] == []
    assert set(exported_before) <= set(package.__all__)
    assert kensa.default_engine is kensa.factory.default_engine
