"""kensa's agent and its protocol: the payload, Python 3.6, the bootstrap's checks, and faults.

The agent runs as a real process through SubprocessTransport (tests/agent_targets.py),
speaking the real framed protocol; the faults come from real processes that
misbehave (a target without Python, a tampered payload, garbage on the pipe, a
command that outlives the operation timeout).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import zlib
import json
import hashlib
from dataclasses import replace
from pathlib import Path
from typing import Any, List, Sequence

import pytest

from agent_targets import py36_path, transport
from conftest import require_real
from conftest import snapshot_tree as snapshot
from kensa.errors import AgentError, HostAccessError, HostConnectionLost, RemoteTimeoutError
from kensa.handlers import default_registry
from kensa.handlers.filestate import FilePlan
from kensa.hosts.agent import compat
from kensa.hosts.agent.wire import READY, FrameError, decode_value, encode_value
from kensa.hosts.payload import Payload, build_payload, for_old_python
from kensa.hosts.remote import SubprocessTransport, connect
from kensa.model import Assessment, Drift, FileInfo, Phase, PreState, RollbackResult, StepResult

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    top = tmp_path / "root"
    (top / "etc" / "ssh").mkdir(parents=True)
    (top / "etc" / "ssh" / "sshd_config").write_text("Port 22\nPermitRootLogin yes\n")
    (top / "etc" / "motd").write_text("welcome\n")
    return top


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
        steps = [("config_set", {"path": "/etc/ssh/sshd_config", "key": "PermitRootLogin", "value": "no"}),
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
