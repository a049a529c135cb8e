"""The agent's compiled-payload cache on the target: one copy named by the payload's hash, trusted
only when it is private to the login user and its hash holds.

The agent is a real process (SubprocessTransport) whose HOME is a directory of
the test; the cache file, its directory, their owners and modes are real.
"""

from __future__ import annotations

import hashlib
import marshal
import os
import stat
import sys
from pathlib import Path
from typing import Dict

import pytest

from agent_targets import agent_env, motd_root, traced_changes, traced_transport
from conftest import require_root
from kensa.hosts.agent.bootstrap import CACHE_MAGIC, KEEP_COPIES
from kensa.hosts.payload import build_payload
from kensa.hosts.remote import RemoteHost, SubprocessTransport, connect
from kensa.model import Phase


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return motd_root(tmp_path)


def _env(home: Path) -> Dict[str, str]:
    home.mkdir(exist_ok=True)
    return dict(agent_env(), HOME=str(home))


def _connect(root: Path, home: Path, cache: bool = True) -> RemoteHost:
    return connect(SubprocessTransport(name="cached", env=_env(home)), str(root), agent_cache=cache)


def _cache_file(home: Path) -> Path:
    return home / ".cache" / "kensa" / f"agent-{build_payload().sha256}-{sys.implementation.cache_tag}.bin"


def _works(host: RemoteHost) -> None:
    params = {"path": "/etc/motd", "content": "changed\n"}
    pre = host.run_phase("file_content", Phase.CAPTURE, params)
    assert host.run_phase("file_content", Phase.APPLY, params, pre).ok  # type: ignore[union-attr]
    assert host.run_phase("file_content", Phase.VALIDATE, params) is True
    assert host.run_phase("file_content", Phase.ROLLBACK, params, pre).ok  # type: ignore[union-attr]


def test_the_first_agent_writes_one_private_copy_and_the_next_uses_it(root: Path, tmp_path: Path) -> None:
    """The first agent compiles the payload and keeps it as one file named by the payload's hash and the
    Python's cache tag, mode 0600 in a 0700 directory of the login user; the next agent reports a hit and
    runs a capture, apply, validate and rollback from it. Of the copies of other payloads (other kensa
    versions reaching this host) the newest are kept, KEEP_COPIES in all with the new one."""
    home = tmp_path / "home"
    (home / ".cache" / "kensa").mkdir(parents=True, mode=0o700)
    others = []
    for age, digit in enumerate("012"):
        other = home / ".cache" / "kensa" / f"agent-{digit * 64}-{sys.implementation.cache_tag}.bin"
        other.write_bytes(b"another kensa's copy")
        os.utime(other, ns=(1_000_000_000 * (age + 1),) * 2)
        others.append(other)
    first = _connect(root, home)
    try:
        assert first.hello["cache"].startswith("written: ")
        _works(first)
    finally:
        first.close()
    cached = _cache_file(home)
    assert KEEP_COPIES == 3
    assert sorted(os.listdir(cached.parent)) == sorted([cached.name, others[1].name, others[2].name])
    assert stat.S_IMODE(cached.stat().st_mode) == 0o600 and cached.stat().st_uid == os.geteuid()
    assert stat.S_IMODE(cached.parent.stat().st_mode) == 0o700
    os.utime(cached, ns=(1_000_000_000,) * 2)
    second = _connect(root, home)
    try:
        assert second.hello["cache"] == f"hit: {cached.parent}/{cached.name}"
        _works(second)
    finally:
        second.close()
    # A hit makes the copy the newest: the oldest copies are the ones another version's write removes.
    assert cached.stat().st_mtime_ns > others[2].stat().st_mtime_ns
    assert (root / "etc" / "motd").read_text() == "welcome\n"


def test_a_tampered_cached_copy_is_not_used_and_is_replaced(root: Path, tmp_path: Path) -> None:
    """A cached copy whose body was changed (here: code that would write a marker file) without its hash
    is not run: the agent reports it, compiles from the verified payload and writes a good copy again."""
    home = tmp_path / "home"
    _connect(root, home).close()
    cached = _cache_file(home)
    data = cached.read_bytes()
    header, digest, body = data.split(b"\n", 2)
    codes = marshal.loads(body)
    marker = tmp_path / "ran"
    codes["kensa.hosts.agent.compat"] = compile(f"open({str(marker)!r}, 'w').write('ran')\n", "evil", "exec")
    cached.write_bytes(header + b"\n" + digest + b"\n" + marshal.dumps(codes))
    host = _connect(root, home)
    try:
        assert host.hello["cache"] == f"replaced: {cached.name} fails its hash"
        _works(host)
    finally:
        host.close()
    assert not marker.exists()
    header, digest, body = cached.read_bytes().split(b"\n", 2)
    assert header + b"\n" == CACHE_MAGIC and hashlib.sha256(body).hexdigest().encode() == digest


def test_a_cached_copy_others_may_write_is_replaced(root: Path, tmp_path: Path) -> None:
    """A cached copy that is group- or world-writable is not trusted, even with a good hash: replaced
    by a private one."""
    home = tmp_path / "home"
    _connect(root, home).close()
    cached = _cache_file(home)
    cached.chmod(0o666)
    host = _connect(root, home)
    try:
        assert host.hello["cache"].startswith(f"replaced: {cached.name} has mode 0666")
    finally:
        host.close()
    assert stat.S_IMODE(cached.stat().st_mode) == 0o600


@pytest.mark.parametrize("how", ["world-writable", "another user's"])
def test_a_cache_directory_that_is_not_private_is_refused(root: Path, tmp_path: Path, how: str) -> None:
    """A cache directory others may write, or one owned by another user, is refused: the agent says why
    in hello, reads and writes nothing there, and runs from the verified payload."""
    home = tmp_path / "home"
    directory = home / ".cache" / "kensa"
    directory.mkdir(parents=True)
    if how == "world-writable":
        directory.chmod(0o777)
        why = "has mode 0777"
    else:
        require_root("to give the cache directory to another user")
        os.chown(directory, 65534, 65534)
        directory.chmod(0o700)
        why = "is owned by uid 65534"
    host = _connect(root, home)
    try:
        assert host.hello["cache"].startswith(f"refused: {directory} ") and why in host.hello["cache"]
        _works(host)
    finally:
        host.close()
    assert os.listdir(directory) == []


def test_with_the_cache_on_the_agent_writes_only_in_its_cache_directory(root: Path, tmp_path: Path) -> None:
    """Traced with strace, an agent with its cache on creates, renames or removes nothing outside the
    step's own files but its cache directory (the directories on the way, a temporary file renamed
    to the one copy); with the copy there, the next agent writes nothing outside the step's files."""
    home = tmp_path / "home"
    home.mkdir()
    for round_ in ("first", "second"):
        log = tmp_path / f"strace-{round_}.log"
        host = connect(traced_transport(log, _env(home)), str(root), agent_cache=True)
        try:
            _works(host)
        finally:
            host.close()
        changes = traced_changes(log)
        assert changes, "strace saw none of the step's own writes: the trace is not working"
        outside = [call for call in changes if str(root) not in call and '"/dev/null"' not in call]
        if round_ == "first":
            assert outside and all(str(home / ".cache") in call for call in outside), outside
        else:
            assert outside == []


def test_the_cli_turns_the_cache_off_with_no_agent_cache(tmp_path: Path) -> None:
    """``kensa remediate ... --no-agent-cache`` asks the engine's connections for agents that write nothing
    on the hosts; without it the cache is on (the default), for the command's own connections too."""
    from kensa.cli.main import build_parser
    from kensa.cli.remote import RemoteRun

    parser = build_parser()
    rules = tmp_path / "rules"
    rules.mkdir()
    off = parser.parse_args(["remediate", str(rules), "-H", "web01", "--no-agent-cache"])
    on = parser.parse_args(["remediate", str(rules), "-H", "web01"])
    assert RemoteRun(None, args=off).engine_options()["agent_cache"] is False
    assert RemoteRun(None, args=on).engine_options()["agent_cache"] is True
