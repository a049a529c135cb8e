"""Reads the agent answers ahead: the capture after a failed check, the validate after an apply.

The agent is a real process (SubprocessTransport, tests/agent_targets.py); the
trees are real directories. What is shown: a one-step transaction of a file
handler takes two round trips fewer and ends exactly as before; an answer ahead
that the next request does not want is dropped and that request gets its own
answer; a ``next`` that would write, or that names another mechanism, is refused
before anything runs; and a controller never takes an answer ahead it did not ask
for.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Dict, Iterator, Tuple

import pytest

import agent_targets
from agent_targets import small_root, transport, transport_for
from conftest import snapshot_tree as snapshot
from kensa.engine import Engine
from kensa.errors import AgentError
from kensa.handlers import default_registry
from kensa.hosts.agent.wire import encode_value
from kensa.hosts.connection import AgentConnection
from kensa.hosts.local import resolve_host
from kensa.hosts.remote import RemoteHost, RemoteHosts, SubprocessTransport, connect
from kensa.journal import SqliteJournal
from kensa.model import Status, Step, Transaction

SSHD = "/etc/ssh/sshd_config"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return small_root(tmp_path)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    hosts = RemoteHosts(transport_for)
    with SqliteJournal(tmp_path / "journal.db") as journal:
        yield Engine(default_registry(), journal=journal, hosts=hosts)
    hosts.close()


def _key(root: Path) -> str:
    return f"ssh://admin@target{root}"


def _remote(engine: Engine, root: Path) -> RemoteHost:
    host = engine.hosts(_key(root))
    assert isinstance(host, RemoteHost)
    host.connection.counts.clear()
    host.connection.ahead.clear()
    return host


def _set(key: str, value: str) -> Step:
    return Step("config_set", {"path": SSHD, "key": key, "value": value, "separator": " "})


def _local_twin(root: Path, tmp_path: Path, txn: Transaction) -> Path:
    """The same transaction run on a copy of ``root`` through a local host: what the remote run must leave."""
    twin = tmp_path / "twin"
    shutil.copytree(root, twin, symlinks=True)
    assert Engine(default_registry(), hosts=resolve_host).run(replace(txn, host=str(twin))).status is Status.COMMITTED
    return twin


def test_a_one_step_file_transaction_takes_two_round_trips_fewer(engine: Engine, root: Path, tmp_path: Path) -> None:
    """A committed one-step config_set asks what it always asked (two validates, a capture, an
    apply), but the capture came with the failed check and the validate with the apply: two of
    the four requests took no round trip. The tree ends exactly as a local run leaves it."""
    txn = Transaction("ahead-one", (_set("PermitRootLogin", "no"),), host=_key(root))
    twin = _local_twin(root, tmp_path, txn)
    host = _remote(engine, root)
    result = engine.run(txn)
    assert result.status is Status.COMMITTED, result.error
    counts = {op: n for op, n in host.connection.counts.items() if op not in ("lock_target", "unlock_target")}
    assert counts == {"validate": 2, "capture": 1, "apply": 1}
    assert dict(host.connection.ahead) == {"capture": 1, "validate": 1}
    assert snapshot(root) == snapshot(twin)


def test_answers_ahead_a_longer_transaction_does_not_want_are_dropped(engine: Engine, root: Path, tmp_path: Path) -> None:
    """In a three-step transaction the validate answered ahead after each apply is not what the
    engine asks next (the next apply, then the first step's validate): each is dropped, every
    request gets its own answer, and the tree ends exactly as a local run leaves it."""
    steps = (_set("PermitRootLogin", "no"), _set("Port", "2222"),
             Step("file_content", {"path": "/etc/motd", "content": "authorized use only\n"}))
    txn = Transaction("ahead-three", steps, host=_key(root))
    twin = _local_twin(root, tmp_path, txn)
    host = _remote(engine, root)
    result = engine.run(txn)
    assert result.status is Status.COMMITTED, result.error
    assert host.connection.ahead["capture"] == 1  # the first step's, after its failed check
    assert host.connection.ahead["validate"] == 0
    assert snapshot(root) == snapshot(twin)


def test_a_failed_validation_still_rolls_back_exactly(engine: Engine, root: Path) -> None:
    """Two steps setting one key to different values: the second apply wins, so the first step's
    validation fails (it was not answered ahead: the answer after the second apply was about the
    second step) and the rollback leaves the tree as it was."""
    before = snapshot(root)
    txn = Transaction("ahead-undo", (_set("Port", "2222"), _set("Port", "2200")), host=_key(root))
    host = _remote(engine, root)
    result = engine.run(txn)
    assert result.status is Status.ROLLED_BACK and result.host_unchanged, result.error
    assert host.connection.ahead["validate"] == 0
    assert snapshot(root) == before


def test_a_handler_whose_reads_are_not_quick_is_asked_one_phase_per_round_trip(engine: Engine, root: Path) -> None:
    """audit_rule_set is not marked quick_reads (nor are handlers whose validate runs a command, as
    cron_job's runs crontab): its transaction asks nothing ahead, so a dropped answer can never cost
    a command on the target."""
    (root / "etc/audit/rules.d").mkdir(parents=True)
    txn = Transaction("ahead-none", (Step("audit_rule_set", {"rule": "-w /etc/shadow -p wa -k ahead"}),), host=_key(root))
    host = _remote(engine, root)
    assert engine.run(txn).status is Status.COMMITTED
    assert dict(host.connection.ahead) == {}
    assert host.connection.counts["validate"] == 2 and host.connection.counts["capture"] == 1
    assert default_registry()["cron_job"].quick_reads is False


def test_another_request_after_an_apply_gets_its_own_answer(root: Path) -> None:
    """After an apply that carried its validate, a read of the file (not the validate) is answered
    with the file, from the agent: the validate's answer, already sent, is read and dropped."""
    host = connect(transport("other-next"), str(root))
    try:
        handler = host.handlers(default_registry())["config_set"]
        params = {"path": SSHD, "key": "Port", "value": "2222", "separator": " "}
        pre = handler.capture(host, params)
        assert handler.apply(host, params, pre).ok
        assert host.read_bytes(SSHD) == (root / "etc/ssh/sshd_config").read_bytes()
        assert handler.validate(host, params) is True
        assert dict(host.connection.ahead) == {}
        assert host.alive
    finally:
        host.close()


@pytest.mark.parametrize("carried, why", [
    ({"op": "apply"}, "'validate' request cannot carry 'apply'"),
    ({"op": "capture", "mechanism": "file_content"}, "of the same mechanism"),
    ({"op": "capture", "next": {"op": "capture"}}, "cannot carry 'capture'"),
    ("capture", "cannot carry None"),
])
def test_a_next_that_is_not_a_read_of_the_same_mechanism_is_refused_before_anything_runs(
    root: Path, carried: object, why: str
) -> None:
    """A validate asking for an apply ahead (a write), a read of another mechanism, a chain of
    nexts, or a next that is not a request is a protocol error answered before the validate runs;
    the connection goes on, and nothing on the target changed."""
    before = snapshot(root)
    host = connect(transport("bad-next"), str(root))
    try:
        params = encode_value({"path": SSHD, "key": "Port", "value": "2222", "separator": " "})
        if isinstance(carried, dict):
            carried = dict({"mechanism": "config_set", "planned": None, "params": params}, **carried)
        with pytest.raises(AgentError, match=why):
            host.connection.request("validate", mechanism="config_set", planned=None, params=params, next=carried)
        assert host.alive and dict(host.connection.ahead) == {}
        assert host.read_bytes("/etc/motd") == b"welcome\n"
    finally:
        host.close()
    assert snapshot(root) == before


_UNASKED_NEXT = '''
import json, sys
out, inp = sys.stdout.buffer, sys.stdin.buffer
size = int.from_bytes(inp.read(4), "big")
asked = json.loads(inp.read(size))
body = json.dumps({{"ok": None, "next": True, "id": asked["id"]}}).encode()
out.write(len(body).to_bytes(4, "big") + body); out.flush()
inp.read()
'''


def test_an_answer_ahead_the_controller_did_not_ask_for_breaks_the_connection() -> None:
    """An agent whose answer says another answer follows, to a request that asked none ahead, is
    not speaking the protocol: AgentError naming the host, and the connection is closed (its
    frames can no longer be paired with requests)."""
    script = _UNASKED_NEXT.format()
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    connection = AgentConnection(proc, SubprocessTransport(name="chatty-target"), 30.0, 1 << 20)
    try:
        with pytest.raises(AgentError, match="chatty-target.*not asked for"):
            connection.request("read_bytes", args=encode_value(["/etc/motd"]), kwargs=encode_value({}))
        assert not connection.alive
    finally:
        connection.close()


def _content_rules(tmp_path: Path, contents: Dict[str, str]) -> list:
    """Rules without ``check:``, one per path, each a file_content remediation (so ``kensa check`` validates the step)."""
    from kensa.rules.load import load_rules

    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    for index, (path, content) in enumerate(contents.items()):
        (rules_dir / f"r{index}.yml").write_text(
            f"id: ahead-check-{index}\ntitle: t\nseverity: low\ncategory: system\nimplementations:\n"
            f"  - default: true\n    remediation:\n      mechanism: file_content\n      path: {path}\n"
            f"      content: \"{content}\"\n")
    return load_rules([rules_dir])


def _checked(rules: list, host: object, root: Path) -> list:
    from kensa.hosts.local import LocalHost
    from kensa.rules.assess import check_rules, observe

    found = check_rules(rules, host, default_registry(), facts=observe(LocalHost(str(root))))
    return [(r.rule, r.verdict, r.detail) for r in found]


def test_a_dropped_capture_larger_than_a_pipe_never_stalls_the_rollback_after_it(root: Path, tmp_path: Path) -> None:
    """Two steps setting one key of a large sshd_config: the first step's validation fails, so the
    agent answers its capture ahead (more than a pipe holds) and the engine asks a rollback next,
    whose pre-state is more than a pipe holds too. The transaction still rolls back, exactly, long
    before the operation timeout: the controller reads the dropped answer before it writes."""
    (root / "etc/ssh/sshd_config").write_text("".join(f"# stock comment line {n}\n" for n in range(12_000)) + "Port 22\n")
    before = snapshot(root)
    hosts = RemoteHosts(transport_for, operation_timeout=20)
    try:
        with SqliteJournal(tmp_path / "journal.db") as journal:
            engine = Engine(default_registry(), journal=journal, hosts=hosts)
            txn = Transaction("ahead-big-undo", (_set("Port", "2222"), _set("Port", "2200")), host=_key(root))
            result = engine.run(txn)
        assert result.status is Status.ROLLED_BACK and result.host_unchanged, result.error
    finally:
        hosts.close()
    assert snapshot(root) == before


def test_a_dropped_answer_above_the_frame_limit_never_fails_the_next_request(root: Path) -> None:
    """A failed validate through the remote handlers, of a file under the file cap whose capture
    (its bytes and what the step writes, base64) would not fit one frame: the capture answered
    ahead is not what is asked next, so the next read is answered and the connection stays up
    (the frame limit bounds what a request is answered with, not a frame nobody asked for)."""
    cap = 1 << 20
    (root / "etc" / "big.conf").write_bytes(b"x" * 900_000)
    host = connect(transport("frames"), str(root), max_file_bytes=cap, max_frame_bytes=cap)
    try:
        handler = host.handlers(default_registry())["file_content"]
        assert handler.validate(host, {"path": "/etc/big.conf", "content": "small\n"}) is False
        assert host.read_bytes("/etc/motd") == b"welcome\n"
        assert host.alive
    finally:
        host.close()


def test_an_agent_closed_after_its_last_answer_ends_with_status_0(root: Path) -> None:
    """Status 4 says the controller left while the agent was in the middle of a request. A
    controller that closes right after a failed check was answered left nothing half done (the
    capture the agent then reads ahead is a read nobody asked for), so the agent ends with 0."""
    (root / "etc" / "big.conf").write_bytes(b"x" * (8 << 20))
    statuses = []
    for _ in range(3):
        host = connect(transport("closing"), str(root))
        handler = host.handlers(default_registry())["file_content"]
        assert handler.validate(host, {"path": "/etc/big.conf", "content": "small\n"}) is False
        proc = host.connection.proc
        host.close()
        statuses.append(proc.returncode)
    assert statuses == [0, 0, 0]


def test_a_check_gets_no_capture_it_never_asks_for(root: Path, tmp_path: Path) -> None:
    """``kensa check`` validates rules without check: and captures nothing, so nothing is answered
    ahead for it: what the agent sends back for 20 failed rules on one large sshd_config (its
    stdout, copied to a file on the way) is less than that file, not 20 captures of it."""
    from kensa.rules.load import load_rules

    (root / "etc/ssh/sshd_config").write_text("".join(f"# stock comment line {n}\n" for n in range(600)) + "Port 22\n")
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    for index in range(20):
        (rules_dir / f"r{index}.yml").write_text(
            f"id: wire-{index}\ntitle: t\nseverity: low\ncategory: system\nimplementations:\n"
            f"  - default: true\n    remediation:\n      mechanism: config_set\n      path: {SSHD}\n"
            f"      key: Key{index}\n      value: \"v\"\n      separator: \" \"\n")
    rules = load_rules([rules_dir])
    wire = tmp_path / "wire"
    teed = SubprocessTransport(("sh", "-c", '"$@" | tee -a "$0"', str(wire)), name="teed", env=agent_targets.agent_env())
    host = connect(teed, str(root))
    try:
        before = wire.stat().st_size
        assert {verdict.value for _, verdict, _ in _checked(rules, host, root)} == {"not_compliant"}
        sent = wire.stat().st_size - before
    finally:
        host.close()
    assert 0 < sent < (root / "etc/ssh/sshd_config").stat().st_size, sent
