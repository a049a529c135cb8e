"""cron_job: an entry of a system crontab, checked strictly and read back by the real cron parser.

Real temporary roots (files with owners, modes and xattrs), a real journal, the
real command line, the real agent process for a remote root, and Debian's own
``crontab -n`` (the package ``cron``) as the judge of what cron accepts.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, Dict, Tuple

import pytest

from conftest import copy_live_tree, require_real, require_root
from conftest import snapshot_tree as snapshot
from kensa.errors import ParamError, PathEscapeError
from kensa.handlers import default_registry
from kensa.handlers.cron_job import HEADER, cron_parser
from kensa.hosts.local import resolve_host
from kensa.model import Status, Step, Transaction
from test_mech_pam import NeverHolds, committed, engine_on, refused_after_edit, refused_params, remediate_check_roll_back, remote_engine

PASSWD = "root:x:0:0:root:/root:/bin/bash\nbackup:x:34:34:backup:/var/backups:/usr/sbin/nologin\n"
EXISTING = "SHELL=/bin/sh\n# maintenance\n30 2 * * 0 backup /usr/local/bin/rotate --all\n"
AIDE = Step("cron_job", {"schedule": "0 5 * * *", "command": "/usr/sbin/aide --check", "user": "root", "file": "/etc/cron.d/aide"})
ROTATE = Step("cron_job", {"schedule": "15 3 * * *", "command": "/usr/local/bin/rotate --all", "user": "backup", "name": "maint"})


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A root with a passwd, an empty /etc/cron.d and a group-writable cron file with xattrs."""
    require_root("files owned by root, a security.* xattr")
    root = tmp_path / "root"
    (root / "etc/cron.d").mkdir(parents=True)
    (root / "etc/passwd").write_text(PASSWD)
    maint = root / "etc/cron.d/maint"
    maint.write_text(EXISTING)
    maint.chmod(0o664)
    os.setxattr(maint, "user.origin", b"ops")
    os.setxattr(maint, "security.kensa-test", b"label")
    return root


def real_cron() -> None:
    if shutil.which("crontab") is None:
        require_real("Debian's cron (crontab -n) is not installed")


def cron_accepts(path: Path) -> bool:
    """What Debian's crontab parser says of the file (dry run: nothing is installed)."""
    return subprocess.run(["crontab", "-n", str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE).returncode == 0


def test_a_new_cron_d_file_is_root_owned_0644_and_the_real_parser_accepts_it(root: Path, tmp_path: Path) -> None:
    """No /etc/cron.d/aide: it is created 0644 root:root with a comment and the entry, which crontab -n accepts."""
    real_cron()
    with engine_on(tmp_path) as engine:
        committed(engine, str(root), AIDE)
    path = root / "etc/cron.d/aide"
    assert path.read_text() == HEADER + "0 5 * * * root /usr/sbin/aide --check\n"
    st = path.stat()
    assert (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (0o644, 0, 0)
    assert cron_accepts(path)


def test_a_root_at_a_long_path_is_checked_by_the_real_parser_too(tmp_path: Path) -> None:
    """Debian's crontab keeps 99 bytes of a file name it is given: a root deep enough (a container's
    merged layer) made the parser read a cut path, fail, and every cron_job there roll back. The
    parser reads the file on its standard input, and validates it; a bad minute there still fails."""
    require_root("files owned by root")
    real_cron()
    root = tmp_path / ("overlay-" + "a" * 64) / "merged"
    (root / "etc/cron.d").mkdir(parents=True)
    (root / "etc/passwd").write_text(PASSWD)
    assert len(str(root / "etc/cron.d/aide")) > 100
    with engine_on(tmp_path) as engine:
        committed(engine, str(root), AIDE)
    host = resolve_host(str(root))
    assert default_registry()["cron_job"].validate(host, AIDE.params) is True
    (root / "etc/cron.d/aide").write_text("0 5 * * * root /usr/sbin/aide --check\n61 * * * * root /bin/true\n")
    assert default_registry()["cron_job"].validate(host, AIDE.params) is False


def _deep_root(tmp_path: Path, letter: str) -> Path:
    """A root at a path longer than crontab keeps (a container's merged layer), with cron.d and a
    passwd; skips without root (files owned by root) or without the real crontab."""
    require_root("files owned by root")
    real_cron()
    root = tmp_path / ("overlay-" + letter * 64) / "merged"
    (root / "etc/cron.d").mkdir(parents=True)
    (root / "etc/passwd").write_text(PASSWD)
    return root


def test_a_name_like_an_option_at_a_long_path_is_checked_as_a_file(tmp_path: Path) -> None:
    """A cron.d name may start with '-' ("-l"), which crontab must not take for an option (listing,
    or with "-r" deleting, root's own crontab instead of checking the file): it never sees the name,
    only the file on its standard input. A good entry there validates and a bad minute does not,
    whether or not root has a crontab."""
    root = _deep_root(tmp_path, "c")
    step = Step("cron_job", {**AIDE.params, "file": "/etc/cron.d/-l"})
    assert len(str(root / "etc/cron.d/-l")) > 100
    path = root / "etc/cron.d/-l"
    path.write_text("0 5 * * * root /usr/sbin/aide --check\n")
    path.chmod(0o644)
    host = resolve_host(str(root))
    assert default_registry()["cron_job"].validate(host, step.params) is True
    path.write_text("0 5 * * * root /usr/sbin/aide --check\n61 * * * * root /bin/true\n")
    assert default_registry()["cron_job"].validate(host, step.params) is False


def test_a_long_path_on_a_host_whose_env_has_no_chdir_is_still_checked(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """crontab reads the file on its standard input, so a deep root needs no env -C (coreutils
    before 8.28 has none): where env cannot change directory the file is still checked, a good
    entry validating and a bad minute not."""
    root = _deep_root(tmp_path, "b")
    (root / "etc/cron.d/aide").write_text("0 5 * * * root /usr/sbin/aide --check\n")
    (root / "etc/cron.d/aide").chmod(0o644)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "env").write_text("#!/bin/sh\necho \"env: invalid option -- 'C'\" >&2\nexit 125\n")
    (bin_dir / "env").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    assert default_registry()["cron_job"].validate(resolve_host(str(root)), AIDE.params) is True
    (root / "etc/cron.d/aide").write_text("0 5 * * * root /usr/sbin/aide --check\n61 * * * * root /bin/true\n")
    assert default_registry()["cron_job"].validate(resolve_host(str(root)), AIDE.params) is False


def test_the_host_parser_is_found_and_refuses_what_cron_refuses(root: Path) -> None:
    """cron_parser finds Debian's crontab -n; a file with a bad minute does not validate even though it holds the entry."""
    real_cron()
    host = resolve_host(str(root))
    assert cron_parser(host) == ["crontab", "-n"]
    (root / "etc/cron.d/aide").write_text("0 5 * * * root /usr/sbin/aide --check\n61 * * * * root /bin/true\n")
    (root / "etc/cron.d/aide").chmod(0o644)
    assert not cron_accepts(root / "etc/cron.d/aide")
    assert default_registry()["cron_job"].validate(host, AIDE.params) is False


def test_an_entry_cron_would_refuse_rolls_back_to_the_exact_tree(root: Path, tmp_path: Path) -> None:
    """The file already has a line cron refuses: after apply the real parser refuses the file, validate fails, rollback is exact."""
    real_cron()
    bad = root / "etc/cron.d/aide"
    bad.write_text("61 * * * * root /bin/true\n")
    bad.chmod(0o644)
    before = snapshot(root)
    with engine_on(tmp_path) as engine:
        result = engine.run(Transaction("cron-bad", (AIDE,), host=str(root)))
    assert (result.status, result.host_unchanged) == (Status.ROLLED_BACK, True), result.error
    assert snapshot(root) == before


def test_apply_then_failed_validate_rolls_back_every_file_and_attribute(root: Path, tmp_path: Path) -> None:
    """Two cron steps then a step that never holds: the new file goes, the edited one is back with its bytes, mode 0664 and xattrs."""
    before = snapshot(root)
    registry = {**default_registry(), "never_holds": NeverHolds()}
    with engine_on(tmp_path, registry) as engine:
        result = engine.run(Transaction("cron-failing", (AIDE, ROTATE, Step("never_holds", {})), host=str(root)))
    assert (result.status, result.host_unchanged) == (Status.ROLLED_BACK, True), result.error
    assert snapshot(root) == before


def test_an_existing_entry_gets_its_schedule_and_the_file_loses_group_write(root: Path, tmp_path: Path) -> None:
    """Same user and command on another schedule: that line is rewritten, the rest stays, the file becomes 0644 root-owned."""
    with engine_on(tmp_path) as engine:
        committed(engine, str(root), ROTATE)
    path = root / "etc/cron.d/maint"
    assert path.read_text() == EXISTING.replace("30 2 * * 0 backup", "15 3 * * * backup")
    assert path.stat().st_mode & 0o777 == 0o644
    assert os.getxattr(path, "user.origin") == b"ops"


def test_rollback_by_id_keeps_an_operators_later_line_and_refuses_an_edit_of_kensas(root: Path, tmp_path: Path) -> None:
    """After commit an operator appends a job: rollback reverts only kensa's line and mode; an edited kensa line is refused by path."""
    path = root / "etc/cron.d/maint"
    with engine_on(tmp_path) as engine:
        txn = committed(engine, str(root), ROTATE)
        path.write_text(path.read_text() + "0 1 * * * root /usr/bin/true\n")
        result = engine.rollback(txn)
        assert (result.status, result.host_unchanged) == (Status.ROLLED_BACK, False)
        assert path.read_text() == EXISTING + "0 1 * * * root /usr/bin/true\n"
        assert path.stat().st_mode & 0o777 == 0o664
        txn = committed(engine, str(root), ROTATE)
        refused_after_edit(engine, txn, root, "/etc/cron.d/maint", "15 3 * * *", "45 3 * * *")


def test_rollback_by_id_of_a_created_file_keeps_an_operators_line_or_removes_the_file(root: Path, tmp_path: Path) -> None:
    """kensa created /etc/cron.d/aide: untouched, a rollback by id removes it; with an operator's line added, only that line is left."""
    path = root / "etc/cron.d/aide"
    with engine_on(tmp_path) as engine:
        assert engine.rollback(committed(engine, str(root), AIDE)).host_unchanged
        assert not path.exists()
        txn = committed(engine, str(root), AIDE)
        path.write_text(path.read_text() + "0 6 * * * root /usr/bin/true\n")
        result = engine.rollback(txn)
    assert (result.status, result.host_unchanged) == (Status.ROLLED_BACK, False)
    assert path.read_text() == "0 6 * * * root /usr/bin/true\n"


@pytest.mark.parametrize("params,field", [
    ({"command": "/bin/true\n* * * * * root /tmp/evil"}, "command"),
    ({"command": "date +%F"}, "command"),
    ({"schedule": "0 5 * * * *"}, "schedule"),
    ({"schedule": "61 5 * * *"}, "schedule"),
    ({"schedule": "0 5 * 13 *"}, "schedule"),
    ({"schedule": "@sometimes"}, "schedule"),
    ({"schedule": "0 5 * * *\n"}, "schedule"),
    ({"user": "root cmd"}, "user"),
    ({"user": 0}, "user"),
    ({"name": "aide.cron"}, "name"),
    ({"name": "../../etc/passwd"}, "name"),
    ({"file": "/etc/cron.d/../shadow"}, "file"),
    ({"file": "/etc/cron.d/aide.conf"}, "file"),
    ({"name": "k" * 98}, "name"),
    ({"file": "/etc/" + "k" * 98}, "file"),
])
def test_bad_parameters_are_refused_naming_the_field_and_change_nothing(root: Path, tmp_path: Path, params: Dict[str, Any], field: str) -> None:
    """A newline, an unescaped %, a bad schedule, a user that is no name, a name cron skips, a path with '..' or a
    file name longer than crontab opens (97 bytes: its check of the written file would always fail and roll a
    correct entry back): ParamError, no change."""
    merged = {**AIDE.params, **params}
    if "name" in params:
        del merged["file"]
    refused_params(tmp_path, root, "cron_job", merged, field)


def test_the_strict_schedule_check_agrees_with_the_real_parser(tmp_path: Path) -> None:
    """Schedules the field reader accepts, crontab -n accepts; the ones it refuses, crontab -n refuses too, except a range
    that runs backwards, which Debian's cron lets through and kensa refuses, since crons disagree on what it means."""
    real_cron()
    from kensa.facts.cron import schedule

    good = ["*/5 * * * *", "0 0 1-31/2 jan-dec mon-fri", "@reboot", "0 5 * * 7", "1,2,3 4-5 * * sun"]
    bad = ["60 * * * *", "* 24 * * *", "* * 0 * *", "* * * 13 *", "* * * * 8", "*/0 * * * *"]
    for text in good + bad:
        accepted = True
        try:
            schedule(text)
        except ParamError:
            accepted = False
        path = tmp_path / "probe"
        path.write_text(f"{text} /bin/true\n")
        assert accepted == cron_accepts(path) == (text in good), text
    with pytest.raises(ParamError, match="backwards"):
        schedule("5-1 * * * *")


def test_a_user_the_target_lacks_and_a_planted_symlink_are_refused(root: Path, tmp_path: Path) -> None:
    """user 'nobody' is not in the root's passwd; /etc/cron.d/aide is a symlink out of the root: both refused by name, no change."""
    outside = tmp_path / "outside"
    outside.write_text("")
    (root / "etc/cron.d/aide").symlink_to(outside)
    before = snapshot(root)
    with engine_on(tmp_path) as engine:
        unknown = engine.run(Transaction("cron-user", (Step("cron_job", {**ROTATE.params, "user": "nobody"}),), host=str(root)))
        planted = engine.run(Transaction("cron-link", (AIDE,), host=str(root)))
    assert unknown.status is Status.ERRORED and "nobody" in str(unknown.error)
    assert planted.status is Status.ERRORED and "/etc/cron.d/aide" in str(planted.error)
    assert snapshot(root) == before and outside.read_text() == ""


RULES = {
    "cron-aide-daily": ("file_content_match", {"path": "/etc/cron.d/aide", "pattern": "^0 5 \\* \\* \\* root /usr/sbin/aide --check$"},
                        {"mechanism": "cron_job", **AIDE.params}),
    "cron-sync-hourly": ("file_content_match", {"path": "/etc/crontab", "pattern": "^@hourly root /usr/bin/sync$"},
                         {"mechanism": "cron_job", "schedule": "@hourly", "command": "/usr/bin/sync", "user": "root", "file": "/etc/crontab"}),
}


def test_this_machines_etc_remediated_with_the_rules_then_check_compliant(tmp_path: Path) -> None:
    """A copy of this machine's /etc (passwd, crontab, cron.d): kensa remediate commits both rules, kensa check says compliant,
    the real parser accepts both files, and rollback by id gives the copy back exactly."""
    require_root("root-owned cron files")
    real_cron()
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    for name in ("passwd", "crontab"):
        if Path("/etc", name).exists():
            shutil.copy2(Path("/etc", name), root / "etc" / name)
    if Path("/etc/cron.d").is_dir():
        copy_live_tree("/etc/cron.d", root / "etc/cron.d")
    else:
        (root / "etc/cron.d").mkdir()

    def parsed(root: Path) -> None:
        assert cron_accepts(root / "etc/cron.d/aide") and cron_accepts(root / "etc/crontab")

    remediate_check_roll_back(tmp_path, root, RULES, parsed)


def test_cron_job_commits_and_rolls_back_on_a_remote_root_through_the_agent(root: Path, tmp_path: Path) -> None:
    """Over the real agent process: both entries commit (the parser asked on the target), a rollback by id is exact."""
    before = snapshot(root)
    with remote_engine(tmp_path) as engine:
        txn = committed(engine, f"ssh://admin@target{root}", AIDE, ROTATE)
        assert (root / "etc/cron.d/aide").exists()
        result = engine.rollback(txn)
    assert (result.status, result.host_unchanged) == (Status.ROLLED_BACK, True), result.error
    assert snapshot(root) == before


# A crontab in front of the real one: asked for its usage (which validate does after its confined read
# of the file and before the check) it renames {moved} aside and puts a link to {decoy} in its place,
# as a hostile process racing kensa could; every other call logs its arguments and what its standard
# input is, then runs the real crontab.
_SWAPPING_CRONTAB = """#!/bin/sh
if [ "$1" = "-h" ]; then
    mv {moved} {moved}.kept && ln -s {decoy} {moved}
else
    echo "args: $*" >> {log}
    echo "stdin: $(readlink /proc/self/fd/0)" >> {log}
fi
exec {crontab} "$@"
"""

GOOD_LINE = "0 5 * * * root /usr/sbin/aide --check\n"
BAD_LINE = "61 * * * * root /bin/true\n"


def _swapping_crontab(tmp_path: Path, moved: Path, decoy: Path) -> Tuple[str, Path]:
    """A directory to put first on PATH holding :data:`_SWAPPING_CRONTAB`, and its log."""
    real = shutil.which("crontab")
    assert real is not None
    directory, log = tmp_path / "swapping-bin", tmp_path / "crontab.log"
    directory.mkdir()
    (directory / "crontab").write_text(_SWAPPING_CRONTAB.format(moved=moved, decoy=decoy, log=log, crontab=real))
    (directory / "crontab").chmod(0o755)
    return str(directory), log


def _cron_root(root: Path, aide: str) -> Path:
    """A root with a passwd and /etc/cron.d/aide holding ``aide`` (0644)."""
    (root / "etc/cron.d").mkdir(parents=True)
    (root / "etc/passwd").write_text(PASSWD)
    (root / "etc/cron.d/aide").write_text(aide)
    (root / "etc/cron.d/aide").chmod(0o644)
    return root


@pytest.mark.parametrize("inside_good", [True, False], ids=["inside-good", "inside-bad"])
@pytest.mark.parametrize("deep", [False, True], ids=["short-root", "deep-root"])
def test_a_root_whose_parent_is_swapped_for_a_link_is_still_the_root_crontab_checks(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, deep: bool, inside_good: bool) -> None:
    """After validate's confined read, the directory above the root (a container's layer directory)
    is swapped for a link to a decoy tree whose etc/cron.d/aide says the opposite: crontab's verdict
    is about the file kensa confined (it reads it on its standard input, opened through the root kensa
    pinned), never about the decoy reached by the root's path, at a short root and a deep one alike."""
    require_root("files owned by root")
    real_cron()
    layer = tmp_path / (("overlay-" + "d" * 64) if deep else "layer")
    root = _cron_root(layer / "merged", GOOD_LINE if inside_good else GOOD_LINE + BAD_LINE)
    decoy = _cron_root(tmp_path / "decoy/merged", GOOD_LINE + BAD_LINE if inside_good else GOOD_LINE).parent
    host = resolve_host(str(root))
    directory, log = _swapping_crontab(tmp_path, layer, decoy)
    monkeypatch.setenv("PATH", f"{directory}:{os.environ['PATH']}")
    assert default_registry()["cron_job"].validate(host, AIDE.params) is inside_good
    assert layer.is_symlink()
    said = log.read_text()
    assert f"stdin: {layer}.kept/merged/etc/cron.d/aide\n" in said and "decoy" not in said, said


def test_a_cron_d_swapped_for_a_link_out_of_the_root_is_refused_not_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After validate's confined read, the root's /etc/cron.d is swapped for a link to a directory
    outside the root: the check is refused naming that link, and crontab is never given a file."""
    require_root("files owned by root")
    real_cron()
    root = _cron_root(tmp_path / "root", GOOD_LINE)
    decoy = _cron_root(tmp_path / "decoy", GOOD_LINE + BAD_LINE) / "etc/cron.d"
    directory, log = _swapping_crontab(tmp_path, root / "etc/cron.d", decoy)
    monkeypatch.setenv("PATH", f"{directory}:{os.environ['PATH']}")
    with pytest.raises(PathEscapeError, match="'cron.d' is a symlink"):
        default_registry()["cron_job"].validate(resolve_host(str(root)), AIDE.params)
    assert not log.exists()


@pytest.mark.parametrize("python", ["current", "3.6"])
def test_the_swapped_parent_is_not_followed_through_the_agent_either(tmp_path: Path, python: str) -> None:
    """The same swap above a remote root: validate runs in the agent (on the current Python and on one
    with what 3.7 added taken away), which opens the file under the root it pinned and gives crontab that."""
    require_root("files owned by root")
    real_cron()
    from agent_targets import PYTHON_DIR, py36_path, transport
    from kensa.hosts.remote import connect

    layer = tmp_path / "layer"
    root = _cron_root(layer / "merged", GOOD_LINE)
    decoy = _cron_root(tmp_path / "decoy/merged", GOOD_LINE + BAD_LINE).parent
    directory, log = _swapping_crontab(tmp_path, layer, decoy)
    rest = py36_path(tmp_path / "py36") if python == "3.6" else f"{PYTHON_DIR}:/usr/bin:/bin"
    remote = connect(transport(path=f"{directory}:{rest}"), str(root))
    try:
        assert remote.handlers(default_registry())["cron_job"].validate(remote, AIDE.params) is True
    finally:
        remote.close()
    said = log.read_text()
    assert f"stdin: {layer}.kept/merged/etc/cron.d/aide\n" in said and "decoy" not in said, said
