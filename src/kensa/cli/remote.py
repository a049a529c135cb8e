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
from the terminal (``--ask-sudo-password``), never from an argument. The
commands themselves are in :mod:`kensa.cli.fleet`.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import posixpath
import re
import sys
import threading
from dataclasses import dataclass, field, replace
from typing import Any, Dict, Iterator, List, Optional, Sequence, TextIO, Tuple

from kensa.errors import UsageError, WiringError
from kensa.model import RemoteTarget

__all__ = ["AGENT_START_SECONDS", "RemoteRun", "add_login_arguments", "add_target_arguments", "hosts_from", "logging_in",
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


def logging_in(args: argparse.Namespace, hosts: Sequence[Tuple[str, RemoteTarget, Tuple[str, ...]]]) -> RemoteRun:
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
