"""Fork safety of the Python layer: a child forked mid-transaction can still run transactions."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, List, Mapping, Optional

import pytest

from kensa import Step, Transaction
from kensa import default_engine
from kensa.engine.events import Event, TerminalEvent
from kensa.model import PreState, RollbackResult, Status, StepResult

CHILD_DEADLINE = 60.0  # seconds the parent gives the child before calling it hung


class HoldInApply:
    """A capturable no-op whose apply waits until the test releases it."""

    name = "hold_in_apply"
    capturable = True

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.applied = False

    def capture(self, host: Any, params: Mapping[str, Any]) -> PreState:
        return PreState(self.name, params, {})

    def apply(self, host: Any, params: Mapping[str, Any], pre: Optional[PreState]) -> StepResult:
        self.entered.set()
        self.release.wait(CHILD_DEADLINE)
        self.applied = True
        return StepResult(self.name, ok=True, changed=True)

    def validate(self, host: Any, params: Mapping[str, Any]) -> bool:
        return self.applied

    def rollback(self, host: Any, pre: PreState) -> RollbackResult:
        return RollbackResult(self.name, ok=True)


def _wait_child(pid: int) -> int:
    """The child's exit code; kills it and fails the test if it does not exit by the deadline."""
    deadline = time.monotonic() + CHILD_DEADLINE
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail(f"the forked child hung: no exit within {CHILD_DEADLINE:g}s, killed it")


def test_child_forked_while_a_thread_runs_a_transaction_can_run_on_the_same_host(tmp_path: Path) -> None:
    """Fork while another thread is inside a handler's apply on host h (holding the engine's
    host lock, the target lock and, in the same moment, an event subscription's lock): the
    child runs its own transaction on h to ``committed`` and its subscriber receives the event.

    Before the locks were reset at fork, the child's run waited forever on the host lock
    inherited locked from a thread that does not exist in the child.
    """
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    engine = default_engine(str(tmp_path / "journal.db"), audit=False, target_lock_timeout=CHILD_DEADLINE)
    holder = HoldInApply()
    engine.registry.register(holder)
    seen: List[Event] = []
    sub = engine.subscribe(seen.append)

    parent_result: List[Any] = []
    worker = threading.Thread(
        target=lambda: parent_result.append(engine.run(Transaction("held", (Step(holder.name, {}),), str(root)))),
        daemon=True,
    )
    worker.start()
    assert holder.entered.wait(10), "the parent's transaction never reached apply"

    # A thread inside Subscription.offer holds the subscription's lock at the moment of the fork.
    in_offer, leave_offer = threading.Event(), threading.Event()

    def hold_subscription_lock() -> None:
        with sub._cond:
            in_offer.set()
            leave_offer.wait(CHILD_DEADLINE)

    offering = threading.Thread(target=hold_subscription_lock, daemon=True)
    offering.start()
    assert in_offer.wait(10)

    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 70
        try:
            step = Step("config_set", {"path": "/etc/child.conf", "key": "Child", "value": "yes", "separator": " "})
            result = engine.run(Transaction("child", (step,), str(root)))
            sub.close(timeout=10)
            got = [e for e in seen if isinstance(e, TerminalEvent) and e.txn_id == result.txn_id]
            code = 0 if result.status is Status.COMMITTED and got else 71
        except BaseException:
            code = 72
        finally:
            os._exit(code)

    leave_offer.set()
    holder.release.set()
    worker.join(CHILD_DEADLINE)
    code = _wait_child(pid)
    assert parent_result and parent_result[0].status is Status.COMMITTED
    assert code == 0, f"the child's transaction did not commit with its event delivered (exit {code})"
    assert (root / "etc" / "child.conf").read_text() == "Child yes\n"
    sub.close()
