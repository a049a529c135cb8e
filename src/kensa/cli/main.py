"""The ``kensa`` command.

Exit codes:

- 0: everything asked for holds (compliant, committed, skipped or staged; a
  recovery or rollback that restored the pre-state)
- 1: some rule is not compliant or did not apply, and the host was left as it
  was (rolled back, errored before any change, unsupported)
- 2: bad input or environment (a malformed rule file, a missing root, a
  journal that cannot be written); nothing was changed
- 3: some transaction left the host changed and unverified
  (``partially_applied``, ``rollback_failed``): an operator must look. Also
  ``recover`` when an interrupted entry is corrupt in the journal (it is
  reported by id, errored, and kept interrupted; every other one is
  recovered): the host may be half changed and cannot be restored from the
  journal. And ``history --verify`` when it finds a corrupt entry.
- 4: nothing failed, but some rule is not compliant and only an operator can
  remediate it (``manual``: its note says what to do); the host was left as
  it was for it. 3 and 1 win over 4: they say something went wrong.

The exit code is the outcome, whatever happens to the output: a reader that
went away (EPIPE, ``kensa ... | head``) or a closed stdout does not turn it
into 0.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import io
import json
import math
import os
import sys
import warnings
from datetime import datetime, timedelta, timezone
from typing import Any, Dict, Iterable, NoReturn, Optional, Sequence, TextIO

from kensa.errors import KensaError, UsageError
from kensa._version import __version__
from kensa.cli import fleet, remote
from kensa.cli.checking import add_rule_options
from kensa.cli.exiting import EXIT_INTERRUPTED, Stop, stop_on_interrupt
from kensa.cli.render import print_results, print_table, printable, result_dict
from kensa.model import ServiceStatus, Status, TransactionResult

EXIT_OK = 0
EXIT_NOT_APPLIED = 1
EXIT_BAD_INPUT = 2
EXIT_NEEDS_OPERATOR = 3
EXIT_MANUAL = 4

_NEEDS_OPERATOR = {Status.PARTIALLY_APPLIED, Status.ROLLBACK_FAILED}
_HELD = {Status.COMMITTED, Status.SKIPPED, Status.STAGED, Status.RECOVERED}


# --- commands -------------------------------------------------------------------


def _journal_path(args: argparse.Namespace) -> str:
    from kensa.journal.store import default_journal_path

    return args.journal or os.fspath(default_journal_path())


def _existing_journal(args: argparse.Namespace) -> str:
    """The journal path, which must already hold a journal: reading or undoing
    from a mistyped path must be an error, not a new empty journal."""
    from kensa.journal.store import SqliteJournal

    path = _journal_path(args)
    SqliteJournal(path, create=False).close()
    return path


def _engine(args: argparse.Namespace, **remote: Any) -> Any:
    """The production engine; ``remote`` (:meth:`kensa.cli.remote.RemoteRun.engine_options`) lets it reach ``ssh://`` hosts."""
    from kensa.factory import NoAuditExtensionWarning, default_engine

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", NoAuditExtensionWarning)
        engine = default_engine(journal_path=_journal_path(args), audit=not args.no_audit, **remote)
    for warning in caught:
        sys.stderr.write(f"kensa: warning: {warning.message}\n")
    # Closed when the command ends (main): a closed journal has its WAL written back and removed.
    opened = getattr(args, "opened_journals", None)
    if opened is not None:
        opened.append(engine.journal)
    return engine


def cmd_check(args: argparse.Namespace, out: TextIO) -> int:
    from kensa.cli.checking import run_check

    if remote.remote_wanted(args):
        return fleet.cmd_check_remote(args, out)
    return run_check(args, out)


def _service_failed(result: TransactionResult) -> bool:
    """A change that stands, but a restart or reload the rule asked for failed."""
    return any(s.status is ServiceStatus.FAILED for s in result.services)


def exit_code_for(results: Iterable[TransactionResult], unsupported: bool) -> int:
    """The exit code for these outcomes (see the module docstring)."""
    results = list(results)
    # A result that did not hold and left the host changed (partially applied,
    # rollback failed, errored after a change) needs an operator, whatever
    # its status is called.
    if any(r.status in _NEEDS_OPERATOR or (r.status not in _HELD and not r.host_unchanged) for r in results):
        return EXIT_NEEDS_OPERATOR
    if unsupported or any((r.status not in _HELD and r.status is not Status.MANUAL) or _service_failed(r) for r in results):
        return EXIT_NOT_APPLIED
    if any(r.status is Status.MANUAL for r in results):
        return EXIT_MANUAL
    return EXIT_OK


def cmd_remediate(args: argparse.Namespace, out: TextIO) -> int:
    from kensa.cli.checking import run_remediate

    if remote.remote_wanted(args):
        if args.dry_run:
            return fleet.cmd_dry_run_remote(args, out)
        return fleet.cmd_remediate_remote(args, out, lambda **kw: _engine(args, **kw), exit_code_for)
    return run_remediate(args, out, _engine, exit_code_for)


def cmd_history(args: argparse.Namespace, out: TextIO) -> int:
    from kensa.journal.store import SqliteJournal

    path = _existing_journal(args)
    if args.prune:
        return cmd_history_prune(args, path, out)
    if args.older_than is not None or args.keep_last is not None:
        raise UsageError("history: --older-than and --keep-last select what --prune deletes; add --prune")
    status = Status(args.status) if args.status else None
    limit = _DEFAULT_HISTORY_LIMIT if args.limit is None else args.limit
    with SqliteJournal(path, create=False) as journal:
        entries = journal.history(host=args.host, rule=args.rule, status=status, limit=limit)
        corrupt = {e.txn.id: e.corrupt for e in entries if e.corrupt is not None}
        if args.verify:
            corrupt.update(journal.verify(entries))
    code = EXIT_NEEDS_OPERATOR if args.verify and corrupt else EXIT_OK
    if args.json:
        json.dump([dict(_entry_dict(e), corrupt=corrupt.get(e.txn.id)) for e in entries], out, indent=2)
        out.write("\n")
        return code
    rows = []
    for e in entries:
        if e.txn.id in corrupt:
            status_text = f"corrupt: {corrupt[e.txn.id]}"
        else:
            status_text = e.result.status.value if e.result else "interrupted"
            if e.later_rollback is not None:
                status_text += f" (rolled back: {e.later_rollback.status.value})"
        rows.append((e.created.strftime("%Y-%m-%d %H:%M:%S"), e.txn.id, e.txn.rule, e.txn.host, status_text))
    print_table(rows, ("WHEN (UTC)", "TXN", "RULE", "HOST", "STATUS"), out)
    return code


def cmd_history_prune(args: argparse.Namespace, path: str, out: TextIO) -> int:
    """``history --prune``: delete finished entries by age and/or count; never an interrupted one."""
    from kensa.journal.store import SqliteJournal

    given = (("--host", args.host), ("--rule", args.rule), ("--status", args.status), ("--limit", args.limit))
    mixed = [name for name, value in given if value is not None] + (["--verify"] if args.verify else [])
    if mixed:
        raise UsageError(
            f"history --prune deletes by age (--older-than) and count (--keep-last) only; {', '.join(mixed)} "
            "do not apply to it"
        )
    if args.older_than is None and args.keep_last is None:
        raise UsageError("history --prune needs --older-than DAYS and/or --keep-last N; it deletes nothing by default")
    before = None if args.older_than is None else datetime.now(timezone.utc) - timedelta(days=args.older_than)
    with SqliteJournal(path, create=False) as journal:
        pruned = journal.prune(before=before, keep_last=args.keep_last)
    if args.json:
        json.dump(
            {"deleted": pruned.deleted, "kept_interrupted": pruned.kept_interrupted,
             "kept_for_recovery": pruned.kept_for_recovery},
            out,
            indent=2,
        )
        out.write("\n")
        return EXIT_OK
    out.write(
        f"deleted {pruned.deleted} entries; kept {pruned.kept_interrupted} interrupted entries "
        "(pruning never deletes an interrupted entry: run kensa recover)"
    )
    if pruned.kept_for_recovery:
        out.write(
            f" and {pruned.kept_for_recovery} entries created after an interrupted one "
            "(recovery compares against them)"
        )
    out.write("\n")
    return EXIT_OK


def _entry_dict(entry: Any) -> Dict[str, Any]:
    """A JSON-ready view of a journal entry; its results as :func:`result_dict` shows them."""
    return {
        "txn": entry.txn.id,
        "seq": entry.seq,
        "rule": entry.txn.rule,
        "host": entry.txn.host,
        "created": entry.created.isoformat(),
        "finished": entry.finished.isoformat() if entry.finished else None,
        "interrupted": entry.interrupted,
        "recovered": entry.recovered,
        "result": result_dict(entry.result) if entry.result else None,
        "later_rollback": result_dict(entry.later_rollback) if entry.later_rollback else None,
    }


def cmd_rollback(args: argparse.Namespace, out: TextIO) -> int:
    _existing_journal(args)
    with remote.login(args) as run:
        result = _engine(args, **run.engine_options()).rollback(args.txn_id, force=args.force)
    _report_one(args, result, out)
    # Here rolled_back is what was asked for.
    return EXIT_OK if result.status is Status.ROLLED_BACK else exit_code_for([result], False)


def cmd_recover(args: argparse.Namespace, out: TextIO) -> int:
    from kensa.errors import JournalNotFound

    try:
        _existing_journal(args)
    except JournalNotFound:
        if args.journal is not None or os.environ.get("KENSA_JOURNAL"):
            raise  # a journal named by the operator must exist: a typo is an error
        # The default journal is made by the first run: none means nothing ever ran here.
        out.write(f"nothing to recover: there is no journal at {_journal_path(args)} (kensa has not run here)\n")
        return EXIT_OK
    with remote.login(args) as run:
        results = _engine(args, **run.engine_options()).recover()
    if args.json:
        json.dump([result_dict(r) for r in results], out, indent=2)
        out.write("\n")
    elif not results:
        out.write("nothing to recover: every journaled transaction has a terminal result\n")
    else:
        print_results(results, [], out)
    return exit_code_for(results, False)


def _report_one(args: argparse.Namespace, result: TransactionResult, out: TextIO) -> None:
    if args.json:
        json.dump(result_dict(result), out, indent=2)
        out.write("\n")
    else:
        print_results([result], [], out)


def cmd_audit_status(args: argparse.Namespace, out: TextIO) -> int:
    """``kensa audit status``: what happens to the records, the kernel's own figures, the counters."""
    import kensa.audit.emitter as audit

    st = audit.status()
    emitter = audit.open_emitter()
    stats = emitter.stats()
    emitter.close()
    kernel = st.kernel.__dict__ if st.kernel is not None else None
    if args.json:
        json.dump(
            {"state": st.state, "enabled": st.enabled, "writable": st.writable, "reason": st.reason,
             "detail": st.detail, "extension": st.extension, "libaudit": st.libaudit,
             "counters": stats.__dict__, "kernel": kernel},
            out,
            indent=2,
        )
        out.write("\n")
        return EXIT_OK
    out.write(f"emission:  {st.state} ({st.reason})\n")
    out.write(f"why:       {st.detail}\n")
    out.write(f"extension: {'loaded' if st.extension else 'missing'}; socket from {'libaudit' if st.libaudit else 'socket()'}\n")
    out.write(
        "counters:  emitted={0.emitted} sent={0.sent} dropped={0.dropped} (discarded={0.discarded}) failed={0.failed} "
        "gaps={0.gaps} stalls={0.stalls} worst_send={1:.3f}ms (this process)\n".format(stats, stats.worst_send_seconds * 1000)
    )
    if kernel is not None:
        out.write("kernel:    " + " ".join(f"{k}={v}" for k, v in kernel.items()) + " (AUDIT_GET)\n")
    else:
        out.write("kernel:    not asked or not answered (AUDIT_GET needs CAP_AUDIT_CONTROL); kernel figures unknown\n")
    return EXIT_OK


def cmd_audit_reconcile(args: argparse.Namespace, out: TextIO) -> int:
    """``kensa audit reconcile``: which journaled records auditd's log holds, and which it lacks."""
    from pathlib import Path

    from kensa.audit.reconcile import LOGGED, MISSING, NOT_SENT, parse_since, reconcile, reconciliation_dict
    from kensa.journal.store import SqliteJournal

    since = parse_since(args.since) if args.since is not None else None
    logs = [Path(p) for p in args.log] if args.log else None
    # An existing journal only: reconciling a mistyped path must not create an empty one.
    with SqliteJournal(_existing_journal(args), create=False) as journal:
        rec = reconcile(journal, since, logs)
    if args.json:
        json.dump(reconciliation_dict(rec), out, indent=2)
        out.write("\n")
        return EXIT_OK if rec.complete else EXIT_NOT_APPLIED
    where = ", ".join(str(p) for p in rec.log_files)
    out.write(f"{len(rec.transactions)} journaled transaction(s){' since ' + rec.since.isoformat() if rec.since else ''}; log: {where}\n")
    for t in rec.transactions:
        logged = sum(1 for r in t.records if r.state == LOGGED)
        line = f"{printable(t.txn_id)}: {logged} of {len(t.records)} record(s) in the log"
        if t.missing:
            line += "; MISSING (kensa sent them, the log lacks them): " + ", ".join(
                f"{r.phase} (seq {r.seq}, pid {r.pid})" for r in t.missing
            )
        if t.not_sent:
            line += "; NOT SENT (kensa's emitter dropped them): " + ", ".join(r.phase for r in t.not_sent)
        out.write(line + "\n")
    out.write(
        f"summary: {rec.count(LOGGED)} in the log, {rec.count(MISSING)} missing after kensa sent them, "
        f"{rec.count(NOT_SENT)} dropped by kensa's emitter; gap records in the log announce "
        f"{rec.announced_drops} dropped\n"
    )
    return EXIT_OK if rec.complete else EXIT_NOT_APPLIED


def cmd_demo(args: argparse.Namespace, out: TextIO) -> int:
    from kensa.cli.demo import run_demo

    return run_demo(out, keep=args.keep, json_output=args.json)


# --- parser ---------------------------------------------------------------------


_DEFAULT_HISTORY_LIMIT = 100


def _count(text: str) -> int:
    """argparse type: a whole number from 0 to 2**63 - 1 (what SQLite can take)."""
    try:
        value = int(text, 10)
    except ValueError:
        value = -1
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"expected a whole number from 0 to {2**63 - 1}, got {text[:40]!r}")
    return value


def _days(text: str) -> float:
    """argparse type: a number of days from 0 to 100000."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value <= 100_000:
        raise argparse.ArgumentTypeError(f"expected a number of days from 0 to 100000, got {text[:40]!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kensa",
        description="Remediate Linux hosts as audited transactions.",
        epilog="exit codes: 0 ok, 1 not compliant / not applied (host unchanged), 2 bad input, 3 host changed and unverified, 4 an operator must act (manual rules)",
    )
    parser.add_argument("--version", action="version", version=f"kensa {__version__}")
    parser.add_argument("--journal", metavar="PATH", help="journal database (default: $KENSA_JOURNAL or the per-user default)")
    parser.add_argument("--no-audit", action="store_true", help="write no kernel audit records")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("check", help="report compliance per rule; changes nothing")
    p.add_argument("rules", nargs="+", metavar="RULES", help="rule files or directories")
    p.add_argument("--root", metavar="DIR", help="target root, on each remote host with -H (default: /)")
    p.add_argument("--workers", type=int, default=1, metavar="N", help="remote hosts checked at a time")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    remote.add_target_arguments(p)
    remote.add_login_arguments(p)
    add_rule_options(p)
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("remediate", help="apply rules as transactions")
    p.add_argument("rules", nargs="+", metavar="RULES", help="rule files or directories")
    p.add_argument("--root", metavar="DIR", help="target root, on each remote host with -H (default: /)")
    p.add_argument("--dry-run", action="store_true", help="say what would run; change nothing")
    p.add_argument("--workers", type=int, default=1, metavar="N", help="hosts remediated at a time; one target's transactions always run one after another")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    remote.add_target_arguments(p)
    remote.add_login_arguments(p)
    add_rule_options(p, remediate=True)
    p.set_defaults(func=cmd_remediate, runs_transactions=True)

    p = sub.add_parser("history", help="journaled transactions, newest first")
    p.add_argument("--host", help="only this host key")
    p.add_argument("--rule", help="only this rule id")
    p.add_argument("--status", choices=[s.value for s in Status], help="only this status")
    p.add_argument("--limit", type=_count, help=f"at most this many (default {_DEFAULT_HISTORY_LIMIT})")
    p.add_argument("--verify", action="store_true", help="also check the listed entries' pre-states against their SHA-256")
    p.add_argument("--prune", action="store_true", help="delete old finished entries instead of listing (never interrupted ones)")
    p.add_argument("--older-than", type=_days, metavar="DAYS", help="with --prune: entries created more than DAYS ago")
    p.add_argument("--keep-last", type=_count, metavar="N", help="with --prune: all but the N newest entries")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_history)

    p = sub.add_parser("rollback", help="reverse a committed transaction from its journaled pre-state")
    p.add_argument("txn_id", metavar="TXN_ID")
    p.add_argument("--force", action="store_true", help="roll back even if the host drifted since the commit")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    remote.add_login_arguments(p)
    p.set_defaults(func=cmd_rollback, leaves_interrupted=True)

    p = sub.add_parser("recover", help="reverse every interrupted transaction")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    remote.add_login_arguments(p)
    p.set_defaults(func=cmd_recover, leaves_interrupted=True)

    p = sub.add_parser("audit", help="kernel audit emission")
    audit_sub = p.add_subparsers(dest="audit_command", metavar="SUBCOMMAND", required=True)
    q = audit_sub.add_parser("status", help="is emission on, why not, and the counters")
    q.add_argument("--json", action="store_true", help="machine-readable output")
    q.set_defaults(func=cmd_audit_status)
    q = audit_sub.add_parser("reconcile", help="which journaled records auditd's log holds and which are missing")
    q.add_argument("--since", metavar="TIME", help="only transactions journaled since TIME (ISO 8601, or an age: 30m, 2h, 1d)")
    q.add_argument("--log", action="append", metavar="PATH", help="auditd log file to read (repeatable; default: auditd.conf's log_file and its rotations)")
    q.add_argument("--json", action="store_true", help="machine-readable output")
    q.set_defaults(func=cmd_audit_reconcile)

    p = sub.add_parser("demo", help="run a built-in bundle of rules in a throw-away root")
    p.add_argument("--keep", action="store_true", help="keep the throw-away root and print where it is")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_demo)

    from kensa.cli import evidence, report

    evidence.register(sub)
    report.register(sub, _engine, exit_code_for)
    return parser


def main(argv: Optional[Sequence[str]] = None, out: Optional[TextIO] = None) -> int:
    _ensure_standard_streams()
    args = build_parser().parse_args(argv)
    stream = out if out is not None else sys.stdout
    if getattr(args, "workers", 1) < 1:
        sys.stderr.write("kensa: --workers must be at least 1\n")
        return EXIT_BAD_INPUT
    # The output is written once the outcome is known, so that failing to
    # write it can never change the exit code.
    rendered = io.StringIO()
    args.opened_journals = []
    # A command that runs transactions stops between them on Ctrl-C (see stop_on_interrupt).
    args.stop = Stop()
    runs = (getattr(args, "runs_transactions", False) or getattr(args, "remediate", False) is True) and not getattr(
        args, "dry_run", False)
    may_leave_open = runs or getattr(args, "leaves_interrupted", False)
    with stop_on_interrupt(args.stop) if runs else contextlib.nullcontext():
        try:
            try:
                code = int(args.func(args, rendered))
            except KensaError as exc:
                sys.stderr.write(f"kensa: {printable(exc)}\n")
                code = EXIT_BAD_INPUT
            finally:
                for journal in args.opened_journals:
                    journal.close()
            return _deliver(rendered.getvalue(), stream, code)
        except KeyboardInterrupt:
            return _interrupted(may_leave_open)


def _interrupted(runs: bool) -> int:
    """Say that Ctrl-C ended the command; :data:`EXIT_INTERRUPTED`."""
    if runs:
        # A transaction the interrupt reached in its apply or validate was rolled back; one it
        # reached while journaling, or in its rollback, is left interrupted in the journal.
        sys.stderr.write("kensa: interrupted by Ctrl-C; run 'kensa recover' to finish any transaction "
                         "it left open (there is nothing to do when it finds none)\n")
    else:
        sys.stderr.write("kensa: interrupted by Ctrl-C\n")
    return EXIT_INTERRUPTED


def run() -> NoReturn:
    """The ``kensa`` command: :func:`main` with the process's arguments, then the process ends with its
    exit code (:func:`kensa.cli.exiting.exit_process`: without the interpreter's teardown)."""
    from kensa.cli.exiting import exit_process, exit_status

    try:
        code = main()
    except SystemExit as exc:  # --help, --version, a usage error: argparse ends the command this way
        code = exit_status(exc)
    exit_process(code)


def _ensure_standard_streams() -> None:
    """Put /dev/null on closed descriptors 0-2 and streams on a missing sys.stdout/sys.stderr.

    With fd 1 closed the next file opened (the journal) would become fd 1, and
    anything written to stdout, by kensa or by a command it runs, would land in it.
    """
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            # Lower descriptors are open by now, so this takes fd itself.
            # Inheritable on purpose: commands kensa runs need their 0-2 too.
            opened = os.open(os.devnull, os.O_RDWR)
            if opened != fd:
                os.dup2(opened, fd)
                os.close(opened)
    if sys.stdout is None:
        sys.stdout = open(os.devnull, "w", encoding="utf-8")
    if sys.stderr is None:
        sys.stderr = open(os.devnull, "w", encoding="utf-8")


def _deliver(text: str, stream: TextIO, code: int) -> int:
    """Write ``text``; the exit code stays ``code`` when the reader went away, and says so when the write failed."""
    try:
        stream.write(text)
        stream.flush()
        return code
    except ValueError:
        return code  # the stream was closed under us: as good as a reader gone
    except OSError as exc:
        failure: OSError = exc
    if stream is sys.stdout:
        # The interpreter flushes stdout again at exit; with the failed data
        # still buffered that would fail and print a traceback.
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, stream.fileno())
            os.close(devnull)
    if failure.errno == errno.EPIPE:
        return code
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.write(f"kensa: could not write the output: {failure}\n")
    return code if code == EXIT_NEEDS_OPERATOR else EXIT_BAD_INPUT


if __name__ == "__main__":
    run()
