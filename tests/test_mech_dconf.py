"""dconf_set: the keyfile and lock it writes, compiled by the real dconf, and their exact restore.

The trees are real directories; ``dconf compile`` and ``dconf read`` (dconf-cli) read
back what kensa wrote. The live-host path (``dconf update``) runs in a private mount
namespace whose /etc/dconf is a tmpfs, so this machine's /etc/dconf is never touched.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Dict

import pytest

from conftest import require_real, require_root
from conftest import snapshot_tree as snapshot
from remediation_rig import agent_engine, agent_key, check, copy_etc, mark, remediate, rollback, write_rule
from kensa.errors import HostAccessError, ParamError, NotAvailableError
from kensa.handlers.dconf_set import DconfSet, revert_entry, set_entry
from kensa.hosts.local import LocalHost
from kensa.model import Status, Step, Transaction

KEYFILE = "etc/dconf/db/local.d/00-screensaver"
LOCKS = "etc/dconf/db/local.d/locks/00-screensaver"
OTHER = "[org/gnome/desktop/background]\npicture-uri='file:///usr/share/backgrounds/a.png'\n"

IDLE = {"mechanism": "dconf_set", "schema": "org/gnome/desktop/session", "key": "idle-delay", "value": "900",
        "value_type": "uint32", "file": "00-screensaver", "lock": True}
LOCK_DELAY = {"mechanism": "dconf_set", "schema": "org/gnome/desktop/screensaver", "key": "lock-delay", "value": "5",
              "value_type": "uint32", "file": "00-screensaver"}


def dconf_tool() -> str:
    found = shutil.which("dconf")
    if found is None:
        require_real("dconf is not installed (apt-get install -y dconf-cli)")
    return str(found)


def make_root(base: Path) -> Path:
    """A root with dconf's local database directory, an existing keyfile of another setting (with xattrs)."""
    root = base / "root"
    (root / "etc/dconf/db/local.d/locks").mkdir(parents=True)
    (root / "etc/dconf/profile").mkdir(parents=True)
    (root / "etc/dconf/profile/user").write_text("user-db:user\nsystem-db:local\n")
    (root / KEYFILE).write_text(OTHER)
    mark(root / KEYFILE)
    return root


def rule_check(value: str = "uint32 900") -> Dict[str, Any]:
    return {"method": "config_value", "path": "/" + KEYFILE, "key": "idle-delay", "expected": value, "delimiter": "="}


def compiled(root: Path, key: str) -> str:
    """``dconf read`` of ``key`` from the database ``dconf compile`` builds of the root's local.d."""
    tool = dconf_tool()
    out = root.parent / "compiled"
    subprocess.run([tool, "compile", str(out), str(root / "etc/dconf/db/local.d")], check=True, capture_output=True)
    profile = root.parent / "profile"
    profile.write_text(f"file-db:{out}\n")
    env = {**os.environ, "DCONF_PROFILE": str(profile)}
    done = subprocess.run([tool, "read", key], check=True, capture_output=True, text=True, env=env)
    return done.stdout.strip()


def test_set_entry_keeps_other_sections_and_reverts_only_its_line() -> None:
    """set_entry adds the key to its section (or the section), keeps every other line; its revert
    takes only kensa's line (and the header it added) back out of a file edited since."""
    before = OTHER
    after = set_entry(before, "org/gnome/desktop/session", "idle-delay", "uint32 900")
    assert after == OTHER + "[org/gnome/desktop/session]\nidle-delay=uint32 900\n"
    again = set_entry(after, "org/gnome/desktop/session", "idle-delay", "uint32 300")
    assert again == OTHER + "[org/gnome/desktop/session]\nidle-delay=uint32 300\n"
    edited = after.replace("a.png", "b.png")
    revert = revert_entry(before, "org/gnome/desktop/session", "idle-delay", "uint32 900")
    assert revert(edited.encode()) == before.replace("a.png", "b.png").encode()
    assert revert(again.encode()) is None  # kensa's value was changed since: not kensa's to undo


def test_apply_then_failed_validate_rolls_back_the_whole_tree_exactly(tmp_path: Path) -> None:
    """A rule whose own check fails after apply is rolled back: the keyfile (with its user.* and
    security.* xattrs) and the lock directory are exactly as before, and no lock file is left."""
    require_root()
    root = make_root(tmp_path)
    before = snapshot(root)
    rules = write_rule(tmp_path / "rules", "dconf-undone", rule_check("uint32 1"), [IDLE])
    results = remediate(tmp_path / "j.db", rules, root)
    assert [r["status"] for r in results] == ["rolled_back"], results
    assert snapshot(root) == before


def test_commit_writes_exactly_the_keys_and_the_lock_and_dconf_compiles_them(tmp_path: Path) -> None:
    """Two steps in one keyfile commit: the file gains exactly their two sections, the lock file
    names the locked key only, the rest of the tree is as before, the rule's check says compliant,
    and the real dconf compiles the keyfile to the values set (an image root: no dconf update)."""
    require_root()
    root = make_root(tmp_path)
    before = snapshot(root)
    rules = write_rule(tmp_path / "rules", "dconf-idle", rule_check(), [IDLE, LOCK_DELAY])
    results = remediate(tmp_path / "j.db", rules, root)
    assert [r["status"] for r in results] == ["committed"], results
    assert (root / KEYFILE).read_text() == (
        OTHER + "[org/gnome/desktop/session]\nidle-delay=uint32 900\n[org/gnome/desktop/screensaver]\nlock-delay=uint32 5\n"
    )
    assert (root / LOCKS).read_text() == "/org/gnome/desktop/session/idle-delay\n"
    after = snapshot(root)
    changed = {rel for rel in set(before) | set(after) if before.get(rel) != after.get(rel)}
    assert changed == {KEYFILE, LOCKS}
    assert os.getxattr(root / KEYFILE, "user.kensa-test") == b"kept"
    assert not (root / "etc/dconf/db/local").exists()  # image root: the binary database is not built
    assert check(tmp_path / "j.db", rules, root) == {"dconf-idle": "compliant"}
    assert compiled(root, "/org/gnome/desktop/session/idle-delay") == "uint32 900"
    assert compiled(root, "/org/gnome/desktop/screensaver/lock-delay") == "uint32 5"


def test_on_an_image_root_the_result_says_the_binary_database_is_not_rebuilt(tmp_path: Path) -> None:
    """Apply and rollback on an image root say that the binary database is not rebuilt, and build none."""
    root = make_root(tmp_path)
    host, handler = LocalHost(str(root)), DconfSet()
    params = {k: v for k, v in IDLE.items() if k != "mechanism"}
    pre = handler.capture(host, params)
    assert "the binary dconf database is not rebuilt" in handler.apply(host, params, pre).detail
    back = handler.rollback(host, pre)
    assert back.ok and "the binary dconf database is not rebuilt" in back.detail
    assert not (root / "etc/dconf/db/local").exists()


def test_rollback_by_id_keeps_an_operators_later_edit_and_refuses_an_edit_of_kensas_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """After a commit, an operator's edit of another section of the same keyfile survives a
    rollback by id (only kensa's lines go); an edit of kensa's own line makes rollback refuse,
    naming the keyfile, and leaves it as the operator left it."""
    require_root()
    root = make_root(tmp_path)
    rules = write_rule(tmp_path / "rules", "dconf-idle", rule_check(), [IDLE])
    journal = tmp_path / "j.db"
    txn = remediate(journal, rules, root)[0]["txn"]
    keyfile = root / KEYFILE
    keyfile.write_text(keyfile.read_text().replace("a.png", "b.png"))
    code, result = rollback(journal, txn)
    assert code == 0 and result["status"] == "rolled_back", result
    assert keyfile.read_text() == OTHER.replace("a.png", "b.png")
    assert not (root / LOCKS).exists()

    txn = remediate(journal, rules, root)[0]["txn"]
    keyfile.write_text(keyfile.read_text().replace("uint32 900", "uint32 60"))
    edited = keyfile.read_bytes()
    capsys.readouterr()
    code, _ = rollback(journal, txn)
    said = capsys.readouterr().err
    assert code != 0 and f"/{KEYFILE}: the part kensa wrote was changed since" in said, said
    assert keyfile.read_bytes() == edited


@pytest.mark.parametrize("field, value, said", [
    ("file", "../../cron.d/evil", "one file name"),
    ("file", ".hidden", "one file name"),
    ("db", "local/../../x", "one file name"),
    ("schema", "org/gnome]\n[evil", "single line"),
    ("schema", "/org/gnome", "not a dconf path"),
    ("key", "idle delay", "not a dconf key"),
    ("key", "idle-delay=1\nx", "single line"),
    ("value", "900\n[org/evil]\nk=1", "single line"),
    ("value", "   ", "blank"),
    ("value_type", "uint32(", "not a GVariant type"),
])
def test_bad_parameters_are_refused_naming_the_field_and_change_nothing(tmp_path: Path, field: str, value: str, said: str) -> None:
    """Hostile names (a path out of the dconf tree, a section or key line smuggled in with a newline,
    a value that is no GVariant line) are a ParamError naming the field; the tree is unchanged."""
    root = make_root(tmp_path)
    before = snapshot(root)
    host = LocalHost(str(root))
    params = {**{k: v for k, v in IDLE.items() if k != "mechanism"}, field: value}
    with pytest.raises(ParamError) as caught:
        DconfSet().capture(host, params)
    assert caught.value.field == field and said in str(caught.value)
    assert snapshot(root) == before


def test_a_symlink_planted_as_the_keyfile_or_a_missing_database_directory_is_refused(tmp_path: Path) -> None:
    """A keyfile that is a symlink out of the root is refused naming it, and a database directory
    whose parent /etc/dconf/db does not exist is a HostAccessError saying so; neither changes anything."""
    require_root()
    root = make_root(tmp_path)
    outside = tmp_path / "outside"
    outside.write_text("not dconf's\n")
    (root / KEYFILE).unlink()
    (root / KEYFILE).symlink_to(outside)
    before = snapshot(root)
    rules = write_rule(tmp_path / "rules", "dconf-idle", rule_check(), [IDLE])
    results = remediate(tmp_path / "j.db", rules, root)
    assert [r["status"] for r in results] == ["errored"] and "00-screensaver" in results[0]["error"]["message"], results
    assert snapshot(root) == before and outside.read_text() == "not dconf's\n"

    bare = tmp_path / "bare"
    (bare / "etc/dconf").mkdir(parents=True)
    before = snapshot(bare)
    params = {**{k: v for k, v in IDLE.items() if k != "mechanism"}, "db": "gdm"}
    assert DconfSet().validate(LocalHost(str(bare)), params) is False  # no such database: not compliant
    with pytest.raises(HostAccessError, match=r"/etc/dconf/db \(under root .*\) does not exist"):
        DconfSet().capture(LocalHost(str(bare)), params)
    assert snapshot(bare) == before


def test_a_copy_of_this_machines_etc_remediated_then_checked_is_compliant(tmp_path: Path) -> None:
    """This machine's /etc copied into a root (with a local.d made where dconf has none) takes the
    dconf rules (a lock, a string value, a db of its own) to committed, then checks compliant."""
    require_root()
    root = tmp_path / "root"
    copy_etc(root / "etc")
    for db in ("local", "gdm"):
        (root / f"etc/dconf/db/{db}.d/locks").mkdir(parents=True, exist_ok=True)
    rules = tmp_path / "rules"
    write_rule(rules, "dconf-idle", rule_check(), [IDLE])
    write_rule(rules, "dconf-smartcard", {
        "method": "config_value", "path": "/etc/dconf/db/local.d/00-smartcard", "key": "removal-action",
        "expected": "'lock-screen'", "delimiter": "="}, [
        {"mechanism": "dconf_set", "schema": "org/gnome/settings-daemon/peripherals/smartcard", "key": "removal-action",
         "value": "'lock-screen'", "file": "00-smartcard", "lock": True}])
    write_rule(rules, "dconf-gdm-restart", {
        "method": "config_value", "path": "/etc/dconf/db/gdm.d/00-security-settings", "key": "disable-restart-buttons",
        "expected": "true", "delimiter": "="}, [
        {"mechanism": "dconf_set", "schema": "org/gnome/login-screen", "key": "disable-restart-buttons", "value": "true",
         "file": "00-security-settings", "db": "gdm"}])
    journal = tmp_path / "j.db"
    results = remediate(journal, rules, root)
    assert sorted(r["status"] for r in results) == ["committed"] * 3, results
    assert set(check(journal, rules, root).values()) == {"compliant"}
    assert compiled(root, "/org/gnome/settings-daemon/peripherals/smartcard/removal-action") == "'lock-screen'"


LIVE_SCRIPT = textwrap.dedent("""
    import json, os, subprocess, sys
    from kensa.hosts.local import LocalHost
    from kensa.handlers.dconf_set import DconfSet
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", "/etc/dconf"], check=True)
    os.makedirs("/etc/dconf/db/local.d/locks")
    with open("/etc/dconf/db/local.d/00-screensaver", "w") as f:
        f.write(sys.argv[2])
    with open("/etc/dconf/profile", "w") as f:
        f.write("file-db:/etc/dconf/db/local\\n")

    def read():
        env = dict(os.environ, DCONF_PROFILE="/etc/dconf/profile")
        done = subprocess.run(["dconf", "read", "/org/gnome/desktop/session/idle-delay"], env=env,
                              stdout=subprocess.PIPE, universal_newlines=True, check=True)
        return done.stdout.strip()

    host, handler, params = LocalHost("/"), DconfSet(), json.loads(sys.argv[1])
    seen = {"live": host.is_live}
    pre = handler.capture(host, params)
    seen["apply"] = handler.apply(host, params, pre).detail
    seen["valid"] = handler.validate(host, params)
    seen["after_apply"] = read()
    seen["db_exists"] = os.path.exists("/etc/dconf/db/local")
    back = handler.rollback(host, pre)
    seen["rollback"] = [back.ok, back.detail]
    seen["after_rollback"] = read()
    seen["keyfile"] = open("/etc/dconf/db/local.d/00-screensaver").read()
    seen["lock_left"] = os.path.exists("/etc/dconf/db/local.d/locks/00-screensaver")
    subprocess.run(["mount", "--bind", sys.argv[3], "/usr/bin"], check=True)
    try:
        handler.capture(host, params)
    except Exception as exc:
        seen["without_dconf"] = [type(exc).__name__, str(exc)]
    print(json.dumps(seen))
""")


def test_on_a_live_host_dconf_update_compiles_the_value_and_rollback_rebuilds_without_it(tmp_path: Path) -> None:
    """On a live host (a private mount namespace whose /etc/dconf is a tmpfs), apply runs the real
    `dconf update`: the compiled database reads the value; rollback restores the keyfile byte for
    byte, removes the lock and runs `dconf update` again, so the database no longer has it. With no
    dconf on the host, capture says "not available on this host: dconf is not installed"."""
    require_root()
    dconf_tool()
    if shutil.which("unshare") is None:
        require_real("unshare is not installed")
    empty = tmp_path / "empty"
    empty.mkdir()
    params = {k: v for k, v in IDLE.items() if k != "mechanism"}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(["unshare", "-m", "--propagation", "private", sys.executable, "-c", LIVE_SCRIPT,
                           json.dumps(params), OTHER, str(empty)], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["live"] and seen["valid"] and "ran dconf update" in seen["apply"]
    assert seen["after_apply"] == "uint32 900" and seen["db_exists"]
    assert seen["rollback"][0] and "dconf update" in seen["rollback"][1] and "best-effort" in seen["rollback"][1]
    assert seen["after_rollback"] == "" and seen["keyfile"] == OTHER and not seen["lock_left"]
    assert seen["without_dconf"][0] == NotAvailableError.__name__
    assert "not available on this host: dconf is not installed" in seen["without_dconf"][1]
    assert os.path.exists("/etc/dconf/db") and not os.path.exists("/etc/dconf/db/local.d")  # the real one untouched


def test_through_the_agent_commit_and_rollback_by_id_on_a_remote_root(tmp_path: Path) -> None:
    """dconf_set runs on kensa's agent (a real process over SubprocessTransport): two steps on
    one keyfile commit there, and a rollback by id brings the remote tree back to its snapshot."""
    require_root()
    root = make_root(tmp_path)
    before = snapshot(root)
    steps = tuple(Step("dconf_set", {k: v for k, v in s.items() if k != "mechanism"}) for s in (IDLE, LOCK_DELAY))
    with agent_engine(tmp_path / "j.db") as engine:
        txn = Transaction("remote-dconf", steps, host=agent_key(root))
        result = engine.run(txn)
        assert result.status is Status.COMMITTED, result.error
        assert "idle-delay=uint32 900" in (root / KEYFILE).read_text()
        assert (root / LOCKS).read_text() == "/org/gnome/desktop/session/idle-delay\n"
        back = engine.rollback(txn.id)
        assert back.status is Status.ROLLED_BACK and back.host_unchanged, back.error
    assert snapshot(root) == before
