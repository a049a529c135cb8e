"""SIGKILL at every phase boundary, for every capturable handler, then recovery.

A child process (:mod:`reliability.victim`) runs one transaction of one
handler on a fresh tree and kills itself right after a boundary's audit
record reached the kernel: on the commit path (started, capture, apply,
validate, committed) and on the rollback path, where validation fails
(started, capture, apply, validate, inside the rollback, rolled_back). The
parent then opens the journal with a new engine and

- recovers (``Engine.recover``) a transaction left without a result;
- rolls back by id (``Engine.rollback``) one that committed before the kill;

and compares the whole tree (kinds, bytes, modes, owners, xattrs) with its
snapshot from before the transaction: it must be identical every time. The
kernel's log must hold the victim's records up to the kill and the
recovery's records after it.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import uuid
from collections import Counter
from typing import Any, Dict, List, Optional, Tuple

import kensa.audit.emitter
from kensa.errors import JournalEntryNotFound
from kensa.engine import Engine
from kensa.handlers import default_registry
from kensa.hosts.local import resolve_host
from kensa.journal.store import SqliteJournal
from kensa.model import Status

from .context import Context, child_env
from .report import Section, table
from .trees import differences, make_root, snapshot

STEPS: Tuple[Tuple[str, Dict[str, Any]], ...] = (
    ("file_content", {"path": "/etc/motd", "content": "authorized use only\n", "mode": "0600", "owner": 0, "group": 0}),
    ("file_absent", {"path": "/etc/hosts.equiv"}),
    ("file_permissions", {"path": "/etc/shadow", "mode": "0000", "owner": 0, "group": 0}),
    ("config_set", {"path": "/etc/ssh/sshd_config", "key": "PermitRootLogin", "value": "no", "separator": " "}),
    ("config_append", {"path": "/etc/issue.net", "line": "Authorized use only"}),
    ("sysctl_set", {"key": "net.ipv4.ip_forward", "value": "0"}),
    ("audit_rule_set", {"rule": "-w /etc/sudoers -p wa -k scope", "persist_file": "/etc/audit/rules.d/50-kensa-scope.rules"}),
)
KILL_POINTS = {
    "commit": ("started", "capture", "apply", "validate", "committed"),
    "rollback": ("started", "capture", "apply", "validate", "inside_rollback", "rolled_back"),
}
VICTIM_TIMEOUT = 120.0
_PHASE = re.compile(r"phase=([a-z_]+)")


def _victim_phases(path: str, kill_at: str) -> List[str]:
    """The records the victim wrote before it died."""
    order = [p for p in KILL_POINTS[path] if p != "inside_rollback"]
    if kill_at == "inside_rollback":
        return order[: order.index("validate") + 1]
    return order[: order.index(kill_at) + 1]


def _case(ctx: Context, engine_emitter: Any, mechanism: str, params: Dict[str, Any], path: str, kill_at: str, n: int) -> Dict[str, Any]:
    work = ctx.workdir(f"crash/{mechanism}-{path}-{kill_at}-{n}")
    root = make_root(work / "root")
    journal_path = work / "journal.db"
    txn_id = f"crash-{uuid.uuid4()}"
    before = snapshot(root)
    spec = {"root": str(root), "journal": str(journal_path), "txn_id": txn_id, "mechanism": mechanism,
            "params": params, "path": path, "kill_at": kill_at}
    proc = subprocess.run([sys.executable, "-m", "reliability.victim", json.dumps(spec)], capture_output=True,
                          text=True, env=child_env(), timeout=VICTIM_TIMEOUT)
    killed = proc.returncode == -signal.SIGKILL
    changed = snapshot(root) != before
    with SqliteJournal(journal_path) as journal:
        try:
            entry: Optional[Any] = journal.get(txn_id)
        except JournalEntryNotFound:
            entry = None
        engine = Engine(default_registry(), audit=engine_emitter, journal=journal, hosts=resolve_host)
        state = "no entry" if entry is None else ("interrupted" if entry.interrupted else entry.result.status.value)
        action, outcome = "none", ""
        recovered = engine.recover()
        if recovered:
            action, outcome = "recover", ",".join(r.status.value for r in recovered)
        elif entry is not None and entry.result is not None and entry.result.status is Status.COMMITTED:
            action, outcome = "rollback by id", engine.rollback(txn_id).status.value
        again = engine.recover()
    diff = differences(before, snapshot(root))
    expected = _victim_phases(path, kill_at)
    if action == "recover":
        expected += ["started", "rollback", "recovered"]
    elif action == "rollback by id":
        expected += ["started", "rollback", "rolled_back"]
    logged: Optional[List[str]] = None
    if ctx.kernel_log is not None:
        mark = f'txn="{txn_id}"'
        records = ctx.kernel_log.wait_for(lambda r: mark in r.body, len(expected), timeout=2.0)
        logged = [m.group(1) for m in (_PHASE.search(r.body) for r in records) if m]
    return {
        "mechanism": mechanism, "path": path, "kill_at": kill_at, "killed": killed, "stdout": proc.stdout.strip(),
        "stderr": proc.stderr.strip()[-500:], "changed": changed, "state": state, "action": action,
        "outcome": outcome, "second_recover": len(again), "diff": diff, "expected": expected, "logged": logged,
    }


def _in_order(logged: List[str], expected: List[str]) -> bool:
    """Whether every logged record is an expected one, in order (the kernel may drop, never add)."""
    rest = iter(expected)
    return all(any(phase == e for e in rest) for phase in logged)


def run(ctx: Context) -> Section:
    title = "SIGKILL at each phase boundary, then recovery"
    if not ctx.is_root:
        return Section("crash", title, "", "", skipped="needs root (the trees have owners)")
    emitter = kensa.audit.open_emitter("sync")
    cases = []
    for mechanism, params in STEPS:
        for path, points in KILL_POINTS.items():
            for kill_at in points:
                for n in range(ctx.size.crash_repeats):
                    cases.append(_case(ctx, emitter, mechanism, params, path, kill_at, n))
    problems: List[str] = []
    losses = 0
    for c in cases:
        where = f"{c['mechanism']}, {c['path']} path, killed at {c['kill_at']}"
        if not c["killed"]:
            problems.append(f"{where}: the victim was not killed (stdout {c['stdout']!r}, stderr {c['stderr']!r})")
        if c["diff"]:
            losses += 1
            problems.append(f"{where}: the tree differs from its snapshot after {c['action']}: {'; '.join(c['diff'][:3])}")
        if c["action"] == "recover" and c["outcome"] != "recovered":
            problems.append(f"{where}: recovery ended {c['outcome']}")
        if c["action"] == "rollback by id" and c["outcome"] != "rolled_back":
            problems.append(f"{where}: rollback by id ended {c['outcome']}")
        if c["second_recover"]:
            problems.append(f"{where}: a second recovery found {c['second_recover']} more transactions")
        if c["logged"] is not None and not _in_order(c["logged"], c["expected"]):
            problems.append(f"{where}: the kernel logged {c['logged']}, not in the order of {c['expected']}")
    rows = []
    for mechanism, _ in STEPS:
        mine = [c for c in cases if c["mechanism"] == mechanism]
        rows.append((
            mechanism, len(mine), sum(c["changed"] for c in mine),
            ", ".join(f"{k} {v}" for k, v in sorted(Counter(c["action"] for c in mine).items())),
            sum(not c["diff"] for c in mine),
            sum(c["logged"] == c["expected"] for c in mine) if ctx.kernel_log is not None else "-",
        ))
    kill_table = table(["path", "boundaries killed at"], [(p, ", ".join(k)) for p, k in KILL_POINTS.items()])
    body = [
        f"{len(cases)} kills: {len(STEPS)} capturable handlers x {sum(len(k) for k in KILL_POINTS.values())} "
        f"kill points x {ctx.size.crash_repeats} repeat(s). `changed` counts kills that left the tree changed "
        "before recovery (so the comparison can fail); `identical` counts trees equal to their snapshot after "
        "recovery or rollback by id; `records` counts kills whose records in the kernel's log were exactly the "
        "victim's up to the kill followed by the recovery's (the kernel drops records while auditd is stopped "
        "or its backlog is full, which other programs on this machine may cause; it must never log one out of "
        "order or one that was not written).",
        "",
        *kill_table,
        "",
        *table(["handler", "kills", "changed", "then", "identical", "records"], rows),
    ]
    identical = sum(not c["diff"] for c in cases)
    figures = {
        "kills": len(cases),
        "identical": identical,
        "changed_before_recovery": sum(c["changed"] for c in cases),
        "recovered": sum(c["action"] == "recover" for c in cases),
        "rolled_back_by_id": sum(c["action"] == "rollback by id" for c in cases),
        "records_as_expected": sum(c["logged"] == c["expected"] for c in cases),
        "records_out_of_order": sum(c["logged"] is not None and not _in_order(c["logged"], c["expected"]) for c in cases),
    }
    return Section(
        "crash", title,
        tried=f"{len(cases)} SIGKILLs over {len(STEPS)} handlers, commit and rollback paths",
        found=f"{identical}/{len(cases)} trees identical to their snapshot",
        body=tuple(body), problems=tuple(problems), losses=losses, figures=figures,
    )
