"""kensa's agent and its protocol: the payload, Python 3.6, the bootstrap's checks, and faults.

The agent runs as a real process through SubprocessTransport (tests/agent_targets.py),
speaking the real framed protocol; the faults come from real processes that
misbehave (a target without Python, a tampered payload, garbage on the pipe, a
command that outlives the operation timeout).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import zlib
import json
import hashlib
from dataclasses import replace
from pathlib import Path
from typing import Any, List, Sequence

import pytest

from agent_targets import agent_env, logging_python, py36_path, small_root, traced_changes, traced_transport, transport
from conftest import require_real
from conftest import snapshot_tree as snapshot
from kensa.errors import AgentError, HostAccessError, HostConnectionLost, RemoteTimeoutError
from kensa.handlers import default_registry
from kensa.handlers.filestate import FilePlan
from kensa.hosts.agent import compat
from kensa.hosts.agent.wire import READY, FrameError, decode_value, encode_value
from kensa.hosts.connection import AgentConnection
from kensa.hosts.payload import Payload, build_payload, for_old_python
from kensa.hosts.remote import SubprocessTransport, connect
from kensa.model import Assessment, Drift, FileInfo, Phase, PreState, RollbackResult, StepResult

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return small_root(tmp_path)


def test_values_cross_the_wire_unchanged() -> None:
    """Bytes, tuples, enums, mappings and kensa's dataclasses (a plan inside an assessment too) read back equal."""
    pre = PreState("file_content", {"path": "/etc/x", "n": 3}, {"content": b"\x00\xffdata", "meta": {"mode": 0o644}, "t": (1, "a")})
    plan = FilePlan("/etc/x", Drift.OUTSIDE, ("changed",), content=b"abc", meta={"mode": 0o600})
    values: List[Any] = [
        pre,
        Assessment(Drift.AT_POST, ("a", "b"), (plan,)),
        FileInfo("file", 0o600, 0, 0, {"user.k": b"v"}, b"bytes", 12, 3, 1),
        {"/etc/x": None, "/etc/y": FileInfo("dir", 0o755, 1, 2)},
        StepResult("m", True, True, False, "d"),
        RollbackResult("m", False, "why", ("kept",)),
        Phase.APPLY,
        ["a", ("b",), None, 1.5, True],
        "lone \udcff surrogate",
    ]
    for value in values:
        assert decode_value(json.loads(json.dumps(encode_value(value)))) == value
    assert type(decode_value(encode_value((1, 2)))) is tuple


def test_a_peer_cannot_build_other_types() -> None:
    """Only kensa's own enums and dataclasses are decoded; anything else is a FrameError naming it."""
    for bad in ({"c": "os:system", "f": {}}, {"c": "subprocess:Popen", "f": {"args": "true"}}, {"e": "kensa.model:Step", "v": 1},
                {"x": 1}, {"b": "not base64!"}):
        with pytest.raises(FrameError):
            decode_value(bad)
    with pytest.raises(FrameError, match="cannot cross"):
        encode_value(object())


def test_payload_needs_nothing_newer_than_python_36(tmp_path: Path) -> None:
    """vermin finds nothing in the transformed payload (and the bootstrap) that needs Python
    newer than 3.6, except exactly what the agent's compat module supplies on an old Python."""
    vermin = shutil.which("vermin")
    if vermin is None:
        require_real("vermin is not installed (pip install vermin; it is in the test extra)")
    payload = build_payload()
    for name, (_, source) in payload.modules.items():
        (tmp_path / f"{name}.py").write_text(source)
    bootstrap = (SRC / "kensa" / "hosts" / "agent" / "bootstrap.py").read_text()
    (tmp_path / "bootstrap.py").write_text(for_old_python(bootstrap))
    supplied = compat.install({})
    excluded: List[str] = []
    for feature in ("dataclasses", "typing.Protocol", "typing.runtime_checkable", "typing.Literal"):
        excluded += ["--exclude", feature]
    done = subprocess.run(
        [vermin, "-t=3.6-", "--no-tips", "--violations", "--no-parse-comments", *excluded, str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True,
    )
    assert done.returncode == 0, done.stdout
    assert "Minimum required versions: 3.6" in done.stdout or "Minimum required versions: ~" in done.stdout, done.stdout
    # This Python has them all, so install() supplies nothing here; what it would supply is what vermin was told.
    assert supplied == []


def test_annotations_become_strings_as_pep_563_says() -> None:
    """The transform drops the __future__ import and turns every annotation into its source text."""
    source = textwrap.dedent('''
        from __future__ import annotations
        from typing import List
        class C:
            x: List[int] = []
        def f(a: "int", *b: List[str], c: dict[str, int] = None, **d: int) -> List[int]:
            y: list[str] = []
            return []
    ''')
    out = for_old_python(source)
    assert "__future__" not in out
    namespace: dict = {}
    exec(compile(out, "<t>", "exec", dont_inherit=True), namespace)
    assert namespace["C"].__annotations__ == {"x": "List[int]"}
    assert namespace["f"].__annotations__ == {"a": "int", "b": "List[str]", "c": "dict[str, int]", "d": "int", "return": "List[int]"}


def test_agent_runs_a_transaction_without_the_python_37_features(root: Path, tmp_path: Path) -> None:
    """With dataclasses unimportable and typing.Protocol/runtime_checkable/Literal deleted before the
    payload loads (as on Python 3.6), the agent supplies them and runs capture, apply, validate and a
    rollback that brings the tree back exactly. (3.6 itself is not on this machine: this is how it is checked.)"""
    before = snapshot(root)
    host = connect(transport("old-python", py36_path(tmp_path / "bin")), str(root))
    try:
        assert host.hello["supplied"] == ["dataclasses", "typing.Protocol", "typing.runtime_checkable", "typing.Literal"]
        handlers = host.handlers(default_registry())
        steps = [("config_set", {"path": "/etc/ssh/sshd_config", "key": "PermitRootLogin", "value": "no", "separator": " "}),
                 ("file_content", {"path": "/etc/motd", "content": "authorized use only\n", "mode": "0600"})]
        pres = []
        for mechanism, params in steps:
            handler = handlers[mechanism]
            pre = handler.capture(host, params)
            assert isinstance(pre, PreState)
            pres.append((handler, pre))
            assert handler.apply(host, params, pre).ok
            assert handler.validate(host, params)
        assert (root / "etc" / "motd").read_text() == "authorized use only\n"
        assessment = pres[1][0].assess(host, pres[1][1])
        assert assessment.drift is Drift.AT_POST
        assert pres[1][0].restore(host, pres[1][1], assessment).ok
        assert pres[0][0].rollback(host, pres[0][1]).ok
    finally:
        host.close()
    assert snapshot(root) == before


def test_a_target_without_python3_is_an_agent_error_naming_it(root: Path, tmp_path: Path) -> None:
    """When no python3, platform-python or python3.X is on the target, connecting fails with AgentError
    naming the host and what was tried; nothing is changed."""
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    before = snapshot(root)
    with pytest.raises(AgentError, match=r"host bare-host has no Python 3 \(tried python3, /usr/libexec/platform-python"):
        connect(transport("bare-host", str(empty)), str(root))
    assert snapshot(root) == before


def test_a_payload_that_fails_its_hash_is_refused_before_running(root: Path, tmp_path: Path) -> None:
    """A payload whose bytes differ from the hash on the command line is refused by the bootstrap
    before any of it runs: the module that would write a marker file never ran."""
    marker = tmp_path / "ran"
    good = build_payload()
    modules = dict(good.modules)
    modules["kensa.hosts.agent.compat"] = (False, f"open({str(marker)!r}, 'w').write('ran')\n" + modules["kensa.hosts.agent.compat"][1])
    blob = zlib.compress(json.dumps(modules, sort_keys=True).encode(), 9)
    tampered = Payload(modules, blob, hashlib.sha256(blob).hexdigest())
    with pytest.raises(AgentError, match="payload hash mismatch") as caught:
        connect(transport("tampered"), str(root), payload=tampered)
    assert "tampered" in str(caught.value)
    assert not marker.exists()


class ScriptTransport(SubprocessTransport):
    """Runs ``script`` (Python) instead of the agent: a target that misbehaves on purpose."""

    def __init__(self, script: str) -> None:
        super().__init__(name="broken-target")
        self.script = script

    def spawn(self, argv: Sequence[str], ready: bytes, timeout: float) -> "subprocess.Popen[bytes]":
        return super().spawn([sys.executable, "-c", self.script], ready, timeout)


_ANSWER_HELLO_WITH = '''
import os, sys
out = sys.stdout.buffer
out.write({ready!r}); out.flush()
size = int.from_bytes(sys.stdin.buffer.read(4), "big")
sys.stdin.buffer.read(size)
sys.stdin.buffer.read(4)
out.write({answer!r}); out.flush()
import time; time.sleep(60)
'''


@pytest.mark.parametrize("answer, match", [
    (b"\x7f\xff\xff\xff", "above the limit"),
    (b"\x00\x00\x00\x09not json!", "not the protocol"),
    (b"\x00\x00\x00\x02[]", "not a message object"),
])
def test_an_oversize_or_garbage_frame_is_an_agent_error_not_a_hang(root: Path, answer: bytes, match: str) -> None:
    """A frame announcing more than the bound (read no further), or one that is not a JSON message,
    fails the connection with AgentError naming the host while the bad agent still runs."""
    script = _ANSWER_HELLO_WITH.format(ready=READY, answer=answer)
    with pytest.raises(AgentError, match=match) as caught:
        connect(ScriptTransport(script), str(root), connect_timeout=30, max_frame_bytes=1 << 20)
    assert "broken-target" in str(caught.value)


def test_an_agent_that_dies_is_a_lost_connection(root: Path) -> None:
    """An agent that exits in the middle of a request is HostConnectionLost naming the host; the
    RemoteHost is then dead, so a resolver replaces it."""
    host = connect(transport("dying"), str(root))
    os.kill(host.hello["pid"], 9)
    with pytest.raises(HostConnectionLost, match="dying"):
        host.read_file("/etc/motd")
    assert not host.alive


def test_an_operation_past_its_timeout_stops_the_agent(root: Path) -> None:
    """A request slower than the operation timeout is RemoteTimeoutError naming the host, and the
    agent process is killed (its state is unknown) rather than left running."""
    host = connect(transport("slow"), str(root), operation_timeout=1)
    pid = host.hello["pid"]
    with pytest.raises(RemoteTimeoutError, match="slow"):
        host.run(["sleep", "30"], timeout=60)
    assert not host.alive
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def _interrupted(call: Any, after: float) -> None:
    """Run ``call`` with Ctrl-C arriving ``after`` seconds in (SIGALRM raising KeyboardInterrupt)."""
    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, after)
        with pytest.raises(KeyboardInterrupt):
            call()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_an_answer_that_arrives_after_an_interrupt_is_not_taken_for_the_next_request(root: Path) -> None:
    """Ctrl-C while the controller waits for a command's answer: the agent still sends it, and the
    next request gets its own answer, not that one (both are commands: a wrong answer would fit);
    the connection goes on."""
    host = connect(transport("interrupted"), str(root))
    try:
        _interrupted(lambda: host.run(["sh", "-c", "sleep 1; echo first"], timeout=30), 0.3)
        assert host.run(["echo", "second"], timeout=30).stdout == "second\n"
        assert host.read_bytes("/etc/motd") == b"welcome\n"
        assert host.alive
    finally:
        host.close()


def test_an_interrupt_inside_a_large_answer_leaves_the_next_request_its_own(root: Path) -> None:
    """Ctrl-C while a large answer (a 40 MiB read, many reads of the pipe) is half read: the rest of
    it is read and dropped before the next request's answer, which is that request's."""
    big = root / "etc" / "big"
    big.write_bytes(os.urandom(40 << 20))
    host = connect(transport("interrupted-big"), str(root), max_file_bytes=64 << 20, max_frame_bytes=128 << 20)
    try:
        _interrupted(lambda: host.read_bytes("/etc/big"), 0.25)
        assert host.read_bytes("/etc/motd") == b"welcome\n"
        assert host.read_bytes("/etc/big") == big.read_bytes()
    finally:
        host.close()


def test_a_request_larger_than_a_pipe_after_an_interrupted_large_answer_is_not_stalled(root: Path) -> None:
    """Ctrl-C while a large answer (a 40 MiB read) is half read leaves the agent writing the rest;
    it reads nothing more until that is written. The next request is a write of 1 MiB, more than
    the pipe to the agent holds: the controller reads the rest of the dropped answer before it
    writes, so the write is done (not stalled until the operation timeout stops the agent)."""
    (root / "etc" / "big").write_bytes(os.urandom(40 << 20))
    data = os.urandom(1 << 20)
    host = connect(transport("interrupted-then-write"), str(root), operation_timeout=20,
                   max_file_bytes=64 << 20, max_frame_bytes=128 << 20)
    try:
        _interrupted(lambda: host.read_bytes("/etc/big"), 0.25)
        host.write_file("/etc/new", data)
        assert (root / "etc" / "new").read_bytes() == data
        assert host.read_bytes("/etc/motd") == b"welcome\n"
    finally:
        host.close()


def test_a_request_from_another_thread_after_an_interrupt_gets_its_own_answer(root: Path) -> None:
    """Ctrl-C in the main thread while a command's answer is on its way; another thread then asks
    a read on the same connection: it is given the file's bytes, not the command's answer, and
    the connection goes on for the main thread too."""
    host = connect(transport("interrupted-threads"), str(root))
    found: List[Any] = []
    try:
        _interrupted(lambda: host.run(["sh", "-c", "sleep 1; echo first"], timeout=30), 0.3)
        reader = threading.Thread(target=lambda: found.append(host.read_bytes("/etc/motd")))
        reader.start()
        reader.join(60)
        assert found == [b"welcome\n"]
        assert host.run(["echo", "main"], timeout=30).stdout == "main\n" and host.alive
    finally:
        host.close()


def test_an_oversize_answer_after_an_interrupt_was_read_through_still_closes_the_connection_at_once(root: Path) -> None:
    """Ctrl-C while a command runs; the next request gets its own answer, so every earlier answer
    has come. A later answer above the frame limit is then a broken agent as before any stop
    (AgentError naming the limit, connection closed), not dropped as an earlier caller's while
    the controller waits for an answer that never comes until the operation timeout."""
    (root / "etc" / "big").write_bytes(b"x" * (4 << 20))
    host = connect(transport("interrupted-then-big"), str(root), operation_timeout=20,
                   max_file_bytes=64 << 20, max_frame_bytes=1 << 20)
    try:
        _interrupted(lambda: host.run(["sh", "-c", "sleep 1; echo first"], timeout=30), 0.3)
        assert host.run(["echo", "second"], timeout=30).stdout == "second\n"
        with pytest.raises(AgentError, match="interrupted-then-big.*above the limit"):
            host.read_bytes("/etc/big")
        assert not host.alive
    finally:
        host.close()


_SLOW_OVERSIZE_FIRST = '''
import json, sys, time
out, inp = sys.stdout.buffer, sys.stdin.buffer

def asked():
    size = int.from_bytes(inp.read(4), "big")
    return json.loads(inp.read(size)) if size else None

first = asked()
time.sleep(0.5)
body = json.dumps({"ok": "x" * (4 << 20), "id": first["id"]}).encode()
sent = len(body).to_bytes(4, "big") + body
for at in range(0, len(sent), 1 << 16):
    out.write(sent[at:at + (1 << 16)]); out.flush(); time.sleep(0.02)
while True:
    request = asked()
    if request is None:
        break
    body = json.dumps({"ok": request.get("n"), "id": request["id"]}).encode()
    out.write(len(body).to_bytes(4, "big") + body); out.flush()
'''


def test_an_interrupt_while_an_oversize_dropped_answer_is_read_through_keeps_the_frames_apart() -> None:
    """Ctrl-C while the controller waits; that answer comes above the frame limit, slowly, and a
    second Ctrl-C arrives while the next request is reading it through: the third request still
    gets its own answer (the rest of the big frame is read through, not taken for a header), long
    before the operation timeout, and the connection goes on."""
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_OVERSIZE_FIRST], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    connection = AgentConnection(proc, SubprocessTransport(name="slow-big-target"), 20.0, 1 << 20)
    try:
        _interrupted(lambda: connection.request("info"), 0.2)
        _interrupted(lambda: connection.request("info"), 0.7)
        assert connection.request("info", n="third") == "third"
        assert connection.request("info", n="fourth") == "fourth" and connection.alive
    finally:
        connection.close()


_FLOOD_OF_OLD_IDS = '''
import json, sys
out, inp = sys.stdout.buffer, sys.stdin.buffer
size = int.from_bytes(inp.read(4), "big")
inp.read(size)
body = json.dumps({"ok": "old", "id": 0}).encode()
burst = (len(body).to_bytes(4, "big") + body) * 4096
try:
    while True:
        out.write(burst); out.flush()
except BrokenPipeError:
    pass
'''


def test_an_agent_flooding_answers_of_earlier_ids_is_stopped_at_the_operation_timeout() -> None:
    """An agent that answers a request with an endless stream of answers to earlier ids (each one
    dropped as an answer whose caller stopped waiting) never lets the pipe run dry: the controller
    still gives up at the operation timeout (RemoteTimeoutError, agent stopped) instead of dropping
    them for ever. A guard alarm far past that timeout fails the test rather than hanging it."""
    proc = subprocess.Popen([sys.executable, "-c", _FLOOD_OF_OLD_IDS], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    connection = AgentConnection(proc, SubprocessTransport(name="flooding-target"), 2.0, 1 << 20)

    def hung(signum: int, frame: Any) -> None:
        raise AssertionError("still dropping answers long past the operation timeout")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(60)
    try:
        with pytest.raises(RemoteTimeoutError, match="flooding-target"):
            connection.request("info")
        assert not connection.alive
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        connection.close()


_ID_TRUE = '''
import json, sys
out, inp = sys.stdout.buffer, sys.stdin.buffer
size = int.from_bytes(inp.read(4), "big")
inp.read(size)
body = json.dumps({"ok": "not yours", "id": True}).encode()
out.write(len(body).to_bytes(4, "big") + body); out.flush()
inp.read()
'''


def test_an_answer_whose_id_is_true_is_no_answer_to_request_one() -> None:
    """JSON true equals 1 in Python: an agent answering the first request with ``"id": true`` is
    not speaking the protocol, so the controller refuses that answer (AgentError naming the host,
    connection closed) instead of taking it as request 1's."""
    proc = subprocess.Popen([sys.executable, "-c", _ID_TRUE], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    connection = AgentConnection(proc, SubprocessTransport(name="bool-id-target"), 20.0, 1 << 20)
    try:
        with pytest.raises(AgentError, match="bool-id-target.*id True"):
            connection.request("info")
        assert not connection.alive
    finally:
        connection.close()


def test_target_errors_arrive_as_their_own_kensa_class(root: Path) -> None:
    """A HostAccessError on the target is a HostAccessError here, with its errno and the host in its message."""
    host = connect(transport("errs"), str(root))
    try:
        with pytest.raises(HostAccessError) as caught:
            host.write_file("/no/such/dir/file", b"x")
        assert caught.value.errno == 2
        assert str(caught.value).startswith("[Errno 2] errs: ")
        assert host.alive  # an error is an answer: the connection goes on
        assert host.read_bytes("/etc/motd") == b"welcome\n"
    finally:
        host.close()


def _package_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "src"
    shutil.copytree(SRC / "kensa", copy / "kensa", ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    return copy


def _payload_in(copy: Path) -> subprocess.CompletedProcess:
    code = "from kensa.hosts.payload import build_payload; print(sorted(build_payload().modules))"
    return subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, env={**os.environ, "PYTHONPATH": str(copy)})


def test_a_new_handler_module_is_sent_without_a_list(tmp_path: Path) -> None:
    """A module added to kensa.handlers, and the fact module it imports, are in the payload."""
    copy = _package_copy(tmp_path)
    (copy / "kensa" / "facts" / "extra_fact.py").write_text("VALUE = 1\n")
    (copy / "kensa" / "handlers" / "extra.py").write_text("from kensa.facts.extra_fact import VALUE\n")
    done = _payload_in(copy)
    assert done.returncode == 0, done.stderr
    assert "'kensa.handlers.extra'" in done.stdout and "'kensa.facts.extra_fact'" in done.stdout


def test_a_payload_that_would_import_controller_code_is_refused(tmp_path: Path) -> None:
    """A handler module importing the journal makes building the payload fail with AgentError
    naming the importing module and the module outside the payload."""
    copy = _package_copy(tmp_path)
    (copy / "kensa" / "handlers" / "leaky.py").write_text("from kensa.journal.store import SqliteJournal\n")
    done = _payload_in(copy)
    assert done.returncode != 0
    assert "AgentError: kensa.handlers.leaky imports kensa.journal.store, which is not target-side code" in done.stderr


def test_the_agent_runs_as_whom_the_transport_says_with_the_targets_python(tmp_path: Path) -> None:
    """Behind a setpriv prefix the agent runs as nobody with the system's python3 (not this run's):
    it reads a world-readable file, and its refused write of a root-owned file arrives as
    HostAccessError EACCES naming the host, the file unchanged."""
    from conftest import require_root

    require_root("to start the agent as another user")
    if shutil.which("setpriv") is None or not os.path.exists("/usr/bin/python3"):
        require_real("setpriv or /usr/bin/python3 is missing")
    import tempfile
    top = Path(tempfile.mkdtemp(prefix="kensa-agent-nobody-"))  # not under tmp_path: its parents are 0700
    try:
        top.chmod(0o755)
        (top / "etc").mkdir(mode=0o755)
        (top / "etc" / "motd").write_text("welcome\n")
        (top / "etc" / "motd").chmod(0o644)
        as_nobody = SubprocessTransport(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"],
                                        name="unprivileged", env={"PATH": "/usr/bin:/bin"})
        host = connect(as_nobody, str(top))
        try:
            assert host.hello["executable"].startswith("/usr/bin/python3")
            assert host.read_bytes("/etc/motd") == b"welcome\n"
            assert host.run(["id", "-un"], 10).stdout.strip() == "nobody"
            with pytest.raises(HostAccessError) as caught:
                host.write_file("/etc/motd", b"changed\n")
            assert caught.value.errno == 13 and "unprivileged" in str(caught.value)
        finally:
            host.close()
        assert (top / "etc" / "motd").read_text() == "welcome\n"
    finally:
        shutil.rmtree(top)


def test_a_remote_host_is_a_step_runner_like_the_local_one(root: Path, tmp_path: Path) -> None:
    """RemoteHost.run_phase gives what LocalStepRunner gives on an identical tree, phase by phase
    (capture through planned files too), one request each; a rollback without its pre-state is refused."""
    from kensa.errors import StepPhaseError
    from kensa.hosts.local import LocalHost, LocalStepRunner

    twin = tmp_path / "twin"
    shutil.copytree(root, twin)
    local = LocalStepRunner(LocalHost(str(twin)), default_registry())
    host = connect(transport("runner"), str(root))
    try:
        params = {"path": "/etc/ssh/sshd_config", "key": "PermitRootLogin", "value": "no"}
        planned = {"/etc/motd": FileInfo("file", 0o644, 0, 0, {}, b"planned\n")}
        for runner in (local, host):
            pre = runner.run_phase("config_set", Phase.CAPTURE, params, planned=planned)
            assert runner.run_phase("config_set", Phase.VALIDATE, params) is False
            applied = runner.run_phase("config_set", Phase.APPLY, params, pre)
            assert runner.run_phase("config_set", Phase.VALIDATE, params) is True
            back = runner.run_phase("config_set", Phase.ROLLBACK, params, pre)
            with pytest.raises(StepPhaseError):
                runner.run_phase("config_set", Phase.ROLLBACK, params)
            if runner is local:
                expected = (pre.data["content"], applied.ok, back.ok)  # type: ignore[union-attr]
        assert (pre.data["content"], applied.ok, back.ok) == expected  # type: ignore[union-attr]
        assert {op: n for op, n in host.connection.counts.items() if op != "hello"} == {
            "capture": 1, "validate": 2, "apply": 1, "rollback": 1}
    finally:
        host.close()
    assert snapshot(root) == snapshot(twin)


def test_deeply_nested_values_are_refused_as_protocol_errors() -> None:
    """A value nested past the interpreter's recursion limit is a FrameError, never a RecursionError."""
    deep: Any = "x"
    for _ in range(sys.getrecursionlimit() + 100):
        deep = {"t": [deep]}
    with pytest.raises(FrameError, match="nested too deeply"):
        decode_value(deep)
    from kensa.hosts.agent.wire import parse
    with pytest.raises(FrameError):
        parse(b"[" * 100000 + b"]" * 100000)


def test_nothing_is_written_on_the_target_outside_what_the_steps_change(root: Path, tmp_path: Path) -> None:
    """Traced with strace, the agent with its cache off (the shell that finds Python, the bootstrap, the
    payload, a capture, apply and rollback) creates, renames or removes nothing but the step's own files
    under the target root (and opens /dev/null): no module, bytecode or cache file is left behind."""
    log = tmp_path / "strace.log"
    host = connect(traced_transport(log, agent_env()), str(root), agent_cache=False)
    try:
        params = {"path": "/etc/motd", "content": "traced\n"}
        pre = host.run_phase("file_content", Phase.CAPTURE, params)
        assert host.run_phase("file_content", Phase.APPLY, params, pre).ok  # type: ignore[union-attr]
        assert host.run_phase("file_content", Phase.ROLLBACK, params, pre).ok  # type: ignore[union-attr]
    finally:
        host.close()
    changes = traced_changes(log)
    assert changes, "strace saw none of the step's own writes: the trace is not working"
    outside = [call for call in changes if str(root) not in call and '"/dev/null"' not in call]
    assert outside == []


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_an_agent_whose_controller_goes_away_mid_request_stops_at_once(root: Path) -> None:
    """sshd gives a session without a terminal no hangup when its client dies, so an agent busy in
    a request must notice on its own that the controller's end of its pipe closed, and stop then
    instead of going on changing the target while recovery may run. Here the agent is a grandchild
    (as behind sshd): killing its parent and closing the pipes must end it well before its 30 s
    request would."""
    import threading
    import time

    shell = SubprocessTransport(("sh", "-c", 'exec 3<&0; "$@" <&3 3<&- & wait', "sh"), name="orphaned", env=agent_env())
    host = connect(shell, str(root))
    agent = host.hello["pid"]
    assert agent != host.connection.proc.pid
    failures: List[BaseException] = []

    def long_request() -> None:
        try:
            host.run(["sleep", "30"], timeout=60)
        except BaseException as exc:  # the lost connection, expected
            failures.append(exc)

    worker = threading.Thread(target=long_request)
    worker.start()
    deadline = time.monotonic() + 10
    while not any(open(f"/proc/{agent}/task/{t}/children").read().split() for t in os.listdir(f"/proc/{agent}/task")):
        assert time.monotonic() < deadline, "the agent never started its request"
        time.sleep(0.05)
    # As when the ssh client dies: the controller's end of the agent's request pipe closes.
    os.kill(host.connection.proc.pid, 9)
    host.connection.proc.stdin.close()
    deadline = time.monotonic() + 10
    while not _gone(agent):
        assert time.monotonic() < deadline, "the agent went on with its request after the controller left"
        time.sleep(0.05)
    worker.join(5)
    assert failures and isinstance(failures[0], HostConnectionLost)


def test_a_request_on_a_descriptor_closed_under_it_is_a_lost_connection(root: Path) -> None:
    """A connection whose pipe was closed under it (another thread closing it) answers the next
    request with HostConnectionLost naming the host, never a bare OSError (EBADF) from select."""
    host = connect(transport("closed-under"), str(root))
    try:
        os.close(host.connection.proc.stdout.fileno())
        with pytest.raises(HostConnectionLost, match="closed-under"):
            host.read_file("/etc/motd")
    finally:
        try:
            host.close()
        except OSError:
            pass


def test_starting_the_agent_starts_one_python_on_the_target(root: Path, tmp_path: Path) -> None:
    """The agent's command runs the target's Python once: the version check is the agent program's own
    first line, not a Python started only to ask its version (a Python start is most of the agent's
    start-up CPU, paid per host)."""
    log = tmp_path / "starts"
    host = connect(transport("one-python", logging_python(tmp_path / "bin", log)), str(root))
    try:
        assert host.read_file("/etc/motd") is not None
    finally:
        host.close()
    assert log.read_text().split() == ["start"]


def test_a_python3_older_than_36_is_passed_over_for_a_newer_python3x(root: Path, tmp_path: Path) -> None:
    """A ``python3`` that is 3.5 exits at the agent program's first line, before the bootstrap is
    compiled, and the command goes on to the next candidate (here python3.X, this run's Python)."""
    log = tmp_path / "starts"
    path = logging_python(tmp_path / "bin", log, version="3.5")
    minor = f"python3.{sys.version_info.minor}"
    (tmp_path / "bin" / minor).symlink_to(sys.executable)
    host = connect(transport("old-python3", f"{tmp_path / 'bin'}"), str(root))
    try:
        assert host.hello["python"][:2] == list(sys.version_info[:2])
        assert host.hello["executable"].endswith(minor)
    finally:
        host.close()
    assert log.read_text().split() == ["start"]


def _handler_modules(host: Any, root: Path) -> List[str]:
    """The kensa.handlers modules the agent has imported so far (a second hello asks it)."""
    return list(host.connection.request("hello", root=str(root))["handler_modules"])


def test_the_agent_imports_a_handler_module_on_the_first_request_naming_its_mechanism(root: Path) -> None:
    """A run uses a few of the mechanisms: the agent starts without importing any handler module and
    imports a mechanism's own module (and what that imports) on the first request that names it."""
    host = connect(transport("lazy"), str(root))
    try:
        assert host.hello["handler_modules"] == []
        assert host.hello["mechanisms"] == sorted(default_registry())
        handlers = host.handlers(default_registry())
        params = {"path": "/etc/ssh/sshd_config", "key": "PermitRootLogin", "value": "no", "separator": " "}
        handlers["config_set"].capture(host, params)
        loaded = _handler_modules(host, root)
        assert "kensa.handlers.config_set" in loaded
        assert not {"kensa.handlers.packages", "kensa.handlers.services", "kensa.handlers.grub"} & set(loaded)
        assert host.run_phase("file_content", Phase.VALIDATE, {"path": "/etc/motd", "content": "welcome\n"}) is True
        assert "kensa.handlers.file_content" in _handler_modules(host, root)
    finally:
        host.close()


def test_the_payload_s_handler_index_names_every_built_in_mechanism_and_its_class() -> None:
    """On the target, kensa.handlers is the index the agent loads handlers by, built from the
    controller's registry when the payload is built (not a second list)."""
    index: dict = {}
    exec(compile(build_payload().modules["kensa.handlers"][1], "<index>", "exec"), index)
    expected = {name: [type(handler).__module__, type(handler).__qualname__] for name, handler in default_registry().items()}
    assert {name: list(where) for name, where in index["INDEX"].items()} == expected
