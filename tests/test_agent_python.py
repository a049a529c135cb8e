"""The target's Python interpreter given per host: exactly that one runs, or the host fails naming it.

The agent runs as a real process through SubprocessTransport (tests/agent_targets.py);
the interpreters are wrapper scripts that log each start and then run this test
run's Python, so a test sees which one the agent's command started.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from agent_targets import logging_python, motd_root, transport, transport_for
from conftest import snapshot_tree as snapshot
from kensa.errors import AgentError, UsageError
from kensa.hosts.payload import agent_command, build_payload
from kensa.hosts.remote import RemoteHosts, connect
from kensa.hosts.ssh import check_target
from kensa.model import RemoteTarget


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return motd_root(tmp_path)


def pinned(tmp_path: Path, name: str, version: str = "") -> Path:
    """A logging interpreter at ``tmp_path/name/python3``; its starts are logged in ``tmp_path/name.log``."""
    logging_python(tmp_path / name, tmp_path / f"{name}.log", version)
    return tmp_path / name / "python3"


def starts(tmp_path: Path, name: str) -> int:
    log = tmp_path / f"{name}.log"
    return len(log.read_text().split()) if log.exists() else 0


def test_the_given_interpreter_runs_and_the_python3_on_path_does_not(root: Path, tmp_path: Path) -> None:
    """With ``python=``, the agent starts with exactly that interpreter and works; the ``python3``
    first on the target's PATH (a shim) is never started."""
    path = logging_python(tmp_path / "shim", tmp_path / "shim.log")
    python = pinned(tmp_path, "pinned")
    host = connect(transport("pinned-host", path), str(root), python=str(python))
    try:
        assert host.read_file("/etc/motd") is not None
    finally:
        host.close()
    assert starts(tmp_path, "pinned") == 1
    assert starts(tmp_path, "shim") == 0


def test_a_missing_interpreter_is_an_error_naming_host_and_path_and_nothing_else_runs(root: Path, tmp_path: Path) -> None:
    """A given interpreter that does not exist fails the host with AgentError naming the host and the
    path; no other Python is tried (the working python3 on PATH is not started); nothing changes."""
    path = logging_python(tmp_path / "shim", tmp_path / "shim.log")
    before = snapshot(root)
    missing = str(tmp_path / "no" / "python3")
    with pytest.raises(AgentError, match=rf"host missing-host: the Python interpreter {missing} is not there"):
        connect(transport("missing-host", path), str(root), python=missing)
    assert starts(tmp_path, "shim") == 0
    assert snapshot(root) == before


def test_a_given_interpreter_older_than_36_is_an_error_and_no_other_is_tried(root: Path, tmp_path: Path) -> None:
    """A given interpreter that is 3.5 exits at the agent program's first line with the no-Python error
    naming it; the newer python3 on PATH is not tried."""
    path = logging_python(tmp_path / "shim", tmp_path / "shim.log")
    old = pinned(tmp_path, "old", version="3.5")
    with pytest.raises(AgentError, match=rf"host old-host: the Python interpreter {old} is not there or is older than 3.6"):
        connect(transport("old-host", path), str(root), python=str(old))
    assert starts(tmp_path, "old") == 1
    assert starts(tmp_path, "shim") == 0


@pytest.mark.parametrize("bad", ["python3", "bin/python3", "/usr/bin/python3 -E", "/usr/bin/py\nthon3", ""])
def test_a_relative_or_odd_interpreter_is_refused_before_anything_runs(root: Path, tmp_path: Path, bad: str) -> None:
    """A relative path (or one with whitespace or a newline) is a UsageError naming the host, raised by
    connect before the transport starts anything, by check_target, and by agent_command."""
    path = logging_python(tmp_path / "shim", tmp_path / "shim.log")
    with pytest.raises(UsageError, match="refused-host: expected an absolute path"):
        connect(transport("refused-host", path), str(root), python=bad)
    assert starts(tmp_path, "shim") == 0
    with pytest.raises(UsageError, match="for web1: expected an absolute path"):
        check_target(RemoteTarget("web1", python=bad))
    with pytest.raises(UsageError, match="expected an absolute path"):
        agent_command(build_payload().sha256, python=bad)


def test_remote_hosts_runs_the_interpreter_python_for_names(root: Path, tmp_path: Path) -> None:
    """RemoteHosts connects a bare ``ssh://`` key with the interpreter ``python_for`` gives its target;
    python_for returning None keeps the search."""
    python = pinned(tmp_path, "fleet")
    given = RemoteTarget("fleet-host", root=str(root), python=str(python))
    hosts = RemoteHosts(transport_for, python_for=lambda target: given.python if target.key == given.key else None)
    try:
        host = hosts(given.key)
        assert host.hello["executable"]
        assert hosts(RemoteTarget("other-host", root=str(root)).key).read_file("/etc/motd") is not None
    finally:
        hosts.close()
    assert starts(tmp_path, "fleet") == 1
    assert given.key == RemoteTarget("fleet-host", root=str(root)).key
