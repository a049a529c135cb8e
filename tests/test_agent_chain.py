"""The next transaction's check, read ahead: an apply's last answer carries it and its capture.

A remote host's run of one-step file rules takes, per transaction, one round trip for
its check and one for its apply. When the engine knows the transaction it runs next on
the host (``Engine.run(txn, following)``, inside a hold of the target), the apply asks
the agent for the validate, then the next transaction's check, then that check's
capture, each answered only when the one before it is the one it follows. What is
shown, with real agents (tests/agent_targets.py) on real trees: those reads take no
round trip and the tree ends as local runs leave it; a validate that fails, a check
that holds or any other request stops or drops the chain; a chain the agent may not
answer is refused before anything runs; and the engine names the next check only
when its next request is that check.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence

import pytest

from agent_targets import small_root, transport
from conftest import snapshot_tree as snapshot
from remediation_rig import agent_engine
from kensa.engine import Engine
from kensa.errors import AgentError
from kensa.handlers import default_registry
from kensa.hosts.agent.server import MAX_AHEAD
from kensa.hosts.agent.wire import encode_value
from kensa.hosts.connection import AgentConnection
from kensa.hosts.local import resolve_host
from kensa.hosts.remote import RemoteHost, SubprocessTransport, connect
from kensa.model import Phase, PreState, ServiceAction, ServiceVerb, Status, Step, StepResult, Transaction

SSHD = "/etc/ssh/sshd_config"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return small_root(tmp_path)


def _key(root: Path) -> str:
    return f"ssh://admin@target{root}"


def _set(key: str, value: str) -> Step:
    return Step("config_set", {"path": SSHD, "key": key, "value": value, "separator": " "})


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    with agent_engine(tmp_path / "journal.db") as made:
        yield made


def _in_order(engine: Engine, txns: Sequence[Transaction]) -> List[Any]:
    """Run ``txns`` on their one host as ``kensa remediate`` does: inside one hold of the target,
    each told the transaction after it. Returns (results, the host's request counts, its answers ahead)."""
    key = txns[0].host
    host = engine.hosts(key)
    assert isinstance(host, RemoteHost)
    with engine.locks.shared_run(), engine.locks.target(key, host):
        host.connection.counts.clear()
        host.connection.ahead.clear()
        results = [engine.run(txn, txns[at + 1] if at + 1 < len(txns) else None) for at, txn in enumerate(txns)]
        counts = {op: n for op, n in host.connection.counts.items() if op not in ("lock_target", "unlock_target")}
        return [results, counts, dict(host.connection.ahead)]


def _local_twin(root: Path, tmp_path: Path, txns: Sequence[Transaction]) -> Path:
    twin = tmp_path / "twin"
    shutil.copytree(root, twin, symlinks=True)
    local = Engine(default_registry(), hosts=resolve_host)
    for txn in txns:
        local.run(replace(txn, host=str(twin)))
    return twin


def test_the_next_transaction_s_check_and_capture_come_with_the_apply(engine: Engine, root: Path, tmp_path: Path) -> None:
    """Three one-step sshd_config edits, each reading the file the one before wrote: every request is
    still asked (a check, a capture, an apply and a validate each), but after the first only the
    applies take a round trip. The tree ends exactly as local runs of the same three leave it."""
    txns = [Transaction(f"chain-{n}", (_set(key, value),), host=_key(root))
            for n, (key, value) in enumerate([("Port", "2222"), ("PermitRootLogin", "no"), ("MaxAuthTries", "3")])]
    twin = _local_twin(root, tmp_path, txns)
    results, counts, ahead = _in_order(engine, txns)
    assert [r.status for r in results] == [Status.COMMITTED] * 3, [r.error for r in results]
    assert counts == {"validate": 6, "capture": 3, "apply": 3}
    # Each apply carried its validate; the second and third checks came with the apply before them.
    assert ahead == {"validate": 5, "capture": 3}
    assert snapshot(root) == snapshot(twin)


def test_a_next_check_that_holds_is_answered_without_a_capture(engine: Engine, root: Path, tmp_path: Path) -> None:
    """The second rule already holds: its check comes with the first apply, the agent sends no
    capture after it (the check held), and the third rule's check is a round trip of its own (no
    apply came before it). Results and tree are those of local runs."""
    (root / "etc/ssh/sshd_config").write_text("PermitRootLogin no\n")
    txns = [Transaction("held-0", (_set("Port", "2222"),), host=_key(root)),
            Transaction("held-1", (_set("PermitRootLogin", "no"),), host=_key(root)),
            Transaction("held-2", (_set("MaxAuthTries", "3"),), host=_key(root))]
    twin = _local_twin(root, tmp_path, txns)
    results, counts, ahead = _in_order(engine, txns)
    assert [r.status for r in results] == [Status.COMMITTED, Status.SKIPPED, Status.COMMITTED]
    assert counts == {"validate": 5, "capture": 2, "apply": 2}
    assert ahead == {"validate": 3, "capture": 2}
    assert snapshot(root) == snapshot(twin)


def test_a_next_check_that_cannot_be_asked_leaves_the_apply_before_it_as_it_was(
        engine: Engine, root: Path, tmp_path: Path) -> None:
    """The next transaction's check has a value no request can carry (Engine.run takes any
    Transaction): reading it ahead is left out, so the rule before it commits as it would alone,
    and the next one errors in its own check, as local runs of the two do."""
    txns = [Transaction("unsent-0", (_set("Port", "2222"),), host=_key(root)),
            Transaction("unsent-1", (Step("config_set", dict(_set("Banner", "").params, value={"a set"})),),
                        host=_key(root))]
    twin = _local_twin(root, tmp_path, txns)
    results, counts, ahead = _in_order(engine, txns)
    assert [r.status for r in results] == [Status.COMMITTED, Status.ERRORED], [r.error for r in results]
    assert results[1].error is not None and results[1].error.phase is Phase.CHECK
    assert counts == {"validate": 2, "capture": 1, "apply": 1} and ahead == {"validate": 1, "capture": 1}
    assert snapshot(root) == snapshot(twin)


def test_a_failed_validation_stops_the_chain(root: Path) -> None:
    """The apply's chain asks for a validate that does not hold (another value than the apply
    wrote): the agent answers the apply and that validate only, so the next transaction's check is
    a round trip of its own, and the rollback restores the file."""
    before = (root / "etc/ssh/sshd_config").read_bytes()
    host = connect(transport("chain-stop"), str(root))
    try:
        handler = host.handlers(default_registry())["config_set"]
        params = {"path": SSHD, "key": "Port", "value": "2222", "separator": " "}
        pre = handler.capture(host, params)
        wrong = dict(params, value="2200")
        chain = [("validate", handler._fields(host, params=encode_value(wrong))),
                 *handler._check_reads(dict(params, key="PermitRootLogin", value="no"))]
        done = host.connection.request_chain("apply", handler._fields(host, params=encode_value(params),
                                                                      pre=encode_value(pre)), chain)
        assert isinstance(done, StepResult) and done.ok
        assert handler.validate(host, wrong) is False
        assert dict(host.connection.ahead) == {"validate": 1}
        # Asked right away, the next check still takes its own round trip: the agent read nothing ahead.
        assert handler.validate(host, dict(params, key="PermitRootLogin", value="no")) is False
        assert dict(host.connection.ahead) == {"validate": 1}
        assert handler.rollback(host, pre).ok
        assert (root / "etc/ssh/sshd_config").read_bytes() == before and host.alive
    finally:
        host.close()


def test_another_request_after_the_apply_drops_the_chain_and_gets_its_own_answer(root: Path) -> None:
    """After an apply whose chain was answered whole (validate, next check, its capture), a read of
    the file is answered with the file: the three answers already sent are read and dropped, and the
    next check asked afterwards takes a round trip of its own."""
    host = connect(transport("chain-other"), str(root))
    try:
        handler = host.handlers(default_registry())["config_set"]
        params = {"path": SSHD, "key": "Port", "value": "2222", "separator": " "}
        following = Step("config_set", dict(params, key="PermitRootLogin", value="no"))
        pre = handler.capture(host, params)
        host.expect_check(following)
        assert handler.apply(host, params, pre).ok
        assert host.read_bytes(SSHD) == (root / "etc/ssh/sshd_config").read_bytes()
        assert handler.validate(host, following.params) is False
        assert dict(host.connection.ahead) == {} and host.alive
    finally:
        host.close()


def _chain_request(root: Path, host: RemoteHost, chain: Sequence[Dict[str, Any]]) -> None:
    """An apply of Port 2222 carrying ``chain`` (each a request's fields, nested as sent)."""
    handler = host.handlers(default_registry())["config_set"]
    params = {"path": SSHD, "key": "Port", "value": "2222", "separator": " "}
    pre = handler.capture(host, params)
    fields = handler._fields(host, params=encode_value(params), pre=encode_value(pre))
    nested: Dict[str, Any] = {}
    for then in reversed(chain):
        nested = dict(then, **({"next": nested} if nested else {}))
    host.connection.request("apply", **dict(fields, next=nested))


def _read(mechanism: str, params: Mapping[str, Any], op: str = "validate") -> Dict[str, Any]:
    return {"op": op, "mechanism": mechanism, "planned": None, "params": encode_value(params)}


@pytest.mark.parametrize("chain, why", [
    # One read more than the agent answers ahead.
    ([_read("config_set", {"path": SSHD, "key": "Port", "value": "2222", "separator": " "})] * (MAX_AHEAD + 1),
     f"at most {MAX_AHEAD} reads ahead"),
    # The next check of a mechanism whose validate runs a command.
    ([_read("config_set", {"path": SSHD, "key": "Port", "value": "2222", "separator": " "}),
      _read("cron_job", {"name": "x", "schedule": "* * * * *", "command": "true", "user": "root"})],
     "'cron_job' is not a mechanism whose reads are answered ahead"),
    ([_read("config_set", {"path": SSHD, "key": "Port", "value": "2222", "separator": " "}), _read("no_such_thing", {})],
     "'no_such_thing' is not a mechanism"),
    # A capture of another mechanism than the check it follows.
    ([_read("config_set", {"path": SSHD, "key": "Port", "value": "2222", "separator": " "}),
      _read("config_set", {"path": SSHD, "key": "Port", "value": "1", "separator": " "}),
      _read("file_content", {"path": "/etc/motd", "content": "x\n"}, "capture")],
     "only of the same mechanism"),
    # A write at the end of a chain of reads.
    ([_read("config_set", {"path": SSHD, "key": "Port", "value": "2222", "separator": " "}),
      _read("config_set", {"path": SSHD, "key": "Port", "value": "2222", "separator": " "}, "apply")],
     "cannot carry 'apply'"),
])
def test_a_chain_the_agent_may_not_answer_is_refused_before_the_apply_runs(
        root: Path, chain: List[Dict[str, Any]], why: str) -> None:
    """Every pair of the chain is checked before anything runs: the apply at its head changed
    nothing, and the connection goes on."""
    before = snapshot(root)
    host = connect(transport("chain-refused"), str(root))
    try:
        with pytest.raises(AgentError, match=why):
            _chain_request(root, host, chain)
        assert host.alive and host.read_bytes("/etc/motd") == b"welcome\n"
    finally:
        host.close()
    assert snapshot(root) == before


def test_a_next_check_whose_reads_are_not_quick_is_refused_after_a_check_of_the_same_mechanism(root: Path) -> None:
    """The next rule's check is a read of another step: the agent answers it ahead only when its
    mechanism is a quick_reads one, also when the check before it is of the same mechanism (a
    cron_job check runs crontab on the target). Refused before the first check runs; the
    connection goes on and nothing changed."""
    (root / "etc" / "cron.d").mkdir()
    (root / "etc" / "cron.d" / "x").write_text("* * * * * root true\n")  # the first check holds
    before = snapshot(root)
    cron = {"name": "x", "schedule": "* * * * *", "command": "true", "user": "root"}
    host = connect(transport("chain-slow"), str(root))
    try:
        with pytest.raises(AgentError, match="'cron_job' is not a mechanism whose reads are answered ahead"):
            host.connection.request("validate", mechanism="cron_job", planned=None, params=encode_value(cron),
                                    next=_read("cron_job", dict(cron, name="y", command="false")))
        assert host.alive and dict(host.connection.ahead) == {}
        assert host.read_bytes("/etc/motd") == b"welcome\n"
    finally:
        host.close()
    assert snapshot(root) == before


_NEXT_AFTER_THE_LAST = '''
import json, sys
out, inp = sys.stdout.buffer, sys.stdin.buffer
def read():
    size = int.from_bytes(inp.read(4), "big")
    return json.loads(inp.read(size))
def send(message):
    body = json.dumps(message).encode()
    out.write(len(body).to_bytes(4, "big") + body)
    out.flush()
asked = read()
last = asked["next"]["id"]
send({"ok": False, "next": True, "id": asked["id"]})
# The capture asked ahead, saying another answer follows it; none was asked, but one comes.
send({"ok": None, "next": True, "id": last})
send({"ok": "not the file", "id": last + 1})
then = read()
send({"ok": "the file", "id": then["id"]})
inp.read()
'''


def test_an_answer_ahead_saying_another_follows_the_last_asked_breaks_the_connection_when_dropped() -> None:
    """A check asked its capture ahead; the next request is another read, so that capture is read
    through and dropped first. An agent whose capture says another answer follows it (none was asked)
    is not speaking the protocol, as it is not when that capture is taken: AgentError, the connection
    closed, and the frame it sends after it is never taken for the next request's answer."""
    proc = subprocess.Popen([sys.executable, "-c", _NEXT_AFTER_THE_LAST], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    connection = AgentConnection(proc, SubprocessTransport(name="chatty-target"), 30.0, 1 << 20)
    try:
        fields = {"mechanism": "config_set", "planned": None, "params": encode_value({"path": SSHD})}
        assert connection.request_ahead("validate", fields, "capture", dict(fields, with_planned=False)) is False
        with pytest.raises(AgentError, match="chatty-target.*not asked for"):
            connection.request("read_bytes", args=encode_value(["/etc/motd"]), kwargs=encode_value({}))
        assert not connection.alive
    finally:
        connection.close()


class _Told:
    """A host that records what the engine tells it to expect (as a RemoteHost's expect_check)."""

    def __init__(self) -> None:
        self.values: Dict[str, str] = {}
        self.told: List[Optional[Step]] = []

    def expect_check(self, step: Optional[Step]) -> None:
        self.told.append(step)


class _Value:
    name = "value"
    capturable = True

    def validate(self, host: _Told, params: Mapping[str, Any]) -> bool:
        return host.values.get(params["key"]) == params["value"]

    def capture(self, host: _Told, params: Mapping[str, Any]) -> PreState:
        return PreState(self.name, params, {"value": host.values.get(params["key"])})

    def apply(self, host: _Told, params: Mapping[str, Any], pre: Optional[PreState]) -> StepResult:
        host.values[params["key"]] = params["value"]
        return StepResult(self.name, ok=True, changed=True)

    def rollback(self, host: _Told, pre: PreState) -> Any:
        raise AssertionError("not rolled back here")


class _Deciding(_Value):
    name = "deciding"
    decides_compliance = True


def _step(key: str, **extra: Any) -> Step:
    return Step("value", dict({"key": key, "value": "on"}, **extra))


_NEXT = Transaction("next", (_step("b"),), host="h")


@pytest.mark.parametrize("txn, following, told", [
    (Transaction("t", (_step("a"),), host="h"), _NEXT, _NEXT.steps[0]),
    (Transaction("t", (_step("a"),), host="h"), None, None),
    # A transaction of two steps, or with services: its last request is not the apply's validate.
    (Transaction("t", (_step("a"), _step("c")), host="h"), _NEXT, None),
    (Transaction("t", (_step("a"),), host="h", services=(ServiceAction(ServiceVerb.RESTART, "sshd", at_end=True),)), _NEXT, None),
    # The next one runs its unless command first, or a rule's own check decides it, or it is another host's.
    (Transaction("t", (_step("a"),), host="h"), Transaction("n", (_step("b", unless="true"),), host="h"), None),
    (Transaction("t", (_step("a"),), host="h"),
     Transaction("n", (_step("b"), Step("deciding", {"key": "d", "value": "on"})), host="h"), None),
    (Transaction("t", (_step("a"),), host="h"), replace(_NEXT, host="other"), None),
    (Transaction("t", (_step("a"),), host="h"), Transaction("n", (Step("unknown", {}),), host="h"), None),
])
def test_the_engine_names_the_next_check_only_when_it_is_its_next_request(
        txn: Transaction, following: Optional[Transaction], told: Optional[Step]) -> None:
    """Told before the apply, and told nothing once the run is over (a step whose apply never
    came must not leave its expectation to a later request)."""
    host = _Told()
    engine = Engine({"value": _Value(), "deciding": _Deciding()}, hosts=lambda key: host)
    assert engine.run(txn, following).status is Status.COMMITTED
    assert host.told == [told, None]


def test_a_compliant_transaction_tells_the_host_nothing(tmp_path: Path) -> None:
    """Nothing is applied, so nothing is expected: the next check is asked as it always was."""
    host = _Told()
    host.values["a"] = "on"
    engine = Engine({"value": _Value()}, hosts=lambda key: host)
    assert engine.run(Transaction("t", (_step("a"),), host="h"), _NEXT).status is Status.SKIPPED
    assert host.told == []


def test_runs_without_a_hold_of_the_target_never_read_ahead(engine: Engine, root: Path, tmp_path: Path) -> None:
    """Engine.run_many takes each transaction's locks on its own, so it names no next check: between
    two runs another kensa process may take the host. The tree ends as local runs leave it."""
    txns = [Transaction(f"many-{n}", (_set(key, "1"),), host=_key(root)) for n, key in enumerate(["Port", "MaxAuthTries"])]
    twin = _local_twin(root, tmp_path, txns)
    host = engine.hosts(_key(root))
    assert isinstance(host, RemoteHost)
    host.connection.ahead.clear()
    results = engine.run_many(txns)
    assert [r.status for r in results] == [Status.COMMITTED] * 2
    assert dict(host.connection.ahead) == {"validate": 2, "capture": 2}
    assert snapshot(root) == snapshot(twin)


def test_an_interrupt_while_an_apply_with_a_chain_is_awaited_leaves_every_later_request_its_own_answer(
        root: Path) -> None:
    """Ctrl-C as the controller begins to wait for an apply whose chain the agent then answers whole
    (a validate, the next check, its capture of a file larger than a pipe): the next read is given
    its own bytes, the next check is a round trip of its own, and the file is what the apply wrote.
    Every answer on its way was read through and dropped by its id before the next request was
    written: that request is larger than a pipe, and the agent reads nothing until it has written
    the capture."""
    (root / "etc/ssh/sshd_config").write_text("".join(f"# stock comment line {n}\n" for n in range(20_000)) + "Port 22\n")
    data = bytes(range(256)) * 4096
    host = connect(transport("chain-interrupted"), str(root), operation_timeout=20)
    try:
        handler = host.handlers(default_registry())["config_set"]
        params = {"path": SSHD, "key": "Port", "value": "2222", "separator": " "}
        following = Step("config_set", dict(params, key="PermitRootLogin", value="no"))
        pre = handler.capture(host, params)
        waited = host.connection._answer

        def interrupted(ident: int, deadline: float, what: str) -> Dict[str, Any]:
            host.connection._answer = waited  # type: ignore[method-assign]
            raise KeyboardInterrupt

        host.connection._answer = interrupted  # type: ignore[method-assign]
        host.expect_check(following)
        with pytest.raises(KeyboardInterrupt):
            handler.apply(host, params, pre)
        host.write_file("/etc/new", data)
        assert (root / "etc" / "new").read_bytes() == data
        assert host.read_bytes("/etc/motd") == b"welcome\n"
        assert handler.validate(host, following.params) is False
        assert handler.validate(host, params) is True
        assert dict(host.connection.ahead) == {} and host.alive
    finally:
        host.close()


class _Recording:
    """An engine that records what each run is told comes next."""

    def __init__(self) -> None:
        self.told: List[Any] = []

    def run(self, txn: Transaction, following: Optional[Transaction] = None) -> Any:
        from kensa.model import TransactionResult

        self.told.append((txn.id, following.id if following is not None else None))
        return TransactionResult(txn.id, txn.rule, txn.host, Status.COMMITTED, False, {})


def test_run_in_order_tells_each_run_the_next_transaction_only_when_asked() -> None:
    """kensa remediate -H, which holds each host across its runs, asks for it; the local commands
    and the report, which do not, tell no run what follows. A planned rule that runs no
    transaction (its verdict is known) is skipped over."""
    from types import SimpleNamespace

    from kensa.cli.checking import run_in_order
    from kensa.model import CheckResult, Verdict

    def rule(name: str) -> Any:
        return SimpleNamespace(id=name, depends_on=())

    def planned(name: str, runs: bool = True) -> Any:
        txn = Transaction(name, (_step(name),), host="h", id=f"id-{name}") if runs else None
        verdict = None if runs else CheckResult(name, "h", Verdict.NOT_APPLICABLE, "not here")
        return SimpleNamespace(rule=rule(name), transaction=txn, verdict=verdict)

    items = [planned("a"), planned("b", runs=False), planned("c"), planned("d")]
    engine = _Recording()
    run_in_order(engine, items, show_progress=False, read_ahead=True)
    assert engine.told == [("id-a", "id-c"), ("id-c", "id-d"), ("id-d", None)]
    engine = _Recording()
    run_in_order(engine, items, show_progress=False)
    assert engine.told == [("id-a", None), ("id-c", None), ("id-d", None)]


class _Unloadable(dict):  # type: ignore[type-arg]
    """Handlers as the agent's index gives them, one of whose modules fails to import."""

    def __getitem__(self, mechanism: str) -> Any:
        if mechanism == "broken_one":
            raise ImportError("No module named 'kensa.handlers.broken_one'")
        return super().__getitem__(mechanism)


def test_a_next_check_whose_handler_cannot_load_is_refused_saying_why(tmp_path: Path) -> None:
    """A chain naming a mechanism whose handler module fails to import is refused before anything
    runs, and the refusal says what failed, not only that the mechanism is not a quick one."""
    from kensa.hosts.agent.server import Agent

    agent = Agent("hash", _Unloadable(config_set=default_registry()["config_set"]))
    first = _read("config_set", {"path": SSHD, "key": "Port", "value": "2222", "separator": " "})
    answer, ahead = agent.answer_ahead(dict(first, next=_read("broken_one", {})))
    assert ahead is None and "error" in answer
    message = str(answer["error"])
    assert "'broken_one'" in message and "No module named 'kensa.handlers.broken_one'" in message
