"""``kensa check|remediate RULES -H HOST[,HOST...]``: the commands that work on a fleet.

Each host's entry comes from :mod:`kensa.cli.remote` (the command line and the
inventory), and so do the logins (:func:`kensa.cli.remote.logging_in`). Hosts
run ``--workers`` at a time (:func:`_per_host`); one host's faults fail only
that host's rules, and the other hosts go on. Ctrl-C on ``remediate``, once the
hosts are under way, begins no further transaction on any host
(:class:`kensa.cli.exiting.Stop`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import threading
from typing import Any, Callable, Dict, List, Optional, Sequence, TextIO, Tuple

from kensa.cli.exiting import NOT_RUN, Stop, stopped_code
from kensa.cli.plan import report_rule_problems
from kensa.cli.remote import hosts_from, logging_in
from kensa.cli.services import notify_rows, print_notified
from kensa.errors import KensaError
from kensa.model import CheckResult, RemoteTarget, TransactionResult, Verdict

__all__ = ["cmd_check_remote", "cmd_dry_run_remote", "cmd_remediate_remote"]


def _label(name: str, target: RemoteTarget) -> str:
    """How a host is named to the operator: its inventory name, else its login (``user@host:port``)."""
    if name != target.host:
        return name
    login = f"{target.user}@{target.host}" if target.user else target.host
    return f"{login}:{target.port}" if target.port is not None else login


def _per_host(hosts: Sequence[Any], workers: int, work: Callable[[Any], Any],
              stop: Optional[Stop] = None) -> List[Any]:
    """``work`` for every host entry, ``workers`` hosts at a time, in order.

    On Ctrl-C (KeyboardInterrupt, which only this thread gets) no further host starts. Without
    ``stop`` (read-only work) the interrupt is raised again (the process still ends only after the
    hosts in flight finish their reads). With it, ``stop`` is set, for the work in flight to end after
    its current transaction; that is waited for (a further Ctrl-C only says so), and the list is
    returned, None for each host that never started. Any other error sets ``stop`` too and cancels
    the hosts not started.
    """
    # Imported here, once the logins have begun: concurrent.futures imports logging.
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(max_workers=max(1, min(workers, len(hosts))))
    futures = [pool.submit(work, host) for host in hosts]
    try:
        return [future.result() for future in futures]
    except KeyboardInterrupt:
        if stop is not None and not stop.is_set():  # else the command's Ctrl-C handler said so
            stop.set()
            sys.stderr.write("kensa: stopping: no further transaction begins; waiting for those running to end "
                             "(a process killed now leaves them to 'kensa recover')\n")
        for future in futures:
            future.cancel()
        if stop is None:
            raise  # read-only work: nothing to finish
        while True:
            try:
                pool.shutdown(wait=True)
                break
            except KeyboardInterrupt:
                sys.stderr.write("kensa: still waiting for the transactions running to end (a process killed "
                                 "now leaves them to 'kensa recover')\n")
        return [None if future.cancelled() else future.result() for future in futures]
    except BaseException:
        # One host's error ends the command: the hosts not started yet never start, and those in
        # flight begin no further transaction.
        if stop is not None:
            stop.set()
        for future in futures:
            future.cancel()
        raise
    finally:
        pool.shutdown(wait=True)


class _RuleSets:
    """The rules as they read for each host: its inventory name and groups pick its variable files.

    Without ``--config-dir`` every host reads the same variables (``--var``), so
    the rule files are loaded once for the whole fleet instead of once per host.
    """

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.loaded: Dict[Tuple[str, Tuple[str, ...]], Any] = {}
        self.lock = threading.Lock()

    def __call__(self, name: str, groups: Tuple[str, ...]) -> Any:
        from kensa.cli.plan import load_rule_set_for

        args = self.args
        key = (name, groups) if args.config_dir else ("", ())
        with self.lock:
            if key not in self.loaded:
                self.loaded[key] = load_rule_set_for(args.rules, args.var, args.config_dir, host_name=name, groups=groups)
            return self.loaded[key]


def cmd_check_remote(args: argparse.Namespace, out: TextIO) -> int:
    """``kensa check RULES -H ...``: each rule's verdict on each host, grouped per host."""
    hosts = hosts_from(args)
    run = logging_in(args, hosts)
    try:
        from kensa.cli.checking import check_code, problem_rows
        from kensa.handlers import default_registry
        from kensa.rules.assess import check_rules

        handlers = default_registry()
        rule_set = _RuleSets(args)
        # Every host's rules load before any host is read: a bad variable file stops the
        # command with nothing checked, never part-way through the fleet.
        rule_sets = {target.key: rule_set(name, groups) for name, target, groups in hosts}
    except BaseException:
        run.close()
        raise

    def check_host(entry: Tuple[str, RemoteTarget, Tuple[str, ...]]) -> Tuple[Any, List[CheckResult]]:
        _, target, _ = entry
        ruleset = rule_sets[target.key]
        try:
            host = run.connect(target)
            found = check_rules(ruleset.rules, host, handlers, host_key=target.key)
        except KensaError as exc:
            # Unreachable, or lost while checking: every rule of this host is an error naming why.
            found = [CheckResult(rule.id, target.key, Verdict.ERROR, str(exc)) for rule in ruleset.rules]
        finally:
            run.release(target)
        return ruleset, found + problem_rows(ruleset, target.key)

    try:
        per_host = _per_host(hosts, args.workers, check_host)
    finally:
        run.close()
    bad_files = report_rule_problems([ruleset for ruleset, _ in per_host])
    rows = [row for _, host_rows in per_host for row in host_rows]
    if args.json:
        json.dump({"hosts": [{"host": t.key, "name": name, "rules": [
            {"rule": r.rule, "verdict": r.verdict.value, "check": r.check, "implementation": r.implementation,
             "detail": r.detail, "source": r.source} for r in host_rows]}
            for (name, t, _), (_, host_rows) in zip(hosts, per_host)]}, out, indent=2)
        out.write("\n")
    else:
        from kensa.cli.render import print_table

        print_table([(r.host, r.rule, r.verdict.value, r.check, r.detail) for r in rows],
                    ("HOST", "RULE", "VERDICT", "CHECK", "DETAIL"), out)
    return check_code(rows, bad_files)


def cmd_dry_run_remote(args: argparse.Namespace, out: TextIO) -> int:
    """``kensa remediate RULES -H ... --dry-run``: what each host's remediation would do.

    Each host is reached and planned as ``remediate`` would, then read only: no journal is
    written, no lock taken, nothing changed. A host that cannot be reached or planned
    gets an error row per rule naming why, and the exit code 1.
    """
    hosts = hosts_from(args)
    run = logging_in(args, hosts)
    try:
        from kensa.cli.checking import conflict_lines, dry_run_rows
        from kensa.rules.assess import plan_rules

        rule_set = _RuleSets(args)
        rule_sets = {target.key: rule_set(name, groups) for name, target, groups in hosts}
    except BaseException:
        run.close()
        raise
    failed: List[str] = []

    def plan_host(entry: Tuple[str, RemoteTarget, Tuple[str, ...]]) -> List[Dict[str, str]]:
        _, target, _ = entry
        rules = rule_sets[target.key].rules
        try:
            host = run.connect(target)
            resolution, planned = plan_rules(rules, host, host_key=target.key)
            if resolution.conflicts and not args.allow_conflicts:
                why = f"the selected rules conflict: {conflict_lines(resolution.conflicts)} (pass --allow-conflicts)"
                failed.append(target.key)
                return [{"rule": rule.id, "plan": f"would not run: {why}"} for rule in rules]
            return dry_run_rows(planned, host)
        except KensaError as exc:
            failed.append(target.key)
            return [{"rule": rule.id, "plan": f"error: {exc}"} for rule in rules]
        finally:
            run.release(target)

    try:
        per_host = _per_host(hosts, args.workers, plan_host)
    finally:
        run.close()
    bad_files = report_rule_problems(list(rule_sets.values()))
    if args.json:
        json.dump({"dry_run": True, "hosts": [{"host": t.key, "name": name, "rules": rows}
                                              for (name, t, _), rows in zip(hosts, per_host)]}, out, indent=2)
        out.write("\n")
    else:
        from kensa.cli.render import print_table

        print_table([(t.key, row["rule"], row["plan"]) for (_, t, _), rows in zip(hosts, per_host) for row in rows],
                    ("HOST", "RULE", "PLAN"), out)
    return 2 if bad_files else 1 if failed else 0


#: One host's remediation: its rule set, results, rows of rules not run, and notified actions.
_HostRun = Tuple[Any, List[TransactionResult], List[Dict[str, Any]], List[Dict[str, str]]]


def _not_begun(ruleset: Any, key: str) -> _HostRun:
    """The remediation of a host Ctrl-C kept from starting: a not_run row per rule."""
    detail = "not run: the run was interrupted before this host began"
    return ruleset, [], [{"rule": rule.id, "status": NOT_RUN, "detail": detail, "host": key} for rule in ruleset.rules], []


def cmd_remediate_remote(args: argparse.Namespace, out: TextIO, make_engine: Callable[..., Any],
                         exit_code_for: Callable[[Sequence[TransactionResult], bool], int]) -> int:
    """``kensa remediate RULES -H ...``: plan and remediate each host, ``--workers`` hosts at a time.

    Each host's rules run in dependency order, one transaction at a time; the
    hosts run in parallel. The engine's resolver makes the one connection per
    host that planning and the transactions share. ``make_engine(hosts=...)``
    builds the engine and ``exit_code_for`` rates the results (both from kensa.cli.main).
    """
    hosts = hosts_from(args)
    run = logging_in(args, hosts)
    try:
        from kensa.cli.checking import conflict_lines, problem_rows, run_in_order
        from kensa.cli.render import Progress
        from kensa.cli.rulejournal import journal_rules
        from kensa.rules.assess import plan_rules

        rule_set = _RuleSets(args)
        # Every host's rules load before any host is changed: a bad variable file stops the
        # command with nothing changed, never after some hosts were remediated.
        rule_sets = {target.key: rule_set(name, groups) for name, target, groups in hosts}
        engine = make_engine(hosts=run.hosts())
    except BaseException:
        run.close()
        raise
    failed: Dict[str, str] = {}
    # Hosts finish in any order: the bar counts hosts done, each named with its outcome.
    progress = Progress(len(hosts) if not args.json else 0, sys.stderr)
    # Ctrl-C: no further transaction begins on any host (set by main's handler, or by _per_host).
    stop: Stop = getattr(args, "stop", None) or Stop()

    def remediate_host(entry: Tuple[str, RemoteTarget, Tuple[str, ...]]) -> Optional[_HostRun]:
        name, target, _ = entry
        if stop.is_set():
            return None
        try:
            found = _remediate_host(target)
        finally:
            # Its transactions and restarts are done, its lock released: a fleet keeps only the
            # hosts in flight connected.
            run.release(target)
        progress.advance(f"{_label(name, target)} {'failed' if target.key in failed else 'done'}")
        return found

    def _remediate_host(target: RemoteTarget) -> _HostRun:
        ruleset = rule_sets[target.key]
        try:
            host = engine.hosts(target.key)
            resolution, planned = plan_rules(ruleset.rules, host, host_key=target.key)
        except KensaError as exc:
            failed[target.key] = str(exc)
            return ruleset, [], [], []
        if resolution.conflicts and not args.allow_conflicts:
            failed[target.key] = (f"the selected rules conflict: {conflict_lines(resolution.conflicts)}; nothing was "
                                  "changed on this host (pass --allow-conflicts to run them anyway)")
            return ruleset, [], [], []
        if stop.is_set():  # Ctrl-C while this host logged in and was planned: nothing of it began
            return _not_begun(ruleset, target.key)
        with contextlib.ExitStack() as held:
            # The journal's run lock first, as each transaction takes it: a recovery waits for the run.
            held.enter_context(engine.locks.shared_run())
            try:
                # The locks each transaction takes (the controller's, then the target's own, in
                # that order), once for all of them: their own holds inside cost nothing, where
                # each would lock and unlock the target in two round trips.
                held.enter_context(engine.locks.target(target.key, host))
            except KensaError as exc:
                failed[target.key] = str(exc)
                return ruleset, [], [], []
            results, rows = run_in_order(engine, planned, show_progress=False, read_ahead=True, stop=stop)
            # The restarts the transactions asked for at the end, still inside the hold: no other
            # kensa run changes the host between its last transaction and its services' restart.
            notified = notify_rows(engine, target.key)
        journal_rules(args.journal, [p.transaction for p in planned if p.transaction is not None], ruleset.rules)
        rows += [{"rule": r.rule, "status": r.verdict.value, "detail": r.detail} for r in problem_rows(ruleset, target.key)]
        return ruleset, results, [dict(row, host=target.key) for row in rows], notified

    stop.arm()  # from here a Ctrl-C lets the hosts in flight end their transaction
    try:
        found = _per_host(hosts, args.workers, remediate_host, stop)
        progress.finish()
    finally:
        run.close()
    found_per_host: List[_HostRun] = [host_run or _not_begun(rule_sets[target.key], target.key)
                                      for (_, target, _), host_run in zip(hosts, found)]
    per_host = [(ruleset, results, rows) for ruleset, results, rows, _ in found_per_host]
    notified = [row for _, _, _, host_rows in found_per_host for row in host_rows]
    bad_files = report_rule_problems([ruleset for ruleset, _, _ in per_host])
    results = [r for _, host_results, _ in per_host for r in host_results]
    unsupported = [row for _, _, host_rows in per_host for row in host_rows]
    by_host: Dict[str, List[TransactionResult]] = {}
    for result in results:
        by_host.setdefault(result.host, []).append(result)
    targets = [(name, target) for name, target, _ in hosts]
    rules_of = {t.key: ruleset.rules for (_, t, _), (ruleset, _, _) in zip(hosts, per_host)}
    if args.json:
        from kensa.cli.render import result_dict

        json.dump({"hosts": [{"host": t.key, "name": name, "error": failed.get(t.key),
                              "results": [result_dict(r) for r in by_host.get(t.key, [])],
                              "unsupported": [u for u in unsupported if u["host"] == t.key]}
                             for name, t in targets], "notified": notified}, out, indent=2)
        out.write("\n")
    else:
        from kensa.cli.render import print_remote_remediation

        print_remote_remediation(targets, rules_of, by_host, failed, unsupported, out)
        print_notified(notified, out)
    not_run = any(row["status"] != Verdict.NOT_APPLICABLE.value for row in unsupported)
    code = exit_code_for(results, not_run)
    if failed or any(row["status"] == "failed" for row in notified):
        code = max(code, 1)
    return stopped_code(code if code == 3 or not bad_files else 2, results, unsupported, len(hosts))
