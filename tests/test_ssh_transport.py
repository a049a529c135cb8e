"""The OpenSSH transport against real sshd servers on loopback (tests/sshd.py).

The command it starts here is a small ``python3 -c`` program that prints a
ready line, as kensa's agent does.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, List

import pytest

from kensa.errors import HostAuthError, HostConnectionLost, HostKeyError, HostUnreachableError, RemoteTimeoutError, UsageError
from kensa.hosts.protocol import Transport
from kensa.hosts.ssh import SshOptions, SshTransport, check_target
from kensa.model import RemoteTarget
from sshd import cmdlines, descendants

READY = b"KENSA-TEST-READY"
# Prints junk, then the ready line, then its uid, argv and each line it reads back.
PROGRAM = textwrap.dedent(
    """
    import os, sys
    print("motd-like noise")
    print("KENSA-TEST-READY", flush=True)
    print(os.getuid(), repr(sys.argv[1:]), flush=True)
    for line in sys.stdin:
        print("echo", line.strip(), flush=True)
    """
)


def agent(*args: str) -> List[str]:
    return ["python3", "-c", PROGRAM, *args]


def transport(rig: Any, host: Any, tmp_path: Path, user: str = "root", **options: Any) -> SshTransport:
    options.setdefault("known_hosts_file", str(tmp_path / "known_hosts"))
    target = RemoteTarget("127.0.0.1", user, host.port, "/", str(rig.user_key))
    return SshTransport(target, SshOptions(**options))


def test_spawn_returns_after_the_ready_line_and_the_pipes_are_the_callers(sshd_rig: Any, sshd_host: Any, tmp_path: Path) -> None:
    """spawn skips what the remote side prints before the ready line, returns after it, and leaves stdin/stdout to the caller."""
    with transport(sshd_rig, sshd_host, tmp_path) as t:
        assert isinstance(t, Transport)
        proc = t.spawn(agent(), READY, 30)
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline() == b"0 []\n"
        proc.stdin.write(b"ping\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == b"echo ping\n"
        proc.stdin.close()
        assert proc.wait(30) == 0


def test_arguments_reach_the_target_exactly(sshd_rig: Any, sshd_host: Any, tmp_path: Path) -> None:
    """Arguments with spaces, quotes and shell characters arrive as they were given (shlex.join), and -- precedes the host."""
    args = ["a b", "it's", "$HOME", "`id`", ";", "*"]
    with transport(sshd_rig, sshd_host, tmp_path) as t:
        argv = t.ssh_argv(agent(*args))
        assert argv[argv.index("--") + 1] == "127.0.0.1"
        proc = t.spawn(agent(*args), READY, 30)
        assert proc.stdout is not None
        assert proc.stdout.readline().decode() == f"0 {args!r}\n"
        proc.kill()
        proc.wait()


def test_one_login_per_host_then_channels(sshd_rig: Any, sshd_host: Any, tmp_path: Path) -> None:
    """Three commands on one transport cost one login: the later ones are channels of the control master."""
    with transport(sshd_rig, sshd_host, tmp_path) as t:
        for _ in range(3):
            proc = t.spawn(agent(), READY, 30)
            assert proc.stdin is not None
            proc.stdin.close()
            assert proc.wait(30) == 0
        assert sshd_host.logins() == 1


def test_commands_started_together_share_one_login(sshd_rig: Any, sshd_host: Any, tmp_path: Path) -> None:
    """Four threads starting commands at once on a new transport: one logs in, the others use its master."""
    with transport(sshd_rig, sshd_host, tmp_path) as t:
        procs: List[Any] = []
        threads = [threading.Thread(target=lambda: procs.append(t.spawn(agent(), READY, 30))) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(procs) == 4
        for proc in procs:
            proc.stdin.close()
            assert proc.wait(30) == 0
        assert sshd_host.logins() == 1


def test_transports_that_log_in_alike_share_one_master(sshd_rig: Any, sshd_host: Any, tmp_path: Path) -> None:
    """Two transports of one login (say the planning and the engine's connection) share one master:
    one login; closing the first leaves the second working; closing the last ends the master."""
    first = transport(sshd_rig, sshd_host, tmp_path)
    second = transport(sshd_rig, sshd_host, tmp_path)
    first.spawn(agent(), READY, 30).kill()
    master = master_pid(first)
    first.close()
    assert pid_alive(master)
    proc = second.spawn(agent(), READY, 30)
    assert master_pid(second) == master and sshd_host.logins() == 1
    second.close()
    assert proc.wait(30) is not None and not pid_alive(master)


def test_a_transport_with_another_host_key_policy_logs_in_on_its_own(sshd_rig: Any, sshd_host: Any, tmp_path: Path) -> None:
    """A strict transport never rides on a master opened under accept-new: it is refused for the unknown key."""
    with transport(sshd_rig, sshd_host, tmp_path) as lenient:
        lenient.spawn(agent(), READY, 30).kill()
        with transport(sshd_rig, sshd_host, tmp_path, known_hosts_file=str(tmp_path / "other"), strict_host_keys=True) as strict:
            with pytest.raises(HostKeyError):
                strict.spawn(agent(), READY, 30)


def test_control_directory_is_private_and_removed_at_close(sshd_rig: Any, sshd_host: Any, tmp_path: Path) -> None:
    """The control socket lives in a 0700 directory of its own; close ends the master and removes the directory."""
    t = transport(sshd_rig, sshd_host, tmp_path)
    proc = t.spawn(agent(), READY, 30)
    directory = Path(t.control_dir)
    assert (directory.stat().st_mode & 0o777) == 0o700
    sockets = list(directory.iterdir())
    assert len(sockets) == 1 and sockets[0].is_socket()
    master = master_pid(t)
    t.close()
    assert proc.wait(30) is not None
    assert not directory.exists()
    assert not pid_alive(master)
    t.close()  # a second close does nothing


@pytest.mark.parametrize("ending", ["", "t.spawn(agent(), READY, 30).kill()\ndel t\ngc.collect()"],
                         ids=["left-open", "dropped-and-collected"])
def test_interpreter_exit_ends_the_master_and_removes_its_directory(sshd_rig: Any, sshd_host: Any, tmp_path: Path,
                                                                     ending: str) -> None:
    """A program that never calls close, whether it keeps the transport to the end or drops it (a
    failed connect's, say) and it is collected: at exit no control master or socket directory is left."""
    code = textwrap.dedent(
        f"""
        import gc, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_ssh_transport import agent, master_pid, READY
        from kensa.hosts.ssh import SshOptions, SshTransport
        from kensa.model import RemoteTarget
        t = SshTransport(RemoteTarget("127.0.0.1", "root", {sshd_host.port}, "/", {str(sshd_rig.user_key)!r}),
                         SshOptions(known_hosts_file={str(tmp_path / 'kh')!r}))
        t.spawn(agent(), READY, 30)
        print(t.control_dir, master_pid(t), flush=True)
        """
    ) + ending + "\n"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=os.environ)
    assert done.returncode == 0, done.stderr
    directory, pid = done.stdout.split()
    assert not os.path.exists(directory)
    assert not pid_alive(int(pid))


def test_a_forked_child_leaves_the_parents_master_alone(sshd_rig: Any, sshd_host: Any, tmp_path: Path) -> None:
    """A child forked from a process with an open transport exits (atexit handlers run) and the parent's master survives."""
    with transport(sshd_rig, sshd_host, tmp_path) as t:
        t.spawn(agent(), READY, 30).kill()
        master = master_pid(t)
        child = os.fork()
        if child == 0:
            from kensa.hosts import ssh

            ssh._close_all()
            t.close()
            os._exit(0)
        os.waitpid(child, 0)
        assert pid_alive(master)
        proc = t.spawn(agent(), READY, 30)
        proc.kill()
        proc.wait()
        assert sshd_host.logins() == 1


@pytest.mark.parametrize(
    "field, value",
    [
        ("host", "-oProxyCommand=touch {marker}"),
        ("host", "a b"),
        ("host", "a;touch {marker}"),
        ("host", "$(touch {marker})"),
        ("host", "a\nb"),
        ("host", ""),
        ("user", "-oProxyCommand=touch {marker}"),
        ("user", "root;touch {marker}"),
        ("user", "a b"),
        ("root", "relative/root"),
        ("root", "/a\nb"),
        ("port", 0),
        ("port", 70000),
    ],
)
def test_hostile_target_fields_are_refused_before_anything_runs(tmp_path: Path, field: str, value: Any) -> None:
    """A host or user that could be read as an ssh option or a shell command, a bad root or port: a UsageError naming it, and nothing ran."""
    marker = tmp_path / "ran"
    fields = {"host": "127.0.0.1", "user": "root", "port": 22, "root": "/"}
    fields[field] = value.format(marker=marker) if isinstance(value, str) else value
    with pytest.raises(UsageError) as caught:
        SshTransport(RemoteTarget(**fields))
    assert field in str(caught.value)
    assert not marker.exists()


@pytest.mark.parametrize("options", [
    SshOptions(extra_options=("ProxyCommand=sh -c x",)),
    SshOptions(known_hosts_file="/etc/kensa/known hosts"),
    SshOptions(sudo=True, sudo_password="line\nbreak"),
    SshOptions(connect_timeout=0),
])
def test_bad_options_are_refused(options: SshOptions) -> None:
    """An -o value with whitespace, a path ssh would split, a password of two lines, a zero timeout: refused up front."""
    with pytest.raises(UsageError):
        check_target(RemoteTarget("127.0.0.1"), options)


def test_unknown_host_key_is_accepted_and_remembered_by_default(sshd_rig: Any, sshd_host: Any, tmp_path: Path) -> None:
    """Without strict host keys a new host's key is written to the known_hosts file, and the command runs."""
    with transport(sshd_rig, sshd_host, tmp_path) as t:
        t.spawn(agent(), READY, 30).kill()
    assert sshd_host.known_hosts_line().split()[2] in (tmp_path / "known_hosts").read_text()


def test_strict_host_keys_refuse_an_unknown_host(sshd_rig: Any, sshd_host: Any, tmp_path: Path) -> None:
    """With strict host keys an unknown host is a HostKeyError naming the host; a known one works."""
    with transport(sshd_rig, sshd_host, tmp_path, strict_host_keys=True) as t:
        with pytest.raises(HostKeyError) as caught:
            t.spawn(agent(), READY, 30)
        assert f"127.0.0.1:{sshd_host.port}" in str(caught.value) and caught.value.host == t.name
    sshd_rig.known_hosts(tmp_path / "known_hosts", [sshd_host])
    with transport(sshd_rig, sshd_host, tmp_path, strict_host_keys=True) as t:
        t.spawn(agent(), READY, 30).kill()


def test_a_changed_host_key_is_an_error_naming_the_host(sshd_rig: Any, sshd_host: Any, tmp_path: Path) -> None:
    """After the host's key changed, even the default (accept-new) refuses it: HostKeyError naming the host and saying it differs."""
    with transport(sshd_rig, sshd_host, tmp_path) as t:
        t.spawn(agent(), READY, 30).kill()
    sshd_host.rekey()
    with transport(sshd_rig, sshd_host, tmp_path) as t:
        with pytest.raises(HostKeyError, match=f"127.0.0.1:{sshd_host.port}: the host's key differs"):
            t.spawn(agent(), READY, 30)


def test_a_refused_login_is_an_auth_error_naming_host_and_user(sshd_rig: Any, sshd_host: Any, tmp_path: Path) -> None:
    """A server that accepts no key for the user: HostAuthError naming the host and the user."""
    sshd_host.refuse_logins()
    with transport(sshd_rig, sshd_host, tmp_path) as t:
        with pytest.raises(HostAuthError, match=f"root@127.0.0.1:{sshd_host.port}: the host refused the login as root"):
            t.spawn(agent(), READY, 30)


def test_a_stopped_host_is_unreachable(sshd_rig: Any, sshd_host: Any, tmp_path: Path) -> None:
    """Nothing listening on the port: HostUnreachableError naming the host."""
    sshd_host.stop()
    with transport(sshd_rig, sshd_host, tmp_path) as t:
        with pytest.raises(HostUnreachableError, match=f"127.0.0.1:{sshd_host.port}: cannot connect"):
            t.spawn(agent(), READY, 30)


def test_a_host_that_never_answers_times_out_at_the_connect_timeout(sshd_rig: Any, tmp_path: Path) -> None:
    """A port that accepts TCP but never sends an SSH banner: HostUnreachableError saying it timed out."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    held: List[socket.socket] = []
    threading.Thread(target=lambda: held.append(server.accept()[0]), daemon=True).start()
    target = RemoteTarget("127.0.0.1", "root", server.getsockname()[1], "/", str(sshd_rig.user_key))
    try:
        with SshTransport(target, SshOptions(connect_timeout=1, known_hosts_file=str(tmp_path / "kh"))) as t:
            with pytest.raises(HostUnreachableError, match="timed out"):
                t.spawn(agent(), READY, 30)
    finally:
        server.close()
        for sock in held:
            sock.close()


def test_a_command_that_never_gets_ready_times_out_and_is_ended(sshd_rig: Any, sshd_host: Any, tmp_path: Path) -> None:
    """No ready line within the timeout: RemoteTimeoutError naming the host; the command, which
    reads its stdin as the agent does, sees it end and does not keep running."""
    mark = f"kensa-never-ready-{os.getpid()}"
    with transport(sshd_rig, sshd_host, tmp_path) as t:
        with pytest.raises(RemoteTimeoutError, match=f"127.0.0.1:{sshd_host.port}"):
            t.spawn(["python3", "-c", "import sys; sys.stdin.read()", mark], READY, 2)
        # The remote end notices once the master closed the channel: wait for that, not a fixed time.
        deadline = time.monotonic() + 30
        while [pid for pid, cmd in cmdlines() if mark in cmd] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [cmd for pid, cmd in cmdlines() if mark in cmd]


def test_a_command_that_fails_before_ready_reports_its_error(sshd_rig: Any, sshd_host: Any, tmp_path: Path) -> None:
    """A remote command that exits before its ready line: an error naming the host and showing its stderr."""
    with transport(sshd_rig, sshd_host, tmp_path) as t:
        with pytest.raises(Exception, match="no-such-kensa-command"):
            t.spawn(["no-such-kensa-command"], READY, 30)


def test_stderr_is_drained_after_ready(sshd_rig: Any, sshd_host: Any, tmp_path: Path) -> None:
    """A command writing far more than a pipe holds on stderr after its ready line does not block; its tail is kept."""
    code = "import sys; print('KENSA-TEST-READY', flush=True); sys.stderr.write('x' * 2000000 + 'END'); print('done', flush=True)"
    with transport(sshd_rig, sshd_host, tmp_path) as t:
        proc = t.spawn(["python3", "-c", code], READY, 30)
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"done\n"
        assert proc.wait(30) == 0
        assert t.stderr_tail(proc).endswith("END")


def test_the_stderr_tail_of_an_ended_command_holds_all_it_wrote(sshd_rig: Any, sshd_host: Any, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Once a command has ended, its stderr tail holds the very end of what it wrote (the message
    saying why it failed comes last), even when the thread draining stderr is behind (a loaded
    machine: here it is made to start late)."""
    import kensa.hosts.ssh as ssh_module

    drain = ssh_module._drain

    def late_drain(proc: Any, kept: Any) -> None:
        time.sleep(0.5)
        drain(proc, kept)

    monkeypatch.setattr(ssh_module, "_drain", late_drain)
    code = ("import sys, time; print('KENSA-TEST-READY', flush=True); time.sleep(0.2); "
            "sys.stderr.write('why it failed: END'); sys.exit(3)")
    with transport(sshd_rig, sshd_host, tmp_path) as t:
        proc = t.spawn(["python3", "-c", code], READY, 30)
        assert proc.wait(30) == 3
        assert t.stderr_tail(proc).endswith("why it failed: END")


def test_a_connection_cut_after_ready_is_reported_as_lost(sshd_rig: Any, sshd_host: Any, tmp_path: Path) -> None:
    """The server's side of the connection killed while the command runs: ssh ends with 255 and
    failure() names it HostConnectionLost, naming the host."""
    with transport(sshd_rig, sshd_host, tmp_path) as t:
        proc = t.spawn(agent(), READY, 30)
        for pid in descendants(sshd_host.proc.pid):
            os.kill(pid, signal.SIGKILL)
        code = proc.wait(30)
        error = t.failure(code, t.stderr_tail(proc))
        assert code == 255 and isinstance(error, HostConnectionLost), (code, error)
        assert error.host == t.name and str(error).startswith(f"root@127.0.0.1:{sshd_host.port}: ")


def test_sudo_without_a_password_runs_as_root(sshd_rig: Any, sshd_host: Any, tmp_path: Path) -> None:
    """Logged in as an unprivileged user with NOPASSWD sudo, the command runs as root (sudo -n)."""
    with transport(sshd_rig, sshd_host, tmp_path, user=sshd_rig.users["nopasswd"], sudo=True) as t:
        proc = t.spawn(agent(), READY, 30)
        assert proc.stdout is not None and proc.stdout.readline() == b"0 []\n"
        proc.kill()
        proc.wait()


def test_sudo_with_a_password_runs_as_root_and_the_password_is_in_no_argv(sshd_rig: Any, sshd_host: Any, tmp_path: Path) -> None:
    """The sudo password answers sudo's prompt on stdin: the command runs as root, and no process's
    command line (ssh, sshd, the shell, sudo, the command) holds the password while it runs."""
    password = sshd_rig.sudo_password
    with transport(sshd_rig, sshd_host, tmp_path, user=sshd_rig.users["password"], sudo=True, sudo_password=password) as t:
        assert password not in repr(t) and password not in repr(t.options)
        proc = t.spawn(agent("argv-probe"), READY, 30)
        assert proc.stdout is not None and proc.stdout.readline() == b"0 ['argv-probe']\n"
        running = cmdlines()
        assert [cmd for _, cmd in running if "argv-probe" in cmd and "sudo" in cmd], "the sudo process was not seen"
        assert [cmd for _, cmd in running if "argv-probe" in cmd and cmd.startswith("ssh")], "the ssh process was not seen"
        assert not [cmd for _, cmd in running if password in cmd]
        proc.kill()
        proc.wait()


def test_a_wrong_sudo_password_is_an_auth_error_without_the_password(sshd_rig: Any, sshd_host: Any, tmp_path: Path) -> None:
    """A wrong sudo password: HostAuthError naming the host; the message does not hold the password given."""
    wrong = "wrong-" + sshd_rig.sudo_password
    with transport(sshd_rig, sshd_host, tmp_path, user=sshd_rig.users["password"], sudo=True, sudo_password=wrong) as t:
        with pytest.raises(HostAuthError, match=f"127.0.0.1:{sshd_host.port}: sudo refused") as caught:
            t.spawn(agent(), READY, 30)
    assert wrong not in str(caught.value)


def test_sudo_that_needs_a_password_none_was_given_is_an_auth_error(sshd_rig: Any, sshd_host: Any, tmp_path: Path) -> None:
    """--sudo without a password for a user whose sudo asks for one: HostAuthError saying sudo refused (sudo -n never waits)."""
    with transport(sshd_rig, sshd_host, tmp_path, user=sshd_rig.users["password"], sudo=True) as t:
        with pytest.raises(HostAuthError, match="sudo refused .*password is required"):
            t.spawn(agent(), READY, 30)


def master_pid(t: SshTransport) -> int:
    """The pid of the transport's control master (ssh -O check)."""
    done = subprocess.run(t.ssh_argv(None, "-O", "check"), capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return int(done.stderr.split("pid=")[1].split(")")[0])


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
