"""The OpenSSH transport: the system ``ssh`` client with ControlMaster multiplexing.

kensa reaches a remote target with the distribution's own OpenSSH client, not
a Python SSH library: on RHEL that client is the FIPS-validated one and follows
the system crypto policy, and the operator's ``~/.ssh/config``, ProxyJump,
ssh-agent, FIDO/PKCS#11 keys and Kerberos work unchanged.

:class:`SshTransport` meets :class:`kensa.hosts.protocol.Transport`. The first
command it starts logs in once and leaves a control master
(``ControlMaster=auto``, ``ControlPersist``) whose socket lives in a private
0700 directory of this process; every later command is a channel of that one
connection, and so are the commands of other transports of this process that
log in alike (same host, user, port, key, config and host key policy: the
agent's client makes a transport per connection). The last of them to close
ends the master (``ssh -O exit``); the directory is removed when none is open,
and at interpreter exit (in the process that opened them, never in a forked
child).

Host keys: unknown keys are accepted and remembered (``accept-new``) by
default; with :attr:`SshOptions.strict_host_keys` they are refused. A key that
differs from the known one is always a :class:`~kensa.errors.HostKeyError`
naming the host. ``BatchMode=yes``: ssh never prompts.

sudo: with :attr:`SshOptions.sudo` the command runs under ``sudo -n``, or, when a
:attr:`SshOptions.sudo_password` is set, under ``sudo -S -p <random marker>``:
the transport waits for the marker on the command's stderr and writes the
password line to its stdin, so the password is never in an argument list (of
ssh, of sudo, of the remote shell), a message or a log.

Every name that ends up in ssh's argument list is checked before anything
runs: a host or user that starts with ``-`` or holds whitespace, control or
shell characters is refused (``-oProxyCommand=...`` as a host name is the
classic injection), and ``--`` always precedes the destination.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import os
import re
import secrets
import selectors
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass, field
from typing import Deque, Dict, Iterator, List, Optional, Sequence, Tuple

from kensa.errors import (
    AgentError,
    HostAuthError,
    HostConnectionLost,
    HostKeyError,
    HostUnreachableError,
    RemoteHostError,
    RemoteTimeoutError,
    UsageError,
)
from kensa.model import RemoteTarget
from kensa.hosts.payload import check_python
from kensa.hosts.sshmux import request_exit
from kensa.support.afterfork import reset_in_child

__all__ = ["SshOptions", "SshTransport", "check_target"]

# Host names, IPv4/IPv6 literals (with a %zone) and ssh_config aliases; nothing a
# shell or ssh's own option parser would read as more than a name.
_HOST = re.compile(r"[A-Za-z0-9_:][A-Za-z0-9_.:%-]*\Z")
_USER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\$?\Z")
# What an -o value may hold: ssh splits option values on whitespace and reads quotes.
_OPTION = re.compile(r"[A-Za-z][A-Za-z0-9]*=[^\s\"'\\]+\Z")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# A unix socket path has 108 bytes; ssh adds ".<16 random characters>" while binding.
_SOCKET_PATH_MAX = 107 - 17
_STDERR_KEPT = 64 * 1024

#: Seconds the stderr tail of an ended command waits for its draining thread to read the rest.
_DRAIN_GRACE = 2.0


@dataclass(frozen=True)
class SshOptions:
    """How :class:`SshTransport` logs in and runs commands.

    ``sudo``: run commands as root with ``sudo -n`` (or ``sudo -S`` when
    ``sudo_password`` is set; the password is left out of ``repr``).
    ``strict_host_keys``: refuse hosts whose key is not in known_hosts (default:
    accept and remember new keys; a changed key is refused either way).
    ``known_hosts_file``/``ssh_config_file``: instead of the user's defaults.
    ``connect_timeout``: seconds for the TCP connection and login;
    ``operation_timeout``: seconds one operation on the host may take (the
    agent's client reads it). ``ssh``: the client executable.
    ``extra_options``: further ``Key=Value`` options for ssh's ``-o``.
    ``control_persist``: seconds the master outlives its last channel (it is
    ended at :meth:`SshTransport.close` anyway; this bounds a crashed run's leftovers).
    """

    sudo: bool = False
    sudo_password: Optional[str] = field(default=None, repr=False)
    strict_host_keys: bool = False
    known_hosts_file: Optional[str] = None
    ssh_config_file: Optional[str] = None
    connect_timeout: float = 10.0
    operation_timeout: float = 300.0
    ssh: str = "ssh"
    extra_options: Tuple[str, ...] = ()
    control_persist: int = 60


def check_target(target: RemoteTarget, options: Optional[SshOptions] = None) -> None:
    """Refuse a target or options that could smuggle an argument or a command into ssh.

    Raises :class:`~kensa.errors.UsageError` naming the field; runs nothing.
    """
    if not _HOST.match(target.host):
        raise UsageError(
            f"remote host {target.host[:80]!r}: a host name or address may hold letters, digits and . _ - : % "
            "and may not start with '-'"
        )
    if target.user is not None and not _USER.match(target.user):
        raise UsageError(f"remote user {target.user[:80]!r} for {target.host}: a user name may hold letters, digits "
                         "and . _ - and may not start with '-'")
    if target.port is not None and not (isinstance(target.port, int) and 0 < target.port < 65536):
        raise UsageError(f"port {target.port!r} for {target.host}: expected 1 to 65535")
    if _CONTROL.search(target.root) or not target.root.startswith("/"):
        raise UsageError(f"root {target.root[:80]!r} on {target.host}: expected an absolute path without control characters")
    if target.python is not None:
        check_python(target.python, target.host)
    if target.identity_file is not None:
        _check_local_path("identity file", target.identity_file)
        if not os.path.isfile(target.identity_file):
            raise UsageError(f"identity file {target.identity_file}: no such file")
    if options is None:
        return
    for label, path in (("known hosts file", options.known_hosts_file), ("ssh config file", options.ssh_config_file)):
        if path is not None:
            _check_local_path(label, path)
            if re.search(r"[\s\"'\\]", path):
                raise UsageError(f"{label} {path!r}: a path with whitespace, quotes or backslashes cannot be given to ssh")
    if options.ssh_config_file is not None and not os.path.isfile(options.ssh_config_file):
        raise UsageError(f"ssh config file {options.ssh_config_file}: no such file")
    for option in options.extra_options:
        if not _OPTION.match(option):
            raise UsageError(f"ssh option {option[:80]!r}: expected Key=Value without whitespace or quotes")
    if options.sudo_password is not None and ("\n" in options.sudo_password or "\r" in options.sudo_password):
        raise UsageError("the sudo password holds a line break: sudo reads one line")
    for label, seconds in (("connect timeout", options.connect_timeout), ("timeout", options.operation_timeout)):
        if not 0 < seconds < 1e6:
            raise UsageError(f"{label} {seconds!r}: expected a number of seconds above 0")


def _check_local_path(label: str, path: str) -> None:
    if not path or _CONTROL.search(path):
        raise UsageError(f"{label} {path[:80]!r}: expected a path without control characters")


class SshTransport:
    """Commands on one :class:`~kensa.model.RemoteTarget` over one multiplexed OpenSSH connection."""

    def __init__(self, target: RemoteTarget, options: Optional[SshOptions] = None) -> None:
        self.target = target
        self.options = options if options is not None else SshOptions()
        check_target(target, self.options)
        if shutil.which(self.options.ssh) is None:
            raise UsageError(f"ssh client {self.options.ssh!r} not found: install openssh-client")
        self._lock = threading.Lock()
        self._owner = os.getpid()
        self._closed = False
        self._children: "weakref.WeakSet[subprocess.Popen[bytes]]" = weakref.WeakSet()
        self._stderr: "weakref.WeakKeyDictionary[subprocess.Popen[bytes], Deque[bytes]]" = weakref.WeakKeyDictionary()
        self._drains: "weakref.WeakKeyDictionary[subprocess.Popen[bytes], threading.Thread]" = weakref.WeakKeyDictionary()
        self._slot = _slot_of(target, self.options)
        self._control_dir = _MASTERS.acquire(self._slot)
        _OPEN.add(self)
        reset_in_child(self)

    @property
    def name(self) -> str:
        """``user@host:port`` (the parts given), as messages name the target."""
        user = f"{self.target.user}@" if self.target.user else ""
        port = f":{self.target.port}" if self.target.port is not None else ""
        return f"{user}{self.target.host}{port}"

    @property
    def control_dir(self) -> str:
        """The private directory of the control socket (removed when the last transport closes)."""
        return self._control_dir

    @property
    def control_path(self) -> str:
        """The control master's socket: shared by this process's transports with the same login."""
        return os.path.join(self._control_dir, self._slot)

    def ssh_argv(self, remote: Optional[Sequence[str]] = None, *control: str) -> List[str]:
        """ssh's argument list for running ``remote`` (quoted with :func:`shlex.join`) on the target.

        ``control`` are ssh options placed before the destination (``-O``, ``exit``).
        The sudo password is never part of it.
        """
        opts = self.options
        argv = [opts.ssh]
        if opts.ssh_config_file is not None:
            argv += ["-F", opts.ssh_config_file]
        # ssh keeps the first value it reads of an option: kensa's fixed ones come
        # first, then the operator's, then defaults the operator may override.
        fixed = [
            "BatchMode=yes",
            "ControlMaster=auto",
            f"ControlPath={self.control_path}",
            f"ControlPersist={max(1, int(opts.control_persist))}",
            f"StrictHostKeyChecking={'yes' if opts.strict_host_keys else 'accept-new'}",
        ]
        if opts.known_hosts_file is not None:
            fixed.append(f"UserKnownHostsFile={opts.known_hosts_file}")
        defaults = [f"ConnectTimeout={max(1, int(round(opts.connect_timeout)))}", "ServerAliveInterval=15",
                    "ServerAliveCountMax=4"]
        for option in (*fixed, *opts.extra_options, *defaults):
            argv += ["-o", option]
        if self.target.port is not None:
            argv += ["-p", str(self.target.port)]
        if self.target.user is not None:
            argv += ["-l", self.target.user]
        if self.target.identity_file is not None:
            argv += ["-i", self.target.identity_file]
        argv += [*control, "-T", "--", self.target.host]
        if remote is not None:
            argv.append(shlex.join(remote))
        return argv

    def remote_argv(self, argv: Sequence[str], marker: str = "") -> List[str]:
        """``argv`` as the target runs it: under sudo when the options say so."""
        if not self.options.sudo:
            return list(argv)
        if self.options.sudo_password is None:
            return ["sudo", "-n", "--", *argv]
        return ["sudo", "-S", "-p", marker, "--", *argv]

    def spawn(self, argv: Sequence[str], ready: bytes, timeout: float) -> "subprocess.Popen[bytes]":
        """Start ``argv`` on the target; return once it printed the line ``ready`` (see :class:`Transport`).

        Lines the remote shell prints before ``ready`` are skipped. From then on
        the transport drains the command's stderr in the background (its last
        64 KiB: :meth:`stderr_tail`), so the command never blocks on it. A
        command that is not ready in time is ended here; on the target it ends
        when it sees its stdin close (as the agent does): without a terminal,
        sshd sends it no hangup.
        """
        if self._closed:
            raise RemoteHostError(f"{self.name}: the connection was closed", host=self.name)
        if os.path.exists(self.control_path):
            return self._spawn(argv, ready, timeout)
        # The first command logs in and leaves the master; commands started
        # meanwhile wait for it rather than each log in on their own.
        with _MASTERS.first_login(self._slot):
            return self._spawn(argv, ready, timeout)

    def _spawn(self, argv: Sequence[str], ready: bytes, timeout: float) -> "subprocess.Popen[bytes]":
        marker = f"[kensa-sudo-{secrets.token_hex(8)}]"
        # Started and counted under the lock close() takes: a close from another thread (a
        # connection begun early, ended by ^C) either finds this process or prevents it.
        with self._lock:
            if self._closed:
                raise RemoteHostError(f"{self.name}: the connection was closed", host=self.name)
            proc = subprocess.Popen(
                self.ssh_argv(self.remote_argv(argv, marker)),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,  # a ^C to kensa must not kill the connection under a running step
            )
            self._children.add(proc)
        try:
            err = self._await_ready(proc, ready, marker, timeout)
        except BaseException:
            _end(proc)
            raise
        kept: Deque[bytes] = deque([err], maxlen=64)
        self._stderr[proc] = kept
        drain = threading.Thread(target=_drain, args=(proc, kept), name=f"kensa-ssh-stderr-{proc.pid}", daemon=True)
        self._drains[proc] = drain
        drain.start()
        return proc

    def _await_ready(self, proc: "subprocess.Popen[bytes]", ready: bytes, marker: str, timeout: float) -> bytes:
        assert proc.stdout is not None and proc.stderr is not None and proc.stdin is not None
        deadline = time.monotonic() + timeout
        line = b""
        err = b""
        prompts = 0
        password = self.options.sudo_password if self.options.sudo else None
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            sel.register(proc.stderr, selectors.EVENT_READ)
            while sel.get_map():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RemoteTimeoutError(
                        f"{self.name}: {argv_name(proc)} was not ready within {timeout:g} s "
                        f"(connect timeout {self.options.connect_timeout:g} s){_tail(err, password)}",
                        host=self.name,
                    )
                for key, _ in sel.select(left):
                    if key.fileobj is proc.stdout:
                        # One byte at a time: what follows the ready line belongs to the caller.
                        byte = os.read(proc.stdout.fileno(), 1)
                        if not byte:
                            sel.unregister(proc.stdout)
                        elif byte == b"\n":
                            if line.rstrip(b"\r") == ready.rstrip(b"\r\n"):
                                return err
                            line = b""
                        else:
                            line = (line + byte)[-4096:]
                        continue
                    chunk = os.read(proc.stderr.fileno(), 65536)
                    if not chunk:
                        sel.unregister(proc.stderr)
                        continue
                    err = (err + chunk)[-_STDERR_KEPT:]
                    if password is not None and marker.encode() in err:
                        # sudo asks again only when the password was wrong.
                        prompts += 1
                        err = err.replace(marker.encode(), b"")
                        if prompts > 1:
                            raise HostAuthError(f"{self.name}: sudo refused the sudo password", host=self.name)
                        try:
                            proc.stdin.write(password.encode() + b"\n")
                            proc.stdin.flush()
                        except BrokenPipeError:
                            pass  # the command ended: its exit status and stderr say why, below
        code = proc.wait()
        raise self.failure(code, err.decode("utf-8", "replace"), before_ready=True)

    def failure(self, returncode: Optional[int], stderr: str, before_ready: bool = False) -> RemoteHostError:
        """The error for a command (or ssh) that ended with ``returncode`` and wrote ``stderr``.

        For a caller whose command ended after it was ready (255: the connection was lost).
        """
        password = self.options.sudo_password
        text = _scrub(stderr, password)
        low = text.lower()
        tail = _tail(text.encode(), None)
        host = self.name
        known = self.options.known_hosts_file or "your known_hosts"
        if "identification has changed" in low or re.search(r"host key for .* has changed", low):
            return HostKeyError(
                f"{host}: the host's key differs from the one in {known}; it may be an impostor (or was "
                "reinstalled): verify the new key, then replace the old line", host=host)
        if "host key is known for" in low or "host key verification failed" in low:
            return HostKeyError(
                f"{host}: the host's key is not in {known} and strict host key checking is on: add the "
                "verified key first", host=host)
        if re.search(r"permission denied \(|too many authentication failures|no supported authentication", low):
            user = self.target.user or "the default user"
            return HostAuthError(f"{host}: the host refused the login as {user}{tail}", host=host)
        if "timed out" in low:
            return HostUnreachableError(
                f"{host}: connection timed out (connect timeout {self.options.connect_timeout:g} s){tail}", host=host)
        if re.search(r"could not resolve|connection refused|no route to host|network is unreachable|"
                     r"kex_exchange_identification|name or service not known", low):
            return HostUnreachableError(f"{host}: cannot connect{tail}", host=host)
        if re.search(r"sudo: .*(password is required|incorrect password|not in the sudoers|not allowed|"
                     r"a terminal is required)|sudo: \d+ incorrect", low):
            return HostAuthError(f"{host}: sudo refused to run kensa's agent{tail}", host=host)
        if returncode == 255:
            if before_ready:
                return HostUnreachableError(f"{host}: ssh failed{tail}", host=host)
            return HostConnectionLost(f"{host}: the connection ended{tail}", host=host)
        what = "before it was ready" if before_ready else "unexpectedly"
        return AgentError(f"{host}: the command ended {what} (exit status {returncode}){tail}", host=host)

    def stderr_tail(self, proc: "subprocess.Popen[bytes]") -> str:
        """The last output (up to 64 KiB) a spawned command wrote on stderr, the password scrubbed.
        Of a command that has ended, all it wrote: the draining thread is given up to
        :data:`_DRAIN_GRACE` seconds to read the rest (a child that kept the pipe open holds it no longer)."""
        drain = self._drains.get(proc)
        if drain is not None and proc.poll() is not None:
            drain.join(_DRAIN_GRACE)
        kept = self._stderr.get(proc)
        text = b"".join(kept).decode("utf-8", "replace") if kept else ""
        return _scrub(text, self.options.sudo_password)[-_STDERR_KEPT:]

    def close(self) -> None:
        """End the commands this transport started; the last transport of a login also ends
        the control master (``ssh -O exit``) and, the last of all, removes the socket directory."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        _OPEN.discard(self)
        if os.getpid() != self._owner:
            return
        for proc in list(self._children):
            _end(proc)
        with _MASTERS.releasing(self._slot) as last:
            # Asked over the socket, not by an `ssh -O exit` process (the same request, without an ssh start).
            if last and os.path.exists(self.control_path) and not request_exit(self.control_path):
                subprocess.run(self.ssh_argv(None, "-O", "exit"), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, timeout=30, check=False)

    def __enter__(self) -> "SshTransport":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _after_fork_in_child(self) -> None:
        # The master and the directory are the parent's: a child's exit must not end them.
        self._lock = threading.Lock()
        self._closed = True
        _OPEN.discard(self)

    def __repr__(self) -> str:
        return f"SshTransport({self.target.key!r}, {self.options!r})"


def argv_name(proc: "subprocess.Popen[bytes]") -> str:
    args = proc.args
    return "ssh" if not isinstance(args, (list, tuple)) or not args else os.path.basename(str(args[0]))


def _private_directory() -> str:
    """A fresh 0700 directory for control sockets, short enough for a socket path."""
    base = tempfile.gettempdir()
    if len(base) + 1 + 15 + 1 + 32 > _SOCKET_PATH_MAX:
        base = "/tmp"  # a long TMPDIR would make the socket path too long for bind()
    path = tempfile.mkdtemp(prefix="kensa-ssh-", dir=base)
    os.chmod(path, 0o700)
    return path


def _slot_of(target: RemoteTarget, options: SshOptions) -> str:
    """The socket name of a login: transports that log in alike share one master (never across roots'
    different keys, host key policies or configs)."""
    login = (target.host, target.user, target.port, target.identity_file, options.ssh, options.ssh_config_file,
             options.known_hosts_file, options.strict_host_keys, options.extra_options, options.connect_timeout)
    return hashlib.sha256(repr(login).encode()).hexdigest()[:32]


class _Masters:
    """This process's control masters: one private directory, a count of the open transports per login.

    A master ends when the last transport using it closes; the directory is
    removed when no transport is open. A forked child owns none of them.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users: Dict[str, int] = {}
        self._logins: Dict[str, threading.Lock] = {}
        self._dir: Optional[str] = None
        reset_in_child(self)

    def acquire(self, slot: str) -> str:
        with self._lock:
            if self._dir is None:
                self._dir = _private_directory()
            self._users[slot] = self._users.get(slot, 0) + 1
            self._logins.setdefault(slot, threading.Lock())
            return self._dir

    def first_login(self, slot: str) -> threading.Lock:
        with self._lock:
            return self._logins.setdefault(slot, threading.Lock())

    @contextlib.contextmanager
    def releasing(self, slot: str) -> Iterator[bool]:
        """Yields whether this was the slot's last user: the caller then ends its master, while no
        new transport can take the slot up; the directory goes with the last slot."""
        with self._lock:
            left = self._users.get(slot, 1) - 1
            if left > 0:
                self._users[slot] = left
            else:
                self._users.pop(slot, None)
            try:
                yield left <= 0
            finally:
                if not self._users and self._dir is not None:
                    shutil.rmtree(self._dir, ignore_errors=True)
                    self._dir = None

    def sweep(self) -> None:
        """At exit: end the masters of transports dropped without :meth:`SshTransport.close`, remove the directory."""
        with self._lock:
            directory, self._dir = self._dir, None
            self._users = {}
        if directory is None:
            return
        for name in os.listdir(directory):
            if request_exit(os.path.join(directory, name)):
                continue
            # A mux command needs only the socket; the destination is a placeholder.
            subprocess.run(["ssh", "-o", f"ControlPath={os.path.join(directory, name)}", "-O", "exit", "--", "kensa"],
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           timeout=30, check=False)
        shutil.rmtree(directory, ignore_errors=True)

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()
        self._users = {}
        self._logins = {}
        self._dir = None


_MASTERS = _Masters()


def _drain(proc: "subprocess.Popen[bytes]", kept: Deque[bytes]) -> None:
    assert proc.stderr is not None
    try:
        while True:
            chunk = os.read(proc.stderr.fileno(), 65536)
            if not chunk:
                return
            kept.append(chunk)
    except (OSError, ValueError):
        return  # the pipe was closed by the caller


def _end(proc: "subprocess.Popen[bytes]") -> None:
    if proc.poll() is None:
        proc.kill()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        pass


def _scrub(text: str, password: Optional[str]) -> str:
    return text.replace(password, "***") if password else text


def _tail(err: bytes, password: Optional[str]) -> str:
    """ssh's last lines worth showing (``Warning: Permanently added`` and banners left out), after ': '."""
    lines = [
        line.strip()
        for line in _scrub(err.decode("utf-8", "replace"), password).splitlines()
        if line.strip() and not line.startswith(("Warning: Permanently added", "@@@", "Could not chdir"))
    ]
    text = "; ".join(lines[-3:])
    return f": {text[-500:]}" if text else ""


_OPEN: "weakref.WeakSet[SshTransport]" = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for transport in list(_OPEN):
        try:
            transport.close()
        except Exception:  # noqa: BLE001 - exit goes on; the master ends by its ControlPersist anyway
            pass
    _MASTERS.sweep()
