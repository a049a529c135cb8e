"""mount_option_set: fstab edited line-exactly in an image root, and a real remount inside a
private mount namespace; rollback restores both."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest

from conftest import copy_live_tree, require_real, require_root, snapshot_tree as snapshot
from mech_rig import image_with, remote_round_trip
from kensa.cli.main import EXIT_OK, main
from kensa.errors import KensaError
from kensa.facts import fstab
from kensa.handlers import default_registry
from kensa.hosts.local import LocalHost

RULES = Path(__file__).resolve().parent / "data" / "rules" / "mount"
HANDLER = default_registry()["mount_option_set"]

FSTAB = (
    "# /etc/fstab: static file system information.\n"
    "#\n"
    "# <file system> <mount point>   <type>  <options>       <dump>  <pass>\n"
    "UUID=0a1b\t/\text4\terrors=remount-ro\t0\t1\n"
    "\n"
    "tmpfs   /tmp    tmpfs   defaults        0       0\n"
    "/dev/vdb  /home  ext4  nodev,relatime  0 2\r\n"
    "tmpfs /dev/shm tmpfs rw 0 0"  # no final newline on purpose
)


def kensa_cli(*argv: str) -> Tuple[int, str]:
    out = io.StringIO()
    return main(list(argv), out=out), out.getvalue()


@pytest.fixture
def image(tmp_path: Path) -> Path:
    """tmp_path with an image root ("root", whose /etc/fstab carries user.* and security.* xattrs)
    and a sentinel directory outside it."""
    return image_with(tmp_path, "/etc/fstab", FSTAB)


def test_fstab_lines_render_byte_identical_and_change_only_the_options_field() -> None:
    """Parsing finds the last active line of a mount point (comments, '/'-suffixed spellings and
    \\040 escapes understood); replacing its options keeps every other byte of the line."""
    lines = FSTAB.splitlines(keepends=True)
    assert "".join(lines) == FSTAB
    assert fstab.entry(lines, "/tmp") == 5 and fstab.entry(lines, "/tmp/") == 5
    assert fstab.entry(lines, "/var") is None
    assert fstab.entry(["# tmpfs /var tmpfs defaults 0 0\n"], "/var") is None
    assert fstab.entry(["a /x tmpfs rw 0 0\n", "b /x tmpfs ro 0 0\n"], "/x") == 1
    assert fstab.entry(["a /my\\040dir tmpfs rw 0 0\n"], "/my dir") == 0
    assert fstab.with_options(lines[6], ["nodev", "relatime", "noexec"]) == "/dev/vdb  /home  ext4  nodev,relatime,noexec  0 2\r\n"
    assert fstab.added(["defaults", "nodev"], ["nodev", "nosuid", "nosuid"]) == ["nosuid"]


def test_apply_validate_rollback_leaves_the_image_identical(image: Path) -> None:
    """capture -> apply -> validate -> rollback in an image root leaves the whole tree identical
    (bytes, mode, owner, xattrs, what exists); apply touched only fstab's /tmp options."""
    host, params = LocalHost(str(image / "root")), {"mount_point": "/tmp", "options": ["nodev", "nosuid", "noexec"]}
    before = snapshot(image)
    assert HANDLER.validate(host, params) is False
    pre = HANDLER.capture(host, params)
    assert snapshot(image) == before
    result = HANDLER.apply(host, params, pre)
    assert result.ok and result.changed and not result.staged
    assert HANDLER.validate(host, params) is True
    assert (image / "root/etc/fstab").read_bytes().decode() == FSTAB.replace(
        "tmpfs   defaults        0", "tmpfs   defaults,nodev,nosuid,noexec        0")
    rolled = HANDLER.rollback(host, pre)
    assert rolled.ok, rolled.detail
    assert snapshot(image) == before


def test_remediate_commits_exactly_the_change_and_the_check_holds(image: Path) -> None:
    """kensa remediate with the test rules commits the ones whose mount point fstab lists (only
    the options each lacked are appended, in order), refuses the one it does not list changing
    nothing, and kensa check then says compliant for every committed rule."""
    root, journal = image / "root", str(image / "journal.db")
    code, out = kensa_cli("--journal", journal, "--no-audit", "remediate", str(RULES), "--root", str(root), "--json")
    results = {r["rule"]: r for r in json.loads(out)["results"]}
    assert results["test-mount-var-tmp-options"]["status"] == "errored"
    assert "/var/tmp has no entry in /etc/fstab" in results["test-mount-var-tmp-options"]["error"]["message"]
    committed = {rule for rule, r in results.items() if r["status"] == "committed"}
    assert committed == {"test-mount-tmp-options", "test-mount-dev-shm-options"}
    assert results["test-mount-home-options"]["status"] == "skipped"  # /home has nodev already
    assert (root / "etc/fstab").read_bytes().decode() == FSTAB.replace(
        "tmpfs   defaults        0", "tmpfs   defaults,nodev,nosuid,noexec        0").replace(
        "tmpfs rw 0 0", "tmpfs rw,nodev,nosuid,noexec 0 0")
    code, out = kensa_cli("--journal", journal, "--no-audit", "check", str(RULES), "--root", str(root), "--json")
    verdicts = {r["rule"]: r["verdict"] for r in json.loads(out)["rules"]}
    assert all(verdicts[rule] == "compliant" for rule in committed | {"test-mount-home-options"})


def test_rollback_by_id_keeps_an_operator_edit_and_refuses_when_kensa_s_options_were_edited(
    image: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """After a commit, an operator's later edits (a new line, the dump field of the same line)
    survive a rollback by id, which takes out only the options kensa added; when an added option
    itself was removed since, rollback refuses, naming fstab, and changes nothing."""
    root, journal = image / "root", str(image / "journal.db")
    rule = RULES / "mount-tmp-options.yml"
    path = root / "etc/fstab"
    for edit, refused in ((lambda t: t.replace("noexec        0       0", "noexec        1       0") + "\nproc /proc proc hidepid=2 0 0\n", False),
                          (lambda t: t.replace(",nosuid", ""), True)):
        path.write_text(FSTAB, newline="")
        code, out = kensa_cli("--journal", journal, "--no-audit", "remediate", str(rule), "--root", str(root), "--json")
        assert code == EXIT_OK, out
        txn = json.loads(out)["results"][0]["txn"]
        edited = edit(path.read_bytes().decode())
        path.write_text(edited, newline="")
        code, out = kensa_cli("--journal", journal, "--no-audit", "rollback", txn, "--json")
        if refused:
            said = capsys.readouterr().err
            assert code != EXIT_OK and "/etc/fstab: the part kensa wrote was changed since" in said, said
            assert path.read_bytes().decode() == edited
        else:
            assert code == EXIT_OK and json.loads(out)["status"] == "rolled_back", out
            assert path.read_bytes().decode() == FSTAB.replace("defaults        0       0", "defaults        1       0") + (
                "\nproc /proc proc hidepid=2 0 0\n")


@pytest.mark.parametrize("params", [
    {"mount_point": "/tmp", "options": ["nodev;reboot"]},
    {"mount_point": "/tmp", "options": ["nodev\nnoexec"]},
    {"mount_point": "/tmp", "options": ["nodev noexec"]},
    {"mount_point": "/tmp", "options": ["remount"]},
    {"mount_point": "/tmp", "options": ["bind"]},
    {"mount_point": "/tmp", "options": []},
    {"mount_point": "/tmp", "options": [3]},
    {"mount_point": "/tmp/../etc", "options": ["nodev"]},
    {"mount_point": "tmp", "options": ["nodev"]},
    {"mount_point": "/tmp\n/x", "options": ["nodev"]},
    {"mount_point": "/t mp", "options": ["nodev"]},
    {"mount_point": "/var", "options": ["nodev"]},
], ids=lambda p: repr(p)[:40])
def test_bad_parameters_are_a_clear_error_that_changes_nothing(image: Path, params: Dict[str, Any]) -> None:
    """Hostile option strings, words that change what a remount does, paths that climb or span
    lines, and a mount point fstab does not list: a KensaError naming the mechanism, nothing changed."""
    host, before = LocalHost(str(image / "root")), snapshot(image)
    with pytest.raises(KensaError, match="mount_option_set"):
        HANDLER.capture(host, params)
    with pytest.raises(KensaError, match="mount_option_set"):
        HANDLER.apply(host, params, None)
    assert snapshot(image) == before


def test_a_symlinked_fstab_is_refused_and_changes_nothing(image: Path) -> None:
    """/etc/fstab planted as a symlink to a file outside the root is refused by the confined host;
    neither the root nor the file outside changes."""
    path = image / "root/etc/fstab"
    path.unlink()
    path.symlink_to("../../outside/fstab")
    host, before = LocalHost(str(image / "root")), snapshot(image)
    with pytest.raises((KensaError, OSError)):
        HANDLER.capture(host, {"mount_point": "/tmp", "options": ["nodev"]})
    with pytest.raises((KensaError, OSError)):
        HANDLER.apply(host, {"mount_point": "/tmp", "options": ["nodev"]}, None)
    assert snapshot(image) == before


def test_a_copy_of_this_machine_s_etc_remediated_then_checked(tmp_path: Path) -> None:
    """A copy of this machine's /etc (with tmpfs entries for /tmp and /dev/shm appended when its
    fstab lacks them, as this VM's lists none) remediated with the test mount rules: every
    committed rule checks compliant, and the rules whose mount point fstab lacks change nothing."""
    require_root()
    root = tmp_path / "root"
    copy_live_tree("/etc", root / "etc")
    path = root / "etc/fstab"
    text = path.read_text() if path.exists() else ""
    for point in ("/tmp", "/dev/shm"):
        if fstab.entry(text.splitlines(), point) is None:
            text += ("" if not text or text.endswith("\n") else "\n") + f"tmpfs {point} tmpfs defaults 0 0\n"
    path.write_text(text)
    journal = str(tmp_path / "journal.db")
    before = snapshot(root)
    code, out = kensa_cli("--journal", journal, "--no-audit", "remediate", str(RULES), "--root", str(root), "--json")
    results = json.loads(out)["results"]
    committed = [r["rule"] for r in results if r["status"] == "committed"]
    assert {"test-mount-tmp-options", "test-mount-dev-shm-options"} <= set(committed)
    errored = [r for r in results if r["status"] == "errored"]
    assert all("has no entry in /etc/fstab" in r["error"]["message"] and r["host_unchanged"] for r in errored)
    assert set(snapshot(root)) == set(before)
    code, out = kensa_cli("--journal", journal, "--no-audit", "check", str(RULES), "--root", str(root), "--json")
    verdicts = {r["rule"]: r["verdict"] for r in json.loads(out)["rules"]}
    assert [rule for rule in committed if verdicts[rule] != "compliant"] == []


# --- a live host: a real remount inside a private mount namespace ------------------------

LIVE_SCRIPT = """\
set -e
mount --bind "$ETC" /etc
mount -t tmpfs -o nosuid,size=1m kensa-test "$MP"
snap() {{ grep " $MP " /proc/self/mounts | cut -d' ' -f4 > "$OUT/$1.mounts"; cp /etc/fstab "$OUT/$1.fstab"; }}
snap before
{kensa} remediate "$RULE" --root / --json > "$OUT/remediate.json" || true
snap committed
{kensa} check "$RULE" --root / --json > "$OUT/check.json" || true
txn=$({python} -c 'import json,sys; print(json.load(open(sys.argv[1]))["results"][0]["txn"])' "$OUT/remediate.json")
{kensa} rollback "$txn" --json > "$OUT/rollback.json" || true
snap rolled_back
"""


def test_live_remount_in_a_private_mount_namespace_and_rollback(tmp_path: Path) -> None:
    """On a live host (root "/", in a private mount namespace whose /etc is a copy): remediate
    appends the options to fstab and remounts the tmpfs with them (the live mount gains exactly
    nodev and noexec, keeps nosuid and its size), the mount_option check holds on the running
    mount, and rollback by id puts back both fstab and the running mount's options."""
    require_root()
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        require_real("unshare or mount is not installed")
    etc, mp, out = tmp_path / "etc", tmp_path / "mnt", tmp_path / "out"
    copy_live_tree("/etc", etc)
    mp.mkdir()
    out.mkdir()
    (etc / "fstab").write_text(f"# test fstab\nkensa-test {mp} tmpfs nosuid,size=1m 0 0\n")
    rule = tmp_path / "rule.yml"
    rule.write_text(textwrap.dedent(f"""\
        id: test-live-mount
        title: A test tmpfs is mounted nodev,noexec
        description: Test rule for mount_option_set on a live host.
        severity: low
        category: filesystem
        implementations:
          - default: true
            check: {{method: mount_option, mount_point: "{mp}", options: [nodev, nosuid, noexec]}}
            remediation: {{mechanism: mount_option_set, mount_point: "{mp}", options: [nodev, noexec]}}
        """))
    kensa = f"{sys.executable} -m kensa --journal {tmp_path / 'journal.db'} --no-audit"
    env = dict(os.environ, ETC=str(etc), MP=str(mp), OUT=str(out), RULE=str(rule),
               PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    script = LIVE_SCRIPT.format(kensa=kensa, python=sys.executable)
    done = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr

    def read(name: str) -> str:
        return (out / name).read_text()

    assert read("before.mounts").strip().split(",")[:2] == ["rw", "nosuid"]
    result = json.loads(read("remediate.json"))["results"][0]
    assert result["status"] == "committed", result
    live: List[str] = read("committed.mounts").strip().split(",")
    assert {"nodev", "noexec", "nosuid", "size=1024k"} <= set(live)
    assert set(live) - set(read("before.mounts").strip().split(",")) == {"nodev", "noexec"}
    assert read("committed.fstab") == f"# test fstab\nkensa-test {mp} tmpfs nosuid,size=1m,nodev,noexec 0 0\n"
    assert [r["verdict"] for r in json.loads(read("check.json"))["rules"]] == ["compliant"]
    assert json.loads(read("rollback.json"))["status"] == "rolled_back", read("rollback.json")
    assert read("rolled_back.mounts") == read("before.mounts")
    assert read("rolled_back.fstab") == read("before.fstab")


def test_the_step_runs_on_a_remote_host_through_the_agent(image: Path) -> None:
    """Through kensa's agent (a Python without the 3.7+ features, as RHEL 8's): capture, apply,
    validate and rollback of mount_option_set on the remote root, which ends as it began."""
    applied = remote_round_trip(image / "root", image / "bin", "mount_option_set", {"mount_point": "/tmp", "options": ["nodev"]})
    assert applied.changed and "nodev added to /tmp" in applied.detail


CORPUS = os.environ.get("KENSA_CORPUS", "")
CORPUS_POINTS = ("/tmp", "/dev/shm", "/home", "/var", "/var/tmp", "/var/log", "/var/log/audit", "/boot", "/boot/efi")


@pytest.mark.skipif(not os.path.isdir(CORPUS), reason="set KENSA_CORPUS to a rule corpus directory")
def test_the_corpus_mount_rules_on_a_copy_of_this_machine_s_etc(tmp_path: Path) -> None:
    """The public corpus's mount rules (filesystem/mount-*.yml) on a copy of this machine's /etc,
    posing as RHEL 9 (the corpus's mount rules are RHEL's) with a tmpfs fstab entry for each
    mount point they name: every committed rule checks compliant afterwards; the rules whose
    check is a command (not assessable on an image) are rolled back, and a mount point fstab
    kept as it was is left exactly so."""
    require_root()
    root, rules = tmp_path / "root", tmp_path / "rules"
    copy_live_tree("/etc", root / "etc")
    os_release = root / "etc/os-release"
    if os_release.is_symlink() or os_release.exists():
        os_release.unlink()
    os_release.write_text('ID="rhel"\nID_LIKE="fedora"\nVERSION_ID="9.4"\n')
    path = root / "etc/fstab"
    text = path.read_text() if path.exists() else ""
    text += ("" if not text or text.endswith("\n") else "\n") + "".join(f"tmpfs {p} tmpfs defaults 0 0\n" for p in CORPUS_POINTS)
    path.write_text(text)
    rules.mkdir()
    for found in sorted(Path(CORPUS).glob("filesystem/mount-*.yml")):
        shutil.copy(found, rules / found.name)
    journal = str(tmp_path / "journal.db")
    code, out = kensa_cli("--journal", journal, "--no-audit", "remediate", str(rules), "--root", str(root), "--json")
    results = json.loads(out)["results"]
    committed = {r["rule"] for r in results if r["status"] == "committed"}
    assert len(committed) >= 10, results
    assert all(r["status"] in ("committed", "rolled_back", "skipped") for r in results), results
    code, out = kensa_cli("--journal", journal, "--no-audit", "check", str(rules), "--root", str(root), "--json")
    verdicts = {r["rule"]: r["verdict"] for r in json.loads(out)["rules"]}
    assert sorted(rule for rule in committed if verdicts[rule] != "compliant") == []
    assert "tmpfs /boot/efi tmpfs defaults 0 0\n" in path.read_text()  # its only rule checks with a command
