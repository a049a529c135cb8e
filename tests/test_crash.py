"""A controller SIGKILLed in the middle of a transaction: recovery puts the tree back.

A subprocess runs one transaction over five handlers in a temporary root and
kills itself with SIGKILL at one point: right after the intent and pre-states
are journaled, after each applied step, inside a step (between its two writes),
and as the terminal result is about to be written. The test process then
recovers with a new engine and a new journal on the same file, and compares the
whole tree (what exists, content, mode, owner, xattrs) with a snapshot taken
before the transaction.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

from conftest import require_root
from conftest import snapshot_tree as snapshot
from kensa.engine import Engine
from kensa.handlers import default_registry
from kensa.hosts.local import resolve_host
from kensa.journal.store import SqliteJournal
from kensa.model import Status

STEPS: List[Tuple[str, Dict[str, object]]] = [
    ("file_content", {"path": "/etc/motd", "content": "authorized use only\n", "mode": "0600", "owner": 0, "group": 0}),
    ("config_set", {"path": "/etc/ssh/sshd_config", "key": "PermitRootLogin", "value": "no", "separator": " "}),
    ("file_permissions", {"path": "/etc/shadow", "mode": "0000", "owner": 0, "group": 0}),
    ("file_absent", {"path": "/etc/hosts.equiv"}),
    ("sysctl_set", {"key": "net.ipv4.ip_forward", "value": "0"}),
]

KILL_POINTS = [
    "after_begin",
    *[f"after_apply_{n}" for n in range(1, len(STEPS) + 1)],
    "inside_sysctl_set",  # its persist file is written, the runtime value not yet
    "before_finish",
]

SCRIPT = r"""
import json, os, signal, sys
from kensa.engine import Engine
from kensa.handlers import default_registry
from kensa.hosts.local import LocalHost
from kensa.journal.store import SqliteJournal
from kensa.model import Step, Transaction

root, journal_path, txn_id, point, steps = sys.argv[1:6]

def die():
    os.kill(os.getpid(), signal.SIGKILL)

class KillingJournal(SqliteJournal):
    def begin(self, txn, pre_states):
        super().begin(txn, pre_states)
        if point == "after_begin":
            die()

    def finish(self, result):
        if point == "before_finish":
            die()
        super().finish(result)

class KillingHost(LocalHost):
    def write_in_place(self, path, data):
        if point == "inside_sysctl_set":
            die()
        super().write_in_place(path, data)

applied = 0

class KillAfterApply:
    def __init__(self, inner):
        self.inner = inner
        self.name = inner.name
        self.capturable = inner.capturable

    def capture(self, host, params):
        return self.inner.capture(host, params)

    def apply(self, host, params, pre):
        global applied
        result = self.inner.apply(host, params, pre)
        applied += 1
        if point == f"after_apply_{applied}":
            die()
        return result

    def validate(self, host, params):
        return self.inner.validate(host, params)

    def rollback(self, host, pre):
        return self.inner.rollback(host, pre)

registry = {name: KillAfterApply(handler) for name, handler in default_registry().items()}
engine = Engine(registry, journal=KillingJournal(journal_path), hosts=KillingHost)
txn = Transaction("crash-test", tuple(Step(m, p) for m, p in json.loads(steps)), host=root, id=txn_id)
print(engine.run(txn).status.value)
"""



def make_tree(base: Path) -> Path:
    """A small /etc and /proc/sys with owners, modes and xattrs the steps change."""
    root = base / "root"
    files = {
        "etc/motd": (b"welcome\n", 0o644, 1001, 1002),
        "etc/ssh/sshd_config": (b"Port 22\nPermitRootLogin yes\n", 0o600, 0, 0),
        "etc/shadow": (b"root:*:19000:0:99999:7:::\n", 0o640, 0, 42),
        "etc/hosts.equiv": (b"+ +\n", 0o644, 7, 7),
        "proc/sys/net/ipv4/ip_forward": (b"1\n", 0o644, 0, 0),
    }
    (root / "etc/sysctl.d").mkdir(parents=True)
    for rel, (content, mode, uid, gid) in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        os.chown(path, uid, gid)
        path.chmod(mode)
        os.setxattr(path, "user.kensa-test", rel.encode())
    return root




def run_transaction(root: Path, journal: Path, txn_id: str, point: str) -> "subprocess.CompletedProcess[str]":
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    argv = [sys.executable, "-c", SCRIPT, str(root), str(journal), txn_id, point, json.dumps(STEPS)]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    require_root("it gives files owners")
    return make_tree(tmp_path)


def test_the_transaction_changes_every_file_when_not_killed(root: Path, tmp_path: Path) -> None:
    """Unkilled, the transaction commits and changes each file the crash tests watch (so they can fail)."""
    before = snapshot(root)
    proc = run_transaction(root, tmp_path / "journal.db", "txn-unkilled", "none")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "committed"
    after = snapshot(root)
    for rel in ("etc/motd", "etc/ssh/sshd_config", "etc/shadow", "proc/sys/net/ipv4/ip_forward"):
        assert after[rel] != before[rel], rel
    assert "etc/hosts.equiv" not in after
    assert "etc/sysctl.d/99-kensa_net.ipv4.ip_forward.conf" in after


@pytest.mark.parametrize("point", KILL_POINTS)
def test_recover_after_sigkill_restores_the_tree_exactly(root: Path, tmp_path: Path, point: str) -> None:
    """After SIGKILL at any point, recover returns the tree to its pre-transaction snapshot; a second recover changes nothing."""
    journal_path = tmp_path / "journal.db"
    txn_id = f"txn-{point}"
    before = snapshot(root)

    proc = run_transaction(root, journal_path, txn_id, point)
    assert proc.returncode == -signal.SIGKILL, (proc.stdout, proc.stderr)
    if point != "after_begin":
        assert snapshot(root) != before, "the kill left nothing to recover: the test would prove nothing"

    with SqliteJournal(journal_path) as journal:
        assert [entry.txn.id for entry in journal.interrupted()] == [txn_id]
        results = Engine(default_registry(), journal=journal, hosts=resolve_host).recover()
        assert [(r.txn_id, r.status, r.host_unchanged) for r in results] == [(txn_id, Status.RECOVERED, True)], results
        assert all(rb.ok for rb in results[0].rollbacks) and len(results[0].rollbacks) == len(STEPS)
        assert snapshot(root) == before
        entry = journal.get(txn_id)
        assert entry.recovered and entry.result is not None and entry.result.status is Status.RECOVERED

    with SqliteJournal(journal_path) as journal:
        assert Engine(default_registry(), journal=journal, hosts=resolve_host).recover() == []
        assert journal.interrupted() == []
    assert snapshot(root) == before
