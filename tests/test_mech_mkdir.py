"""config_set_dropin and dconf_set create a missing drop-in or dconf database directory,
and every rollback (after a failed validate, by id, in recovery) removes it again while
empty: real trees in a temporary root, a real SIGKILL, and kensa's agent."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Mapping, Tuple

import pytest

from conftest import require_root, snapshot_tree
from remediation_rig import kensa_cli
from kensa.engine import Engine
from kensa.errors import HostAccessError
from kensa.handlers import default_registry
from kensa.hosts.local import LocalHost, resolve_host
from kensa.journal import SqliteJournal
from kensa.model import Drift, Status, Step, Transaction

REGISTRY = default_registry()
JOURNALD = {"dir": "/etc/systemd/journald.conf.d", "file": "00-kensa.conf", "key": "Storage", "value": "persistent",
            "section": "[Journal]"}
SUDO = {"dir": "/etc/sudoers.d", "file": "00-kensa-pty", "key": "Defaults", "value": "use_pty", "separator": " "}
DCONF = {"schema": "org/gnome/desktop/session", "key": "idle-delay", "value": "900", "value_type": "uint32",
         "file": "00-screensaver", "lock": True, "db": "local"}
#: (mechanism, params, the directories it creates with their modes, the files it writes)
CASES: Dict[str, Tuple[str, Mapping[str, Any], Dict[str, int], Tuple[str, ...]]] = {
    "dropin": ("config_set_dropin", JOURNALD, {"etc/systemd/journald.conf.d": 0o755},
               ("etc/systemd/journald.conf.d/00-kensa.conf",)),
    "dconf": ("dconf_set", DCONF, {"etc/dconf/db/local.d": 0o755, "etc/dconf/db/local.d/locks": 0o755},
              ("etc/dconf/db/local.d/00-screensaver", "etc/dconf/db/local.d/locks/00-screensaver")),
}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A root with the parents of the directories kensa creates (/etc/systemd, /etc/dconf/db), with xattrs."""
    require_root()
    top = tmp_path / "root"
    for sub in ("etc/systemd", "etc/dconf/db", "etc/dconf/profile"):
        (top / sub).mkdir(parents=True)
    (top / "etc/systemd/journald.conf").write_text("[Journal]\n#Storage=auto\n")
    os.setxattr(top / "etc/systemd", "user.kensa", b"label")
    os.setxattr(top / "etc/systemd/journald.conf", "security.kensa", b"label")
    return top


def _engine(tmp_path: Path) -> Engine:
    return Engine(REGISTRY, hosts=resolve_host, journal=SqliteJournal(str(tmp_path / "j.db")))


def _run(engine: Engine, root: Path, mechanism: str, params: Mapping[str, Any]) -> Any:
    return engine.run(Transaction("mkdir", (Step(mechanism, dict(params)),), host=str(root)))


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_failed_validate_rolls_back_the_file_and_the_directories(root: Path, case: str) -> None:
    """Capture records the missing directories, apply creates them and the file, and the
    rollback a failed validate runs leaves the whole tree identical to its snapshot."""
    mechanism, params, dirs, _ = CASES[case]
    handler, host = REGISTRY[mechanism], LocalHost(str(root))
    before = snapshot_tree(root)
    pre = handler.capture(host, params)
    assert [made["path"] for made in pre.data["dirs"]] == ["/" + path for path in dirs]
    json.dumps(pre.data["dirs"])  # journal-able as it is
    assert handler.apply(host, params, pre).ok
    assert all((root / path).is_dir() for path in dirs)
    result = handler.rollback(host, pre)
    assert result.ok and not result.kept, result
    assert snapshot_tree(root) == before


@pytest.mark.parametrize("case", sorted(CASES))
def test_commit_creates_exactly_the_directories_and_the_file_and_rollback_by_id_removes_them(
    root: Path, tmp_path: Path, case: str
) -> None:
    """A commit changes exactly the created directories (0755, root) and the file(s); a
    rollback by id of the untouched commit puts the tree back exactly."""
    mechanism, params, dirs, files = CASES[case]
    before = snapshot_tree(root)
    engine = _engine(tmp_path)
    result = _run(engine, root, mechanism, params)
    assert result.status is Status.COMMITTED, result
    after = snapshot_tree(root)
    assert {path for path in set(before) | set(after) if before.get(path) != after.get(path)} == {*dirs, *files}
    for path, mode in dirs.items():
        st = os.lstat(root / path)
        assert (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (mode, 0, 0)
    undone = engine.rollback(result.txn_id)
    assert undone.status is Status.ROLLED_BACK, undone
    assert snapshot_tree(root) == before


def test_a_created_sudoers_d_is_0750() -> None:
    """A missing sudoers.d is recorded 0750, the stricter of what RHEL (0750) and Debian (0755) ship."""
    from kensa.handlers.dirstate import missing_dirs
    import tempfile
    with tempfile.TemporaryDirectory() as top:
        os.mkdir(os.path.join(top, "etc"))
        made = REGISTRY["config_set_dropin"].capture(LocalHost(top), SUDO).data["dirs"]
        assert [(d["path"], d["mode"]) for d in made] == [("/etc/sudoers.d", 0o750)]
        assert missing_dirs(LocalHost(top), [("/etc", 0o755)], "x") == []


@pytest.mark.parametrize("case", sorted(CASES))
def test_an_operators_file_in_the_created_directory_survives_rollback_by_id_and_is_named(
    root: Path, tmp_path: Path, case: str
) -> None:
    """After a commit an operator puts a file into the directory kensa created: rollback by
    id removes kensa's file, keeps the directory with the operator's file, and names it as kept,
    in its result and in the journal."""
    mechanism, params, dirs, files = CASES[case]
    engine = _engine(tmp_path)
    result = _run(engine, root, mechanism, params)
    assert result.status is Status.COMMITTED, result
    top = next(iter(dirs))
    (root / top / "99-operator").write_text("operator's\n")
    undone = engine.rollback(result.txn_id)
    assert undone.status is Status.ROLLED_BACK, undone
    kept = [line for rb in undone.rollbacks for line in rb.kept]
    assert any(f"/{top}" in line and "99-operator" in line for line in kept), undone.rollbacks
    journaled = engine.journal.get(result.txn_id).later_rollback  # type: ignore[union-attr]
    assert journaled is not None and journaled.rollbacks == undone.rollbacks  # what was kept is on record
    assert (root / top / "99-operator").read_text() == "operator's\n"
    assert not any((root / path).exists() for path in files)
    assert all(not (root / path).exists() for path in dirs if path != top)


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_symlink_planted_as_the_directory_is_refused_and_changes_nothing(root: Path, tmp_path: Path, case: str) -> None:
    """A symlink (to a directory outside the root) where the directory should be: the run errors and nothing changes."""
    mechanism, params, dirs, _ = CASES[case]
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, root / next(iter(dirs)))
    before = snapshot_tree(root), snapshot_tree(outside)
    result = _run(_engine(tmp_path), root, mechanism, params)
    assert result.status is Status.ERRORED and result.host_unchanged, result
    assert "symlink" in str(result.error), result.error
    assert (snapshot_tree(root), snapshot_tree(outside)) == before


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_missing_parent_is_a_clear_error_that_changes_nothing(root: Path, tmp_path: Path, case: str) -> None:
    """kensa creates only directories directly below an existing one: with the parent
    (/etc/systemd, /etc/dconf/db) gone, the run errors naming it and nothing changes."""
    mechanism, params, dirs, _ = CASES[case]
    parent = os.path.dirname(next(iter(dirs)))
    for entry in sorted((root / parent).rglob("*"), reverse=True):
        entry.unlink() if entry.is_file() else entry.rmdir()
    (root / parent).rmdir()
    before = snapshot_tree(root)
    with pytest.raises(HostAccessError, match=f"/{parent} .*does not exist"):
        REGISTRY[mechanism].capture(LocalHost(str(root)), params)
    result = _run(_engine(tmp_path), root, mechanism, params)
    assert result.status is Status.ERRORED and result.host_unchanged, result
    assert f"/{parent}" in str(result.error) and "does not exist" in str(result.error)
    assert snapshot_tree(root) == before


CRASH = r"""
import json, os, signal, sys
from kensa.engine import Engine
from kensa.handlers import default_registry
from kensa.hosts.local import LocalHost
from kensa.journal.store import SqliteJournal
from kensa.model import Step, Transaction

root, journal, mechanism, params = sys.argv[1:5]

class KilledBeforeTheFile(LocalHost):
    # The directories are made; the process dies as the first file is about to be written.
    def write_file(self, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)

engine = Engine(default_registry(), journal=SqliteJournal(journal), hosts=KilledBeforeTheFile)
engine.run(Transaction("crash", (Step(mechanism, json.loads(params)),), host=root))
"""


@pytest.mark.parametrize("case", sorted(CASES))
def test_kensa_recover_after_a_crash_between_mkdir_and_the_write_removes_the_directories(
    root: Path, tmp_path: Path, case: str
) -> None:
    """A controller SIGKILLed after creating the directories and before writing the file:
    ``kensa recover`` removes the empty directories and the tree is as before."""
    mechanism, params, dirs, _ = CASES[case]
    journal = tmp_path / "j.db"
    before = snapshot_tree(root)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    argv = [sys.executable, "-c", CRASH, str(root), str(journal), mechanism, json.dumps(params)]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, (proc.stdout, proc.stderr)
    assert all((root / path).is_dir() for path in dirs), "the kill left no directory: the test would prove nothing"
    code, out = kensa_cli("--journal", str(journal), "--no-audit", "recover")
    assert code == 0, out
    assert snapshot_tree(root) == before


@pytest.mark.parametrize("case", sorted(CASES))
def test_through_the_agent_the_directories_are_created_assessed_and_removed(root: Path, tmp_path: Path, case: str) -> None:
    """Through kensa's agent in a real process without Python 3.7 features (as on RHEL 8):
    capture, apply, assessment and restore create and then remove the directories exactly."""
    from agent_targets import py36_path, transport
    from kensa.hosts.remote import connect

    mechanism, params, dirs, _ = CASES[case]
    before = snapshot_tree(root)
    host = connect(transport("mkdir-target", py36_path(tmp_path / "bin")), str(root))
    try:
        handler = host.handlers(REGISTRY)[mechanism]
        pre = handler.capture(host, params)
        assert handler.apply(host, params, pre).ok
        assert all((root / path).is_dir() for path in dirs)
        assessment = handler.assess(host, pre)
        assert assessment.drift is Drift.AT_POST
        assert handler.restore(host, pre, assessment).ok
    finally:
        host.close()
    assert snapshot_tree(root) == before


def test_two_steps_writing_into_one_new_directory_create_it_once_and_roll_back_exactly(root: Path, tmp_path: Path) -> None:
    """Two drop-ins in one transaction in the same missing directory: the first step creates
    it (the second's capture sees it planned, so records none), the commit holds both files,
    and a rollback by id removes both files and then the directory."""
    handler, host = REGISTRY["config_set_dropin"], LocalHost(str(root))
    first = handler.capture(host, JOURNALD)
    second = handler.capture(host.overlay(handler.planned(host, first)), dict(JOURNALD, file="01-kensa.conf"))
    assert len(first.data["dirs"]) == 1 and "dirs" not in second.data and not second.data["exists"]
    before = snapshot_tree(root)
    engine = _engine(tmp_path)
    steps = (Step("config_set_dropin", dict(JOURNALD)), Step("config_set_dropin", dict(JOURNALD, file="01-kensa.conf")))
    result = engine.run(Transaction("mkdir", steps, host=str(root)))
    assert result.status is Status.COMMITTED, result
    assert sorted(os.listdir(root / "etc/systemd/journald.conf.d")) == ["00-kensa.conf", "01-kensa.conf"]
    undone = engine.rollback(result.txn_id)
    assert undone.status is Status.ROLLED_BACK and not any(rb.kept for rb in undone.rollbacks), undone
    assert snapshot_tree(root) == before
