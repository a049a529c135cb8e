"""``kensa report``: a check or remediation run, reported as OSCAL assessment-results, JSON, JSON Lines or CSV.

``--framework`` and ``--control`` select the rules to run by the references
they carry. Rules are decided as ``kensa check`` and ``kensa remediate``
decide them (variables, platforms, ``when`` gates, dependencies, the rule's own
check): a rule that does not apply to the target is reported ``not_applicable``;
one kensa cannot carry out, ``unsupported``. Without ``--remediate`` nothing is changed. Exit codes are
those of ``kensa check`` (0 when every rule run is compliant or not
applicable) or, with ``--remediate``, of ``kensa remediate``.
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime, timezone
from typing import Any, Callable, Dict, Iterable, List, TextIO

from kensa.errors import UsageError
from kensa.model import CheckResult, TransactionResult, Verdict

__all__ = ["cmd_report", "register"]

FORMATS = ("oscal", "json", "jsonl", "csv")


def cmd_report(args: argparse.Namespace, out: TextIO) -> int:
    """Run the selected rules (check, or ``--remediate``) and write the report in ``--format``."""
    from kensa.cli.checking import check_code, conflict_lines, load_for_target, problem_rows, run_in_order
    from kensa.cli.exiting import NOT_RUN, stopped_code
    from kensa.cli.rulejournal import journal_rules
    from kensa.evidence.oscal import assessment_results
    from kensa.evidence.select import select_rules
    from kensa.evidence.tabular import outcome_row, render_rows
    from kensa.handlers import default_registry
    from kensa.rules.assess import check_rules, plan_rules

    target, host, ruleset = load_for_target(args)
    rules = select_rules(ruleset.rules, args.framework or (), args.control or ())
    if not rules:
        filters = [f"--framework {f}" for f in args.framework or ()] + [f"--control {c}" for c in args.control or ()]
        raise UsageError(
            f"report: no rule references {' '.join(filters)}; nothing was run" if filters
            else "report: the rule files given hold no rule; nothing was run"
        )
    # Rules are decided over the whole rule set (a selected rule's dependency need not
    # reference the framework); the selection says only which are run and reported.
    selected = {rule.id for rule in rules}
    start = datetime.now(timezone.utc)
    results: List[Any] = []
    outcomes: List[CheckResult] = [o for o in problem_rows(ruleset, target.key) if o.rule in selected]
    if args.remediate:
        resolution, planned = plan_rules(ruleset.rules, host, host_key=target.key)
        if resolution.conflicts and not args.allow_conflicts:
            raise UsageError(f"the selected rules conflict: {conflict_lines(resolution.conflicts)}; nothing was "
                             "changed: leave one of each pair out, or pass --allow-conflicts")
        chosen = [p for p in planned if p.rule.id in selected]
        needed = {d for p in chosen for d in p.rule.depends_on} - selected
        held = {}
        if needed:
            checked = check_rules(ruleset.rules, host, default_registry(), host_key=target.key)
            held = {r.rule: r.verdict is Verdict.COMPLIANT for r in checked if r.rule in needed}
        # The engine and exit codes of kensa remediate (given by the command that registered this one).
        results, rows = run_in_order(args.make_engine(args), chosen, show_progress=False, held=held,
                                     stop=getattr(args, "stop", None))
        # A rule Ctrl-C kept from running has no verdict: the report says it errored, and why.
        outcomes += [CheckResult(row["rule"], target.key, Verdict.ERROR if row["status"] == NOT_RUN else Verdict(row["status"]),
                                 row["detail"]) for row in rows]
        journal_rules(args.journal, [p.transaction for p in chosen if p.transaction is not None], rules)
        code = args.remediation_exit_code(results, any(o.verdict is not Verdict.NOT_APPLICABLE for o in outcomes))
        if ruleset.problems:
            code = 2
        code = stopped_code(code, results, rows)
    else:
        results = [r for r in check_rules(ruleset.rules, host, default_registry(), host_key=target.key) if r.rule in selected]
        code = 2 if ruleset.problems else check_code([*results, *outcomes], False)
    end = datetime.now(timezone.utc)
    everything = [*results, *outcomes]
    by_id: Dict[str, Any] = {rule.id: rule for rule in rules}
    kind = "remediation" if args.remediate else "check"
    if args.format == "oscal":
        document = assessment_results(
            everything, by_id, title=f"kensa {kind} of {target.key}",
            description=f"kensa {kind} run of {len(rules)} rule(s) on {target.key}.", start=start, end=end,
        )
        text = json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    else:
        run = {"kind": kind, "target": target.key, "start": start.isoformat(), "end": end.isoformat(),
               "framework": list(args.framework or ()), "control": list(args.control or ())}
        text = render_rows([outcome_row(o, by_id) for o in everything], args.format, run)
    if args.output:
        try:
            with open(args.output, "w", encoding="utf-8") as handle:
                handle.write(text)
        except OSError as exc:
            raise UsageError(f"report --output {args.output}: cannot write it: {exc.strerror or exc}") from None
    else:
        out.write(text)
    return int(code)


def register(
    sub: Any,
    make_engine: Callable[[argparse.Namespace], Any],
    remediation_exit_code: Callable[[Iterable[TransactionResult], bool], int],
) -> None:
    """Add ``report`` to the command's subparsers.

    ``make_engine(args)`` and ``remediation_exit_code(results, not_run)`` are
    those of ``kensa remediate``, so that ``--remediate`` runs the same engine
    and exits the same way.
    """
    from kensa.cli.checking import add_rule_options

    p = sub.add_parser("report", help="run rules (check, or --remediate) and report: OSCAL, JSON, JSON Lines or CSV")
    p.add_argument("rules", nargs="+", metavar="RULES", help="rule files or directories")
    p.add_argument("--format", choices=FORMATS, default="json", help="report format (default: json)")
    p.add_argument("--framework", action="append", metavar="NAME", help="only rules referencing this framework (cis, stig, nist_800_53, ...; repeatable)")
    p.add_argument("--control", action="append", metavar="ID", help="only rules referencing this control id (repeatable)")
    p.add_argument("--remediate", action="store_true", help="remediate as 'kensa remediate' does, then report; default: check only")
    p.add_argument("--root", metavar="DIR", help="target root (default: /)")
    p.add_argument("--output", metavar="FILE", help="write the report here instead of to stdout")
    add_rule_options(p, remediate=True)
    p.set_defaults(func=cmd_report, make_engine=make_engine, remediation_exit_code=remediation_exit_code)
