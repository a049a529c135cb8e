"""``kensa demo``: a built-in rule bundle run against a throw-away root.

The bundle is chosen so one run shows every everyday outcome: rules that
commit, one that is already compliant (skipped), one whose two steps conflict
so validation fails and the transaction rolls back, and one that is refused
before anything runs (errored: a transactional rule with a step that cannot be
undone). When this process can write kernel audit records and read the audit
multicast group (root), the demo prints the records the kernel logged for the
run; when it shows none it says exactly why (not root, no capability, kernel
audit disabled, no extension, ...) and what to do.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import TYPE_CHECKING, Dict, List, Optional, TextIO, Tuple

from kensa.model import Status, TransactionResult

if TYPE_CHECKING:
    from kensa.audit.emitter import AuditStatus, EmitterStats
    from kensa.audit.listener import AuditListener

RULES: Dict[str, str] = {
    "ssh-disable-root-login.yml": """\
id: demo-ssh-disable-root-login
title: Disable SSH root login
severity: high
category: access-control
implementations:
  - default: true
    check: {method: config_value, path: /etc/ssh/sshd_config, key: PermitRootLogin, expected: "no"}
    remediation: {mechanism: config_set, path: /etc/ssh/sshd_config, key: PermitRootLogin, value: "no"}
""",
    "ssh-limit-auth-tries.yml": """\
id: demo-ssh-limit-auth-tries
title: Limit SSH authentication attempts
severity: medium
category: access-control
implementations:
  - default: true
    remediation: {mechanism: config_set, path: /etc/ssh/sshd_config, key: MaxAuthTries, value: "4"}
""",
    "sysctl-no-ip-forward.yml": """\
id: demo-sysctl-no-ip-forward
title: Do not route packets between interfaces
severity: medium
category: kernel
implementations:
  - default: true
    remediation: {mechanism: sysctl_set, key: net.ipv4.ip_forward, value: "0"}
""",
    "no-hosts-equiv.yml": """\
id: demo-no-hosts-equiv
title: Remove /etc/hosts.equiv (host-based trust)
severity: high
category: access-control
implementations:
  - default: true
    remediation: {mechanism: file_absent, path: /etc/hosts.equiv}
""",
    "audit-watch-sudoers.yml": """\
id: demo-audit-watch-sudoers
title: Audit changes to sudoers (persisted in the target root)
severity: high
category: audit
implementations:
  - default: true
    remediation: {mechanism: audit_rule_set, rule: "-w /etc/sudoers -p wa -k demo_scope"}
""",
    "shadow-permissions.yml": """\
id: demo-shadow-permissions
title: /etc/shadow is not world-readable (already compliant)
severity: high
category: filesystem
implementations:
  - default: true
    remediation: {mechanism: file_permissions, path: /etc/shadow, mode: "0640"}
""",
    "login-banner-conflict.yml": """\
# Two steps write different banners: the first no longer validates after the
# second, so the transaction rolls back and /etc/issue keeps its old text.
id: demo-login-banner-conflict
title: "Login banner (conflicting steps, validation fails)"
severity: low
category: system
implementations:
  - default: true
    remediation:
      steps:
        - {mechanism: file_content, path: /etc/issue, content: "Authorized use only.\\n", mode: "0644"}
        - {mechanism: file_content, path: /etc/issue, content: "Authorised uses only.\\n", mode: "0644"}
""",
    "restart-sshd.yml": """\
# A transactional rule may not contain a step kensa cannot undo: refused
# before anything runs, the command is never executed.
id: demo-restart-sshd
title: "Reload sshd after configuration changes (refused: cannot be undone)"
severity: low
category: access-control
transactional: true
implementations:
  - default: true
    remediation: {mechanism: command_exec, run: "systemctl reload sshd"}
""",
}

TREE: Dict[str, Tuple[str, int]] = {
    "etc/ssh/sshd_config": (
        "# sshd configuration (demo)\nPermitRootLogin yes\nPasswordAuthentication yes\n#MaxAuthTries 6\n\n"
        "Match User backup\n    PermitRootLogin forced-commands-only\n",
        0o600,
    ),
    "etc/shadow": ("root:*:19000:0:99999:7:::\n", 0o640),
    "etc/issue": ("Debian GNU/Linux \\n \\l\n", 0o644),
    "etc/hosts.equiv": ("+\n", 0o644),
    "etc/sudoers": ("root ALL=(ALL:ALL) ALL\n", 0o440),
    "proc/sys/net/ipv4/ip_forward": ("1\n", 0o644),
}
DIRS = ("etc/sysctl.d", "etc/audit/rules.d")

EXPECTED = {Status.COMMITTED, Status.SKIPPED, Status.ROLLED_BACK, Status.ERRORED}


def make_tree(root: str) -> None:
    for rel in DIRS:
        os.makedirs(os.path.join(root, rel), exist_ok=True)
    for rel, (text, mode) in TREE.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(path, mode)


def write_rules(directory: str) -> None:
    os.makedirs(directory, exist_ok=True)
    for name, text in RULES.items():
        with open(os.path.join(directory, name), "w", encoding="utf-8") as f:
            f.write(text)


def _open_tap() -> Tuple[Optional["AuditListener"], str]:
    """A listener keeping kensa's records, or None and why it could not listen."""
    from kensa.audit.listener import AuditListener

    try:
        return AuditListener(containing=b"op=kensa"), ""
    except OSError as exc:
        return None, f"cannot read the kernel audit log ({exc.strerror}); run as root to see the records"


def run_demo(out: TextIO, keep: bool = False, json_output: bool = False) -> int:
    import kensa.audit.emitter as audit
    from kensa.cli.plan import Target, transactions_for
    from kensa.cli.render import print_results, printable, result_dict
    from kensa.factory import default_engine
    from kensa.hosts.local import LocalHost
    from kensa.rules.load import load_rules

    work = tempfile.mkdtemp(prefix="kensa-demo-")
    root = os.path.join(work, "root")
    rules_dir = os.path.join(work, "rules")
    try:
        make_tree(root)
        write_rules(rules_dir)
        status = audit.status()
        tap, tap_problem = _open_tap() if status.writable else (None, "")
        engine = default_engine(journal_path=os.path.join(work, "journal.db"))
        target = Target(root, root)
        txns, unsupported = transactions_for(load_rules([rules_dir]), target, LocalHost(root))
        results: List[TransactionResult] = engine.run_many(txns)
        flushed = getattr(engine.audit, "flush", lambda timeout: True)(2.0)
        stats = getattr(engine.audit, "stats", lambda: None)()
        records: List[str] = []
        if tap is not None:
            records = _collect(tap, results)
        seen = {r.status for r in results}
        code = 0 if EXPECTED <= seen and not unsupported else 1
        if json_output:
            json.dump(
                {"root": root if keep else None, "results": [result_dict(r) for r in results],
                 "audit": {"enabled": status.enabled, "state": status.state, "reason": status.reason,
                           "detail": status.detail, "flushed": flushed, "records": records,
                           "why_none": None if records else why_no_records(status, tap_problem, stats)}},
                out,
                indent=2,
            )
            out.write("\n")
            return code
        out.write(f"kensa demo: {len(txns)} rules against a throw-away root\n\n")
        print_results(results, unsupported, out)
        out.write("\n")
        if records:
            out.write(f"audit records the kernel logged for this run ({len(records)}):\n")
            for text in records:
                out.write("  " + printable(text[text.find("msg=") :]) + "\n")
            if status.reason == "no_audit_daemon":
                out.write("  (no audit daemon runs: only the kernel log has them, rate-limited; start auditd)\n")
            else:
                out.write("  (auditd has them too: ausearch -m USER -i --success no)\n")
        else:
            out.write(f"audit records the kernel logged for this run: none. {why_no_records(status, tap_problem, stats)}\n")
        if keep:
            out.write(f"\nthe tree is kept in {root}; journal: {os.path.join(work, 'journal.db')}\n")
        return code
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


# What to do about each reason emission is off (kensa.audit.status() reasons).
_REMEDY = {
    "no_extension": "reinstall kensa where a C compiler is available (pip install --force-reinstall kensa)",
    "disabled": "unset KENSA_AUDIT",
    "no_capability": "run the demo as root (sudo kensa demo)",
    "user_namespace": "run it on the host, outside the user namespace (rootless container)",
    "no_kernel_audit": "use a kernel built with CONFIG_AUDIT",
    "refused_eperm": "run the demo as root (sudo kensa demo)",
    "refused_econnrefused": "run it on the host, outside the user namespace (rootless container)",
    "kernel_disabled": "start auditd, or run auditctl -e 1",
    "kernel_state_unknown": "run the demo as root to let kensa ask the kernel",
}


def why_no_records(status: "AuditStatus", tap_problem: str, stats: Optional["EmitterStats"]) -> str:
    """One sentence: why this run shows no kernel audit record, and what to do."""
    remedy = _REMEDY.get(status.reason)
    if not status.writable:
        return f"kensa wrote none: {status.detail}; to see them, {remedy or 'see kensa audit status'}."
    if status.reason == "kernel_disabled":
        return "kensa sent them, but the kernel's audit is disabled (enabled 0) and it discards every record; start auditd, or run auditctl -e 1."
    if tap_problem:
        return f"kensa sent them, but {tap_problem}."
    if stats is not None and stats.discarded:
        return f"the kernel's audit was disabled while the demo ran: {stats.discarded} record(s) discarded; start auditd, or run auditctl -e 1."
    if stats is not None and not stats.enabled:
        return f"the emitter switched off ({stats.reason}{': ' + stats.last_error if stats.last_error else ''}); see kensa audit status."
    if stats is not None and stats.dropped + stats.failed:
        return f"the emitter dropped {stats.dropped} and failed {stats.failed} record(s) ({stats.last_error or 'ring full'}); see kensa audit status."
    return f"none arrived within the wait ({status.detail}); see kensa audit status."


def _collect(tap: "AuditListener", results: List[TransactionResult], timeout: float = 3.0) -> List[str]:
    """The run's records, once each transaction's terminal record arrived (bounded wait)."""
    ids = {r.txn_id for r in results}
    terminal = {f"phase={s.value} " for s in Status}
    try:
        tap.wait_for(lambda r: any(i in r.text for i in ids) and any(p in r.text for p in terminal), len(ids), timeout)
        mine = tap.matching(lambda r: any(i in r.text for i in ids))
    finally:
        tap.close()
    return [r.text for r in mine]
