"""Loopback sshd servers for the fleet benchmark: the same servers for every tool.

:class:`Rig` (a context manager; needs root, openssh-server and -client)
generates a client key and ``servers`` sshd instances on free 127.0.0.1
ports, each with its own host key, all accepting root with that key; a
private known_hosts file lists them, so no tool is asked about a host key and
nothing of the operator's ssh setup is touched. Hosts are (server, root
directory) pairs: several hosts share one server, each confined to its own
directory, which is what kensa's ``kensa_root`` and the peers' paths under
the root point at. Everything is stopped and removed at exit.

**Root's home on the servers.** Every command a tool runs over SSH is started
by root's login shell, and bash run by sshd reads ``~/.bashrc``. A tool that
opens a session per command (Ansible per task, pyinfra per command) pays that
per command; kensa pays it once per host. This machine's ``/root/.bashrc``
starts pyenv (about 190 ms of CPU per session), which a target host does not.
By default (``login_home="fresh"``) each sshd runs in a private mount
namespace where root's home is a fresh directory holding Debian's default
dotfiles for root (``/usr/share/base-files/dot.bashrc`` and ``dot.profile``),
as on a newly installed host; ``login_home="machine"`` keeps this machine's.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import List, Optional, Type

SSHD = "/usr/sbin/sshd"

#: Debian's default dotfiles for root (base-files), else the ones for new users.
_DOTFILES = {".bashrc": ("/usr/share/base-files/dot.bashrc", "/etc/skel/.bashrc"),
             ".profile": ("/usr/share/base-files/dot.profile", "/etc/skel/.profile")}

LOGIN_HOMES = ("fresh", "machine")


def missing() -> Optional[str]:
    """Why the rig cannot run here (None when it can)."""
    if os.geteuid() != 0:
        return "the sshd rig needs root"
    for tool in (SSHD, shutil.which("ssh"), shutil.which("ssh-keygen")):
        if tool is None or not os.path.exists(tool):
            return "the sshd rig needs openssh-server and openssh-client"
    return None


def free_port() -> int:
    """A loopback port free now (another process may take it before sshd binds it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def keygen(path: Path) -> None:
    """An ed25519 key pair without a passphrase at ``path`` and ``path``.pub."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True, stdin=subprocess.DEVNULL)


def fresh_home(directory: Path) -> Path:
    """``directory`` made a home like a newly installed host's root's: its default dotfiles only."""
    directory.mkdir(mode=0o700)
    for name, candidates in _DOTFILES.items():
        source = next((path for path in candidates if os.path.isfile(path)), None)
        if source is None:
            raise RuntimeError(f"no default {name} for root's fresh home (looked for {', '.join(candidates)})")
        shutil.copyfile(source, directory / name)
    return directory


def start_sshd(config: Path, port: int, log: Path, home: Optional[Path] = None) -> "Optional[subprocess.Popen[bytes]]":
    """``sshd -D`` with ``config`` (listening on ``port``), logging to ``log``; the process once it
    sends its banner, or None (stopped) when it exits or stays silent for 10 s. With ``home``,
    sshd runs in a private mount namespace where root's home directory is ``home``."""
    argv = [SSHD, "-D", "-e", "-f", str(config)]
    if home is not None:
        # unshare and sh exec in turn, so the process started is sshd itself.
        argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                'mount --bind "$0" "$1" && shift && exec "$@"', str(home), pwd.getpwuid(0).pw_dir] + argv
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                if sock.recv(64).startswith(b"SSH-"):
                    return proc
        except OSError:
            time.sleep(0.05)
    stop_sshd(proc)
    return None


def stop_sshd(proc: "Optional[subprocess.Popen[bytes]]") -> None:
    """Stop a server started by :func:`start_sshd`: TERM, then KILL after 10 s."""
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Server:
    """One sshd on 127.0.0.1."""

    def __init__(self, base: Path, index: int, authorized: Path, home: Optional[Path] = None) -> None:
        self.home = home
        self.dir = base / f"sshd{index}"
        self.dir.mkdir()
        self.host_key = self.dir / "host_ed25519"
        keygen(self.host_key)
        self.authorized = authorized
        self.port = 0
        self.proc: Optional["subprocess.Popen[bytes]"] = None

    def start(self) -> None:
        for _ in range(5):
            self.port = free_port()
            config = self.dir / "sshd_config"
            config.write_text(
                f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {self.host_key}\n"
                f"PidFile {self.dir / 'sshd.pid'}\nAuthorizedKeysFile {self.authorized}\n"
                "StrictModes no\nUsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
                "PermitRootLogin prohibit-password\nMaxStartups 500\nMaxSessions 500\nLogLevel ERROR\n"
                "Subsystem sftp internal-sftp\n"
            )
            self.proc = start_sshd(config, self.port, self.dir / "sshd.log", self.home)
            if self.proc is not None:
                return
        raise RuntimeError(f"sshd did not start: {(self.dir / 'sshd.log').read_text()[-2000:]}")

    def stop(self) -> None:
        stop_sshd(self.proc)
        self.proc = None

    def known_hosts_line(self) -> str:
        kind, key = Path(f"{self.host_key}.pub").read_text().split()[:2]
        return f"[127.0.0.1]:{self.port} {kind} {key}\n"


class Rig:
    """``servers`` loopback sshd instances, a client key and a private known_hosts file;
    ``login_home`` is root's home on the servers (see the module docstring)."""

    def __init__(self, servers: int, base: Optional[str] = None, login_home: str = "fresh") -> None:
        if login_home not in LOGIN_HOMES:
            raise ValueError(f"login_home {login_home!r}: expected one of {', '.join(LOGIN_HOMES)}")
        self.count = servers
        self.base_dir = base
        self.login_home = login_home
        self.servers: List[Server] = []

    def __enter__(self) -> "Rig":
        why = missing()
        if why is not None:
            raise RuntimeError(why)
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        self.dir = Path(tempfile.mkdtemp(prefix="kensa-fleet-sshd-", dir=self.base_dir))
        try:
            self.key = self.dir / "client_ed25519"
            keygen(self.key)
            authorized = self.dir / "authorized_keys"
            shutil.copyfile(f"{self.key}.pub", authorized)
            home = None
            if self.login_home == "fresh":
                root_home = os.path.realpath(pwd.getpwuid(0).pw_dir)
                if os.path.realpath(self.dir).startswith(root_home.rstrip("/") + "/"):
                    raise RuntimeError(f"the rig's directory {self.dir} is under root's home {root_home}, which the "
                                       "servers replace with a fresh one: put it elsewhere (or use the machine's home)")
                home = fresh_home(self.dir / "root-home")
            for index in range(self.count):
                server = Server(self.dir, index, authorized, home)
                server.start()
                self.servers.append(server)
            self.known_hosts = self.dir / "known_hosts"
            self.known_hosts.write_text("".join(server.known_hosts_line() for server in self.servers))
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def ssh_options(self) -> List[str]:
        """The ``-o`` options every tool's ssh gets: this rig's known hosts, nothing interactive."""
        return [f"UserKnownHostsFile={self.known_hosts}", "StrictHostKeyChecking=yes", "BatchMode=yes"]

    def __exit__(
        self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        for server in self.servers:
            server.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
