"""Batched reads of a remote host: the ``batch`` request and planning in a few round trips.

The agent is a real process (SubprocessTransport, tests/agent_targets.py); the
misbehaving targets are real processes that speak the framed protocol and
answer a batch wrongly on purpose.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, List, Sequence

import pytest

from agent_targets import transport
from conftest import snapshot_tree as snapshot
from kensa.errors import AgentError, HostAccessError, HostSelectionError, PathEscapeError
from kensa.hosts.agent.wire import READY
from kensa.hosts.gather import MAX_ROUNDS, gathered
from kensa.hosts.local import LocalHost
from kensa.hosts.remote import SubprocessTransport, connect
from kensa.rules.applicability import read_os_release
from kensa.rules.assess import TargetFacts, observe
from kensa.rules.capabilities import detect_capabilities


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A target tree with some capabilities present: binaries, unit files, an enabled unit, a dpkg
    database, an sshd_config that includes its .d directory, and a symlink pointing out of the root."""
    top = tmp_path / "root"
    for directory in ("usr/bin", "usr/sbin", "etc/sysctl.d", "etc/ssh/sshd_config.d", "usr/lib/systemd/system",
                      "etc/systemd/system/multi-user.target.wants", "var/lib/dpkg", "etc/audit/rules.d", "run"):
        (top / directory).mkdir(parents=True)
    (top / "usr" / "lib" / "os-release").write_text('ID=debian\nVERSION_ID="12"\n')
    os.symlink("../usr/lib/os-release", top / "etc" / "os-release")
    for binary in ("usr/bin/dpkg", "usr/bin/apt-get", "usr/sbin/nft"):
        (top / binary).write_text("#!/bin/sh\n")
    (top / "usr" / "lib" / "systemd" / "system" / "rsyslog.service").write_text("[Unit]\n")
    os.symlink("/usr/lib/systemd/system/rsyslog.service",
               top / "etc" / "systemd" / "system" / "multi-user.target.wants" / "rsyslog.service")
    (top / "var" / "lib" / "dpkg" / "status").write_text(
        "Package: unattended-upgrades\nStatus: install ok installed\n\nPackage: aide\nStatus: deinstall ok config-files\n")
    (top / "etc" / "ssh" / "sshd_config").write_text("Include /etc/ssh/sshd_config.d/*.conf\nPermitRootLogin no\n")
    (top / "run" / "auditd.pid").write_text(f"{os.getpid()}\n")
    os.symlink("/etc/passwd", top / "etc" / "escape")
    return top


READS: List[Any] = [
    ("info", ("/etc/ssh/sshd_config",), {}),
    ("info", ("/etc/ssh/sshd_config",), {"content": True}),
    ("info", ("/usr/bin",), {}),
    ("info", ("/no/such/file",), {}),
    ("read_file", ("/etc/ssh/sshd_config",), {}),
    ("read_file", ("/usr/bin",), {}),  # a directory: HostAccessError EISDIR
    ("read_bytes", ("/var/lib/dpkg/status",), {}),
    ("read_bytes", ("/etc/escape",), {}),  # a symlink out of the root: PathEscapeError
    ("read_bytes", ("/absent",), {}),
    ("list_dir", ("/usr/bin",), {}),
    ("list_dir", ("/absent",), {}),
    ("leftover_temps", ("/etc/ssh/sshd_config",), {}),
    ("lookup_id", ("passwd", "no-such-user-here"), {}),
]


def _one_by_one(host: Any, op: str, args: Sequence[Any], kwargs: Any) -> Any:
    try:
        return getattr(host, op)(*args, **kwargs), None
    except (HostAccessError, PathEscapeError, KeyError, LookupError, ValueError) as exc:
        return None, exc


def test_a_batch_answers_each_read_as_its_own_request_would(root: Path) -> None:
    """Every read of a batch answers what the same read sent alone answers: equal values (FileInfo,
    bytes, names, None), and the same error class and message where the read alone raises; the batch
    is one round trip, and the connection goes on after the errors."""
    host = connect(transport("batching"), str(root))
    try:
        alone = [_one_by_one(host, op, args, kwargs) for op, args, kwargs in READS]
        host.connection.counts.clear()
        batched = host.read_many(READS)
        assert dict(host.connection.counts) == {"batch": 1}
        assert len(batched) == len(alone)
        for (op, args, _), (value, error), (alone_value, alone_error) in zip(READS, batched, alone):
            assert value == alone_value, (op, args)
            assert type(error) is type(alone_error), (op, args)
            assert str(error) == str(alone_error), (op, args)
        errors = {op: type(error) for (op, _, _), (_, error) in zip(READS, batched) if error is not None}
        assert errors["read_file"] is HostAccessError and errors["read_bytes"] is PathEscapeError
        assert host.alive and host.read_bytes("/absent") is None
    finally:
        host.close()


def test_a_batch_holds_only_reads(root: Path) -> None:
    """A batch naming a write (or a command) is refused before anything runs: on the controller as
    HostSelectionError, and by the agent, when sent anyway, as an error; the tree is unchanged."""
    before = snapshot(root)
    host = connect(transport("writes-refused"), str(root))
    try:
        with pytest.raises(HostSelectionError, match="write_file is not a read"):
            host.read_many([("write_file", ("/etc/motd", b"x"), {})])
        with pytest.raises(AgentError, match="a batch may hold only reads"):
            host.connection.batch([{"op": "run", "args": {"t": [["touch", "/made"], 10]}, "kwargs": {"d": {}}},
                                   {"op": "info", "args": ["/etc"], "kwargs": {"d": {}}}])
    finally:
        host.close()
    assert snapshot(root) == before


def test_planning_facts_read_in_batches_equal_those_read_one_by_one(root: Path) -> None:
    """observe() of a remote host gives the same os-release and capabilities as reading the same
    tree one request at a time and as a local host of it, in a handful of round trips (a batch per
    round, at most MAX_ROUNDS) instead of one per probe read."""
    local = observe(LocalHost(str(root)))
    assert {"dpkg", "apt", "nftables", "rsyslog", "apt_unattended_upgrades", "sshd_config_d", "sysctl_d"} <= local.capabilities
    assert "aide" not in local.capabilities
    host = connect(transport("planning"), str(root))
    try:
        single = TargetFacts(read_os_release(host), detect_capabilities(host))
        one_by_one = sum(host.connection.counts.values()) - 1  # less hello
        host.connection.counts.clear()
        facts = observe(host)
        counts = dict(host.connection.counts)
    finally:
        host.close()
    assert facts == single == local
    assert facts.os_release is not None and facts.os_release.id == "debian"
    assert 1 <= counts.pop("batch") <= MAX_ROUNDS
    assert sum(counts.values()) <= 2, counts  # the few reads only real answers lead to
    assert one_by_one > 50


def test_gathering_code_that_runs_a_command_still_gets_its_real_output(root: Path) -> None:
    """Code that runs a command is not guessed at past it: the command runs once, for real, and the
    reads before it come from a batch."""
    host = connect(transport("runs"), str(root))
    try:
        host.connection.counts.clear()

        def read(view: Any) -> Any:
            return view.info("/usr/bin") is not None, view.run(["cat", str(root / "etc" / "ssh" / "sshd_config")], 10).stdout

        found = gathered(host, read)
        assert found == (True, (root / "etc" / "ssh" / "sshd_config").read_text())
        assert dict(host.connection.counts) == {"batch": 1, "run": 1}
    finally:
        host.close()


_BAD_BATCH_AGENT = '''
import hashlib, json, os, struct, sys
out, inp = sys.stdout.buffer, sys.stdin.buffer
out.write({ready!r}); out.flush()
size = int.from_bytes(inp.read(4), "big")
digest = hashlib.sha256(inp.read(size)).hexdigest()
def request():
    (length,) = struct.unpack(">I", inp.read(4))
    return json.loads(inp.read(length))
def answer(message):
    body = json.dumps(message).encode()
    out.write(struct.pack(">I", len(body)) + body); out.flush()
hello = request()
answer({{"ok": {{"d": {{"protocol": 1, "hash": digest, "python": [3, 11, 0], "supplied": [], "executable": "x",
        "pid": os.getpid(), "root": hello["root"], "is_live": False, "identity": "1:2", "max_file_bytes": 1024,
        "mechanisms": []}}}}}})
batch = request()
answer(json.loads({answer!r}))
import time; time.sleep(60)
'''


class _BadBatchTransport(SubprocessTransport):
    """A target whose agent says hello properly and then answers the first batch with ``answer``."""

    def __init__(self, answer: str) -> None:
        super().__init__(name="bad-batch-target")
        self.script = _BAD_BATCH_AGENT.format(ready=READY, answer=answer)

    def spawn(self, argv: Sequence[str], ready: bytes, timeout: float) -> "subprocess.Popen[bytes]":
        return super().spawn([sys.executable, "-c", self.script], ready, timeout)


@pytest.mark.parametrize("answer, match", [
    # info answered with an int, inside a well-formed batch
    ('{"ok": [{"ok": 7}, {"ok": null}]}', "answered info with int, which is not what info answers"),
    # read_bytes answered with a string
    ('{"ok": [{"ok": null}, {"ok": "text"}]}', "answered read_bytes with str"),
    # three answers for two reads, and none (a first part of them is an answer: the rest is asked again)
    ('{"ok": [{"ok": null}, {"ok": null}, {"ok": null}]}', "answered a batch of 2 reads with list, not one answer per read"),
    ('{"ok": []}', "answered a batch of 2 reads with list, not one answer per read"),
    # an answer that is not an answer
    ('{"ok": [5, {"ok": null}]}', "answered info with int, not an answer"),
])
def test_a_bad_answer_in_a_batch_is_an_agent_error_naming_the_host(root: Path, answer: str, match: str) -> None:
    """A batch answered with a value its read does not answer, or with the wrong number of answers,
    is AgentError naming the host; the connection is closed (its state is unknown) and nothing is
    returned to the caller as if it were an answer."""
    host = connect(_BadBatchTransport(answer), str(root))
    try:
        with pytest.raises(AgentError, match=match) as caught:
            host.read_many([("info", ("/etc",), {}), ("read_bytes", ("/etc/motd",), {})])
        assert "bad-batch-target" in str(caught.value)
        assert not host.alive
    finally:
        host.close()


def test_a_planned_view_of_a_remote_host_is_read_through_the_view(root: Path) -> None:
    """gathered() over a planned view of a remote host reads through the view (its planned files hold),
    not through the host's batch, which knows nothing of the plan."""
    from kensa.model import FileInfo

    host = connect(transport("viewed"), str(root))
    try:
        view = host.overlay({"/usr/bin/aide": FileInfo("file", 0o755, 0, 0, content=b"")})
        assert gathered(view, lambda seen: seen.info("/usr/bin/aide") is not None) is True
        assert "aide" in detect_capabilities(view) and "aide" not in observe(host).capabilities
    finally:
        host.close()


_BAD_PHASE_AGENT = _BAD_BATCH_AGENT.replace("batch = request()", "phase = request()")


class _BadPhaseTransport(_BadBatchTransport):
    """A target whose agent says hello properly and then answers the first handler phase with ``answer``."""

    def __init__(self, answer: str) -> None:
        super().__init__(answer)
        self.script = _BAD_PHASE_AGENT.format(ready=READY, answer=answer)


_PARAMS = {"path": "/etc/motd", "content": "hello\n"}


@pytest.mark.parametrize("call, answer, match", [
    ("validate", '{"ok": "yes"}', "answered validate with str, which is not what validate answers"),
    ("validate", '{"ok": {"d": {}}}', "answered validate with dict"),
    ("apply", '{"ok": 5}', "answered apply with int"),
    ("apply", '{"ok": {"d": {"ok": true}}}', "answered apply with dict"),
    ("capture", '{"ok": {"d": {"pre": 5, "planned": null}}}', "answered capture with dict"),
    ("capture", '{"ok": "pre"}', "answered capture with str"),
    ("rollback", '{"ok": null}', "answered rollback with NoneType"),
    ("run_phase", '{"ok": "yes"}', "answered validate with str"),
    ("assess", '{"ok": 1}', "answered assess with int"),
])
def test_a_handler_phase_answered_with_the_wrong_type_is_an_agent_error(root: Path, call: str, answer: str,
                                                                         match: str) -> None:
    """A target that answers a handler phase with a value that phase does not answer (a validate
    that says "yes", an apply without a StepResult) is AgentError naming the host, and the
    connection is closed; the engine never takes such a value for a result (a "yes" is not True)."""
    from kensa.handlers import default_registry
    from kensa.model import Phase, PreState

    host = connect(_BadPhaseTransport(answer), str(root))
    handler = host.handlers(default_registry())["file_content"]
    pre = PreState("file_content", _PARAMS, {"path": "/etc/motd"})
    calls = {
        "validate": lambda: handler.validate(host, _PARAMS),
        "apply": lambda: handler.apply(host, _PARAMS, pre),
        "capture": lambda: handler.capture(host, _PARAMS),
        "rollback": lambda: handler.rollback(host, pre),
        "assess": lambda: handler.assess(host, pre),
        "run_phase": lambda: host.run_phase("file_content", Phase.VALIDATE, _PARAMS),
    }
    try:
        with pytest.raises(AgentError, match=match) as caught:
            calls[call]()
        assert "bad-batch-target" in str(caught.value)
        assert not host.alive
    finally:
        host.close()
