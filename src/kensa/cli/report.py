"""``kensa report``: a check or remediation run, reported as OSCAL assessment-results, JSON, JSON Lines or CSV.

``--framework`` and ``--control`` select the rules to run by the references
they carry. A rule whose ``when`` gates all fail on the target (and that has
no default) is reported ``not_applicable``; one kensa cannot carry out,
``unsupported``. Without ``--remediate`` nothing is changed. Exit codes are
those of ``kensa check`` (0 when every rule run is compliant or not
applicable) or, with ``--remediate``, of ``kensa remediate``.
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime, timezone
from typing import Any, Callable, Dict, Iterable, List, Sequence, TextIO, Tuple

from kensa.errors import KensaError, UsageError
from kensa.model import CheckResult, Transaction, TransactionResult, Verdict

__all__ = ["cmd_report", "register"]

FORMATS = ("oscal", "json", "jsonl", "csv")


def _applicable(rules: Sequence[Any], caps: Any, host_key: str) -> Tuple[List[Tuple[Any, Any]], List[CheckResult]]:
    """(rule, implementation) for the rules that can run here, and the verdicts of those that cannot."""
    runnable, verdicts = [], []
    for rule in rules:
        impl = rule.select_implementation(caps)
        if impl is None:
            verdicts.append(CheckResult(rule.id, host_key, Verdict.NOT_APPLICABLE, "no implementation's when gate holds on this host"))
        elif not impl.supported:
            verdicts.append(CheckResult(rule.id, host_key, Verdict.UNSUPPORTED, impl.unsupported_reason))
        else:
            runnable.append((rule, impl))
    return runnable, verdicts


def _checked(runnable: Sequence[Tuple[Any, Any]], host: Any, host_key: str) -> List[CheckResult]:
    from kensa.checks import compliance
    from kensa.handlers import default_registry

    handlers = default_registry()
    results = []
    for rule, impl in runnable:
        try:
            found = compliance(impl, host, handlers)
            verdict = Verdict.COMPLIANT if found.compliant else Verdict.NOT_COMPLIANT
            results.append(CheckResult(rule.id, host_key, verdict, found.detail))
        except KensaError as exc:
            results.append(CheckResult(rule.id, host_key, Verdict.ERROR, str(exc)))
    return results


def cmd_report(args: argparse.Namespace, out: TextIO) -> int:
    """Run the selected rules (check, or ``--remediate``) and write the report in ``--format``."""
    from kensa.cli.evidence import journal_rules
    from kensa.cli.plan import detect_capabilities, load, target_for
    from kensa.evidence.oscal import assessment_results
    from kensa.evidence.select import select_rules
    from kensa.evidence.tabular import outcome_row, render_rows
    from kensa.hosts.local import LocalHost

    target = target_for(args.root)
    rules = select_rules(load(args.rules), args.framework or (), args.control or ())
    if not rules:
        filters = [f"--framework {f}" for f in args.framework or ()] + [f"--control {c}" for c in args.control or ()]
        raise UsageError(
            f"report: no rule references {' '.join(filters)}; nothing was run" if filters
            else "report: the rule files given hold no rule; nothing was run"
        )
    host = LocalHost(target.root)
    runnable, outcomes = _applicable(rules, detect_capabilities(host), target.key)
    start = datetime.now(timezone.utc)
    results: List[Any] = []
    if args.remediate:
        txns: List[Transaction] = [rule.to_transaction(target.key, impl) for rule, impl in runnable]
        # The engine and exit codes of kensa remediate (given by the command that registered this one).
        results = args.run_remediation(args, txns)
        journal_rules(args.journal, txns, [rule for rule, _ in runnable])
        code = args.remediation_exit_code(results, any(o.verdict is Verdict.UNSUPPORTED for o in outcomes))
    else:
        results = _checked(runnable, host, target.key)
        code = 0 if all(r.verdict in (Verdict.COMPLIANT, Verdict.NOT_APPLICABLE) for r in [*results, *outcomes]) else 1
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
    run_remediation: Callable[[argparse.Namespace, List[Transaction]], List[TransactionResult]],
    remediation_exit_code: Callable[[Iterable[TransactionResult], bool], int],
) -> None:
    """Add ``report`` to the command's subparsers.

    ``run_remediation(args, txns)`` and ``remediation_exit_code(results,
    unsupported)`` are those of ``kensa remediate``, so that ``--remediate``
    runs the same engine and exits the same way.
    """
    p = sub.add_parser("report", help="run rules (check, or --remediate) and report: OSCAL, JSON, JSON Lines or CSV")
    p.add_argument("rules", nargs="+", metavar="RULES", help="rule files or directories")
    p.add_argument("--format", choices=FORMATS, default="json", help="report format (default: json)")
    p.add_argument("--framework", action="append", metavar="NAME", help="only rules referencing this framework (cis, stig, nist_800_53, ...; repeatable)")
    p.add_argument("--control", action="append", metavar="ID", help="only rules referencing this control id (repeatable)")
    p.add_argument("--remediate", action="store_true", help="remediate as 'kensa remediate' does, then report; default: check only")
    p.add_argument("--root", metavar="DIR", help="target root (default: /)")
    p.add_argument("--output", metavar="FILE", help="write the report here instead of to stdout")
    p.set_defaults(func=cmd_report, run_remediation=run_remediation, remediation_exit_code=remediation_exit_code)
