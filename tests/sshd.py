"""A rig of real OpenSSH servers on loopback ports, standing for remote hosts.

:class:`SshdRig` (a context manager; needs root) makes a generated user key,
test users (``useradd``: one with NOPASSWD sudo, one whose sudo asks for
:attr:`SshdRig.sudo_password`, via one ``/etc/sudoers.d`` file), and starts
``sshd -D`` instances on free 127.0.0.1 ports, each with its own generated
ed25519 host key and its own config. Everything is removed at exit: the
servers stopped, the users deleted, the sudoers file unlinked.

Each :class:`Sshd` is one "host". Targets are confined roots on this same
machine (``RemoteTarget(..., root=<a directory>)``), so nothing reaches the
real /etc. A test can stop a host (:meth:`Sshd.stop`: connection refused),
make it refuse the key (:meth:`Sshd.refuse_logins`), or give it a new host key
(:meth:`Sshd.rekey`: a changed host key).

For many hosts (a fleet benchmark), both shapes work: N servers (``SshdRig(n=50)``;
each sshd costs a few MB and one port), or fewer servers with many roots each,
since a target is host, port, user *and* root. The servers allow 200
concurrent sessions and unauthenticated connections, so one server takes a
fleet's connections too.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from benchmarks.sshrig import SSHD, free_port, keygen, start_sshd, stop_sshd

SUDOERS_DIR = Path("/etc/sudoers.d")


def missing_components() -> Optional[str]:
    """Why the rig cannot run here (None when it can)."""
    if os.geteuid() != 0:
        return "the sshd rig needs root (it starts sshd and adds test users)"
    for tool in (SSHD, shutil.which("ssh"), shutil.which("ssh-keygen"), shutil.which("sudo"), shutil.which("useradd")):
        if tool is None or not os.path.exists(tool):
            return "the sshd rig needs openssh-server, openssh-client, sudo and useradd"
    return None




def _locked(argv: List[str]) -> None:
    """Run a shadow-utils command, retrying while another process holds /etc/passwd's lock."""
    for attempt in range(50):
        done = subprocess.run(argv, capture_output=True, text=True)
        if done.returncode == 0:
            return
        if "lock" not in done.stderr or attempt == 49:
            raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip()}")
        time.sleep(0.1)


class Sshd:
    """One sshd process on 127.0.0.1: a host of the rig."""

    def __init__(self, rig: "SshdRig", name: str) -> None:
        self.rig = rig
        self.name = name
        self.dir = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=rig.dir))
        self.host_key = self.dir / "host_ed25519"
        keygen(self.host_key)
        self.port = free_port()
        self.accepting = True
        self.proc: Optional["subprocess.Popen[bytes]"] = None

    def config(self) -> Path:
        keys = self.rig.dir / ("authorized_keys" if self.accepting else "no_keys") / "%u"
        path = self.dir / "sshd_config"
        path.write_text(
            f"Port {self.port}\n"
            "ListenAddress 127.0.0.1\n"
            f"HostKey {self.host_key}\n"
            f"PidFile {self.dir / 'sshd.pid'}\n"
            f"AuthorizedKeysFile {keys}\n"
            # The rig lives in the world-writable temp directory: skip sshd's path-ownership walk.
            "StrictModes no\n"
            "UsePAM no\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            "PubkeyAuthentication yes\n"
            "PermitRootLogin prohibit-password\n"
            f"AllowUsers root {' '.join(self.rig.users.values())}\n"
            "MaxStartups 200\n"
            "MaxSessions 200\n"
            "LogLevel VERBOSE\n"
        )
        return path

    def start(self) -> None:
        """Start (or restart) sshd and wait until it sends its banner."""
        self.stop()
        config = self.config()
        for _ in range(5):
            self.proc = start_sshd(config, self.port, self.dir / "sshd.log")
            if self.proc is not None:
                return
            self.port = free_port()  # someone else took the port between probe and bind
            config = self.config()
        raise RuntimeError(f"sshd {self.name} did not start: {(self.dir / 'sshd.log').read_text()[-2000:]}")

    def stop(self) -> None:
        """Stop the server: new connections to its port are refused."""
        stop_sshd(self.proc)
        self.proc = None

    def refuse_logins(self, refuse: bool = True) -> None:
        """Restart so that no key is authorized (``refuse=False`` puts the keys back)."""
        self.accepting = not refuse
        self.start()

    def rekey(self) -> None:
        """A new host key, and a restart: a client that knew the old key sees it changed."""
        self.host_key.unlink()
        Path(f"{self.host_key}.pub").unlink()
        keygen(self.host_key)
        self.start()

    def logins(self) -> int:
        """How many logins this server accepted since it started first."""
        return (self.dir / "sshd.log").read_text(errors="replace").count("Accepted publickey")

    def remove(self) -> None:
        """Stop the server and drop it from the rig."""
        self.stop()
        self.rig.hosts.remove(self)

    def known_hosts_line(self) -> str:
        """This server's entry for a known_hosts file."""
        key = Path(f"{self.host_key}.pub").read_text().split()
        return f"[127.0.0.1]:{self.port} {key[0]} {key[1]}\n"


class SshdRig:
    """N real sshd servers, a user key and test users; a context manager (needs root)."""

    #: The password the ``sudo_password`` user's sudo asks for.
    sudo_password: str

    def __init__(self, n: int = 1) -> None:
        self.n = n
        self.hosts: List[Sshd] = []
        self.users: Dict[str, str] = {}
        self.sudoers: Optional[Path] = None

    def __enter__(self) -> "SshdRig":
        why = missing_components()
        if why is not None:
            raise RuntimeError(why)
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation directory
        self.dir = Path(tempfile.mkdtemp(prefix="kensa-sshd-"))
        os.chmod(self.dir, 0o755)  # the test users' sshd children read their keys here
        try:
            self._setup()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _setup(self) -> None:
        self.user_key = self.dir / "user_ed25519"
        keygen(self.user_key)
        tag = secrets.token_hex(3)
        self.users = {"nopasswd": f"kensa-np-{tag}", "password": f"kensa-pw-{tag}", "plain": f"kensa-pl-{tag}"}
        self.sudo_password = "pw-" + secrets.token_urlsafe(12)
        (self.dir / "home").mkdir()
        (self.dir / "authorized_keys").mkdir()
        (self.dir / "no_keys").mkdir()
        public = Path(f"{self.user_key}.pub").read_text()
        (self.dir / "authorized_keys" / "root").write_text(public)
        for role, user in self.users.items():
            _locked(["useradd", "-M", "-d", str(self.dir / "home" / user), "-s", "/bin/sh", user])
            (self.dir / "authorized_keys" / user).write_text(public)
            home = self.dir / "home" / user
            home.mkdir()
            shutil.chown(home, user, user)
            # sshd without PAM refuses every login to a locked ("!") account: give each a password.
            secret = self.sudo_password if role == "password" else secrets.token_urlsafe(16)
            chpasswd = subprocess.run(["chpasswd"], input=f"{user}:{secret}\n", text=True, capture_output=True)
            if chpasswd.returncode != 0:
                raise RuntimeError(f"chpasswd {user}: {chpasswd.stderr.strip()}")
        self.sudoers = SUDOERS_DIR / f"kensa-test-{tag}"
        text = (
            f"{self.users['nopasswd']} ALL=(root) NOPASSWD: ALL\n"
            f"{self.users['password']} ALL=(root) ALL\n"
            f"Defaults:{self.users['password']} timestamp_timeout=0, lecture=never\n"
        )
        fd = os.open(self.sudoers, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o440)
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        check = subprocess.run(["visudo", "-cf", str(self.sudoers)], capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"sudoers file refused: {check.stdout}{check.stderr}")
        for index in range(self.n):
            self.add_host(f"host{index}")

    def add_host(self, name: str) -> Sshd:
        """One more running server."""
        host = Sshd(self, name)
        host.start()
        self.hosts.append(host)
        return host

    def root(self, name: str, owner: Optional[str] = None) -> Path:
        """A fresh target root directory (owned by ``owner``, a test user, when given)."""
        path = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.dir))
        os.chmod(path, 0o755)
        if owner is not None:
            shutil.chown(path, owner, owner)
        return path

    def known_hosts(self, path: Path, hosts: Optional[List[Sshd]] = None) -> Path:
        """Write a known_hosts file holding ``hosts`` (default: all of them)."""
        path.write_text("".join(h.known_hosts_line() for h in (self.hosts if hosts is None else hosts)))
        return path

    def __exit__(self, *exc: object) -> None:
        for host in self.hosts:
            host.stop()
        for user in self.users.values():
            _kill_processes_of(user)
            try:
                _locked(["userdel", user])
            except RuntimeError:
                pass  # no such user: setup failed before adding it
        if self.sudoers is not None:
            with_missing_ok(self.sudoers)
        shutil.rmtree(self.dir, ignore_errors=True)


def _proc_files(name: str) -> List[Tuple[int, bytes]]:
    """(pid, bytes of /proc/PID/<name>) of every process now running."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                found.append((int(entry), Path(f"/proc/{entry}/{name}").read_bytes()))
            except OSError:
                continue  # it ended meanwhile
    return found


def cmdlines() -> List[Tuple[int, str]]:
    """(pid, command line with spaces) of every process now running."""
    return [(pid, raw.replace(b"\0", b" ").decode("utf-8", "replace")) for pid, raw in _proc_files("cmdline")]


def descendants(pid: int) -> List[int]:
    """Every process below ``pid`` (an sshd's: the sessions, shells and agents it started)."""
    children: Dict[int, List[int]] = {}
    for child, stat in _proc_files("stat"):
        children.setdefault(int(stat.rsplit(b")", 1)[1].split()[1]), []).append(child)
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _kill_processes_of(user: str) -> None:
    """SIGKILL each process (by pid) still running as a test user, so userdel can remove it."""
    import pwd

    try:
        uid = pwd.getpwnam(user).pw_uid
    except KeyError:
        return
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    os.kill(int(entry), signal.SIGKILL)
            except OSError:
                pass  # it ended meanwhile


def with_missing_ok(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
