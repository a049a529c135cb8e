"""Audit faults during a batch: statuses never change, the emitter says what it counted.

Each fault runs :mod:`reliability.batch` on a fresh tree and journal; the
parent starts the fault when the batch is half done and ends it when the
batch has run (before the flush), so a fault lasts one half-batch:

- auditd killed (SIGKILL) and started again with plain ``auditd``;
- auditd stopped (SIGSTOP), then SIGCONT;
- the kernel's backlog limit set to 1, then put back;
- no CAP_AUDIT_WRITE: the batch runs under ``setpriv --bounding-set=-audit_write``;
- a user namespace: the batch moves into a new one (``unshare(CLONE_NEWUSER)``)
  with uids and gids 0-65535 mapped to themselves, as a container runtime
  does. ``unshare -U -r`` maps uid 0 alone: the tree's files owned by other
  ids could not be written there at all, which would test the file system
  instead of the audit path; kensa's status under it is shown separately.

Every batch's statuses must equal the unfaulted batch's, transaction by
transaction, and every result must be in the journal.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, ContextManager, Dict, List, Optional, Tuple

from kensa.model import Status

from .context import Context, child_env
from .report import Section, table
from .trees import make_root
from .workload import check, expected_records, prepare_root

BATCH_TIMEOUT = 600.0
ID_RANGE = "0 0 65536\n"


class Fault:
    """A fault: an optional command prefix for the batch, and a window around its second half."""

    def __init__(
        self,
        name: str,
        window: Callable[[], ContextManager[Any]] = contextlib.nullcontext,
        prefix: Tuple[str, ...] = (),
        map_ids: bool = False,
    ) -> None:
        self.name, self.window, self.prefix, self.map_ids = name, window, prefix, map_ids


def _faults(ctx: Context) -> List[Fault]:
    ctl = ctx.audit
    return [
        Fault("none (baseline)"),
        Fault("auditd killed, restarted", ctl.auditd_killed),
        Fault("auditd stopped (SIGSTOP)", ctl.auditd_stopped),
        Fault("backlog limit 1", lambda: ctl.backlog_limit(1)),
        Fault("no CAP_AUDIT_WRITE (setpriv)", prefix=("setpriv", "--bounding-set=-audit_write")),
        Fault("user namespace (ids 0-65535 mapped)", map_ids=True),
    ]


def _expect(proc: "subprocess.Popen[str]", word: str) -> None:
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if line != word:
        raise RuntimeError(f"batch said {line!r}, expected {word!r}")


def _say(proc: "subprocess.Popen[str]") -> None:
    assert proc.stdin is not None
    proc.stdin.write("go\n")
    proc.stdin.flush()


def _run_batch(ctx: Context, fault: Fault, index: int) -> Dict[str, Any]:
    work = ctx.workdir(f"fault-{index}")
    root = make_root(work / "root")
    prepare_root(str(root))
    argv = [*fault.prefix, sys.executable, "-m", "reliability.batch", str(root), str(work / "journal.db"), str(ctx.size.fault_batch)]
    if fault.map_ids:
        argv.append("--userns")
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env(), cwd=str(work))
    try:
        if fault.map_ids:
            _expect(proc, "map")
            Path(f"/proc/{proc.pid}/uid_map").write_text(ID_RANGE)
            Path(f"/proc/{proc.pid}/gid_map").write_text(ID_RANGE)
            _say(proc)
        _expect(proc, "mid")
        with fault.window():
            _say(proc)
            _expect(proc, "ran")
        _say(proc)
        out, err = proc.communicate(timeout=BATCH_TIMEOUT)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    if proc.returncode != 0:
        raise RuntimeError(f"batch under fault {fault.name!r} exited {proc.returncode}: {err.strip()[-2000:]}")
    result: Dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    result["root"] = str(root)
    return result


def _kernel_count(ctx: Context, root: str, expected: int) -> Optional[int]:
    if ctx.kernel_log is None:
        return None
    quoted = f'host="{root}"'
    ctx.kernel_log.wait_for(lambda r: quoted in r.body, expected, timeout=5.0)
    return len(ctx.kernel_log.settle(lambda r: quoted in r.body, quiet=0.5, timeout=10.0))


def _status_under_unshare_r() -> str:
    """kensa.audit.status() in a process started by ``unshare -U -r``."""
    probe = "import kensa.audit; print(kensa.audit.status())"
    out = subprocess.run(["unshare", "-U", "-r", sys.executable, "-c", probe], capture_output=True, text=True, env=child_env(), timeout=60)
    return (out.stdout.strip() or out.stderr.strip()[-300:]) if out.returncode == 0 else f"exit {out.returncode}: {out.stderr.strip()[-300:]}"


def run(ctx: Context) -> Section:
    title = "Audit faults during a batch"
    if not ctx.audit.available:
        return Section("audit_faults", title, "", "", skipped=ctx.audit.why_not)
    rows = []
    problems: List[str] = []
    losses = 0
    baseline: Optional[List[str]] = None
    figures: Dict[str, Any] = {}
    for index, fault in enumerate(_faults(ctx)):
        result = _run_batch(ctx, fault, index)
        kinds, statuses = result["kinds"], result["statuses"]
        wrong = check(kinds, [Status(s) for s in statuses])
        problems += [f"{fault.name}: {w}" for w in wrong[:5]]
        if baseline is None:
            baseline = statuses
        elif statuses != baseline:
            differing = sum(1 for a, b in zip(statuses, baseline) if a != b)
            problems.append(f"{fault.name}: {differing} statuses differ from the unfaulted batch")
        missing = len(statuses) - result["journal_rows"]
        losses += max(missing, 0)
        if missing:
            problems.append(f"{fault.name}: {missing} results missing from the journal")
        s = result["stats"]
        balanced = s["emitted"] == s["sent"] + s["dropped"] + s["failed"]
        if s["enabled"] or s["emitted"]:
            if not balanced:
                problems.append(f"{fault.name}: emitted {s['emitted']} != sent + dropped + failed")
            if s["emitted"] != expected_records(kinds):
                problems.append(f"{fault.name}: emitted {s['emitted']}, the transactions produced {expected_records(kinds)}")
        logged = _kernel_count(ctx, result["root"], s["sent"])
        same = "yes" if statuses == baseline else "NO"
        rows.append(
            (
                fault.name, len(statuses), same, result["journal_rows"], s["emitted"], s["sent"], s["dropped"],
                s["failed"], s["stalls"], f"{s['worst_send_seconds'] * 1000:.1f}",
                "-" if logged is None else logged, f"{s['reason']}" + (f" ({s['last_error']})" if s["last_error"] else ""),
            )
        )
        figures[fault.name] = {
            "transactions": len(statuses),
            "same_statuses": statuses == baseline,
            "wrong_statuses": len(wrong),
            "journal_rows": result["journal_rows"],
            "balanced": balanced,
            "expected_records": expected_records(kinds),
            "kernel_logged": logged,
            "stats": s,
            "audit_status": result["status"],
        }
    body = [
        f"Each batch: {ctx.size.fault_batch} transactions of the workload mix (commit, validate failure, "
        "apply failure, already compliant, errored) on a fresh tree; the fault covers the second half. "
        "`logged` is what the kernel's multicast log delivered with the batch's host; `sent` is what the "
        "emitter handed to the kernel. The kernel may drop records when auditd is stopped or the backlog is "
        "full: that is the best-effort channel, and the emitter's counters say so.",
        "",
    ]
    body += table(
        ["fault", "txns", "statuses as baseline", "journal rows", "emitted", "sent", "dropped", "failed",
         "stalls", "worst send ms", "logged", "emitter"],
        rows,
    )
    unshare_r = _status_under_unshare_r()
    figures["unshare -U -r status"] = unshare_r
    body += ["", f"Under plain `unshare -U -r`: `{unshare_r}`."]
    found = "statuses identical under every fault" if not problems else f"{len(problems)} problems"
    return Section(
        "audit_faults", title,
        tried=f"{len(rows)} batches of {ctx.size.fault_batch} transactions, 5 faults + baseline",
        found=found, body=tuple(body), problems=tuple(problems), losses=losses, figures=figures,
    )
