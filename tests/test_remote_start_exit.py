"""A remote command's fixed costs: it logs in to its first hosts while the rules load, ends without
the interpreter's teardown, and leaves nothing behind either way.

Real sshd servers (tests/sshd.py), real ssh clients and agents. Each test gives
kensa a private temporary directory, so the ssh control directory of its run
(and every ssh client or master of it, whose command line names that
directory) can be found and shown gone afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional, Sequence, TypeVar

import pytest

from conftest import snapshot_tree
from kensa.cli import plan
from kensa.cli.main import EXIT_BAD_INPUT, EXIT_OK
from kensa.hosts.processes import SubprocessTransport
from kensa.hosts.remote import RemoteHosts
from kensa.model import RemoteTarget
from sshd import cmdlines, descendants
from test_ssh_e2e import host_arg, kensa_cli, login, make_root, rules_dir

T = TypeVar("T")
SRC = Path(__file__).resolve().parent.parent / "src"


def _eventually(found: Callable[[], T], seconds: float = 30.0) -> T:
    """``found()`` once it is truthy, or its last value after ``seconds`` (a bound, never a verdict on speed)."""
    deadline = time.monotonic() + seconds
    value = found()
    while not value and time.monotonic() < deadline:
        time.sleep(0.02)
        value = found()
    return value


def _mentioning(text: str) -> List[int]:
    """Pids of the processes (ssh clients and masters) whose command line holds ``text``."""
    return [pid for pid, line in cmdlines() if text in line and pid != os.getpid()]


@pytest.fixture
def private_tmp(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A short private directory this process's tempfile (and so its ssh control directory) uses."""
    path = tempfile.mkdtemp(prefix="ke-", dir="/tmp")
    monkeypatch.setattr(tempfile, "tempdir", path)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _inventory(path: Path, hosts: Sequence[Any], roots: Sequence[Path]) -> str:
    lines = ["[web]"] + [f"h{index} ansible_host=127.0.0.1 ansible_port={host.port} ansible_user=root kensa_root={root}"
                         for index, (host, root) in enumerate(zip(hosts, roots))]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_remediate_logs_in_to_the_first_workers_hosts_while_its_rules_load(
        sshd_rig: Any, tmp_path: Path, private_tmp: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """remediate --inventory of three hosts with --workers 2: while the rules are being loaded, an ssh
    login of this run is already under way, and exactly the first two hosts were begun early; the
    run then commits every rule on every host and leaves no ssh process or control directory."""
    hosts = [sshd_rig.add_host("early") for _ in range(3)]
    try:
        roots = [make_root(sshd_rig, "early") for _ in hosts]
        inventory = _inventory(tmp_path / "hosts.ini", hosts, roots)
        begun: List[List[str]] = []
        logging_in: List[List[int]] = []
        connect_early = RemoteHosts.connect_early
        load_rule_set_for = plan.load_rule_set_for

        def recording(resolver: RemoteHosts, keys: Sequence[str]) -> None:
            begun.append(list(keys))
            connect_early(resolver, keys)

        def loading(*args: Any, **kwargs: Any) -> Any:
            # The rules wait here until an ssh of this run shows up (or 30 s pass: then there is none).
            logging_in.append(_eventually(lambda: _mentioning(private_tmp)))
            return load_rule_set_for(*args, **kwargs)

        monkeypatch.setattr(RemoteHosts, "connect_early", recording)
        monkeypatch.setattr(plan, "load_rule_set_for", loading)
        code, out = kensa_cli("--journal", str(tmp_path / "j.db"), "--no-audit", "remediate", rules_dir(tmp_path),
                              "--inventory", inventory, "--workers", "2", *login(sshd_rig, tmp_path), "--json")
        assert code == EXIT_OK, out
        assert logging_in and logging_in[0], "no ssh login of this run had begun when the rules loaded"
        assert begun == [[RemoteTarget("127.0.0.1", "root", host.port, str(root)).key
                          for host, root in zip(hosts[:2], roots[:2])]]
        statuses = [[r["status"] for r in h["results"]] for h in json.loads(out)["hosts"]]
        assert statuses == [["committed", "committed"]] * 3, out
        assert _mentioning(private_tmp) == [] and os.listdir(private_tmp) == []
    finally:
        for host in hosts:
            host.remove()


@pytest.mark.parametrize("command", ["remediate", "check", "dry-run"])
def test_a_fleet_run_keeps_no_more_hosts_connected_than_it_has_in_flight(
        sshd_rig: Any, tmp_path: Path, private_tmp: str, monkeypatch: pytest.MonkeyPatch, command: str) -> None:
    """Four hosts with --workers 1: each host's connection (its agent and ssh master) is closed once
    the command is done with that host, so no more than one is ever open, however large the fleet;
    every host still gets its rules."""
    hosts = [sshd_rig.add_host("inflight") for _ in range(4)]
    try:
        roots = [make_root(sshd_rig, "inflight") for _ in hosts]
        inventory = _inventory(tmp_path / "hosts.ini", hosts, roots)
        open_counts: List[int] = []
        connect = RemoteHosts._connect

        def counting(resolver: RemoteHosts, target: RemoteTarget, transport: Any) -> Any:
            host = connect(resolver, target, transport)
            open_counts.append(sum(1 for kept in resolver._hosts.values() if kept.alive))
            return host

        monkeypatch.setattr(RemoteHosts, "_connect", counting)
        verb = ["remediate", "--dry-run"] if command == "dry-run" else [command]
        code, out = kensa_cli("--journal", str(tmp_path / "j.db"), "--no-audit", verb[0], rules_dir(tmp_path), *verb[1:],
                              "--inventory", inventory, "--workers", "1", *login(sshd_rig, tmp_path), "--json")
        assert code in (EXIT_OK, 1), out  # check and the dry run: not compliant yet
        assert len(open_counts) == 4 and max(open_counts) == 1, open_counts
        if command == "remediate":
            statuses = [[r["status"] for r in h["results"]] for h in json.loads(out)["hosts"]]
            assert statuses == [["committed", "committed"]] * 4, out
        assert _mentioning(private_tmp) == [] and os.listdir(private_tmp) == []
    finally:
        for host in hosts:
            host.remove()


def test_a_bad_variable_file_after_the_login_began_changes_nothing_and_leaves_nothing(
        sshd_rig: Any, sshd_host: Any, tmp_path: Path, private_tmp: str) -> None:
    """remediate -H with a malformed --config-dir variable file: the login may have begun, but the
    command stops with the file's error (exit 2), the target root is unchanged, no journal entry is
    written, no ssh client or master of the run is left, its control directory is gone, and the
    host's sshd has no session (and so no agent) left."""
    root = make_root(sshd_rig, "badvars")
    before = snapshot_tree(root)
    config = tmp_path / "config"
    config.mkdir()
    (config / "defaults.yml").write_text("variables: [not, a, mapping]\n")
    code, out = kensa_cli("--journal", str(tmp_path / "j.db"), "--no-audit", "remediate", rules_dir(tmp_path),
                          "-H", host_arg(sshd_host), "--root", str(root), "--config-dir", str(config),
                          *login(sshd_rig, tmp_path))
    assert code == EXIT_BAD_INPUT, out
    assert snapshot_tree(root) == before
    assert _mentioning(private_tmp) == [] and os.listdir(private_tmp) == []
    assert sshd_host.proc is not None
    assert _eventually(lambda: not descendants(sshd_host.proc.pid)), "a session of the run outlived it on the host"


def test_a_bad_variable_file_is_named_on_stderr(sshd_rig: Any, sshd_host: Any, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """The error of a malformed variable file still names the file, with a login begun meanwhile."""
    root = make_root(sshd_rig, "badvars-msg")
    config = tmp_path / "config"
    config.mkdir()
    (config / "defaults.yml").write_text("variables: [not, a, mapping]\n")
    code, _ = kensa_cli("--journal", str(tmp_path / "j.db"), "--no-audit", "check", rules_dir(tmp_path),
                        "-H", host_arg(sshd_host), "--root", str(root), "--config-dir", str(config),
                        *login(sshd_rig, tmp_path))
    assert code == EXIT_BAD_INPUT
    assert str(config / "defaults.yml") in capsys.readouterr().err


def test_arguments_are_checked_before_any_host_is_contacted(sshd_rig: Any, sshd_host: Any, tmp_path: Path,
                                                            private_tmp: str) -> None:
    """A missing rule path, a malformed --var and a missing --config-dir are refused before any login:
    no transport is made (no control directory) and the host's sshd has no session."""
    root = make_root(sshd_rig, "args")
    for bad in (["remediate", str(tmp_path / "no-such-rules")],
                ["remediate", rules_dir(tmp_path), "--var", "1bad=x"],
                ["check", rules_dir(tmp_path), "--config-dir", str(tmp_path / "no-such-dir")]):
        code, out = kensa_cli("--journal", str(tmp_path / "j.db"), "--no-audit", *bad, "-H", host_arg(sshd_host),
                              "--root", str(root), *login(sshd_rig, tmp_path))
        assert code == EXIT_BAD_INPUT, (bad, out)
        assert os.listdir(private_tmp) == [], f"{bad}: a control directory was made"
        assert sshd_host.proc is not None and descendants(sshd_host.proc.pid) == [], f"{bad}: the host saw a session"


def test_ctrl_c_while_the_rules_load_ends_the_early_login(sshd_rig: Any, sshd_host: Any, tmp_path: Path) -> None:
    """kensa remediate -H, interrupted (SIGINT) while it is still reading its variable files and the
    early login is under way: the process ends, and no ssh client or master of it, no control
    directory and no session on the host is left. The variable file is a FIFO nobody writes, so
    the command is provably still loading when the signal comes."""
    root = make_root(sshd_rig, "ctrl-c")
    config = tmp_path / "config"
    config.mkdir()
    os.mkfifo(config / "defaults.yml")
    private = tempfile.mkdtemp(prefix="kc-", dir="/tmp")
    try:
        env = dict(os.environ, TMPDIR=private, PYTHONPATH=os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")])))
        proc = subprocess.Popen([sys.executable, "-m", "kensa", "--journal", str(tmp_path / "j.db"), "--no-audit",
                                 "remediate", rules_dir(tmp_path), "-H", host_arg(sshd_host), "--root", str(root),
                                 "--config-dir", str(config), *login(sshd_rig, tmp_path)],
                                env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            assert sshd_host.proc is not None
            # The login has reached the host (an sshd session of it exists) while the command waits on the FIFO.
            assert _eventually(lambda: descendants(sshd_host.proc.pid)), "no login reached the host"
            assert proc.poll() is None
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode != 0, err
        assert _mentioning(private) == [] and os.listdir(private) == [], err
        assert _eventually(lambda: not descendants(sshd_host.proc.pid)), "a session of the run outlived it on the host"
    finally:
        shutil.rmtree(private, ignore_errors=True)


def test_an_early_connection_that_fails_fails_its_first_resolution_once() -> None:
    """RemoteHosts.connect_early to a target whose agent cannot start: the first resolution of that key
    raises the early attempt's error without a second attempt; the next resolution tries anew."""
    made: List[Optional[str]] = []

    def transport_for(target: RemoteTarget) -> SubprocessTransport:
        made.append(target.key)
        return SubprocessTransport(["/bin/false", "--"], name=target.host)

    hosts = RemoteHosts(transport_for, connect_timeout=30)
    key = RemoteTarget("nowhere.invalid", None, None, "/").key
    try:
        hosts.connect_early([key])
        assert made == [key]
        with pytest.raises(Exception) as first:
            hosts(key)
        assert made == [key], "the failed early connection was tried again for the same resolution"
        with pytest.raises(type(first.value)):
            hosts(key)
        assert made == [key, key]
    finally:
        hosts.close()


def test_the_command_ends_without_teardown_but_after_threads_atexit_and_output(tmp_path: Path) -> None:
    """kensa.cli.exiting.exit_process(3) in a real process: a non-daemon thread still running is
    finished first, atexit handlers run, buffered stdout is written whole, and the status is 3."""
    script = f"""
import atexit, sys, threading, time
from kensa.cli.exiting import exit_process
def later():
    time.sleep(0.2)
    open({str(tmp_path / 'thread')!r}, 'w').write('done')
threading.Thread(target=later).start()
atexit.register(lambda: open({str(tmp_path / 'atexit')!r}, 'w').write('ran'))
sys.stdout.write('x' * 100000)
exit_process(3)
"""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")])))
    done = subprocess.run([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          timeout=60)
    assert done.returncode == 3, done.stderr
    assert done.stdout == b"x" * 100000
    assert (tmp_path / "thread").read_text() == "done" and (tmp_path / "atexit").read_text() == "ran"


def test_python_m_kensa_remediate_over_ssh_leaves_no_process_socket_or_wal(sshd_rig: Any, sshd_host: Any,
                                                                          tmp_path: Path) -> None:
    """python -m kensa remediate -H (the command's own exit): exit 0 with the whole JSON report on
    stdout, every rule committed; afterwards no ssh client or master of it runs, its control
    directory is gone, the host's sshd has no session left, and the journal was closed (no -wal)."""
    root = make_root(sshd_rig, "exit")
    private = tempfile.mkdtemp(prefix="kx-", dir="/tmp")
    journal = tmp_path / "j.db"
    try:
        env = dict(os.environ, TMPDIR=private, PYTHONPATH=os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")])))
        done = subprocess.run([sys.executable, "-m", "kensa", "--journal", str(journal), "--no-audit", "remediate",
                               rules_dir(tmp_path), "-H", host_arg(sshd_host), "--root", str(root),
                               *login(sshd_rig, tmp_path), "--json"],
                              env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              timeout=120)
        assert done.returncode == EXIT_OK, done.stderr
        report = json.loads(done.stdout)
        assert [r["status"] for r in report["hosts"][0]["results"]] == ["committed", "committed"]
        assert _mentioning(private) == [] and os.listdir(private) == []
        assert sshd_host.proc is not None
        assert _eventually(lambda: not descendants(sshd_host.proc.pid)), "a session of the run outlived it on the host"
        assert journal.exists() and not Path(f"{journal}-wal").exists()
    finally:
        shutil.rmtree(private, ignore_errors=True)


def test_closing_many_hosts_tells_every_agent_before_waiting_for_any(tmp_path: Path) -> None:
    """RemoteHosts.close() with three connected agents (real agent processes): each agent's stdin is
    closed before the first is waited for, so they end together rather than one after another;
    afterwards every agent process has exited."""
    events: List[str] = []
    hosts = RemoteHosts(lambda target: SubprocessTransport(name=target.host))
    keys = []
    for index in range(3):
        root = tmp_path / f"r{index}"
        root.mkdir()
        keys.append(f"ssh://h{index}{root}")
    connected = [hosts(key) for key in keys]
    procs = [host.connection.proc for host in connected]
    for host, proc in zip(connected, procs):
        shutdown, wait = host.connection.shutdown, proc.wait

        def told(shutdown: Callable[[], None] = shutdown, name: str = host.root) -> None:
            events.append(f"told {name}")
            shutdown()

        def waited(timeout: Optional[float] = None, wait: Any = wait, name: str = host.root) -> Any:
            events.append(f"waited {name}")
            return wait(timeout)

        host.connection.shutdown = told  # type: ignore[method-assign]
        proc.wait = waited  # type: ignore[method-assign]
    hosts.close()
    first_wait = next(index for index, event in enumerate(events) if event.startswith("waited"))
    assert set(events[:first_wait]) == {f"told {key}" for key in keys}, events
    assert all(proc.poll() is not None for proc in procs)


#: What a remote remediation needs only once its first login has begun: the rules, the engine, the journal,
#: the audit emitter, and standard modules that only those use.
_AFTER_LOGIN = ("kensa.engine", "kensa.factory", "kensa.rules", "kensa.handlers", "kensa.checks", "kensa.journal",
                "kensa.audit", "kensa.evidence", "yaml", "sqlite3", "cffi", "concurrent", "logging", "uuid")


@pytest.mark.parametrize("inventory", [None, "hosts.ini", "hosts.yml"])
def test_a_remote_remediation_begins_its_login_before_importing_rules_engine_or_journal(
        tmp_path: Path, inventory: Optional[str]) -> None:
    """kensa remediate -H (or --inventory): when the early login begins (RemoteHosts.connect_early is
    called), none of the rules, engine, journal, audit or their standard modules is imported yet
    (a YAML inventory needs kensa.rules.yaml and PyYAML only; an INI one not even those)."""
    rules = tmp_path / "rules"
    rules.mkdir()
    hosts = ["-H", "root@127.0.0.1:1"]
    if inventory == "hosts.ini":
        (tmp_path / inventory).write_text("[web]\nh1 ansible_host=127.0.0.1 ansible_port=1\n")
    elif inventory == "hosts.yml":
        (tmp_path / inventory).write_text("all:\n  hosts:\n    h1:\n      ansible_host: 127.0.0.1\n      ansible_port: 1\n")
    if inventory:
        hosts = ["--inventory", str(tmp_path / inventory)]
    argv = ["--journal", str(tmp_path / "j.db"), "remediate", str(rules), *hosts]
    probe = ("import json, sys\nfrom kensa.hosts.remote import RemoteHosts\n"
             "def stop(self, keys):\n    print(json.dumps(sorted(sys.modules)))\n    raise SystemExit(0)\n"
             "RemoteHosts.connect_early = stop\nfrom kensa.cli.main import main\n"
             f"main({argv!r})\n")
    done = subprocess.run([sys.executable, "-c", probe], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=60, env=dict(os.environ, PYTHONPATH=str(SRC)))
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stdout.splitlines()[-1])

    def needed_for(module: str) -> bool:
        # Reading an inventory: its bounded YAML reader and PyYAML, none of the rules' other modules.
        return inventory == "hosts.yml" and (module in ("kensa.rules", "kensa.rules.yaml", "yaml") or module.startswith("yaml."))

    early = [m for m in loaded if any(m == p or m.startswith(p + ".") for p in _AFTER_LOGIN) and not needed_for(m)]
    assert early == [], early


def test_the_command_s_own_exits_keep_their_status_and_messages(tmp_path: Path) -> None:
    """python -m kensa ends through exit_process on every way out argparse takes too: --version exits 0
    printing the version, a missing argument exits 2 with argparse's message; exit_status maps
    SystemExit as the interpreter does (None 0, an int itself, a message 1)."""
    from kensa.cli.exiting import exit_status

    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")])))
    version = subprocess.run([sys.executable, "-m", "kensa", "--version"], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, universal_newlines=True, timeout=60)
    assert version.returncode == 0 and version.stdout.startswith("kensa "), version
    usage = subprocess.run([sys.executable, "-m", "kensa", "remediate"], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, universal_newlines=True, timeout=60)
    assert usage.returncode == 2 and "the following arguments are required" in usage.stderr, usage
    assert (exit_status(SystemExit()), exit_status(SystemExit(3))) == (0, 3)
    assert exit_status(SystemExit("a message")) == 1


def test_closing_together_closes_every_connection_and_raises_the_first_error() -> None:
    """close_together with more connections than it closes at once, one of which fails to close: every
    one is told to end and closed, and the failure is raised once all are."""
    from kensa.hosts.connection import close_together

    class Connection:
        def __init__(self, fails: bool) -> None:
            self.fails, self.told, self.closed = fails, False, False

        def shutdown(self) -> None:
            self.told = True

        def close(self) -> None:
            self.closed = True
            if self.fails:
                raise OSError("this one could not close")

    connections = [Connection(fails=index == 7) for index in range(20)]
    with pytest.raises(OSError, match="could not close"):
        close_together(connections, at_once=4)  # type: ignore[arg-type]
    assert all(c.told and c.closed for c in connections)
