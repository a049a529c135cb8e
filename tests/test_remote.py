"""Transactions on a remote host: the engine runs each step phase on kensa's agent.

The agent is a real process started by SubprocessTransport (tests/agent_targets.py)
behind ``ssh://`` host keys, so the engine, the journal, the audit emitter and
recovery meet exactly what they meet over SSH; the trees are real directories
compared by snapshot.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest

from agent_targets import transport, transport_for
from conftest import AuditListener, decode_value, kensa_records, parse_fields, require_audit
from conftest import snapshot_tree as snapshot
from kensa import default_engine
import kensa.audit.emitter as audit
from kensa.engine import Engine
from kensa.errors import PathEscapeError
from kensa.handlers import default_registry
from kensa.hosts.remote import RemoteHost, RemoteHosts, SubprocessTransport, connect, parse_remote_key
from kensa.journal import SqliteJournal
from kensa.model import RemoteTarget, Status, Step, Transaction
from test_recovery import make_tree as recovery_tree

AUDIT_RULE = "-w /etc/shadow -p wa -k kensa-remote-test"


def make_tree(base: Path) -> Path:
    """The recovery tests' tree (files with xattrs, a /proc/sys value) and a directory for audit rules."""
    root = recovery_tree(base)
    (root / "etc/audit/rules.d").mkdir(parents=True)
    return root


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return make_tree(tmp_path)


class Records:
    """An audit emitter that keeps (txn, host, phase, ok) in order."""

    def __init__(self) -> None:
        self.seen: List[Tuple[str, str, str, bool]] = []

    def transaction(self, txn: str, rule: str, host: str) -> "Records.Recorder":
        return Records.Recorder(self.seen, txn, host)

    class Recorder:
        def __init__(self, seen: List[Tuple[str, str, str, bool]], txn: str, host: str) -> None:
            self.seen, self.txn, self.host = seen, txn, host

        def emit(self, phase: str, ok: bool) -> None:
            self.seen.append((self.txn, self.host, phase, ok))

    def phases(self, txn_id: str) -> List[Tuple[str, bool]]:
        return [(phase, ok) for txn, _, phase, ok in self.seen if txn == txn_id]


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Tuple[Engine, Records]]:
    records = Records()
    hosts = RemoteHosts(transport_for)
    with SqliteJournal(tmp_path / "journal.db") as journal:
        yield Engine(default_registry(), audit=records, journal=journal, hosts=hosts), records
    hosts.close()


def key_of(root: Path, name: str = "target") -> str:
    return f"ssh://admin@{name}{root}"


def real_rules() -> Tuple[Step, ...]:
    return (
        Step("file_content", {"path": "/etc/motd", "content": "authorized use only\n", "mode": "0600"}),
        Step("config_set", {"path": "/etc/ssh/sshd_config", "key": "PermitRootLogin", "value": "no", "separator": " "}),
        Step("sysctl_set", {"key": "net.ipv4.ip_forward", "value": "0"}),
        Step("audit_rule_set", {"rule": AUDIT_RULE}),
    )


def test_real_rules_commit_on_a_remote_root_and_roll_back_by_id(engine: Tuple[Engine, Records], root: Path) -> None:
    """file_content, config_set, sysctl_set and audit_rule_set (a non-live root) commit on the remote
    root, each phase on the agent; a rollback by id brings the tree back to its snapshot exactly."""
    eng, records = engine
    before = snapshot(root)
    txn = Transaction("remote-rules", real_rules(), host=key_of(root))
    result = eng.run(txn)
    assert result.status is Status.COMMITTED, result.error
    assert (root / "etc/motd").read_text() == "authorized use only\n"
    assert "PermitRootLogin no" in (root / "etc/ssh/sshd_config").read_text()
    assert (root / "proc/sys/net/ipv4/ip_forward").read_text().strip() == "0"
    assert AUDIT_RULE in (root / "etc/audit/rules.d/99-kensa.rules").read_text()
    assert all(host == key_of(root) for _, host, _, _ in records.seen)
    back = eng.rollback(txn.id)
    assert back.status is Status.ROLLED_BACK and back.host_unchanged, back.error
    assert snapshot(root) == before


def test_a_failed_validate_rolls_back_on_the_remote_root(engine: Tuple[Engine, Records], root: Path) -> None:
    """Two steps on one file, the second undoing the first: validate fails, the run's own rollback
    restores both through the agent (the second captured through the first's plan), tree as before."""
    eng, records = engine
    before = snapshot(root)
    steps = (Step("config_set", {"path": "/etc/ssh/sshd_config", "key": "Port", "value": "2222", "separator": " "}),
             Step("config_set", {"path": "/etc/ssh/sshd_config", "key": "Port", "value": "2200", "separator": " "}))
    txn = Transaction("remote-undo", steps, host=key_of(root))
    result = eng.run(txn)
    assert result.status is Status.ROLLED_BACK and result.host_unchanged, result.error
    assert records.phases(txn.id) == [("started", True), ("capture", True), ("apply", True), ("validate", False),
                                      ("rolled_back", False)]
    assert snapshot(root) == before


def test_one_request_per_handler_phase(engine: Tuple[Engine, Records], root: Path) -> None:
    """A committed transaction of N steps costs exactly N captures, N applies and the validates
    (one to find the first non-compliant step, then N), and the target's lock (one request, one
    message unanswered): no per-file round trips, no extra planned()."""
    eng, _ = engine
    txn = Transaction("remote-count", real_rules(), host=key_of(root))
    host = eng.hosts(txn.host)
    assert isinstance(host, RemoteHost)
    host.connection.counts.clear()
    assert eng.run(txn).status is Status.COMMITTED
    steps = len(txn.steps)
    assert dict(host.connection.counts) == {"validate": 1 + steps, "capture": steps, "apply": steps,
                                            "lock_target": 1, "unlock_target": 1}


@pytest.mark.parametrize("killed_before_apply", [1, 2])
def test_killed_agent_during_apply_leaves_it_for_recovery_over_a_new_connection(
    engine: Tuple[Engine, Records], root: Path, killed_before_apply: int
) -> None:
    """The agent is killed as the engine sends the Nth apply of a three-step transaction: the result
    is errored, host_unchanged False, naming the host and recovery; the audit trail shows the failed
    apply; the journal entry stays interrupted. Engine.recover reconnects and reverses it: the tree
    equals its snapshot."""
    eng, records = engine
    before = snapshot(root)
    txn = Transaction("remote-kill", real_rules()[:3], host=key_of(root))
    host = eng.hosts(txn.host)
    assert isinstance(host, RemoteHost)
    applies = []

    def kill_at_apply(op: str, mechanism: Optional[str]) -> None:
        if op == "apply":
            applies.append(mechanism)
            if len(applies) == killed_before_apply:
                os.kill(host.hello["pid"], 9)

    host.connection.observer = kill_at_apply
    result = eng.run(txn)
    assert result.status is Status.ERRORED and not result.host_unchanged
    assert result.error is not None and result.error.type == "HostConnectionLost"
    assert txn.host in result.error.message and "kensa recover" in result.error.message
    assert records.phases(txn.id) == [("started", True), ("capture", True), ("apply", False), ("errored", False)]
    journal = eng.journal
    assert [entry.txn.id for entry in journal.interrupted()] == [txn.id]  # type: ignore[union-attr]
    if killed_before_apply == 2:
        assert (root / "etc/motd").read_text() == "authorized use only\n"  # the first step did apply
    recovered = eng.recover()
    assert [r.status for r in recovered] == [Status.RECOVERED], recovered
    assert recovered[0].host_unchanged
    again = eng.hosts(txn.host)
    assert again is not host and again.alive
    assert snapshot(root) == before
    assert journal.interrupted() == []  # type: ignore[union-attr]


def test_a_symlink_out_of_the_remote_root_is_refused_naming_the_path(engine: Tuple[Engine, Records], root: Path,
                                                                   tmp_path: Path) -> None:
    """A symlink planted in the remote root pointing outside it is refused by the agent's confinement
    (PathEscapeError with the path, here and through the engine); the outside file is untouched."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "motd").write_text("not kensa's\n")
    (root / "etc" / "evil").symlink_to(outside)
    eng, _ = engine
    txn = Transaction("remote-escape", (Step("file_content", {"path": "/etc/evil/motd", "content": "x\n"}),),
                      host=key_of(root))
    result = eng.run(txn)
    assert result.status is Status.ERRORED and result.host_unchanged
    assert result.error is not None and result.error.type == "PathEscapeError"
    assert "/etc/evil" in result.error.message
    host = eng.hosts(txn.host)
    with pytest.raises(PathEscapeError) as caught:
        host.read_file("/etc/evil/motd")
    assert caught.value.path == "/etc/evil/motd"
    assert (outside / "motd").read_text() == "not kensa's\n"


def test_an_unreachable_host_fails_only_its_own_transactions(tmp_path: Path, root: Path) -> None:
    """In a batch, the transactions of a host whose agent cannot start end errored in preflight,
    host untouched; the other host's commit."""
    def transports(target: RemoteTarget) -> SubprocessTransport:
        if target.host == "down":
            return SubprocessTransport(["/nonexistent/ssh"], name="down")
        return transport(target.host)

    other = make_tree(tmp_path / "other")
    hosts = RemoteHosts(transports, connect_timeout=10)
    try:
        with SqliteJournal(tmp_path / "journal.db") as journal:
            eng = Engine(default_registry(), journal=journal, hosts=hosts)
            step = Step("file_content", {"path": "/etc/motd", "content": "hi\n"})
            down = Transaction("r", (step,), host=key_of(other, "down"))
            up = Transaction("r", (step,), host=key_of(root, "up"))
            results = eng.run_many([down, up])
    finally:
        hosts.close()
    assert results[0].status is Status.ERRORED and results[0].host_unchanged
    assert results[0].error is not None and "down" in results[0].error.message
    assert results[1].status is Status.COMMITTED
    assert (other / "etc/motd").read_text() == "welcome\n"


def test_remote_keys_are_canonical(tmp_path: Path) -> None:
    """ssh:// keys parse into RemoteTarget and spell one target one way; a bad key is refused."""
    assert parse_remote_key("ssh://u@h:2222//srv/./r/") == RemoteTarget(host="h", user="u", port=2222, root="/srv/r")
    hosts = RemoteHosts(transport_for)
    assert hosts.canonical_key("ssh://h/srv/r/") == "ssh://h/srv/r"
    assert hosts.canonical_key("ssh://h") == "ssh://h/"
    with pytest.raises(ValueError):
        parse_remote_key("ssh://u:pw@h/")
    # Parsed keys are kept; a refusal is not, so a bad key is refused every time it is asked.
    assert parse_remote_key("ssh://u@h:2222//srv/./r/") == RemoteTarget(host="h", user="u", port=2222, root="/srv/r")
    with pytest.raises(ValueError):
        parse_remote_key("ssh://u:pw@h/")


def test_a_remote_host_as_easy_as_a_local_one(root: Path, tmp_path: Path) -> None:
    """default_engine(remote=...) runs an ssh:// transaction through the given transports."""
    eng = default_engine(str(tmp_path / "j.db"), audit=False, remote=transport_for)
    result = eng.run(Transaction("easy", (Step("file_content", {"path": "/etc/motd", "content": "x\n"}),), host=key_of(root)))
    assert result.status is Status.COMMITTED
    assert (root / "etc/motd").read_text() == "x\n"
    eng.hosts.close()  # type: ignore[attr-defined]


@pytest.mark.serial
def test_kernel_records_of_a_remote_transaction_name_the_remote_host(listener: AuditListener, root: Path,
                                                                     tmp_path: Path) -> None:
    """The controller's kernel audit records of a remote transaction carry host= the ssh:// key."""
    emitter = audit.open_emitter()
    if not isinstance(emitter, audit.AuditEmitter):
        require_audit(f"emission is off: {audit.status()}")
    hosts = RemoteHosts(transport_for)
    try:
        with SqliteJournal(tmp_path / "journal.db") as journal:
            eng = Engine(default_registry(), audit=emitter, journal=journal, hosts=hosts)
            key = key_of(root, f"web-{uuid.uuid4().hex[:8]}")
            txn = Transaction("remote-audit", real_rules()[:1], host=key)
            assert eng.run(txn).status is Status.COMMITTED
            assert emitter.flush(10)
    finally:
        hosts.close()
    records = kensa_records(listener, txn.id, 5)
    got = []
    for record in records:
        fields: Dict[str, Any] = dict(parse_fields(record.body))
        assert decode_value(fields["host"]).decode() == key
        got.append(fields["phase"])
    assert got == ["started", "capture", "apply", "validate", "committed"]
    emitter.close()


def test_checks_read_a_remote_host_one_round_trip_per_read(root: Path) -> None:
    """A check method evaluates against a RemoteHost as against a local one; each host read it
    makes is one request to the agent."""
    from kensa.checks import CHECKS

    host = connect(transport("checked"), str(root))
    try:
        method = CHECKS["config_value"]
        assert method.holds(host, {"path": "/etc/ssh/sshd_config", "key": "PermitRootLogin", "expected": "yes"})
        assert not method.holds(host, {"path": "/etc/ssh/sshd_config", "key": "Port", "expected": "2222"})
        reads = {op: n for op, n in host.connection.counts.items() if op != "hello"}
        assert sum(reads.values()) == 2, reads
    finally:
        host.close()


def test_a_forked_child_opens_its_own_connection(root: Path) -> None:
    """A child forked from a process holding a connection gets a new agent for the same key, and the
    parent's connection still answers afterwards (the child neither used nor closed it)."""
    hosts = RemoteHosts(transport_for)
    key = key_of(root, "forked")
    try:
        parent = hosts(key)
        pid = os.fork()
        if pid == 0:  # the child: exit status says what it saw
            try:
                mine = hosts(key)
                ok = mine is not parent and mine.hello["pid"] != parent.hello["pid"] and mine.read_bytes("/etc/motd") == b"welcome\n"
                mine.close()
                os._exit(0 if ok else 1)
            except BaseException:
                os._exit(2)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert hosts(key) is parent and parent.alive
        assert parent.read_bytes("/etc/motd") == b"welcome\n"
    finally:
        hosts.close()


def test_an_interrupt_whose_rollback_loses_the_connection_still_propagates(engine: Tuple[Engine, Records],
                                                                          root: Path) -> None:
    """KeyboardInterrupt during the second apply starts the run's rollback; the agent dies as the
    rollback is sent. The interrupt still reaches the caller, the entry stays interrupted (no result
    journaled), and recovery over a new connection restores the tree."""
    eng, records = engine
    before = snapshot(root)
    txn = Transaction("remote-interrupt", real_rules()[:2], host=key_of(root))
    host = eng.hosts(txn.host)
    assert isinstance(host, RemoteHost)
    seen: List[str] = []

    def interrupt_then_die(op: str, mechanism: Optional[str]) -> None:
        seen.append(op)
        if op == "apply" and seen.count("apply") == 2:
            raise KeyboardInterrupt
        if op in ("rollback", "restore"):
            os.kill(host.hello["pid"], 9)

    host.connection.observer = interrupt_then_die
    with pytest.raises(KeyboardInterrupt):
        eng.run(txn)
    assert records.phases(txn.id)[-1] == ("errored", False)
    assert [entry.txn.id for entry in eng.journal.interrupted()] == [txn.id]  # type: ignore[union-attr]
    assert [r.status for r in eng.recover()] == [Status.RECOVERED]
    assert snapshot(root) == before


GATED_RULES = """\
id: remote-gated
title: A rule whose implementation depends on what the target has
severity: low
implementations:
  - when: audit_rules_d
    check: {method: file_exists, path: /etc/audit/rules.d/kensa.rules}
    remediation: {mechanism: file_content, path: /etc/audit/rules.d/kensa.rules, content: "-e 1\\n"}
  - default: true
    check: {method: file_exists, path: /etc/audit.rules}
    remediation: {mechanism: file_content, path: /etc/audit.rules, content: "-e 1\\n"}
---
id: remote-gated-only
title: A rule only for targets with an audit rules directory
severity: low
implementations:
  - when: audit_rules_d
    check: {method: file_exists, path: /etc/audit/rules.d/kensa.rules}
    remediation: {mechanism: file_content, path: /etc/audit/rules.d/kensa.rules, content: "-e 1\\n"}
"""


def test_a_connection_lost_while_probing_the_target_is_no_missing_capability(root: Path) -> None:
    """The agent dies as the first read of the target (its os-release) is sent: every rule's
    verdict is an error, none is not applicable for want of a capability that could not be
    read, and remediation plans no transaction from a guess (the default implementation,
    although the target has /etc/audit/rules.d and its gated implementation is the one)."""
    from kensa.errors import RemoteHostError
    from kensa.rules import parse_rule
    from kensa.rules.assess import check_rules, observe, plan_rules

    rules = [parse_rule(text) for text in GATED_RULES.split("---\n")]
    host = connect(transport("probed"), str(root), key=key_of(root))
    try:
        assert "audit_rules_d" in observe(host).capabilities

        killed: List[str] = []

        def die(op: str, mechanism: Optional[str]) -> None:
            if not killed:
                killed.append(op)
                os.kill(host.hello["pid"], 9)

        host.connection.observer = die
        verdicts = {r.rule: r.verdict.value for r in check_rules(rules, host, default_registry(), host_key=key_of(root))}
        assert verdicts == {"remote-gated": "error", "remote-gated-only": "error"}, verdicts
        try:
            _, planned = plan_rules(rules, host, host_key=key_of(root))
        except RemoteHostError:
            planned = []
        assert [p.rule.id for p in planned if p.transaction is not None] == []
    finally:
        host.close()


@pytest.mark.parametrize("op, call, answer", [
    ("read_bytes", lambda h: h.read_bytes("/etc/motd"), 5),
    ("info", lambda h: h.info("/etc"), b"not a FileInfo"),
    ("list_dir", lambda h: h.list_dir("/etc"), [1, 2]),
    ("run", lambda h: h.run(["true"], 5), {"args": ["true"], "returncode": "0", "stdout": "", "stderr": ""}),
    ("lookup_id", lambda h: h.lookup_id("passwd", "root"), True),
])
def test_an_answer_of_the_wrong_type_is_an_agent_error_naming_the_host(root: Path, op: str, call: Any, answer: Any) -> None:
    """A broken or hostile target that answers a read with a value of another type (decoded
    from the protocol, so the decoder accepts it) fails that host with AgentError naming it,
    and the connection is closed; a check never sees the value (it would crash on it)."""
    from kensa.errors import AgentError

    host = connect(transport("liar"), str(root))
    real = host.connection.request

    def lying(what: str, **fields: Any) -> Any:
        return answer if what == op else real(what, **fields)

    host.connection.request = lying  # type: ignore[method-assign]
    try:
        with pytest.raises(AgentError, match=f"liar.*answered {op}"):
            call(host)
        assert not host.alive
    finally:
        host.close()


def test_a_rule_without_a_check_is_validated_on_the_target_one_request_each(root: Path, tmp_path: Path) -> None:
    """check_rules of rules without ``check:`` on a remote host runs each step's validate on the agent:
    one request per rule, however many files the handler reads, with the verdicts a local check gives."""
    from kensa.hosts.local import LocalHost
    from kensa.rules.assess import check_rules, observe
    from kensa.rules.load import load_rules

    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    for index, (key, value) in enumerate([("PermitRootLogin", "no"), ("MaxAuthTries", "3"), ("Banner", "none")]):
        (rules_dir / f"r{index}.yml").write_text(
            f"id: remote-check-{index}\ntitle: t\nseverity: low\ncategory: system\nimplementations:\n"
            f"  - default: true\n    remediation:\n      mechanism: config_set\n      path: /etc/ssh/sshd_config\n"
            f"      key: {key}\n      value: \"{value}\"\n      separator: \" \"\n")
    rules = load_rules([rules_dir])
    local = check_rules(rules, LocalHost(str(root)), default_registry())
    host = connect(transport("checked"), str(root))
    try:
        host.connection.counts.clear()
        found = check_rules(rules, host, default_registry(), facts=observe(LocalHost(str(root))))
        assert dict(host.connection.counts) == {"validate": len(rules)}
    finally:
        host.close()
    assert [(r.rule, r.verdict, r.detail) for r in found] == [(r.rule, r.verdict, r.detail) for r in local]


def test_the_checks_of_many_rules_read_a_remote_host_in_a_few_batches(root: Path, tmp_path: Path) -> None:
    """check_rules of rules with ``check:`` blocks on a remote host fetches what every check reads in a
    few batch requests, not one request per read, with the verdicts a local check gives (a rule whose
    dependency does not hold is still not applicable)."""
    from kensa.hosts.local import LocalHost
    from kensa.rules.assess import check_rules, observe
    from kensa.rules.load import load_rules

    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    checks = [("config_value", "path: /etc/ssh/sshd_config, key: PermitRootLogin, expected: \"yes\""),
              ("config_value", "path: /etc/ssh/sshd_config, key: Port, expected: \"2222\""),
              ("file_exists", "path: /etc/motd"), ("file_exists", "path: /etc/nothing/here"),
              ("file_permission", "path: /etc/motd, mode: \"0644\"")] * 4
    for index, (method, fields) in enumerate(checks):
        (rules_dir / f"r{index:02}.yml").write_text(
            f"id: batch-{index:02}\ntitle: t\nseverity: low\ncategory: system\nimplementations:\n"
            f"  - default: true\n    check: {{method: {method}, {fields}}}\n"
            "    remediation: {mechanism: file_absent, path: /etc/unused}\n")
    (rules_dir / "dep.yml").write_text(
        "id: batch-dep\ntitle: t\nseverity: low\ncategory: system\ndepends_on: [batch-01]\nimplementations:\n"
        "  - default: true\n    check: {method: file_exists, path: /etc/only-the-dependent-reads-this}\n"
        "    remediation: {mechanism: file_absent, path: /etc/unused}\n")
    rules = load_rules([rules_dir])
    facts = observe(LocalHost(str(root)))
    local = check_rules(rules, LocalHost(str(root)), default_registry(), facts=facts)
    host = connect(transport("checked"), str(root))
    try:
        host.connection.counts.clear()
        found = check_rules(rules, host, default_registry(), facts=facts)
        assert set(host.connection.counts) == {"batch"} and host.connection.counts["batch"] <= 2, host.connection.counts
    finally:
        host.close()
    # Details name a remote file as host:path, a local one as path (under root ...): the rest is the same.
    assert [(r.rule, r.verdict, r.detail.split(": ", 1)[-1]) for r in found] == [
        (r.rule, r.verdict, r.detail.split("): ", 1)[-1]) for r in local]
    dependent = next(r for r in found if r.rule == "batch-dep")
    assert dependent.verdict.value == "not_applicable" and "depends on rule batch-01" in dependent.detail


def test_the_checks_batched_reads_never_exceed_the_frame_limit(root: Path, tmp_path: Path) -> None:
    """Checks that read many large files (each under the file cap, so each alone fits an answer)
    get the verdicts a local check gives: the batches holding their reads never add up to an
    answer above the connection's frame limit (the caps are scaled down here as the defaults are
    related: frame = 4 x file cap + 1 MiB)."""
    from kensa.hosts.local import LocalHost
    from kensa.rules.assess import check_rules, observe
    from kensa.rules.load import load_rules

    cap = 256 << 10
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    for index in range(10):
        (root / "etc" / f"big{index}.conf").write_bytes(b"".join(b"line %07d of filler text\n" % n
                                                                  for n in range((cap - 4096) // 28)) + b"Wanted yes\n")
        (rules_dir / f"big{index}.yml").write_text(
            f"id: big-{index}\ntitle: t\nseverity: low\ncategory: system\nimplementations:\n"
            f"  - default: true\n    check: {{method: file_content_match, path: /etc/big{index}.conf, pattern: '^Wanted yes$'}}\n"
            "    remediation: {mechanism: file_absent, path: /etc/unused}\n")
    rules = load_rules([rules_dir])
    facts = observe(LocalHost(str(root)))
    local = check_rules(rules, LocalHost(str(root), max_file_bytes=cap), default_registry(), facts=facts)
    assert {r.verdict.value for r in local} == {"compliant"}, local
    host = connect(transport("big"), str(root), max_file_bytes=cap, max_frame_bytes=4 * cap + (1 << 20))
    try:
        found = check_rules(rules, host, default_registry(), facts=facts)
        assert host.alive
    finally:
        host.close()
    assert [(r.rule, r.verdict) for r in found] == [(r.rule, r.verdict) for r in local]


def test_remote_handlers_answer_get_and_in_as_the_registry_does(root: Path) -> None:
    """A remote host's handlers are a Mapping like the registry they come from: ``get`` of a mechanism
    the registry lacks is None and ``in`` is False; a known one is a proxy running on the agent."""
    host = connect(transport("mapped"), str(root))
    try:
        handlers = host.handlers(default_registry())
        assert handlers.get("no_such_mechanism") is None
        assert "no_such_mechanism" not in handlers and "config_set" in handlers
        from kensa.hosts.remote import RemoteHandler
        assert isinstance(handlers.get("config_set"), RemoteHandler)
    finally:
        host.close()
