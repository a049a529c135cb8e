"""A fleet run: run_many keeps up to N hosts in flight, one host at a time each, and one host's failure stays its own."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

from kensa.engine.run import Engine
from kensa.errors import HostUnreachableError
from kensa.handlers import default_registry
from kensa.hosts.local import canonical_host_key, resolve_host
from kensa.journal import SqliteJournal
from kensa.model import Phase, PreState, Status, Step, StepResult, Transaction

WORKERS = 3


class InFlight:
    """Wraps config_set: counts hosts inside apply at once, overall and per host.

    The first WORKERS applies wait (up to a deadlock guard) until WORKERS hosts
    are inside apply together, so a run that keeps fewer in flight shows
    ``most`` below WORKERS instead of passing by luck.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name = inner.name
        self.capturable = inner.capturable
        self.schema = inner.schema
        self.guard = threading.Lock()
        self.active: Dict[str, int] = {}
        self.most = 0
        self.most_per_host = 0
        self.full = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def validate(self, host: Any, params: Mapping[str, Any]) -> bool:
        return bool(self.inner.validate(host, params))

    def capture(self, host: Any, params: Mapping[str, Any]) -> PreState:
        pre: PreState = self.inner.capture(host, params)
        return pre

    def apply(self, host: Any, params: Mapping[str, Any], pre: Optional[PreState]) -> StepResult:
        key = str(host.root)
        with self.guard:
            self.active[key] = self.active.get(key, 0) + 1
            self.most_per_host = max(self.most_per_host, self.active[key])
            in_flight = sum(1 for count in self.active.values() if count)
            self.most = max(self.most, in_flight)
            if in_flight >= WORKERS:
                self.full.set()
        try:
            if not self.full.wait(30):
                self.full.set()  # fewer than WORKERS in flight: stop waiting, ``most`` tells
            result: StepResult = self.inner.apply(host, params, pre)
            return result
        finally:
            with self.guard:
                self.active[key] -= 1


def make_roots(tmp_path: Path, count: int) -> List[Path]:
    roots = []
    for index in range(count):
        root = tmp_path / f"host{index}"
        (root / "etc/ssh").mkdir(parents=True)
        (root / "etc/ssh/sshd_config").write_text("PermitRootLogin yes\nX11Forwarding yes\n")
        roots.append(root)
    return roots


def edits(root: Path) -> List[Transaction]:
    return [
        Transaction(
            rule=f"sshd-{key}",
            host=str(root),
            steps=(Step("config_set", {"path": "/etc/ssh/sshd_config", "key": key, "value": value, "separator": " "}),),
        )
        for key, value in (("PermitRootLogin", "no"), ("X11Forwarding", "no"), ("MaxAuthTries", "4"))
    ]


def test_run_many_keeps_n_hosts_in_flight_and_an_unreachable_host_errors_alone(tmp_path: Path) -> None:
    """7 hosts x 3 edits, --workers 3, one host's resolver raising: it errors in preflight untouched, the other 6 commit, 3 at a time, one transaction per host at a time."""
    roots = make_roots(tmp_path, 7)
    down = str(roots[2].resolve())

    def hosts(key: str) -> Any:
        if key == down:
            raise HostUnreachableError(f"ssh: connect to host {key} port 22: Connection refused", host=key)
        return resolve_host(key)

    registry = default_registry()
    probe = InFlight(registry["config_set"])
    registry["config_set"] = probe
    before = (roots[2] / "etc/ssh/sshd_config").read_bytes()
    with SqliteJournal(tmp_path / "journal.db") as journal:
        engine = Engine(registry, journal=journal, hosts=hosts, host_key=canonical_host_key)
        txns = [txn for root in roots for txn in edits(root)]
        results = engine.run_many(txns, workers=WORKERS)
        journaled = {entry.txn.id: entry for entry in journal.history()}

    for txn, result in zip(txns, results):
        if txn.host == str(roots[2]):
            assert result.status is Status.ERRORED and result.host_unchanged
            assert result.error is not None and "Connection refused" in result.error.message
            assert (result.error.type, result.error.phase) == ("HostUnreachableError", Phase.PREFLIGHT)
        else:
            assert result.status is Status.COMMITTED, result.error
        assert journaled[txn.id].result is not None and journaled[txn.id].result.status is result.status
    assert (roots[2] / "etc/ssh/sshd_config").read_bytes() == before
    for root in roots[:2] + roots[3:]:
        assert (root / "etc/ssh/sshd_config").read_text() == "PermitRootLogin no\nX11Forwarding no\nMaxAuthTries 4\n"
    assert probe.most == WORKERS
    assert probe.most_per_host == 1
