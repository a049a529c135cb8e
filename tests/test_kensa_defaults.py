"""Defaults that Kensa's rules rely on: config_set's separator and sysctl_set's persist file."""

from __future__ import annotations

from pathlib import Path

from conftest import snapshot_tree
from kensa.engine import Engine
from kensa.facts.sysctl import boot_value
from kensa.handlers import default_registry
from kensa.hosts.local import LocalHost, resolve_host
from kensa.model import PreState, Status, Step, Transaction

REGISTRY = default_registry()


def _root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    for sub in ("etc/sysctl.d", "etc/security", "etc/ssh", "usr/lib/sysctl.d", "usr/local/lib", "lib", "run"):
        (root / sub).mkdir(parents=True)
    (root / "proc/sys/vm").mkdir(parents=True)
    (root / "proc/sys/vm/swappiness").write_text("60\n")
    return root


def test_config_set_writes_key_equals_value_without_a_separator(tmp_path: Path) -> None:
    """A config_set step that names no separator writes ``key=value``, as Kensa's rules expect
    (their sshd rules say ``separator: " "`` for that reason), and its check reads it back."""
    root = _root(tmp_path)
    host = LocalHost(str(root))
    params = {"path": "/etc/security/faillock.conf", "key": "deny", "value": "3"}
    handler = REGISTRY["config_set"]
    assert not handler.validate(host, params)
    handler.apply(host, params, handler.capture(host, params))
    assert (root / "etc/security/faillock.conf").read_text() == "deny=3\n"
    assert handler.validate(host, params)
    spaced = {"path": "/etc/ssh/sshd_config", "key": "PermitRootLogin", "value": "no", "separator": " "}
    handler.apply(host, spaced, handler.capture(host, spaced))
    assert (root / "etc/ssh/sshd_config").read_text() == "PermitRootLogin no\n"


def test_sysctl_default_persist_file_sorts_after_a_leftover_shared_file(tmp_path: Path) -> None:
    """Without a persist_file the value goes to ``99-kensa_<key>.conf``, which systemd-sysctl
    reads after a leftover ``99-kensa.conf`` of older tools, so the new value wins at boot."""
    root = _root(tmp_path)
    (root / "etc/sysctl.d/99-kensa.conf").write_text("vm.swappiness = 60\n")
    engine = Engine(REGISTRY, hosts=resolve_host)
    result = engine.run(Transaction("swap", (Step("sysctl_set", {"key": "vm.swappiness", "value": "10"}),), host=str(root)))
    assert result.status is Status.COMMITTED, result
    assert (root / "etc/sysctl.d/99-kensa_vm.swappiness.conf").read_text() == "vm.swappiness = 10\n"
    assert boot_value(LocalHost(str(root)), "vm.swappiness") == ("10", "/etc/sysctl.d/99-kensa_vm.swappiness.conf")


def test_a_pre_state_naming_the_old_persist_file_still_rolls_back(tmp_path: Path) -> None:
    """A journaled pre-state of an older kensa, whose default file was ``99-kensa-<key>.conf``,
    restores that file (the path is in the pre-state, not recomputed from the default)."""
    root = _root(tmp_path)
    host = LocalHost(str(root))
    before = snapshot_tree(root)
    handler = REGISTRY["sysctl_set"]
    old_name = "/etc/sysctl.d/99-kensa-vm.swappiness.conf"
    pre = handler.capture(host, {"key": "vm.swappiness", "value": "10", "persist_file": old_name})
    assert handler.apply(host, {"key": "vm.swappiness", "value": "10", "persist_file": old_name}, pre).ok
    journaled = PreState(pre.mechanism, {"key": "vm.swappiness", "value": "10"}, pre.data)
    assessment = handler.assess(host, journaled)
    result = handler.restore(host, journaled, assessment)
    assert result.ok, result.detail
    assert snapshot_tree(root) == before


def test_a_config_set_pre_state_of_the_old_default_still_reverts_only_its_line(tmp_path: Path) -> None:
    """A config_set step journaled by an older kensa (no separator given, a space written):
    after an operator's edit elsewhere in the file, a rollback by id still finds kensa's
    ``Key value`` line and reverts only it."""
    root = _root(tmp_path)
    conf = root / "etc/ssh/sshd_config"
    conf.write_text("Port 22\nPermitRootLogin yes\n")
    host = LocalHost(str(root))
    handler = REGISTRY["config_set"]
    spaced = {"path": "/etc/ssh/sshd_config", "key": "PermitRootLogin", "value": "no", "separator": " "}
    pre = handler.capture(host, spaced)
    assert handler.apply(host, spaced, pre).ok
    conf.write_text(conf.read_text() + "MaxAuthTries 3\n")
    journaled = PreState(pre.mechanism, {k: v for k, v in spaced.items() if k != "separator"}, pre.data)
    result = handler.restore(host, journaled, handler.assess(host, journaled))
    assert result.ok, result.detail
    assert conf.read_text() == "Port 22\nPermitRootLogin yes\nMaxAuthTries 3\n"
