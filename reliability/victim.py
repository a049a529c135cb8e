"""One transaction that SIGKILLs itself at a phase boundary: ``python -m reliability.victim SPEC_JSON``.

SPEC_JSON holds root, journal, txn_id, mechanism, params, path ("commit", or
"rollback": the step's validation is made to fail) and kill_at: a phase whose
audit record, once in the kernel (sync emitter), is followed by SIGKILL, or
"inside_rollback" (after the step's rollback returned, before the result is
journaled), or "none".
"""

from __future__ import annotations

import json
import os
import signal
import sys
from typing import Any, Mapping, Optional

import kensa.audit.emitter
from kensa.engine import Engine
from kensa.handlers import default_registry
from kensa.hosts.local import LocalHost, resolve_host
from kensa.journal.store import SqliteJournal
from kensa.model import PreState, RollbackResult, Step, StepResult, Transaction


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class KillingRecorder:
    def __init__(self, inner: Any, kill_at: str) -> None:
        self.inner, self.kill_at = inner, kill_at

    def emit(self, phase: str, ok: bool) -> None:
        self.inner.emit(phase, ok)
        if phase == self.kill_at:
            die()


class KillingEmitter:
    """Emits through the real emitter, then kills the process at one boundary."""

    def __init__(self, inner: Any, kill_at: str) -> None:
        self.inner, self.kill_at = inner, kill_at

    def transaction(self, txn: str, rule: str, host: str) -> KillingRecorder:
        return KillingRecorder(self.inner.transaction(txn, rule, host), self.kill_at)


class Misbehaving:
    """The real handler; validation fails on the rollback path, and a kill can follow its rollback."""

    def __init__(self, inner: Any, fail_validate: bool, kill_in_rollback: bool) -> None:
        self.inner = inner
        self.name = inner.name
        self.capturable = inner.capturable
        self.fail_validate, self.kill_in_rollback = fail_validate, kill_in_rollback

    def capture(self, host: LocalHost, params: Mapping[str, Any]) -> PreState:
        return self.inner.capture(host, params)  # type: ignore[no-any-return]

    def apply(self, host: LocalHost, params: Mapping[str, Any], pre: Optional[PreState]) -> StepResult:
        return self.inner.apply(host, params, pre)  # type: ignore[no-any-return]

    def validate(self, host: LocalHost, params: Mapping[str, Any]) -> bool:
        return False if self.fail_validate else bool(self.inner.validate(host, params))

    def rollback(self, host: LocalHost, pre: PreState) -> RollbackResult:
        result: RollbackResult = self.inner.rollback(host, pre)
        if self.kill_in_rollback:
            die()
        return result


def main(spec: Mapping[str, Any]) -> int:
    handlers = default_registry()
    mechanism = spec["mechanism"]
    handlers[mechanism] = Misbehaving(handlers[mechanism], spec["path"] == "rollback", spec["kill_at"] == "inside_rollback")
    emitter = KillingEmitter(kensa.audit.open_emitter("sync"), spec["kill_at"])
    engine = Engine(handlers, audit=emitter, journal=SqliteJournal(spec["journal"]), hosts=resolve_host)
    txn = Transaction("crash-" + mechanism, (Step(mechanism, spec["params"]),), host=spec["root"], id=spec["txn_id"])
    print(engine.run(txn).status.value, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(json.loads(sys.argv[1])))
