"""``--python`` and the inventory's interpreter over real SSH (tests/sshd.py): check, remediate,
rollback and recover start kensa's agent with exactly the interpreter given, and a
relative one is refused before any host is reached.

The interpreter is a wrapper script that logs each start and then runs this
test run's Python, so a test counts the agents it started.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, List

import pytest

from agent_targets import logging_python
from conftest import snapshot_tree
from kensa.cli.main import EXIT_BAD_INPUT, EXIT_OK, build_parser
from kensa.journal.store import SqliteJournal
from kensa.model import RemoteTarget, Status, Step, Transaction
from test_ssh_e2e import host_arg, kensa_cli, key_of, login, make_root, rules_dir


def wrapper(tmp_path: Path) -> Path:
    logging_python(tmp_path / "py", tmp_path / "starts")
    return tmp_path / "py" / "python3"


def starts(tmp_path: Path) -> int:
    log = tmp_path / "starts"
    return len(log.read_text().split()) if log.exists() else 0


def test_python_runs_that_interpreter_for_check_remediate_and_rollback(sshd_rig: Any, sshd_host: Any,
                                                                         tmp_path: Path) -> None:
    """check, remediate and rollback by id with --python each start the agent with exactly that
    interpreter over SSH, and work: remediate commits, rollback restores the root."""
    root = make_root(sshd_rig, "py")
    before = snapshot_tree(root)
    python = wrapper(tmp_path)
    journal = str(tmp_path / "j.db")
    common = ["-H", host_arg(sshd_host), "--root", str(root), *login(sshd_rig, tmp_path), "--python", str(python)]
    code, out = kensa_cli("--journal", journal, "--no-audit", "check", rules_dir(tmp_path), *common, "--json")
    assert json.loads(out)["hosts"][0]["host"] == key_of(sshd_host, root), out
    checked = starts(tmp_path)
    assert checked >= 1
    code, out = kensa_cli("--journal", journal, "--no-audit", "remediate", rules_dir(tmp_path), *common, "--json")
    assert code == EXIT_OK, out
    results = json.loads(out)["hosts"][0]["results"]
    assert [r["status"] for r in results] == ["committed"] * 2
    remediated = starts(tmp_path)
    assert remediated > checked
    for result in results:
        code, out = kensa_cli("--journal", journal, "--no-audit", "rollback", result["txn"],
                              *login(sshd_rig, tmp_path), "--python", str(python))
        assert code == EXIT_OK, out
    assert starts(tmp_path) > remediated
    assert snapshot_tree(root) == before


def test_recover_reconnects_with_the_given_python(sshd_rig: Any, sshd_host: Any, tmp_path: Path) -> None:
    """An interrupted remote transaction (its agent killed at the apply, started with the engine's
    python_for) is recovered by ``kensa recover --python`` through a new agent of that interpreter."""
    from kensa.factory import default_engine
    from kensa.hosts.ssh import SshOptions, SshTransport

    root = make_root(sshd_rig, "py-recover")
    before = snapshot_tree(root)
    python = str(wrapper(tmp_path))
    journal = str(tmp_path / "j.db")
    options = SshOptions(known_hosts_file=str(tmp_path / "known_hosts"), connect_timeout=20)

    def transport_for(target: RemoteTarget) -> SshTransport:
        return SshTransport(RemoteTarget(target.host, target.user, target.port, target.root,
                                         str(sshd_rig.user_key)), options)

    engine = default_engine(journal, audit=False, remote=transport_for, connect_timeout=30,
                            python_for=lambda target: python)
    key = key_of(sshd_host, root)
    txn = Transaction(rule="ssh-py-recover", host=key, steps=(
        Step("file_content", {"path": "/etc/issue.net", "content": "Authorized use only\n"}),
        Step("file_content", {"path": "/srv/motd", "content": "new motd\n"}),
    ))
    host = engine.hosts(key)
    applies: List[str] = []

    def kill_at_second_apply(op: str, mechanism: Any) -> None:
        if op == "apply":
            applies.append(mechanism)
            if len(applies) == 2:
                os.kill(host.hello["pid"], 9)

    host.connection.observer = kill_at_second_apply
    result = engine.run(txn)
    assert result.status is Status.ERRORED and not result.host_unchanged
    assert (root / "etc" / "issue.net").read_text() == "Authorized use only\n"
    with SqliteJournal(journal, create=False) as j:
        assert [e.txn.id for e in j.interrupted()] == [txn.id]
    started = starts(tmp_path)
    assert started == 1
    code, out = kensa_cli("--journal", journal, "--no-audit", "recover", *login(sshd_rig, tmp_path), "--python", python)
    assert code == EXIT_OK, out
    assert key in out
    assert starts(tmp_path) == 2
    assert snapshot_tree(root) == before


def test_an_inventory_interpreter_wins_over_python_and_is_run(sshd_rig: Any, sshd_host: Any, tmp_path: Path) -> None:
    """A host's ansible_python_interpreter in the inventory is run over SSH; --python, a default for
    inventory hosts, does not replace it (here --python names a file that is not there)."""
    root = make_root(sshd_rig, "py-inv", banner="Authorized use only\n")
    python = wrapper(tmp_path)
    inventory = tmp_path / "hosts.ini"
    inventory.write_text(f"web ansible_host=127.0.0.1 ansible_port={sshd_host.port} ansible_user=root "
                         f"kensa_root={root} ansible_python_interpreter={python}\n")
    code, out = kensa_cli("--journal", str(tmp_path / "j.db"), "--no-audit", "check", rules_dir(tmp_path),
                          "--inventory", str(inventory), *login(sshd_rig, tmp_path),
                          "--python", str(tmp_path / "absent" / "python3"), "--json")
    verdicts = {r["rule"]: r["verdict"] for r in json.loads(out)["hosts"][0]["rules"]}
    assert verdicts["ssh-e2e-banner"] == "compliant", out
    assert starts(tmp_path) >= 1


def test_a_missing_python_fails_the_host_naming_it_and_changes_nothing(sshd_rig: Any, sshd_host: Any,
                                                                        tmp_path: Path) -> None:
    """remediate --python naming a file absent on the host: that host's rules error naming the host
    and the interpreter, and its root is unchanged."""
    root = make_root(sshd_rig, "py-missing")
    before = snapshot_tree(root)
    missing = "/nonexistent/kensa-test/python3"
    code, out = kensa_cli("--journal", str(tmp_path / "j.db"), "--no-audit", "remediate", rules_dir(tmp_path),
                          "-H", host_arg(sshd_host), "--root", str(root), *login(sshd_rig, tmp_path),
                          "--python", missing)
    assert code != EXIT_OK
    assert f"127.0.0.1:{sshd_host.port}" in out and f"the Python interpreter {missing} is not there" in out, out
    assert snapshot_tree(root) == before


@pytest.mark.parametrize("command", ["check", "remediate", "rollback", "recover"])
def test_a_relative_python_is_refused_before_any_host_is_reached(tmp_path: Path, command: str,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """--python python3 (looked up on PATH) is a usage error of every command that reaches hosts."""
    argv = {"check": ["rules.yml", "-H", "web01"], "remediate": ["rules.yml", "-H", "web01"],
            "rollback": ["txn-1"], "recover": []}[command]
    with pytest.raises(SystemExit) as caught:
        build_parser().parse_args([command, *argv, "--python", "python3"])
    assert caught.value.code == EXIT_BAD_INPUT
    assert "expected an absolute path" in capsys.readouterr().err
