"""kensa over SSH, end to end: real sshd servers (tests/sshd.py), kensa's agent on the
"remote" side, each host confined to its own root on this machine.

check, remediate, rollback by id, faults that fail only their host, sudo with and
without a password, a connection killed in the middle of an apply and then
``kensa recover``, and the kernel audit records carrying ``host=ssh://...``.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import pytest

from conftest import kensa_records, snapshot_tree
from kensa.cli.main import EXIT_NOT_APPLIED, EXIT_OK, main
from kensa.journal.store import SqliteJournal
from kensa.model import RemoteTarget, Status, Step, Transaction
from sshd import cmdlines, descendants

RULES = {
    "banner.yml": """\
id: {prefix}-banner
title: A banner on the remote host
description: Writes one known line into /etc/issue.net of the target root.
severity: low
category: system
implementations:
  - default: true
    remediation:
      mechanism: file_content
      path: /etc/issue.net
      content: "Authorized use only\\n"
""",
    "sshd.yml": """\
id: {prefix}-root-login
title: No root logins on the remote host
description: Sets PermitRootLogin no in the target root's sshd_config.
severity: high
category: access-control
implementations:
  - default: true
    remediation:
      mechanism: config_set
      path: /etc/ssh/sshd_config
      key: PermitRootLogin
      value: "no"
      separator: " "
""",
}


def make_root(rig: Any, name: str, banner: str = "Debian\n", owner: Optional[str] = None) -> Path:
    """A target root with an sshd_config and an issue.net (root-owned unless ``owner``)."""
    root = rig.root(name, owner)
    (root / "etc" / "ssh").mkdir(parents=True)
    (root / "etc" / "ssh" / "sshd_config").write_text("PermitRootLogin yes\nMaxAuthTries 6\n")
    (root / "etc" / "issue.net").write_text(banner)
    (root / "srv").mkdir()
    if owner is not None:
        for path in [root / "etc", root / "etc" / "ssh", root / "etc" / "ssh" / "sshd_config", root / "etc" / "issue.net"]:
            shutil.chown(path, owner, owner)
    return root


def rules_dir(tmp_path: Path, prefix: str = "ssh-e2e") -> str:
    directory = tmp_path / "rules"
    directory.mkdir(exist_ok=True)
    for name, text in RULES.items():
        (directory / name).write_text(text.format(prefix=prefix))
    return str(directory)


def login(rig: Any, tmp_path: Path) -> List[str]:
    return ["-k", str(rig.user_key), "--known-hosts", str(tmp_path / "known_hosts"), "--connect-timeout", "20"]


def kensa_cli(*argv: str) -> Tuple[int, str]:
    out = io.StringIO()
    return main(list(argv), out=out), out.getvalue()


def host_arg(host: Any, user: str = "root") -> str:
    return f"{user}@127.0.0.1:{host.port}"


def key_of(host: Any, root: Path, user: str = "root") -> str:
    return RemoteTarget("127.0.0.1", user, host.port, str(root)).key


@pytest.fixture
def two_hosts(sshd_rig: Any) -> Any:
    hosts = [sshd_rig.add_host("e2e"), sshd_rig.add_host("e2e")]
    yield hosts
    for host in hosts:
        host.remove()


def test_check_over_ssh_names_every_host_on_every_line(sshd_rig: Any, two_hosts: Any, tmp_path: Path) -> None:
    """check -H a,b: each rule's verdict on each host, the host on every line; exit 1 since one host is not compliant."""
    a, b = two_hosts
    root_a = make_root(sshd_rig, "a", banner="Authorized use only\n")
    root_b = make_root(sshd_rig, "b")
    code, out = kensa_cli("--journal", str(tmp_path / "j.db"), "check", rules_dir(tmp_path), "-H", host_arg(a),
                          "--root", str(root_a), *login(sshd_rig, tmp_path), "--json")
    report = json.loads(out)
    assert [h["host"] for h in report["hosts"]] == [key_of(a, root_a)]
    states = {r["rule"]: r["verdict"] for r in report["hosts"][0]["rules"]}
    assert states == {"ssh-e2e-banner": "compliant", "ssh-e2e-root-login": "not_compliant"}
    assert code == EXIT_NOT_APPLIED
    code, out = kensa_cli("--journal", str(tmp_path / "j.db"), "check", rules_dir(tmp_path),
                          "-H", f"{host_arg(a)},{host_arg(b)}", "--root", str(root_b), *login(sshd_rig, tmp_path))
    lines = out.splitlines()[1:]
    assert len(lines) == 4 and code == EXIT_NOT_APPLIED
    assert [line.split()[0] for line in lines] == [key_of(a, root_b)] * 2 + [key_of(b, root_b)] * 2
    assert all(" not_compliant " in line for line in lines)


def test_remediate_then_rollback_by_id_over_ssh(sshd_rig: Any, two_hosts: Any, tmp_path: Path) -> None:
    """remediate on two hosts (--workers 2) commits on both, journaled under their ssh:// keys;
    rollback of each id over SSH leaves each root exactly as it was."""
    roots = [make_root(sshd_rig, "rb") for _ in two_hosts]
    before = [snapshot_tree(root) for root in roots]
    journal = str(tmp_path / "j.db")
    results = []
    for host, root in zip(two_hosts, roots):
        code, out = kensa_cli("--journal", journal, "--no-audit", "remediate", rules_dir(tmp_path), "-H", host_arg(host),
                              "--root", str(root), "--workers", "2", *login(sshd_rig, tmp_path), "--json")
        assert code == EXIT_OK, out
        results += json.loads(out)["hosts"][0]["results"]
    assert [r["status"] for r in results] == ["committed"] * 4
    for root in roots:
        assert (root / "etc" / "issue.net").read_text() == "Authorized use only\n"
        assert "PermitRootLogin no" in (root / "etc" / "ssh" / "sshd_config").read_text()
    with SqliteJournal(journal, create=False) as j:
        hosts = {e.txn.host for e in j.history()}
    assert hosts == {key_of(h, r) for h, r in zip(two_hosts, roots)}
    for result in results:
        code, out = kensa_cli("--journal", journal, "--no-audit", "rollback", result["txn"], *login(sshd_rig, tmp_path))
        assert code == EXIT_OK, out
        assert out.splitlines()[1].split()[0].startswith("ssh://root@127.0.0.1:")
    assert [snapshot_tree(root) for root in roots] == before


def test_a_stopped_host_and_a_refusing_host_fail_only_their_rules(sshd_rig: Any, tmp_path: Path) -> None:
    """Three hosts, one stopped, one refusing the key: their rules are errored naming the host and
    the cause, the third host's rules commit, and the exit code is 1 (hosts unchanged)."""
    good, stopped, refusing = (sshd_rig.add_host("fault") for _ in range(3))
    try:
        stopped.stop()
        refusing.refuse_logins()
        root = make_root(sshd_rig, "fault")
        code, out = kensa_cli("--journal", str(tmp_path / "j.db"), "--no-audit", "remediate", rules_dir(tmp_path),
                              "-H", ",".join(host_arg(h) for h in (good, stopped, refusing)), "--root", str(root),
                              "--workers", "3", *login(sshd_rig, tmp_path))
        assert code == EXIT_NOT_APPLIED, out
        rows = [line for line in out.splitlines()[1:]]
        assert len(rows) == 6
        for row in rows:
            host = row.split()[0]
            if host == key_of(good, root):
                assert " committed " in row
            elif host == key_of(stopped, root):
                assert " errored " in row and f"127.0.0.1:{stopped.port}: cannot connect" in row
            else:
                assert host == key_of(refusing, root)
                assert " errored " in row and f"127.0.0.1:{refusing.port}: the host refused the login as root" in row
    finally:
        for host in (good, stopped, refusing):
            host.remove()


def test_a_host_that_never_answers_times_out_and_only_its_rules_fail(sshd_rig: Any, sshd_host: Any, tmp_path: Path) -> None:
    """A host that accepts TCP but never speaks SSH: its rules error at --connect-timeout, naming it and
    saying it timed out; the rules of the working host are checked."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    port = silent.getsockname()[1]
    root = make_root(sshd_rig, "silent")
    try:
        code, out = kensa_cli("--journal", str(tmp_path / "j.db"), "check", rules_dir(tmp_path), "-H",
                              f"root@127.0.0.1:{port},{host_arg(sshd_host)}", "--root", str(root), "--workers", "2",
                              *login(sshd_rig, tmp_path), "--connect-timeout", "2")
    finally:
        silent.close()
    assert code == EXIT_NOT_APPLIED
    rows = out.splitlines()[1:]
    assert [r.split()[2] for r in rows] == ["error", "error", "not_compliant", "not_compliant"], out
    assert all(f"127.0.0.1:{port}: connection timed out (connect timeout 2 s)" in r for r in rows[:2])


def test_a_changed_host_key_fails_that_host_naming_it(sshd_rig: Any, sshd_host: Any, tmp_path: Path) -> None:
    """A host whose key changed since it was remembered: its rules error, naming it and the changed key; nothing changes there."""
    root = make_root(sshd_rig, "rekey")
    args = ["--journal", str(tmp_path / "j.db"), "--no-audit", "check", rules_dir(tmp_path), "-H", host_arg(sshd_host),
            "--root", str(root), *login(sshd_rig, tmp_path)]
    assert kensa_cli(*args)[0] == EXIT_NOT_APPLIED
    sshd_host.rekey()
    before = snapshot_tree(root)
    code, out = kensa_cli(*args[:3], "remediate", *args[4:])
    assert code == EXIT_NOT_APPLIED
    assert out.count(f"127.0.0.1:{sshd_host.port}: the host's key differs") == 2
    assert snapshot_tree(root) == before


def test_strict_host_keys_refuse_an_unknown_host(sshd_rig: Any, sshd_host: Any, tmp_path: Path) -> None:
    """--strict-host-keys: a host missing from known_hosts is an error for its rules, and nothing is written to known_hosts."""
    root = make_root(sshd_rig, "strict")
    code, out = kensa_cli("--journal", str(tmp_path / "j.db"), "check", rules_dir(tmp_path), "-H", host_arg(sshd_host),
                          "--root", str(root), *login(sshd_rig, tmp_path), "--strict-host-keys")
    assert code == EXIT_NOT_APPLIED
    assert out.count("is not in") == 2 and "strict host key checking is on" in out
    assert not (tmp_path / "known_hosts").exists() or not (tmp_path / "known_hosts").read_text()


def test_sudo_without_a_password_runs_the_agent_as_root(sshd_rig: Any, sshd_host: Any, tmp_path: Path) -> None:
    """An unprivileged login cannot write a root-owned root; with --sudo (NOPASSWD) the same run commits."""
    user = sshd_rig.users["nopasswd"]
    root = make_root(sshd_rig, "sudo")
    args = ["--journal", str(tmp_path / "j.db"), "--no-audit", "remediate", rules_dir(tmp_path), "-H",
            host_arg(sshd_host, user), "--root", str(root), *login(sshd_rig, tmp_path)]
    code, out = kensa_cli(*args)
    assert code == EXIT_NOT_APPLIED and "committed" not in out
    code, out = kensa_cli(*args, "--sudo")
    assert code == EXIT_OK, out
    assert out.count(" committed ") == 2
    assert (root / "etc" / "issue.net").stat().st_uid == 0


def test_sudo_with_a_password_from_stdin_keeps_it_out_of_output_journal_and_records(
        sshd_rig: Any, sshd_host: Any, tmp_path: Path) -> None:
    """--sudo-password-stdin (a user whose sudo asks for a password): the run commits as root, and the
    password is in neither the output, the journal file nor the command's error stream."""
    user = sshd_rig.users["password"]
    root = make_root(sshd_rig, "sudopw")
    journal = tmp_path / "j.db"
    done = subprocess.run(
        [sys.executable, "-m", "kensa", "--journal", str(journal), "--no-audit", "remediate", rules_dir(tmp_path),
         "-H", host_arg(sshd_host, user), "--root", str(root), *login(sshd_rig, tmp_path), "--sudo-password-stdin"],
        input=sshd_rig.sudo_password + "\n", capture_output=True, text=True, timeout=180, env=dict(os.environ),
    )
    assert done.returncode == EXIT_OK, done.stdout + done.stderr
    assert done.stdout.count(" committed ") == 2
    password = sshd_rig.sudo_password.encode()
    assert password not in done.stdout.encode() + done.stderr.encode()
    for path in journal.parent.iterdir():
        if path.name.startswith("j.db"):
            assert password not in path.read_bytes() if path.is_file() else True
    wrong = subprocess.run(
        [sys.executable, "-m", "kensa", "--journal", str(journal), "--no-audit", "check", rules_dir(tmp_path),
         "-H", host_arg(sshd_host, user), "--root", str(root), *login(sshd_rig, tmp_path), "--sudo-password-stdin"],
        input="not-" + sshd_rig.sudo_password + "\n", capture_output=True, text=True, timeout=180, env=dict(os.environ),
    )
    assert wrong.returncode == EXIT_NOT_APPLIED
    assert wrong.stdout.count("sudo refused the sudo password") == 2
    assert sshd_rig.sudo_password not in wrong.stdout + wrong.stderr


def test_the_agent_under_a_sudo_password_runs_as_root_with_the_password_in_no_command_line(
        sshd_rig: Any, sshd_host: Any, tmp_path: Path) -> None:
    """kensa's agent started through sudo -S for a user whose sudo asks for a password: it reads a
    root-only file of its root, and while it runs no process's command line holds the password."""
    from kensa.hosts.remote import connect
    from kensa.hosts.ssh import SshOptions, SshTransport

    root = make_root(sshd_rig, "agentpw")
    (root / "etc" / "shadow").write_text("root:*:19000:0:99999:7:::\n")
    (root / "etc" / "shadow").chmod(0o600)
    target = RemoteTarget("127.0.0.1", sshd_rig.users["password"], sshd_host.port, str(root), str(sshd_rig.user_key))
    options = SshOptions(sudo=True, sudo_password=sshd_rig.sudo_password, known_hosts_file=str(tmp_path / "kh"))
    host = connect(SshTransport(target, options), str(root), key=target.key, connect_timeout=60)
    try:
        assert host.read_bytes("/etc/shadow") == b"root:*:19000:0:99999:7:::\n"
        running = [cmd for _, cmd in cmdlines()]
        assert any("sudo -S" in cmd for cmd in running), "the sudo process was not seen"
        assert not [cmd for cmd in running if sshd_rig.sudo_password in cmd]
    finally:
        host.close()


@pytest.mark.serial
def test_audit_records_of_a_remote_transaction_carry_its_host(sshd_rig: Any, sshd_host: Any, tmp_path: Path,
                                                              listener: Any) -> None:
    """The records of a transaction run over SSH reach the controller's kernel with host= the ssh:// key, one per phase."""
    root = make_root(sshd_rig, "audit")
    prefix = f"ssh-audit-{os.getpid()}-{time.monotonic_ns()}"
    code, out = kensa_cli("--journal", str(tmp_path / "j.db"), "remediate", rules_dir(tmp_path, prefix),
                          "-H", host_arg(sshd_host), "--root", str(root), *login(sshd_rig, tmp_path))
    assert code == EXIT_OK, out
    records = kensa_records(listener, f'rule="{prefix}-banner"', 5)
    key = key_of(sshd_host, root)
    assert [r.text.split("phase=")[1].split()[0] for r in records] == ["started", "capture", "apply", "validate", "committed"]
    for record in records:
        assert f"host={key.encode().hex().upper()}" in record.text or f'host="{key}"' in record.text


class StallingTransport:
    """An SshTransport whose agent is held (strace's delay injection) inside its rename in ``stall_dir``.

    It meets the Transport protocol; ``ssh_proc`` is the local ssh client,
    ``agent_pid`` the agent on the target, ``strace`` the tracer.
    """

    def __init__(self, inner: Any, sshd_pid: int, stall_dir: Path, log: Path) -> None:
        self.inner = inner
        self.log = log
        self.sshd_pid = sshd_pid
        self.stall_dir = stall_dir
        self.ssh_proc: Optional["subprocess.Popen[bytes]"] = None
        self.agent_pid = 0
        self.strace: Optional["subprocess.Popen[bytes]"] = None

    @property
    def name(self) -> str:
        return str(self.inner.name)

    def spawn(self, argv: Sequence[str], ready: bytes, timeout: float) -> "subprocess.Popen[bytes]":
        proc: "subprocess.Popen[bytes]" = self.inner.spawn(argv, ready, timeout)
        if self.ssh_proc is None:
            self.ssh_proc = proc
            commands = dict(cmdlines())
            self.agent_pid = max(pid for pid in descendants(self.sshd_pid) if "python" in commands.get(pid, ""))
            self.strace = subprocess.Popen(
                ["strace", "-f", "-o", str(self.log), "-p", str(self.agent_pid), "-P", str(self.stall_dir),
                 "-e", "trace=rename,renameat,renameat2", "-e", "inject=rename,renameat,renameat2:delay_enter=120s"],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            assert self.strace.stderr is not None
            # strace says it attached before it holds anything.
            assert b"attached" in self.strace.stderr.readline()
        return proc

    def close(self) -> None:
        self.inner.close()


def test_a_connection_killed_mid_apply_is_recovered_over_ssh(sshd_rig: Any, sshd_host: Any, tmp_path: Path) -> None:
    """The ssh connection and the agent are killed while the second step of a transaction is being
    applied: the run is errored and not unchanged, the entry is interrupted, and ``kensa recover``
    over a new connection puts the root back exactly as it was."""
    from kensa.factory import default_engine
    from kensa.hosts.ssh import SshOptions, SshTransport

    root = make_root(sshd_rig, "killed")
    (root / "srv" / "motd").write_text("old motd\n")
    before = snapshot_tree(root)
    journal = str(tmp_path / "j.db")
    options = SshOptions(known_hosts_file=str(tmp_path / "known_hosts"), connect_timeout=20)
    made: List[StallingTransport] = []

    def transport_for(target: RemoteTarget) -> StallingTransport:
        inner = SshTransport(replace(target, identity_file=str(sshd_rig.user_key)), options)
        made.append(StallingTransport(inner, sshd_host.proc.pid, root / "srv", tmp_path / "strace.log"))
        return made[-1]

    key = key_of(sshd_host, root)
    txn = Transaction(rule="ssh-e2e-killed", host=key, steps=(
        Step("file_content", {"path": "/etc/issue.net", "content": "Authorized use only\n"}),
        Step("file_content", {"path": "/srv/motd", "content": "new motd\n"}),
    ))
    engine = default_engine(journal, audit=False, remote=transport_for, connect_timeout=30, operation_timeout=120)
    outcome: Dict[str, Any] = {}
    runner = threading.Thread(target=lambda: outcome.setdefault("result", engine.run(txn)))
    runner.start()
    try:
        deadline = time.monotonic() + 60
        # The second step's temporary file next to /srv/motd: its rename is being held.
        while len(list((root / "srv").iterdir())) < 2 and time.monotonic() < deadline and runner.is_alive():
            time.sleep(0.05)
        stall = made[0]
        assert len(list((root / "srv").iterdir())) == 2, "the second step's rename was not reached"
        assert (root / "etc" / "issue.net").read_text() == "Authorized use only\n"
        assert stall.ssh_proc is not None
        os.kill(stall.ssh_proc.pid, signal.SIGKILL)
        os.kill(stall.agent_pid, signal.SIGKILL)
        runner.join(120)
    finally:
        for stall in made:
            if stall.strace is not None and stall.strace.poll() is None:
                stall.strace.kill()
                stall.strace.wait()
    result = outcome["result"]
    assert result.status is Status.ERRORED and not result.host_unchanged
    assert f"127.0.0.1:{sshd_host.port}" in result.error.message
    with SqliteJournal(journal, create=False) as j:
        assert [e.txn.id for e in j.interrupted()] == [txn.id]
    code, out = kensa_cli("--journal", journal, "--no-audit", "recover", *login(sshd_rig, tmp_path))
    assert code == EXIT_OK, out
    assert key in out
    assert snapshot_tree(root) == before


LANGUAGE_RULES = {
    "limit.yml": """\
id: ssh-lang-limit
title: A variable, a platform and the rule's own check, over SSH
description: Sets MaxAuthTries from a variable; its check decides before and after.
severity: medium
category: access-control
platforms:
  - family: debian
    min_version: 12
implementations:
  - default: true
    check:
      method: config_value
      path: /etc/ssh/sshd_config
      key: MaxAuthTries
      expected: "{{ tries }}"
    remediation:
      mechanism: config_set
      path: /etc/ssh/sshd_config
      key: MaxAuthTries
      value: "{{ tries }}"
      separator: " "
""",
    "rhel.yml": """\
id: ssh-lang-rhel-only
title: A rule for another platform
description: Never runs on a Debian target.
severity: low
category: system
platforms:
  - family: rhel
    min_version: 8
implementations:
  - default: true
    remediation:
      mechanism: file_content
      path: /etc/rhel-only
      content: "x\\n"
""",
}


def test_remote_rules_get_variables_platforms_and_their_own_check(sshd_rig: Any, two_hosts: Any, tmp_path: Path) -> None:
    """Over SSH as locally: a {{ variable }} is substituted, a rule for another platform is
    not applicable (and writes nothing), the rule's own check runs on the controller against
    the remote host and decides: a second remediation is skipped, and check says compliant."""
    a, _ = two_hosts
    root = make_root(sshd_rig, "lang")
    (root / "etc" / "os-release").write_text('ID=debian\nVERSION_ID="12"\n')
    rules = tmp_path / "lang-rules"
    rules.mkdir()
    for name, text in LANGUAGE_RULES.items():
        (rules / name).write_text(text)
    common = ["--journal", str(tmp_path / "j.db")]
    where = ["-H", host_arg(a), "--root", str(root), *login(sshd_rig, tmp_path), "--var", "tries=3", "--json"]
    code, out = kensa_cli(*common, "remediate", str(rules), *where)
    host = json.loads(out)["hosts"][0]
    assert [(r["rule"], r["status"]) for r in host["results"]] == [("ssh-lang-limit", "committed")], out
    assert {(u["rule"], u["status"]) for u in host["unsupported"]} == {("ssh-lang-rhel-only", "not_applicable")}
    assert "MaxAuthTries 3\n" in (root / "etc" / "ssh" / "sshd_config").read_text()
    assert not (root / "etc" / "rhel-only").exists()
    code, out = kensa_cli(*common, "remediate", str(rules), *where)
    assert [r["status"] for r in json.loads(out)["hosts"][0]["results"]] == ["skipped"], out
    code, out = kensa_cli(*common, "check", str(rules), *where)
    verdicts = {r["rule"]: (r["verdict"], r["check"]) for r in json.loads(out)["hosts"][0]["rules"]}
    assert verdicts["ssh-lang-limit"][0] == "compliant" and verdicts["ssh-lang-limit"][1].startswith("config_value")
    assert verdicts["ssh-lang-rhel-only"][0] == "not_applicable"
    assert code == EXIT_OK


def test_a_bad_variable_file_of_one_host_never_hides_what_changed_on_another(sshd_rig: Any, two_hosts: Any,
                                                                            tmp_path: Path) -> None:
    """remediate -H a,b with a malformed variable file for b only (--config-dir DIR/hosts/<b>.yml):
    either the run stops before any host is changed, as a bad variable source does locally, or
    a's committed transactions are in the report. Never is a changed and the report silent."""
    a, b = two_hosts
    root = make_root(sshd_rig, "vars")
    config = tmp_path / "config"
    (config / "hosts").mkdir(parents=True)
    (config / "hosts" / f"{host_arg(b)}.yml").write_text("variables: [not, a, mapping]\n")
    before = snapshot_tree(root)
    code, out = kensa_cli("--journal", str(tmp_path / "j.db"), "--no-audit", "remediate", rules_dir(tmp_path),
                          "-H", f"{host_arg(a)},{host_arg(b)}", "--root", str(root), "--workers", "1",
                          "--config-dir", str(config), *login(sshd_rig, tmp_path), "--json")
    if snapshot_tree(root) != before:
        assert out.strip(), f"host {host_arg(a)} was changed, and the run (exit {code}) reported nothing"
        report = {h["host"]: h for h in json.loads(out)["hosts"]}
        assert [r["status"] for r in report[key_of(a, root)]["results"]] == ["committed"] * 2, out


def test_two_controllers_and_a_local_run_take_turns_on_one_target(sshd_rig: Any, sshd_host: Any,
                                                                  tmp_path: Path) -> None:
    """Over real sshd: while a kensa run on the target holds the lock of its root, a controller's
    transaction there ends errored naming the host and the lock file on it. Two controllers (two
    engines, each with its own journal and its own controller-side lock directory, as on two
    machines) then remediate the same file at once: only the target's lock keeps them apart, and
    every edit is kept."""
    from kensa.engine import Engine
    from kensa.factory import default_engine
    from kensa.handlers import default_registry
    from kensa.hosts.local import LocalHost
    from kensa.hosts.remote import RemoteHosts
    from kensa.hosts.ssh import SshOptions, SshTransport
    from kensa.hosts.targetlock import SYSTEM_LOCK_DIRECTORY, TargetLocks

    root = make_root(sshd_rig, "shared")
    options = SshOptions(known_hosts_file=str(tmp_path / "known_hosts"), connect_timeout=20)

    def transport_for(target: RemoteTarget) -> SshTransport:
        return SshTransport(replace(target, identity_file=str(sshd_rig.user_key)), options)

    key = key_of(sshd_host, root)

    def edit(name: str) -> Transaction:
        return Transaction(rule=f"ssh-e2e-{name}", host=key, steps=(Step(
            "config_set", {"path": "/etc/ssh/sshd_config", "key": name, "value": "1", "separator": " "}),))

    controllers = [Engine(default_registry(), journal=SqliteJournal(tmp_path / f"j{n}.db"),
                          hosts=RemoteHosts(transport_for), target_lock=TargetLocks(tmp_path / f"ctl{n}", timeout=60))
                   for n in range(2)]
    hurried = default_engine(str(tmp_path / "j-hurried.db"), audit=False, remote=transport_for, target_lock_timeout=0.5)
    before = (root / "etc/ssh/sshd_config").read_bytes()
    with TargetLocks(SYSTEM_LOCK_DIRECTORY, timeout=0).hold(str(root), LocalHost(str(root)).identity):
        busy = hurried.run(edit("Busy"))
    assert busy.status is Status.ERRORED and busy.host_unchanged
    assert busy.error is not None and key in busy.error.message and "on that host" in busy.error.message
    assert f"pid {os.getpid()}" in busy.error.message
    assert (root / "etc/ssh/sshd_config").read_bytes() == before
    results: Dict[int, List[Any]] = {}
    threads = [threading.Thread(target=lambda n=n: results.setdefault(n, controllers[n].run_many(
        [edit(f"Key{n}x{i}") for i in range(40)]))) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(180)
    assert sorted(results) == [0, 1]
    assert all(r.status is Status.COMMITTED for n in results for r in results[n]), results
    text = (root / "etc/ssh/sshd_config").read_text()
    assert all(f"Key{n}x{i} 1\n" in text for n in range(2) for i in range(40)), text
    for engine in (*controllers, hurried):
        engine.hosts.close()  # type: ignore[attr-defined]


def test_a_dry_run_over_ssh_says_what_each_host_would_get_and_changes_nothing(sshd_rig: Any, tmp_path: Path) -> None:
    """remediate --dry-run -H a,b,stopped: per host, each rule's plan (would apply, would skip), the
    stopped host's rules an error naming it; no root changes, no journal is written; exit 1 for the
    host that could not be planned."""
    good, compliant, stopped = (sshd_rig.add_host("dry") for _ in range(3))
    try:
        stopped.stop()
        root = make_root(sshd_rig, "dry")
        before = snapshot_tree(root)
        journal = tmp_path / "j.db"
        hosts = ",".join(host_arg(h) for h in (good, compliant, stopped))
        code, out = kensa_cli("--journal", str(journal), "--no-audit", "remediate", rules_dir(tmp_path), "-H", hosts,
                              "--root", str(root), "--workers", "3", "--dry-run", *login(sshd_rig, tmp_path), "--json")
        assert code == EXIT_NOT_APPLIED, out
        report = json.loads(out)
        assert report["dry_run"] is True
        plans = {h["host"]: {r["rule"]: r["plan"] for r in h["rules"]} for h in report["hosts"]}
        assert list(plans) == [key_of(h, root) for h in (good, compliant, stopped)]
        assert plans[key_of(good, root)] == {"ssh-e2e-banner": "would apply: file_content",
                                             "ssh-e2e-root-login": "would apply: config_set"}
        failed = plans[key_of(stopped, root)]
        assert sorted(failed) == ["ssh-e2e-banner", "ssh-e2e-root-login"]
        assert all(plan.startswith("error: ") and f"127.0.0.1:{stopped.port}" in plan for plan in failed.values())
        assert snapshot_tree(root) == before and not journal.exists()
        (root / "etc" / "issue.net").write_text("Authorized use only\n")
        code, out = kensa_cli("--journal", str(journal), "--no-audit", "remediate", rules_dir(tmp_path), "-H",
                              host_arg(compliant), "--root", str(root), "--dry-run", *login(sshd_rig, tmp_path))
        assert code == EXIT_OK, out
        lines = out.splitlines()
        assert lines[0].split() == ["HOST", "RULE", "PLAN"]
        assert any(line.split()[1:] == ["ssh-e2e-banner", "compliant:", "would", "skip"] for line in lines[1:]), out
        assert not journal.exists()
    finally:
        for host in (good, compliant, stopped):
            host.remove()


def test_remediate_over_ssh_shows_hosts_done_on_a_terminal(sshd_rig: Any, two_hosts: Any, tmp_path: Path) -> None:
    """With stderr on a terminal, remediate -H a,b draws a bar of hosts done (1/2, then 2/2, each
    named); the result table still goes to stdout, and a pipe gets no bar at all."""
    import pty

    root = make_root(sshd_rig, "bar")
    argv = [sys.executable, "-m", "kensa", "--journal", str(tmp_path / "j.db"), "--no-audit", "remediate",
            rules_dir(tmp_path), *login(sshd_rig, tmp_path), "--root", str(root)]
    argv += [option for host in two_hosts for option in ("-H", host_arg(host))]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    outputs = []
    main_fd, term = pty.openpty()
    try:
        done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=term, env=env, timeout=120)
        os.close(term)
        while True:
            try:
                chunk = os.read(main_fd, 65536)
            except OSError:  # EIO: the terminal's other end is closed and drained
                break
            if not chunk:
                break
            outputs.append(chunk)
    finally:
        os.close(main_fd)
    bar = b"".join(outputs).decode()
    assert done.returncode == EXIT_OK, (done.stdout, bar)
    assert "1/2" in bar and "2/2" in bar and "done" in bar, bar
    assert all(f"{host_arg(host)} done" in bar for host in two_hosts), bar
    assert done.stdout.decode().splitlines()[0].split()[:2] == ["HOST", "RULE"]
    piped = subprocess.run(argv, capture_output=True, env=env, timeout=120)
    assert piped.returncode == EXIT_OK and b"1/2" not in piped.stderr, piped.stderr


def test_remediate_over_ssh_holds_each_hosts_lock_once_for_its_whole_run(
        sshd_rig: Any, sshd_host: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """kensa remediate -H takes the target's own lock once per host for all its rules (not a lock and
    an unlock round trip per transaction), and it is free when the command returns. While a run on
    the target holds it past the lock timeout, that host's rules are errored naming the holder, and
    nothing changed."""
    import kensa.hosts.remote as remote_module
    from kensa.hosts.local import LocalHost
    from kensa.hosts.targetlock import SYSTEM_LOCK_DIRECTORY, TargetLocks

    taken: List[str] = []
    real = remote_module.hold_target_lock

    def counted(connection: Any, key: str, timeout: Optional[float], deadline: Optional[float] = None) -> Any:
        taken.append(key)
        return real(connection, key, timeout, deadline)

    monkeypatch.setattr(remote_module, "hold_target_lock", counted)
    root = make_root(sshd_rig, "held")
    before = snapshot_tree(root)
    identity = LocalHost(str(root)).identity
    monkeypatch.setattr("kensa.hosts.targetlock.DEFAULT_TIMEOUT", 0.5)
    with TargetLocks(SYSTEM_LOCK_DIRECTORY, timeout=0).hold(str(root), identity):
        code, out = kensa_cli("--journal", str(tmp_path / "j.db"), "--no-audit", "remediate", rules_dir(tmp_path),
                              "-H", host_arg(sshd_host), "--root", str(root), *login(sshd_rig, tmp_path))
    assert code == EXIT_NOT_APPLIED, out
    rows = out.splitlines()[1:]
    assert len(rows) == 2 and all(" errored " in row and "being changed by another kensa process" in row for row in rows), out
    assert snapshot_tree(root) == before
    taken.clear()
    code, out = kensa_cli("--journal", str(tmp_path / "j.db"), "--no-audit", "remediate", rules_dir(tmp_path),
                          "-H", host_arg(sshd_host), "--root", str(root), *login(sshd_rig, tmp_path), "--json")
    assert code == EXIT_OK, out
    assert [r["status"] for r in json.loads(out)["hosts"][0]["results"]] == ["committed", "committed"]
    assert taken == [key_of(sshd_host, root)]
    with TargetLocks(SYSTEM_LOCK_DIRECTORY, timeout=0).hold(str(root), identity):
        pass
