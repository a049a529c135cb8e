"""config_set_dropin in temporary roots: exact rollback, exact commit, the footprint, bad
input, the rule's own check through the main file's Include (kensa's reading and the real
``sshd -T``), and a copy of this machine's /etc."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

import pytest

from conftest import require_real, require_root, snapshot_tree
from kensa.engine import Engine
from kensa.errors import ParamError, RollbackRefusedError
from kensa.handlers import default_registry
from kensa.hosts.local import LocalHost, resolve_host
from kensa.journal import SqliteJournal
from kensa.model import Status, Step, Transaction

REGISTRY = default_registry()
HANDLER = REGISTRY["config_set_dropin"]
REPO = Path(__file__).resolve().parent.parent
ENV = dict(os.environ, PYTHONPATH=str(REPO / "src"))

MAIN = "# main file\nInclude /etc/ssh/sshd_config.d/*.conf\nPort 22\nPermitRootLogin yes\n"
OTHER = "# operator's drop-in\nX11Forwarding yes\n"
DROPIN = {"dir": "/etc/ssh/sshd_config.d", "file": "00-kensa-root.conf", "key": "PermitRootLogin", "value": "no",
          "separator": " "}
JOURNALD = {"dir": "/etc/systemd/journald.conf.d", "file": "00-kensa.conf", "key": "Storage", "value": "persistent",
            "section": "[Journal]"}


def _set_xattrs(path: Path) -> None:
    os.setxattr(path, "user.kensa", b"label")
    if os.geteuid() == 0:
        os.setxattr(path, "trusted.kensa", b"trusted label")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A target root with sshd's main file including its drop-ins, a sudoers.d and a
    journald.conf.d; files and directories carry user.* (and, as root, trusted.*) xattrs."""
    top = tmp_path / "root"
    for sub in ("etc/ssh/sshd_config.d", "etc/sudoers.d", "etc/systemd/journald.conf.d"):
        (top / sub).mkdir(parents=True)
    (top / "etc/ssh/sshd_config").write_text(MAIN)
    (top / "etc/ssh/sshd_config.d/50-operator.conf").write_text(OTHER)
    (top / "etc/systemd/journald.conf").write_text("[Journal]\n#Storage=auto\n")
    for path in (top / "etc/ssh/sshd_config", top / "etc/ssh/sshd_config.d", top / "etc/ssh/sshd_config.d/50-operator.conf"):
        _set_xattrs(path)
    return top


def _engine(tmp_path: Path) -> Engine:
    return Engine(REGISTRY, hosts=resolve_host, journal=SqliteJournal(str(tmp_path / "j.db")))


def _run(engine: Engine, root: Path, *params: Dict[str, Any]) -> Any:
    steps = tuple(Step("config_set_dropin", p) for p in params)
    return engine.run(Transaction("dropin", steps, host=str(root)))


def test_apply_validate_rollback_leaves_the_whole_tree_identical(root: Path) -> None:
    """An existing drop-in (with xattrs, mode 0600) and a new one, set in one transaction whose
    validate then fails: the rollback leaves every file's bytes, mode, owner, xattrs and
    existence as they were, and the new file is gone."""
    existing = root / "etc/ssh/sshd_config.d/00-kensa-root.conf"
    existing.write_bytes(b"# kept\nPermitRootLogin yes")  # no final newline on purpose
    os.chmod(existing, 0o600)
    _set_xattrs(existing)
    host = LocalHost(str(root))
    before = snapshot_tree(root)
    steps = [dict(DROPIN), dict(JOURNALD)]
    pres = [HANDLER.capture(host, p) for p in steps]
    for p, pre in zip(steps, pres):
        assert HANDLER.apply(host, p, pre).ok
    assert all(HANDLER.validate(host, p) for p in steps)
    assert snapshot_tree(root) != before
    for pre in reversed(pres):
        result = HANDLER.rollback(host, pre)
        assert result.ok, result.detail
    assert snapshot_tree(root) == before


def test_commit_makes_exactly_the_intended_change(root: Path, tmp_path: Path) -> None:
    """A committed step changes only its drop-in: a new file holding the key line (0644),
    a section added for a systemd drop-in, and a sudoers.d file created 0440."""
    before = snapshot_tree(root)
    sudo = {"dir": "/etc/sudoers.d", "file": "00-kensa-pty", "key": "Defaults", "value": "use_pty", "separator": " "}
    result = _run(_engine(tmp_path), root, DROPIN, JOURNALD, sudo)
    assert result.status is Status.COMMITTED, result
    after = snapshot_tree(root)
    changed = {path for path in set(before) | set(after) if before.get(path) != after.get(path)}
    assert changed == {"etc/ssh/sshd_config.d/00-kensa-root.conf", "etc/systemd/journald.conf.d/00-kensa.conf",
                       "etc/sudoers.d/00-kensa-pty"}
    assert after["etc/ssh/sshd_config.d/00-kensa-root.conf"][1] == 0o644
    assert (root / "etc/ssh/sshd_config.d/00-kensa-root.conf").read_text() == "PermitRootLogin no\n"
    assert (root / "etc/systemd/journald.conf.d/00-kensa.conf").read_text() == "[Journal]\nStorage=persistent\n"
    assert (root / "etc/sudoers.d/00-kensa-pty").read_text() == "Defaults use_pty\n"
    assert after["etc/sudoers.d/00-kensa-pty"][1] == 0o440


def test_two_keys_share_one_dropin_and_a_section_keeps_other_keys(root: Path, tmp_path: Path) -> None:
    """Two rules writing one drop-in each own their key (the second does not overwrite the
    first), and a key is set inside its section, not in another one."""
    conf = root / "etc/systemd/journald.conf.d/00-kensa.conf"
    conf.write_text("[Other]\nStorage=volatile\n\n[Journal]\nCompress=yes\n\n")
    engine = _engine(tmp_path)
    assert _run(engine, root, JOURNALD).status is Status.COMMITTED
    assert _run(engine, root, dict(JOURNALD, key="ForwardToSyslog", value="yes")).status is Status.COMMITTED
    assert conf.read_text() == "[Other]\nStorage=volatile\n\n[Journal]\nCompress=yes\nStorage=persistent\nForwardToSyslog=yes\n\n"


def test_rollback_by_id_keeps_an_operators_later_edit_and_refuses_when_the_key_was_edited(root: Path, tmp_path: Path) -> None:
    """After a commit an operator adds a line to the drop-in: rollback by id removes only
    kensa's key line and keeps theirs. When the operator changed kensa's own line instead,
    rollback refuses, naming the path, and changes nothing."""
    path = root / "etc/ssh/sshd_config.d/50-operator.conf"
    engine = _engine(tmp_path)
    first = _run(engine, root, dict(DROPIN, file="50-operator.conf"))
    assert first.status is Status.COMMITTED
    assert path.read_text() == OTHER + "PermitRootLogin no\n"
    path.write_text(path.read_text() + "MaxAuthTries 3\n")
    undone = engine.rollback(first.txn_id)
    assert undone.status is Status.ROLLED_BACK, undone
    assert path.read_text() == OTHER + "MaxAuthTries 3\n"
    assert not undone.host_unchanged

    second = _run(engine, root, dict(DROPIN, file="50-operator.conf"))
    assert second.status is Status.COMMITTED
    path.write_text(path.read_text().replace("PermitRootLogin no", "PermitRootLogin prohibit-password"))
    edited = snapshot_tree(root)
    with pytest.raises(RollbackRefusedError, match="50-operator.conf: the part kensa wrote was changed since"):
        engine.rollback(second.txn_id)
    assert snapshot_tree(root) == edited


def test_content_is_the_whole_file(root: Path, tmp_path: Path) -> None:
    """With ``content`` the drop-in holds exactly those bytes (other lines of an existing file
    go), and rollback gives the old bytes back; content that does not set the key is refused."""
    path = root / "etc/ssh/sshd_config.d/50-operator.conf"
    wanted = "# whole file\nPermitRootLogin no\nMaxAuthTries 3\n"
    engine = _engine(tmp_path)
    before = snapshot_tree(root)
    result = _run(engine, root, dict(DROPIN, file="50-operator.conf", content=wanted))
    assert result.status is Status.COMMITTED, result
    assert path.read_text() == wanted
    assert engine.rollback(result.txn_id).status is Status.ROLLED_BACK
    assert snapshot_tree(root) == before
    with pytest.raises(ParamError, match="content does not set PermitRootLogin"):
        HANDLER.validate(LocalHost(str(root)), dict(DROPIN, content="MaxAuthTries 3\n"))


@pytest.mark.parametrize("bad, problem", [
    ({"file": "../sshd_config"}, "not a file name"),
    ({"file": "sub/x.conf"}, "not a file name"),
    ({"file": ".."}, "not a file name"),
    ({"dir": "/etc/../../outside"}, "'..'"),
    ({"dir": "etc/ssh"}, "not an absolute path"),
    ({"value": "no\nPermitEmptyPasswords yes"}, "single line"),
    ({"key": "Permit RootLogin"}, "not a configuration key"),
    ({"key": "Match"}, "Match"),
    ({"section": "[Journal]\n[Evil]"}, "single line"),
    ({"section": "Jour]nal"}, "not a section name"),
    ({"value": "=no"}, "must not start with the separator"),
])
def test_bad_parameters_are_refused_and_change_nothing(root: Path, tmp_path: Path, bad: Dict[str, Any], problem: str) -> None:
    """Hostile names, paths escaping the root, newlines in values and bad sections are a clear
    error from the schema the loader and the handler share, and the engine changes nothing."""
    before = snapshot_tree(root)
    params = dict(DROPIN, **bad)
    with pytest.raises(ParamError) as caught:
        # As the rule loader checks a field: how it is written, then its value.
        for name, value in params.items():
            HANDLER.schema.fields[name].written(value)
        HANDLER.schema.read(params)
    assert problem in str(caught.value)
    result = _run(_engine(tmp_path), root, params)
    assert result.status is Status.ERRORED and result.host_unchanged
    assert snapshot_tree(root) == before


def test_a_planted_symlink_and_a_missing_directory_are_errors_that_change_nothing(root: Path, tmp_path: Path) -> None:
    """A drop-in that is a symlink out of the root, a drop-in directory that is such a
    symlink, and a drop-in directory whose parent is missing (kensa creates only the last
    level): each run errors naming the path and nothing inside or outside the root changes."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "target.conf").write_text("outside\n")
    os.symlink(outside / "target.conf", root / "etc/ssh/sshd_config.d/00-kensa-root.conf")
    os.symlink(outside, root / "etc/linked.d")
    before = snapshot_tree(root), snapshot_tree(outside)
    engine = _engine(tmp_path)
    for params in (DROPIN, dict(DROPIN, dir="/etc/linked.d"), dict(DROPIN, dir="/etc/ssh/missing/sub.d")):
        result = _run(engine, root, params)
        assert result.status is Status.ERRORED, result
        assert result.host_unchanged
        assert (snapshot_tree(root), snapshot_tree(outside)) == before
    missing = _run(engine, root, dict(DROPIN, dir="/etc/ssh/missing/sub.d"))
    assert re.search(r"/etc/ssh/missing \(under root .*\) does not exist", str(missing.error)), missing.error


RULE = """\
id: {id}
title: {title}
severity: medium
implementations:
  - default: true
    check:
{check}
    remediation:
      mechanism: config_set_dropin
{remediation}
"""


def _rule(directory: Path, rule_id: str, check: Dict[str, str], remediation: Dict[str, str]) -> None:
    def block(fields: Dict[str, str]) -> str:
        return "\n".join(f"      {key}: {json.dumps(value)}" for key, value in fields.items())

    text = RULE.format(id=rule_id, title=rule_id, check=block(check), remediation=block(remediation))
    (directory / f"{rule_id}.yml").write_text(text)


def _own_rules(directory: Path) -> List[str]:
    """This test file's rules: sshd through its drop-ins, pwquality-style drop-ins read
    with config_value's dropin_dir, a systemd drop-in and a sudoers.d file."""
    directory.mkdir()
    _rule(directory, "dropin-ssh-root", {"method": "sshd_effective_config", "key": "permitrootlogin", "expected": "no"},
          {"dir": "/etc/ssh/sshd_config.d", "file": "00-kensa-root.conf", "key": "PermitRootLogin", "value": "no",
           "separator": " "})
    _rule(directory, "dropin-ssh-tries", {"method": "sshd_effective_config", "key": "maxauthtries", "expected": "3"},
          {"dir": "/etc/ssh/sshd_config.d", "file": "00-kensa-tries.conf", "key": "MaxAuthTries", "value": "3",
           "separator": " "})
    _rule(directory, "dropin-journald", {"method": "config_value", "path": "/etc/systemd/journald.conf",
                                         "key": "Storage", "expected": "persistent",
                                         "dropin_dir": "/etc/systemd/journald.conf.d"},
          {"dir": "/etc/systemd/journald.conf.d", "file": "00-kensa-storage.conf", "key": "Storage",
           "value": "persistent", "section": "[Journal]"})
    _rule(directory, "dropin-sudo-pty", {"method": "file_content_match", "path": "/etc/sudoers.d/00-kensa-pty",
                                         "pattern": "^Defaults use_pty$"},
          {"dir": "/etc/sudoers.d", "file": "00-kensa-pty", "key": "Defaults", "value": "use_pty", "separator": " "})
    return ["dropin-ssh-root", "dropin-ssh-tries", "dropin-journald", "dropin-sudo-pty"]


def _kensa(tmp_path: Path, *args: str) -> Dict[str, Any]:
    done = subprocess.run([sys.executable, "-m", "kensa", "--journal", str(tmp_path / "j.db"), "--no-audit", *args, "--json"],
                          capture_output=True, text=True, env=ENV, timeout=300)
    assert done.returncode in (0, 1), done.stdout + done.stderr
    found: Dict[str, Any] = json.loads(done.stdout)
    return found


def test_rules_check_compliant_after_remediate_through_the_include(root: Path, tmp_path: Path) -> None:
    """``kensa remediate`` of this file's rules commits each one, and ``kensa check`` then
    says compliant: sshd's effective value comes through the main file's Include, the
    journald value from its drop-in directory."""
    names = _own_rules(tmp_path / "rules")
    checked = _kensa(tmp_path, "check", str(tmp_path / "rules"), "--root", str(root))
    assert {r["rule"]: r["verdict"] for r in checked["rules"]} == dict.fromkeys(names, "not_compliant")
    done = _kensa(tmp_path, "remediate", str(tmp_path / "rules"), "--root", str(root))
    assert {r["rule"]: r["status"] for r in done["results"]} == dict.fromkeys(names, "committed")
    checked = _kensa(tmp_path, "check", str(tmp_path / "rules"), "--root", str(root))
    assert {r["rule"]: r["verdict"] for r in checked["rules"]} == dict.fromkeys(names, "compliant")


def test_a_copy_of_this_machines_etc_is_compliant_after_remediate(tmp_path: Path) -> None:
    """This machine's /etc, copied, remediated with this file's rules whose drop-in directories
    exist here, then checked: every committed rule is compliant."""
    require_root("reading all of /etc")
    root = tmp_path / "root"
    root.mkdir()
    subprocess.run(["cp", "-a", "/etc", str(root / "etc")], check=True)
    for sub in ("etc/systemd/journald.conf.d",):
        (root / sub).mkdir(exist_ok=True)
    if not (root / "etc/ssh/sshd_config.d").is_dir() or not (root / "etc/sudoers.d").is_dir():
        require_real("this machine has no /etc/ssh/sshd_config.d or /etc/sudoers.d")
    names = _own_rules(tmp_path / "rules")
    done = _kensa(tmp_path, "remediate", str(tmp_path / "rules"), "--root", str(root))
    statuses = {r["rule"]: r["status"] for r in done["results"]}
    committed = [name for name, status in statuses.items() if status == "committed"]
    assert set(statuses) <= set(names) and committed, done
    assert all(status in ("committed", "skipped") for status in statuses.values()), done
    checked = _kensa(tmp_path, "check", str(tmp_path / "rules"), "--root", str(root))
    verdicts = {r["rule"]: r["verdict"] for r in checked["rules"]}
    assert all(verdicts[name] == "compliant" for name in committed), verdicts


UNDER_PRIVATE_ETC_SSH = r"""
set -e
mount --make-rprivate /
mount --bind "$1" /etc/ssh
shift
exec "$@"
"""


def test_real_sshd_sees_the_dropin_through_the_include(tmp_path: Path) -> None:
    """On the live host (a private mount namespace with a copy of /etc/ssh bound over it),
    ``kensa remediate`` writes the drop-in and the rule's check, which runs the real
    ``sshd -T``, says compliant; this machine's own /etc/ssh is untouched."""
    require_root("mount namespaces")
    if shutil.which("sshd") is None or shutil.which("unshare") is None or not Path("/etc/ssh/sshd_config").exists():
        require_real("sshd and unshare are needed")
    if "Include /etc/ssh/sshd_config.d/*.conf" not in Path("/etc/ssh/sshd_config").read_text():
        require_real("this machine's sshd_config does not include sshd_config.d")
    copy = tmp_path / "ssh"
    subprocess.run(["cp", "-a", "/etc/ssh", str(copy)], check=True)
    for leftover in (copy / "sshd_config.d").glob("00-kensa-*"):
        leftover.unlink()
    live_before = snapshot_tree(Path("/etc/ssh"))
    _own_rules(tmp_path / "rules")
    ssh_rules = tmp_path / "ssh-rules"
    ssh_rules.mkdir()
    for name in ("dropin-ssh-root", "dropin-ssh-tries"):
        shutil.copy(tmp_path / "rules" / f"{name}.yml", ssh_rules)

    def kensa_in_namespace(*args: str) -> Dict[str, Any]:
        argv = ["unshare", "-m", "sh", "-c", UNDER_PRIVATE_ETC_SSH, "sh", str(copy), sys.executable, "-m", "kensa",
                "--journal", str(tmp_path / "live.db"), "--no-audit", *args, str(ssh_rules), "--json"]
        done = subprocess.run(argv, capture_output=True, text=True, env=ENV, timeout=300)
        assert done.returncode in (0, 1), done.stdout + done.stderr
        found: Dict[str, Any] = json.loads(done.stdout)
        return found

    done = kensa_in_namespace("remediate")
    assert {r["rule"]: r["status"] for r in done["results"]} == {"dropin-ssh-root": "committed", "dropin-ssh-tries": "committed"}
    checked = kensa_in_namespace("check")
    assert {r["rule"]: r["verdict"] for r in checked["rules"]} == {"dropin-ssh-root": "compliant", "dropin-ssh-tries": "compliant"}
    assert (copy / "sshd_config.d/00-kensa-root.conf").read_text() == "PermitRootLogin no\n"
    assert snapshot_tree(Path("/etc/ssh")) == live_before


def test_the_agent_runs_the_step_on_a_remote_host_with_python_36_features_only(root: Path, tmp_path: Path) -> None:
    """Through kensa's agent in a real process (without the Python 3.7 features, as on
    RHEL 8's Python 3.6): capture, apply, validate, assessment and rollback of a drop-in in
    a section and one in sshd_config.d, and the tree is back exactly."""
    from agent_targets import py36_path, transport
    from kensa.hosts.remote import connect
    from kensa.model import Drift

    before = snapshot_tree(root)
    host = connect(transport("dropin-target", py36_path(tmp_path / "bin")), str(root))
    try:
        handler = host.handlers(REGISTRY)["config_set_dropin"]
        pres = []
        for params in (DROPIN, JOURNALD):
            pre = handler.capture(host, params)
            assert not handler.validate(host, params)
            assert handler.apply(host, params, pre).ok
            assert handler.validate(host, params)
            pres.append(pre)
        assert (root / "etc/systemd/journald.conf.d/00-kensa.conf").read_text() == "[Journal]\nStorage=persistent\n"
        assessment = handler.assess(host, pres[1])
        assert assessment.drift is Drift.AT_POST
        assert handler.restore(host, pres[1], assessment).ok
        assert handler.rollback(host, pres[0]).ok
    finally:
        host.close()
    assert snapshot_tree(root) == before
