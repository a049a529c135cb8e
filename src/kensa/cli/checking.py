"""``kensa check`` and ``kensa remediate``: load the rules for a target (its variables
included), decide what applies there, check or remediate, and report each rule.

``check`` prints one verdict per rule (:class:`kensa.model.Verdict`) with the
check that decided it. ``remediate`` runs each applicable, supported rule as a
transaction, dependencies first; a rule whose dependency did not hold is not
run. Either way a rule file that does not load is reported (file:line:field)
and the other files still run; the exit code is then 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import sys
from typing import Any, Callable, Dict, List, Optional, TextIO, Tuple

from kensa.cli.exiting import NOT_RUN, Stop, stopped_code
from kensa.cli.plan import Target, load_rule_set_for, target_for
from kensa.cli.render import Progress, print_results, print_table, printable, result_dict
from kensa.cli.services import notify_rows, print_notified
from kensa.errors import KensaError, UsageError
from kensa.model import CheckResult, Status, Transaction, TransactionResult, Verdict

__all__ = ["add_rule_options", "check_code", "load_for_target", "conflict_lines", "problem_rows", "run_check", "run_in_order", "run_remediate"]

# Verdicts that are no finding: the rule holds, or it does not concern this target.
_FINE = frozenset({Verdict.COMPLIANT, Verdict.NOT_APPLICABLE})
_HELD = frozenset({Status.COMMITTED, Status.SKIPPED, Status.STAGED})


def add_rule_options(parser: argparse.ArgumentParser, *, remediate: bool = False) -> None:
    """The options of commands that load rules for a target: variables, and for remediate conflicts."""
    parser.add_argument("--var", action="append", default=[], metavar="NAME=VALUE",
                        help="set a rule variable {{ NAME }} (repeatable; wins over variable files)")
    parser.add_argument("--config-dir", metavar="DIR",
                        help="variable files: DIR/defaults.yml, DIR/conf.d/*.yml, DIR/groups/G.yml, DIR/hosts/HOST.yml")
    if remediate:
        parser.add_argument("--allow-conflicts", action="store_true",
                            help="remediate even when two selected rules declare each other conflicting")


def _host_name(target: Target, host: Any) -> str:
    """The target's host name, for per-host variable files: this machine's, or the image root's /etc/hostname."""
    if target.root == "/":
        return socket.gethostname()
    try:
        data = host.read_bytes("/etc/hostname")
    except KensaError:
        return ""
    return data.decode("utf-8", "replace").strip() if data else ""


def load_for_target(args: argparse.Namespace) -> Tuple[Target, Any, Any]:
    """The local target of ``--root``, its host, and the rule set loaded for it (bad files reported on stderr)."""
    from kensa.hosts.local import LocalHost

    target = target_for(args.root)
    host = LocalHost(target.root)
    ruleset = load_rule_set_for(args.rules, args.var, args.config_dir, host_name=_host_name(target, host))
    for problem in ruleset.problems:
        sys.stderr.write(f"kensa: {printable(problem.message)}\n")
    return target, host, ruleset


def problem_rows(ruleset: Any, host_key: str) -> List[CheckResult]:
    """A rule whose variable is undefined is an error of that rule; other bad files are problems only."""
    return [
        CheckResult(p.rule_id, host_key, Verdict.ERROR, p.message, source=p.source)
        for p in ruleset.problems
        if p.rule_id
    ]


def _problems_json(ruleset: Any) -> List[Dict[str, str]]:
    return [{"source": p.source, "rule": p.rule_id, "message": p.message} for p in ruleset.problems]


def conflict_lines(conflicts: Any) -> str:
    return "; ".join(f"{a} conflicts with {b}" for a, b in conflicts)


def check_code(results: List[CheckResult], bad_files: bool) -> int:
    """0 when every rule is compliant or not applicable, 1 for any other verdict, 2 when a file was bad."""
    if bad_files:
        return 2
    return 0 if all(r.verdict in _FINE for r in results) else 1


def run_check(args: argparse.Namespace, out: TextIO) -> int:
    """``kensa check``: one verdict per rule; read-only."""
    from kensa.handlers import default_registry
    from kensa.rules.applicability import resolve
    from kensa.rules.assess import check_rules

    target, host, ruleset = load_for_target(args)
    results = check_rules(ruleset.rules, host, default_registry(), host_key=target.key)
    results += problem_rows(ruleset, target.key)
    conflicts = resolve(ruleset.rules).conflicts
    if conflicts:
        # Advisory here: checking changes nothing, so conflicting rules are only worth knowing.
        sys.stderr.write(f"kensa: warning: {printable(conflict_lines(conflicts))}\n")
    if args.json:
        rows = [
            {"rule": r.rule, "verdict": r.verdict.value, "check": r.check, "implementation": r.implementation,
             "detail": r.detail, "source": r.source}
            for r in results
        ]
        report = {"target": target.root, "host": target.key, "rules": rows, "problems": _problems_json(ruleset),
                  "conflicts": [list(pair) for pair in conflicts]}
        json.dump(report, out, indent=2)
        out.write("\n")
    else:
        print_table([(r.rule, r.verdict.value, r.check, r.detail) for r in results], ("RULE", "VERDICT", "CHECK", "DETAIL"), out)
    return check_code(results, bool(ruleset.problems))


def run_in_order(
    engine: Any, planned: List[Any], show_progress: bool, held: Optional[Dict[str, bool]] = None,
    read_ahead: bool = False, stop: Optional[Stop] = None,
) -> Tuple[List[TransactionResult], List[Dict[str, Any]]]:
    """Run the planned transactions in order; a rule whose dependency did not hold is not run.
    ``held`` says of rules that are not run here (not selected) whether they hold. ``read_ahead``:
    each run is told the transaction after it (Engine.run), for a caller that holds the host's
    target lock across them all; without that hold, what a remote host reads ahead is dropped.
    ``stop`` (:class:`kensa.cli.exiting.Stop`, armed here): once it is set, no further transaction
    begins, and each rule left gets a row with status :data:`NOT_RUN`."""
    progress = Progress(sum(1 for p in planned if p.transaction is not None), sys.stderr)
    if stop is not None:
        stop.arm()
    held = dict(held or {})
    results: List[TransactionResult] = []
    rows: List[Dict[str, Any]] = []
    following: List[Optional[Transaction]] = [None] * len(planned)
    for at in range(len(planned) - 2, -1, -1) if read_ahead else ():
        later = planned[at + 1].transaction
        following[at] = later if later is not None else following[at + 1]
    try:
        for at, item in enumerate(planned):
            rule = item.rule
            if item.transaction is None:
                verdict = item.verdict
                held[rule.id] = False
                rows.append({"rule": rule.id, "status": verdict.verdict.value, "detail": verdict.detail})
                continue
            if stop is not None and stop.is_set():
                rows.append({"rule": rule.id, "status": NOT_RUN, "detail": "not run: the run was interrupted before it began"})
                continue
            failed = next((needed for needed in rule.depends_on if not held.get(needed, False)), None)
            if failed is not None:
                held[rule.id] = False
                rows.append({"rule": rule.id, "status": Verdict.NOT_APPLICABLE.value,
                             "detail": f"not run: it depends on rule {failed}, which did not hold"})
                continue
            # The next planned transaction: a remote host reads its check ahead (Engine.run).
            result = engine.run(item.transaction, following[at])
            held[rule.id] = result.status in _HELD
            results.append(result)
            if show_progress:
                progress.advance(f"{rule.id} {result.status.value}")
    finally:
        progress.finish()
    return results, rows


def run_remediate(
    args: argparse.Namespace,
    out: TextIO,
    engine_for: Callable[[argparse.Namespace], Any],
    exit_code_for: Callable[[List[TransactionResult], bool], int],
) -> int:
    """``kensa remediate``: each applicable rule as a transaction; see the module docstring.
    ``engine_for`` builds the engine from the options, ``exit_code_for`` turns the results
    (and whether some rule was not run) into the exit code."""
    from kensa.cli.rulejournal import journal_rules
    from kensa.rules.assess import plan_rules

    target, host, ruleset = load_for_target(args)
    resolution, planned = plan_rules(ruleset.rules, host, host_key=target.key)
    if resolution.conflicts and not args.allow_conflicts:
        raise UsageError(
            f"the selected rules conflict: {conflict_lines(resolution.conflicts)}; their remediations undo each "
            "other. Leave one of each pair out, or pass --allow-conflicts to run them anyway; nothing was changed"
        )
    if args.dry_run:
        return _dry_run(args, planned, host, out, bool(ruleset.problems))
    engine = engine_for(args)
    if args.workers > 1:
        # Transactions on one target never overlap: say so rather than imply parallelism.
        sys.stderr.write(f"kensa: note: --workers {args.workers} has no effect here: this run has one target, "
                         f"{target.root}, and one target's transactions run one after another\n")
    results: List[TransactionResult] = []
    notified: List[Dict[str, str]] = []
    with contextlib.ExitStack() as held:
        held.enter_context(engine.locks.shared_run())
        try:
            # The target held for the whole run, as remediate -H holds each host: the transactions'
            # own holds inside take nothing, and the restarts they ask for at the end run in it too.
            held.enter_context(engine.locks.target(target.key, engine.locks.resolve(target.key)))
        except KensaError as exc:
            rows = _busy_rows(planned, str(exc))
        else:
            results, rows = run_in_order(engine, planned, show_progress=not args.json, stop=getattr(args, "stop", None))
            notified = notify_rows(engine, target.key)
    journal_rules(args.journal, [p.transaction for p in planned if p.transaction is not None], ruleset.rules)
    rows += [{"rule": r.rule, "status": r.verdict.value, "detail": r.detail} for r in problem_rows(ruleset, target.key)]
    if args.json:
        json.dump({"target": target.root, "results": [result_dict(r) for r in results], "unsupported": rows,
                   "problems": _problems_json(ruleset), "notified": notified}, out, indent=2)
        out.write("\n")
    else:
        print_results(results, rows, out)
        print_notified(notified, out)
    not_run = any(row["status"] != Verdict.NOT_APPLICABLE.value for row in rows)
    code = exit_code_for(results, not_run)
    if code == 0 and any(row["status"] == "failed" for row in notified):
        code = 1
    return stopped_code(code if code == 3 or not ruleset.problems else 2, results, rows)


def _busy_rows(planned: List[Any], why: str) -> List[Dict[str, Any]]:
    """A row per planned rule when the target could not be locked: the ones that would run errored, saying why."""
    return [{"rule": p.rule.id, "status": "errored", "detail": why} if p.transaction is not None else
            {"rule": p.rule.id, "status": p.verdict.verdict.value, "detail": p.verdict.detail} for p in planned]


def dry_run_rows(planned: List[Any], host: Any) -> List[Dict[str, str]]:
    """What remediating ``planned`` (from plan_rules) on ``host`` would do, a row (rule, plan) per
    rule: would apply its steps, would skip it as compliant, or why it would not run. Reads only."""
    from kensa.handlers import default_registry
    from kensa.rules.assess import check_rule, observe

    facts, handlers = observe(host), default_registry()
    rows = []
    for item in planned:
        if item.transaction is None:
            rows.append({"rule": item.rule.id, "plan": f"{item.verdict.verdict.value}: {item.verdict.detail}"})
            continue
        found = check_rule(item.rule, host, handlers, host_key=item.transaction.host, facts=facts)
        if found.verdict is Verdict.COMPLIANT:
            plan = "compliant: would skip"
        elif found.verdict is Verdict.NOT_COMPLIANT:
            plan = "would apply: " + ", ".join(s.mechanism for s in item.transaction.steps)
        else:
            plan = f"would error: {found.detail}" if found.verdict is Verdict.ERROR else f"{found.verdict.value}: {found.detail}"
        rows.append({"rule": item.rule.id, "plan": plan})
    return rows


def _dry_run(args: argparse.Namespace, planned: List[Any], host: Any, out: TextIO, bad_files: bool) -> int:
    rows = dry_run_rows(planned, host)
    if args.json:
        json.dump({"dry_run": True, "rules": rows}, out, indent=2)
        out.write("\n")
    else:
        print_table([(r["rule"], r["plan"]) for r in rows], ("RULE", "PLAN"), out)
    return 2 if bad_files else 0
