"""file_permissions over a selection: find_paths / find_type / find_name / find_args and glob.

The selection is compared with the real find(1) on the same tree, symbolic modes with
the real chmod(1); trees are real directories (with xattrs, symlinks, a tmpfs mounted
inside), the live-host walk runs in a private mount namespace.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Dict, List

import pytest

from conftest import require_real, require_root, tmpfs
from conftest import snapshot_tree as snapshot
from remediation_rig import agent_engine, agent_key, check, copy_etc, mark, remediate, rollback, write_rule
from kensa.errors import ParamError, TooManyFilesError
from kensa.facts.finding import MAX_MATCHED, find_args, selected, selection
from kensa.facts.modes import mode_for, mode_spec
from kensa.handlers.file_permissions import SCHEMA, FilePermissions
from kensa.hosts.local import LocalHost
from kensa.hosts.remote import RemoteHost
from kensa.model import Status, Step, Transaction

#: find_args as Kensa's public rules write them.
CORPUS_ARGS = [
    "! -user root", "-perm /022", "! -group root", "\\( -name '*.conf' -o -name '*.rules' \\)", "-xdev -perm -0002",
    "-xdev -perm -0002 -uid +999", "-xdev -perm -0002 ! -perm -1000", "-perm /o+r", "-perm /0177",
    "-mindepth 2 ! -name '.*' -perm /027", "-maxdepth 2 \\( -name '.bashrc' -o -name '.profile' \\) -perm /037",
    "-maxdepth 2 -perm /go+w", "-maxdepth 1 -mindepth 1 -perm /027", "-nouser -o -nogroup",
]


def make_root(base: Path) -> Path:
    """A tree of files and directories of assorted modes and owners, a symlink out of the root, xattrs."""
    root = base / "root"
    for rel, mode in [("etc/cron.d", 0o755), ("etc/cron.d/sub", 0o777), ("etc/app", 0o750), ("home/u/.config", 0o775)]:
        (root / rel).mkdir(parents=True, exist_ok=True)
        (root / rel).chmod(mode)
    files = {"etc/cron.d/job": 0o666, "etc/cron.d/ok": 0o644, "etc/cron.d/sub/deep.conf": 0o664, "etc/app/a.conf": 0o640,
             "etc/app/b.rules": 0o606, "etc/app/c.txt": 0o600, "home/u/.bashrc": 0o646, "home/u/.config/x": 0o777,
             "etc/passwd": 0o644, "etc/group": 0o644, "etc/ssh/ssh_host_rsa_key": 0o644, "etc/ssh/ssh_host_ed25519_key": 0o640,
             "etc/ssh/ssh_host_rsa_key.pub": 0o644, "etc/ssh/sshd_config": 0o644}
    for rel, mode in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(rel + "\n")
        (root / rel).chmod(mode)
    (root / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\nu:x:1000:1000::/home/u:/bin/sh\n")
    (root / "etc/group").write_text("root:x:0:\nu:x:1000:\n")
    if os.geteuid() == 0:
        os.chown(root / "home/u/.bashrc", 1000, 1000)
        os.chown(root / "etc/app/b.rules", 4242, 4343)  # no such user or group
    (root / "etc/cron.d/link").symlink_to("/etc/shadow")
    mark(root / "etc/cron.d/job")
    mark(root / "etc/cron.d/sub")
    return root


def kensa_selects(root: Path, params: Dict[str, Any]) -> List[str]:
    found, _ = selected(LocalHost(str(root)), selection(SCHEMA.read({**params, "mode": "0600"})))
    return sorted(entry.path for entry in found)


def find_selects(root: Path, starts: List[str], args: str) -> List[str]:
    """What the real find(1) selects among files and directories (not symlinks) of the tree."""
    argv = ["find", *(str(root) + start for start in starts), *shlex.split(args)]
    # the tree's own ids, as the tree's /etc/passwd and /etc/group would give them
    argv += ["(", "-type", "f", "-o", "-type", "d", ")"] if args else ["-type", "f", "-o", "-type", "d"]
    done = subprocess.run(argv, capture_output=True, text=True, check=True)
    return sorted("/" + os.path.relpath(line, root) for line in done.stdout.splitlines())


@pytest.mark.parametrize("args", [a for a in CORPUS_ARGS if "user" not in a and "group" not in a and "uid" not in a])
def test_the_selection_is_what_the_real_find_selects(tmp_path: Path, args: str) -> None:
    """For each of the public rules' find_args that need no account database, kensa's walk selects
    exactly the files and directories the real find(1) selects in the same tree (symlinks aside)."""
    root = make_root(tmp_path)
    assert kensa_selects(root, {"find_paths": ["/etc", "/home"], "find_args": args}) == find_selects(root, ["/etc", "/home"], args)


def test_owner_tests_follow_the_targets_own_accounts(tmp_path: Path) -> None:
    """-user/-group/-uid and -nouser/-nogroup read the target root's /etc/passwd and /etc/group, not this machine's."""
    require_root()
    root = make_root(tmp_path)
    assert kensa_selects(root, {"find_paths": ["/home"], "find_args": "-user u"}) == ["/home/u/.bashrc"]
    assert kensa_selects(root, {"find_paths": ["/etc"], "find_args": "-nouser -o -nogroup"}) == ["/etc/app/b.rules"]
    assert kensa_selects(root, {"find_paths": ["/etc"], "find_args": "-uid +999 -type f"}) == ["/etc/app/b.rules"]
    assert "/etc/app/b.rules" not in kensa_selects(root, {"find_paths": ["/etc"], "find_args": "-group root"})


def test_find_type_name_and_glob_select_as_documented(tmp_path: Path) -> None:
    """find_type and find_name narrow find_paths; glob matches names in path's directory, never a symlink."""
    root = make_root(tmp_path)
    assert kensa_selects(root, {"find_paths": ["/etc/cron.d"], "find_type": "d"}) == ["/etc/cron.d", "/etc/cron.d/sub"]
    assert kensa_selects(root, {"find_paths": ["/etc"], "find_name": "*.conf"}) == ["/etc/app/a.conf", "/etc/cron.d/sub/deep.conf"]
    assert kensa_selects(root, {"path": "/etc/ssh/ssh_host_*_key", "glob": "ssh_host_*_key"}) == [
        "/etc/ssh/ssh_host_ed25519_key", "/etc/ssh/ssh_host_rsa_key"]
    assert "/etc/cron.d/link" not in kensa_selects(root, {"find_paths": ["/etc/cron.d"]})


@pytest.mark.parametrize("spec", ["go-w", "o-r", "g-w,o-rwx", "+t", "o-w", "u=rwx,g=rx,o=", "a+X", "g=u", "u+s", "=r"])
def test_symbolic_modes_give_what_chmod_gives(tmp_path: Path, spec: str) -> None:
    """mode_for gives every start mode, for a file and a directory, what the real chmod(1) gives."""
    for start in (0o644, 0o755, 0o777, 0o600, 0o4750, 0o1777, 0o2775):
        for kind in ("file", "dir"):
            path = tmp_path / kind
            path.mkdir(exist_ok=True) if kind == "dir" else path.touch()
            path.chmod(start)
            subprocess.run(["chmod", spec, str(path)], check=True)
            assert mode_for(mode_spec(spec), start, kind == "dir") == stat.S_IMODE(path.stat().st_mode), (oct(start), kind)


@pytest.mark.parametrize("args, said", [
    ("-exec rm {} ;", "'-exec' is not a test"), ("-delete", "'-delete' is not a test"), ("-fprint /x", "'-fprint'"),
    ("-perm /022 ; reboot", "';' is not a test"), ("-name '*.conf", "does not split"), ("( -perm /022", "is missing at the end"),
    ("-maxdepth x", "whole number"), ("-perm /0o22", "-perm"), ("-newer /etc/passwd", "'-newer'"),
])
def test_find_args_outside_the_parsed_subset_are_refused_naming_the_word(args: str, said: str) -> None:
    """find_args is parsed, never run: an action, a shell word or a malformed expression is a ParamError naming it."""
    with pytest.raises(ParamError, match=said.replace("(", r"\(").replace("*", r"\*")):
        find_args(args)


def test_every_find_args_of_the_public_rules_parses() -> None:
    """Every find_args spelling Kensa's public rules use is within the parsed subset."""
    for args in CORPUS_ARGS:
        assert find_args(args) == args


@pytest.mark.parametrize("params, field", [
    ({"find_paths": ["/etc/../.."], "mode": "0600"}, "find_paths"),
    ({"find_paths": ["etc"], "mode": "0600"}, "find_paths"),
    ({"find_paths": "/etc", "mode": "0600"}, "find_paths"),
    ({"find_paths": ["/etc"], "find_args": "-perm /022\n-exec x", "mode": "0600"}, "find_args"),
    ({"find_paths": ["/etc"], "find_type": "l", "mode": "0600"}, "find_type"),
    ({"find_paths": ["/etc"], "find_name": "a/b", "mode": "0600"}, "find_name"),
    ({"find_paths": ["/etc"], "path": "/etc", "mode": "0600"}, "path"),
    ({"glob": "*.conf", "mode": "0600"}, "path"),
    ({"path": "/etc", "find_args": "-perm /022", "mode": "0600"}, "find_args"),
    ({"find_paths": ["/etc"], "mode": "go-q"}, "mode"),
])
def test_bad_selection_parameters_are_refused_and_change_nothing(tmp_path: Path, params: Dict[str, Any], field: str) -> None:
    """Paths escaping the root, a newline smuggled into find_args, a type find has not, a pattern with '/',
    path and find_paths together: a ParamError naming the field, and the tree is unchanged."""
    root = make_root(tmp_path)
    before = snapshot(root)
    with pytest.raises(ParamError) as caught:
        FilePermissions().capture(LocalHost(str(root)), params)
    assert caught.value.field == field, caught.value
    assert snapshot(root) == before


WORLD_WRITABLE = {"mechanism": "file_permissions", "find_paths": ["/etc", "/home"], "find_type": "f",
                  "find_args": "-perm /022", "mode": "go-w"}


def test_apply_then_failed_validate_rolls_back_every_selected_file_exactly(tmp_path: Path) -> None:
    """A rule whose second step undoes the first fails validate: every file the first step changed
    (xattrs included) is back exactly as it was; the symlink's target was never touched."""
    require_root()
    root = make_root(tmp_path)
    before = snapshot(root)
    undo = {"mechanism": "file_permissions", "path": "/etc/cron.d/job", "mode": "0666"}
    rules = write_rule(tmp_path / "rules", "perm-undone", None, [WORLD_WRITABLE, undo])
    results = remediate(tmp_path / "j.db", rules, root)
    assert [r["status"] for r in results] == ["rolled_back"], results
    assert snapshot(root) == before


def test_commit_changes_exactly_the_selected_modes_and_checks_compliant(tmp_path: Path) -> None:
    """A commit removes group/other write from exactly the regular files find -perm /022 selects,
    nothing else changes (directories, other files, xattrs), and the rule then checks compliant."""
    require_root()
    root = make_root(tmp_path)
    before = snapshot(root)
    wanted = find_selects(root, ["/etc", "/home"], "-type f -perm /022")
    rules = write_rule(tmp_path / "rules", "perm-world-writable", None, [WORLD_WRITABLE])
    journal = tmp_path / "j.db"
    assert check(journal, rules, root) == {"perm-world-writable": "not_compliant"}
    results = remediate(journal, rules, root)
    assert [r["status"] for r in results] == ["committed"], results
    after = snapshot(root)
    changed = sorted("/" + rel for rel in before if before[rel] != after[rel])
    assert changed == wanted
    for rel in changed:
        kind, mode, uid, gid, content, xattrs = before[rel[1:]]
        assert after[rel[1:]] == (kind, mode & ~0o022, uid, gid, content, xattrs)
    assert check(journal, rules, root) == {"perm-world-writable": "compliant"}


def test_rollback_by_id_keeps_an_operators_later_change_and_refuses_a_changed_mode(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """After a commit, an operator's chown of a changed file survives a rollback by id (only the
    mode kensa set goes back); a later chmod of a file kensa changed makes rollback refuse, naming it."""
    require_root()
    root = make_root(tmp_path)
    rules = write_rule(tmp_path / "rules", "perm-world-writable", None, [WORLD_WRITABLE])
    journal = tmp_path / "j.db"
    txn = remediate(journal, rules, root)[0]["txn"]
    job = root / "etc/cron.d/job"
    os.chown(job, 1000, 1000)
    code, result = rollback(journal, txn)
    assert code == 0 and result["status"] == "rolled_back", result
    assert stat.S_IMODE(job.stat().st_mode) == 0o666 and (job.stat().st_uid, job.stat().st_gid) == (1000, 1000)

    txn = remediate(journal, rules, root)[0]["txn"]
    job.chmod(0o600)
    capsys.readouterr()
    code, _ = rollback(journal, txn)
    said = capsys.readouterr().err
    assert code != 0 and "/etc/cron.d/job: mode is 0600, kensa set 0644" in said, said
    assert stat.S_IMODE(job.stat().st_mode) == 0o600


def test_more_files_than_the_cap_is_refused_naming_the_count_and_changes_nothing(tmp_path: Path) -> None:
    """A selection of MAX_MATCHED + 1 files is a TooManyFilesError naming the count and the cap at
    capture; no file's mode changed."""
    root = tmp_path / "root"
    many = root / "var/many"
    many.mkdir(parents=True)
    for index in range(MAX_MATCHED + 1):
        (many / f"f{index}").touch()
        (many / f"f{index}").chmod(0o666)
    host = LocalHost(str(root))
    params = {"find_paths": ["/var/many"], "find_type": "f", "mode": "0600"}
    with pytest.raises(TooManyFilesError, match=f"matches {MAX_MATCHED + 1} files, above the cap of {MAX_MATCHED}"):
        FilePermissions().capture(host, params)
    assert {stat.S_IMODE(path.stat().st_mode) for path in many.iterdir()} == {0o666}


def test_a_mount_inside_an_image_root_is_never_entered(tmp_path: Path) -> None:
    """Under an image root the walk does not cross into a filesystem mounted inside it: its files keep their modes."""
    require_root()
    with tmpfs(tmp_path, "size=1m") as mounted:
        (mounted / "inside").write_text("x")
        (mounted / "inside").chmod(0o666)
        (tmp_path / "outside").write_text("y")
        (tmp_path / "outside").chmod(0o666)
        host = LocalHost(str(tmp_path))
        params = {"find_paths": ["/"], "find_type": "f", "find_args": "-perm /022", "mode": "go-w"}
        handler = FilePermissions()
        pre = handler.capture(host, params)
        assert [f["path"] for f in pre.data["files"]] == ["/outside"]
        handler.apply(host, params, pre)
        assert stat.S_IMODE((mounted / "inside").stat().st_mode) == 0o666
        assert stat.S_IMODE((tmp_path / "outside").stat().st_mode) == 0o644


LIVE_SCRIPT = textwrap.dedent("""
    import json, os, subprocess, sys
    from kensa.hosts.local import LocalHost
    from kensa.facts.finding import selected, selection
    from kensa.handlers.file_permissions import SCHEMA
    top = sys.argv[1]
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", top + "/sub"], check=True)
    open(top + "/sub/inside", "w").close()
    host = LocalHost("/")

    def chosen(args):
        fields = {"find_paths": [top], "mode": "0600", **({"find_args": args} if args else {})}
        found, _ = selected(host, selection(SCHEMA.read(fields)))
        return sorted(entry.path for entry in found)

    def real(args):
        out = subprocess.run(["find", top] + args.split(), stdout=subprocess.PIPE, universal_newlines=True, check=True)
        return sorted(out.stdout.split())
    print(json.dumps({"live": host.is_live, "xdev": [chosen("-xdev"), real("-xdev")], "all": [chosen(""), real("")]}))
""")


def test_on_a_live_host_xdev_stops_at_a_mount_point_as_find_does(tmp_path: Path) -> None:
    """On a live host (a private mount namespace with a tmpfs mounted in the tree) -xdev selects what
    the real find -xdev selects (the mount point, not what is in it); without it the walk crosses."""
    require_root()
    if shutil.which("unshare") is None:
        require_real("unshare is not installed")
    top = tmp_path / "top"
    (top / "sub").mkdir(parents=True)
    (top / "file").touch()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(["unshare", "-m", "--propagation", "private", sys.executable, "-c", LIVE_SCRIPT, str(top)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["live"]
    assert seen["xdev"][0] == seen["xdev"][1] == sorted([str(top), str(top / "file"), str(top / "sub")])
    assert seen["all"][0] == seen["all"][1] and str(top / "sub/inside") in seen["all"][0]


def test_a_copy_of_this_machines_etc_remediated_then_checked_is_compliant(tmp_path: Path) -> None:
    """This machine's /etc copied into a root takes find-based and glob rules (group/other write off
    config files, owner root in cron directories, ssh host keys 0600) to committed, then checks compliant."""
    require_root()
    root = tmp_path / "root"
    copy_etc(root / "etc")
    (root / "etc/cron.d/stray").write_text("# x\n")
    (root / "etc/cron.d/stray").chmod(0o666)
    os.chown(root / "etc/cron.d/stray", 1000, 1000)
    (root / "etc/ssh").mkdir(exist_ok=True)
    (root / "etc/ssh/ssh_host_test_key").write_text("key\n")
    (root / "etc/ssh/ssh_host_test_key").chmod(0o644)
    rules = tmp_path / "rules"
    write_rule(rules, "perm-etc-not-world-writable", None, [
        {"mechanism": "file_permissions", "find_paths": ["/etc"], "find_type": "f", "find_args": "-xdev -perm /o+w",
         "mode": "o-w"}])
    write_rule(rules, "perm-cron-owned-by-root", None, [
        {"mechanism": "file_permissions", "find_paths": ["/etc/cron.d"], "find_args": "! -user root", "owner": "root"}])
    write_rule(rules, "perm-ssh-host-keys", None, [
        {"mechanism": "file_permissions", "path": "/etc/ssh/ssh_host_*_key", "glob": "ssh_host_*_key", "mode": "0600"}])
    journal = tmp_path / "j.db"
    results = remediate(journal, rules, root)
    assert sorted(r["status"] for r in results) == ["committed"] * 3, results
    assert set(check(journal, rules, root).values()) == {"compliant"}
    assert stat.S_IMODE((root / "etc/cron.d/stray").stat().st_mode) == 0o664
    assert (root / "etc/cron.d/stray").stat().st_uid == 0


def test_through_the_agent_a_selection_is_one_round_trip_per_phase_and_rolls_back(tmp_path: Path) -> None:
    """On kensa's agent (a real process over SubprocessTransport) the walk runs on the target: a
    find-based step costs one request per phase (and the target's lock, one request and one
    message), commits, and a rollback by id restores the tree."""
    require_root()
    root = make_root(tmp_path)
    before = snapshot(root)
    step = Step("file_permissions", {k: v for k, v in WORLD_WRITABLE.items() if k != "mechanism"})
    with agent_engine(tmp_path / "j.db") as engine:
        txn = Transaction("remote-find", (step,), host=agent_key(root))
        host = engine.hosts(txn.host)
        assert isinstance(host, RemoteHost)
        host.connection.counts.clear()
        result = engine.run(txn)
        assert result.status is Status.COMMITTED, result.error
        assert dict(host.connection.counts) == {"validate": 2, "capture": 1, "apply": 1,
                                                "lock_target": 1, "unlock_target": 1}
        assert stat.S_IMODE((root / "etc/cron.d/job").stat().st_mode) == 0o644
        back = engine.rollback(txn.id)
        assert back.status is Status.ROLLED_BACK and back.host_unchanged, back.error
    assert snapshot(root) == before
