"""``kensa check|remediate -H HOST[,HOST...]``: rules on remote hosts over OpenSSH.

Each host is reached with :class:`kensa.hosts.ssh.SshTransport` (one login,
channels after that) and driven by kensa's agent there
(:func:`kensa.hosts.remote.connect`), confined to ``--root`` on the target.
Hosts run ``--workers`` at a time; one host's faults (unreachable, login or
sudo refused, a changed host key, a timeout, a lost connection) fail only that
host's rules, as ``error`` or ``errored`` rows naming the host and the cause,
and the other hosts go on. Every result line names its host; the exit code is
the worst host's.

``rollback`` and ``recover`` reach the host a transaction ran on from its
journaled ``ssh://`` key; the login options (``-k``, ``--sudo``, ...) come from
their own command line.

The sudo password is read from stdin (``--sudo-password-stdin``, one line) or
from the terminal (``--ask-sudo-password``), never from an argument.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import posixpath
import re
import sys
import threading
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, TextIO, Tuple

from kensa.cli.exiting import EXIT_INTERRUPTED
from kensa.cli.plan import report_rule_problems
from kensa.cli.services import notify_rows, print_notified
from kensa.errors import KensaError, UsageError, WiringError
from kensa.model import CheckResult, RemoteTarget, TransactionResult, Verdict

__all__ = ["AGENT_START_SECONDS", "RemoteRun", "add_login_arguments", "add_target_arguments", "cmd_check_remote", "cmd_remediate_remote",
           "login", "parse_host", "remote_wanted", "ssh_options", "targets_from"]

#: Seconds the login, sudo and the agent's start may take beyond ``--connect-timeout``.
AGENT_START_SECONDS = 30.0

# [user@]host[:port], or [user@][v6-address][:port]
_HOST_SPEC = re.compile(r"(?:(?P<user>[^@]+)@)?(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:@]+))(?::(?P<port>\d+))?\Z")


def add_target_arguments(p: argparse.ArgumentParser) -> None:
    """-H/--inventory/--limit: which remote hosts check and remediate run on."""
    p.add_argument("-H", "--hosts", metavar="HOST[,HOST...]", action="append",
                   help="remote hosts over SSH ([user@]host[:port], comma-separated, repeatable)")
    p.add_argument("--inventory", metavar="FILE", help="remote hosts from an inventory file (INI or YAML)")
    p.add_argument("--limit", metavar="NAMES", help="with --inventory: only these hosts or groups")


def add_login_arguments(p: argparse.ArgumentParser) -> None:
    """How to log in to remote hosts (also for rollback and recover of their transactions)."""
    p.add_argument("-u", "--user", metavar="USER", help="remote login user (default: ssh's)")
    p.add_argument("-p", "--port", type=int, metavar="PORT", help="remote SSH port (default: ssh's)")
    p.add_argument("-k", "--key", metavar="KEYFILE", help="private key file to log in with")
    p.add_argument("--sudo", action="store_true", help="run kensa's agent as root with sudo on the hosts")
    p.add_argument("--sudo-password-stdin", action="store_true", help="read the sudo password from the first line of stdin (implies --sudo)")
    p.add_argument("--ask-sudo-password", action="store_true", help="prompt for the sudo password on the terminal (implies --sudo)")
    p.add_argument("--strict-host-keys", action="store_true", help="refuse hosts whose key is not already known")
    p.add_argument("--known-hosts", metavar="FILE", help="known_hosts file (default: ssh's)")
    p.add_argument("--ssh-config", metavar="FILE", help="ssh client config file (default: ssh's)")
    p.add_argument("--connect-timeout", type=_seconds, default=10.0, metavar="S",
                   help=f"seconds to reach a host (TCP and SSH banner; default 10); logging in and starting kensa's agent get {AGENT_START_SECONDS:g} s more")
    p.add_argument("--timeout", type=_seconds, default=300.0, metavar="S", help="seconds one operation on a host may take (default 300)")
    p.add_argument("--python", type=_python, metavar="PATH",
                   help="absolute path of the Python 3.6+ to run kensa's agent with on the hosts (default: the first "
                        "of python3, /usr/libexec/platform-python, python3.X found; an inventory's kensa_python or "
                        "ansible_python_interpreter wins)")
    p.add_argument("--no-agent-cache", action="store_true",
                   help="write nothing on the hosts: no compiled copy of kensa's agent in ~/.cache/kensa (it starts slower)")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value <= 86400:
        raise argparse.ArgumentTypeError(f"expected seconds above 0 and at most 86400, got {text[:40]!r}")
    return value


def _python(text: str) -> str:
    from kensa.hosts.payload import check_python

    try:
        return check_python(text, "--python")
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def remote_wanted(args: argparse.Namespace) -> bool:
    """True when the command names remote hosts (-H or --inventory)."""
    return bool(getattr(args, "hosts", None) or getattr(args, "inventory", None))


def parse_host(spec: str, user: Optional[str], port: Optional[int], root: str, key: Optional[str],
               python: Optional[str] = None) -> RemoteTarget:
    """One ``-H`` entry as a target; ``user``/``port`` fill in what the entry leaves out. Checked, never run."""
    from kensa.hosts.ssh import check_target

    match = _HOST_SPEC.match(spec.strip())
    if match is None:
        raise UsageError(f"-H {spec[:80]!r}: expected [user@]host[:port]")
    given_port = match.group("port")
    # One spelling per root, as the engine keys it: /srv/t/ and /srv/t are one target.
    root = "/" if posixpath.normpath(root) in ("/", "//") else posixpath.normpath(root)
    target = RemoteTarget(
        host=match.group("v6") or match.group("host"),
        user=match.group("user") or user,
        port=int(given_port) if given_port else port,
        root=root,
        identity_file=key,
        python=python,
    )
    check_target(target)
    return target


def targets_from(args: argparse.Namespace) -> List[Tuple[str, RemoteTarget]]:
    """(name, target) of every host -H and --inventory name, in order, each key once."""
    return [(name, target) for name, target, _ in hosts_from(args)]


def hosts_from(args: argparse.Namespace) -> List[Tuple[str, RemoteTarget, Tuple[str, ...]]]:
    """(name, target, inventory groups) of every host -H and --inventory name, in order, each key once."""
    root = args.root or "/"
    found: List[Tuple[str, RemoteTarget, Tuple[str, ...]]] = []
    for group in args.hosts or ():
        for spec in group.split(","):
            if spec.strip():
                target = parse_host(spec, args.user, args.port, root, args.key, getattr(args, "python", None))
                # Named by its host name (not user@host:port): that picks its variable file.
                found.append((target.host, target, ()))
    if args.inventory:
        found += _inventory_targets(args, root)
    elif args.limit:
        raise UsageError("--limit selects hosts of an --inventory; add --inventory FILE")
    if not found:
        raise UsageError("-H names no host")
    unique: Dict[str, Tuple[str, RemoteTarget, Tuple[str, ...]]] = {}
    for name, target, groups in found:
        unique.setdefault(target.key, (name, target, groups))
    return list(unique.values())


def _inventory_targets(args: argparse.Namespace, root: str) -> List[Tuple[str, RemoteTarget, Tuple[str, ...]]]:
    from kensa.hosts.ssh import check_target
    from kensa.inventory import load_inventory, select_hosts

    hosts = load_inventory(args.inventory)
    if args.limit:
        hosts = select_hosts(hosts, args.limit, args.inventory)
    found: List[Tuple[str, RemoteTarget, Tuple[str, ...]]] = []
    for entry in hosts:
        target = entry.target
        # The command line fills in what the inventory leaves out; a root the inventory sets wins.
        target = replace(
            target,
            user=target.user or args.user,
            port=target.port if target.port is not None else args.port,
            identity_file=target.identity_file or args.key,
            python=target.python or getattr(args, "python", None),
            root=target.root if target.root != "/" else root,
        )
        target = replace(target, root="/" if posixpath.normpath(target.root) in ("/", "//") else posixpath.normpath(target.root))
        check_target(target)
        found.append((entry.name, target, tuple(entry.groups)))
    return found


def ssh_options(args: argparse.Namespace, stdin: Optional[TextIO] = None) -> Any:
    """The :class:`~kensa.hosts.ssh.SshOptions` these arguments ask for (reads the sudo password)."""
    from kensa.hosts.ssh import SshOptions

    password: Optional[str] = None
    if args.sudo_password_stdin and args.ask_sudo_password:
        raise UsageError("--sudo-password-stdin and --ask-sudo-password: give one")
    if args.sudo_password_stdin:
        line = (stdin or sys.stdin).readline()
        if not line:
            raise UsageError("--sudo-password-stdin: stdin is empty; write the password as its first line")
        password = line[:-1] if line.endswith("\n") else line
    elif args.ask_sudo_password:
        if not sys.stdin.isatty():
            raise UsageError("--ask-sudo-password needs a terminal; use --sudo-password-stdin to pipe the password")
        password = getpass.getpass("sudo password for the remote hosts: ")
    options = SshOptions(
        sudo=bool(args.sudo or password is not None),
        sudo_password=password,
        strict_host_keys=args.strict_host_keys,
        known_hosts_file=args.known_hosts,
        ssh_config_file=args.ssh_config,
        connect_timeout=getattr(args, "connect_timeout", 10.0),
        operation_timeout=getattr(args, "timeout", 300.0),
    )
    return options


@dataclass
class RemoteRun:
    """The SSH transports and planning connections of one command; :meth:`close` ends them all.

    ``options`` (:class:`~kensa.hosts.ssh.SshOptions`) None: made from ``args``
    when the first transport is, so a command that reaches no remote host never
    reads a sudo password. Transports of one login share one control master.
    ``targets`` (key -> target) are the hosts as the command line and the
    inventory gave them: a connection made from a bare ``ssh://`` key (the
    engine's resolver) logs in with the identity file given there and runs
    the Python interpreter given there (else ``--python``).
    """

    options: Any
    key_file: Optional[str] = None
    args: Optional[argparse.Namespace] = None
    targets: Dict[str, RemoteTarget] = field(default_factory=dict)
    opened: List[Any] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    resolver: Any = None

    def transport(self, target: RemoteTarget) -> Any:
        """A new transport to ``target`` (one per connection); a journaled key gets ``-k`` as its identity file."""
        from kensa.hosts.ssh import SshTransport

        given = self.targets.get(target.key)
        if given is not None and target.identity_file is None:
            target = replace(target, identity_file=given.identity_file)
        if target.identity_file is None and self.key_file is not None:
            target = replace(target, identity_file=self.key_file)
        with self.lock:
            if self.options is None:
                assert self.args is not None
                self.options = ssh_options(self.args)
            made = SshTransport(target, self.options)
            self.opened.append(made)
            return made

    def python_for(self, target: RemoteTarget) -> Optional[str]:
        """The interpreter the agent on ``target`` runs: its own, the one given for its key, else ``--python``."""
        given = self.targets.get(target.key)
        found = target.python or (given.python if given is not None else None)
        return found or getattr(self.args, "python", None)

    def connect(self, target: RemoteTarget) -> Any:
        """A connected :class:`~kensa.hosts.remote.RemoteHost` of ``target``, named by its key
        (the one :meth:`connect_early` began, when it did)."""
        return self.hosts()(target.key)

    def hosts(self) -> Any:
        """The :class:`~kensa.hosts.remote.RemoteHosts` of this command (made on first use): the
        engine's resolver, and where :meth:`connect` gets its connections."""
        with self.lock:
            if self.resolver is None:
                try:
                    from kensa.hosts.remote import RemoteHosts
                except ImportError as exc:
                    raise WiringError(f"remote hosts need kensa.hosts.remote.RemoteHosts: {exc}; reinstall kensa") from exc

                options = self.engine_options()
                self.resolver = RemoteHosts(self.transport, connect_timeout=options["connect_timeout"],
                                            operation_timeout=options["operation_timeout"],
                                            agent_cache=options["agent_cache"], python_for=self.python_for)
            return self.resolver

    def release(self, target: RemoteTarget) -> None:
        """Close ``target``'s connection, the command being done with it (see RemoteHosts.release)."""
        with self.lock:
            resolver = self.resolver
        if resolver is not None:
            resolver.release(target.key)

    def connect_early(self, targets: Sequence[RemoteTarget], workers: int) -> None:
        """Begin logging in to the first ``workers`` of ``targets`` (the hosts the first workers take) and
        starting their agents, while the command loads its rules: see docs/remote.md. Reads the sudo
        password, if one is asked for."""
        self.hosts().connect_early([target.key for target in targets[:max(1, workers)]])

    def engine_options(self) -> Dict[str, Any]:
        """What :func:`kensa.factory.default_engine` needs to reach ``ssh://`` hosts this way.

        ``--connect-timeout`` bounds reaching the host (ssh's ConnectTimeout: TCP
        and the banner exchange); the login, sudo and the agent's start get
        :data:`AGENT_START_SECONDS` more.
        """
        args = self.args
        connect = getattr(args, "connect_timeout", 10.0) if args is not None else self.options.connect_timeout
        operation = getattr(args, "timeout", 300.0) if args is not None else self.options.operation_timeout
        cache = not getattr(args, "no_agent_cache", False)
        return {"remote": self.transport, "connect_timeout": connect + AGENT_START_SECONDS, "operation_timeout": operation,
                "agent_cache": cache, "python_for": self.python_for}

    def close(self) -> None:
        """End every connection (agents first, then the logins) and those still being made."""
        with self.lock:
            resolver, self.resolver = self.resolver, None
            opened, self.opened = self.opened, []
        if resolver is not None:
            resolver.close()
        for thing in reversed(opened):
            thing.close()


def _label(name: str, target: RemoteTarget) -> str:
    """How a host is named to the operator: its inventory name, else its login (``user@host:port``)."""
    if name != target.host:
        return name
    login = f"{target.user}@{target.host}" if target.user else target.host
    return f"{login}:{target.port}" if target.port is not None else login


def _per_host(hosts: Sequence[Any], workers: int, work: Callable[[Any], Any],
              stop: Optional[threading.Event] = None) -> List[Any]:
    """``work`` for every host entry, ``workers`` hosts at a time, in order.

    On Ctrl-C (KeyboardInterrupt, which only this thread gets) no further host starts, and the
    hosts in flight are waited for. Without ``stop`` the interrupt is then raised again. With it,
    ``stop`` is set first, for the work in flight to end early (after its current transaction),
    and the list is returned, None for each host that never started. A second Ctrl-C while
    waiting is raised at once.
    """
    # Imported here, once the logins have begun: concurrent.futures imports logging.
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(max_workers=max(1, min(workers, len(hosts))))
    futures = [pool.submit(work, host) for host in hosts]
    try:
        return [future.result() for future in futures]
    except KeyboardInterrupt:
        if stop is not None:
            stop.set()
        for future in futures:
            future.cancel()
        pool.shutdown(wait=True)
        if stop is None:
            raise
        return [None if future.cancelled() else future.result() for future in futures]
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
    run = _logging_in(args, hosts)
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
    run = _logging_in(args, hosts)
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


def cmd_remediate_remote(args: argparse.Namespace, out: TextIO, make_engine: Callable[..., Any],
                         exit_code_for: Callable[[Sequence[TransactionResult], bool], int]) -> int:
    """``kensa remediate RULES -H ...``: plan and remediate each host, ``--workers`` hosts at a time.

    Each host's rules run in dependency order, one transaction at a time; the
    hosts run in parallel. The engine's resolver makes the one connection per
    host that planning and the transactions share. ``make_engine(hosts=...)``
    builds the engine and ``exit_code_for`` rates the results (both from kensa.cli.main).
    """
    hosts = hosts_from(args)
    run = _logging_in(args, hosts)
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
    stop = threading.Event()  # Ctrl-C: no further transaction begins on any host

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

    try:
        found = _per_host(hosts, args.workers, remediate_host, stop)
        progress.finish()
    finally:
        run.close()
    for (_, target, _), host_run in zip(hosts, found):
        if host_run is None:
            failed[target.key] = "not run: the run was interrupted before this host began"
    found_per_host: List[_HostRun] = [host_run or (rule_sets[target.key], [], [], [])
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
    if stop.is_set():
        changed = len({result.host for result in results})
        sys.stderr.write(f"kensa: interrupted: no transaction began after Ctrl-C; {len(results)} ran, on {changed} of "
                         f"{len(hosts)} hosts, each to its end\n")
        return code if code == 3 else EXIT_INTERRUPTED
    return code if code == 3 or not bad_files else 2


def _logging_in(args: argparse.Namespace, hosts: Sequence[Tuple[str, RemoteTarget, Tuple[str, ...]]]) -> RemoteRun:
    """The command's :class:`RemoteRun`, its first ``--workers`` hosts already logging in.

    Called once the inventory and the command line are checked, rules included
    (:func:`kensa.cli.plan.check_rule_arguments`); the rules load while the logins
    run. The caller closes it on every way out.
    """
    from kensa.cli.plan import check_rule_arguments

    check_rule_arguments(args.rules, args.var, args.config_dir)
    run = RemoteRun(None, args.key, args=args, targets={t.key: t for _, t, _ in hosts})
    try:
        run.connect_early([target for _, target, _ in hosts], args.workers)
    except BaseException:
        run.close()
        raise
    return run


@contextlib.contextmanager
def login(args: argparse.Namespace) -> Iterator[RemoteRun]:
    """The transports rollback and recover reach journaled ``ssh://`` hosts with; closed at the end.

    The sudo password is read (from stdin or the terminal) only when a transport is first made.
    """
    run = RemoteRun(None, args.key, args=args)
    try:
        yield run
    finally:
        run.close()
