"""grub_parameter_set / grub_parameter_remove: /etc/default/grub in an image root edited word-exactly,
rollback exact, the rules' checks hold after commit; a live host without the boot loader's tools
is refused before anything changes."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Dict, Tuple

import pytest

from conftest import copy_live_tree, require_real, require_root, snapshot_tree as snapshot
from kensa.cli.main import EXIT_OK, main
from kensa.errors import KensaError, NotAvailableError, ParamError
from kensa.handlers import default_registry
from kensa.handlers.grub import edited
from kensa.hosts.local import LocalHost
from mech_rig import image_with, remote_round_trip

RULES = Path(__file__).resolve().parent / "data" / "rules" / "grub"
REGISTRY = default_registry()

GRUB = textwrap.dedent("""\
    # If you change this file, run 'update-grub' afterwards.
    GRUB_DEFAULT=0
    GRUB_TIMEOUT=5
    GRUB_CMDLINE_LINUX_DEFAULT='quiet  pti=on'
    GRUB_CMDLINE_LINUX="console=tty0   audit=0 pti"
    GRUB_DISABLE_RECOVERY=true
    """)


def kensa_cli(*argv: str) -> Tuple[int, str]:
    out = io.StringIO()
    return main(list(argv), out=out), out.getvalue()


@pytest.fixture
def image(tmp_path: Path) -> Path:
    """tmp_path with an image root ("root") whose /etc/default/grub carries user.* and (as root)
    security.* xattrs, and a sentinel file outside it."""
    return image_with(tmp_path, "/etc/default/grub", GRUB)


def test_edits_keep_quoting_spacing_and_every_other_word() -> None:
    """set replaces the key's first word in the last GRUB_CMDLINE_LINUX and drops every other
    occurrence (GRUB_CMDLINE_LINUX_DEFAULT included: a later word wins at boot); remove drops
    every bare and valued one; quotes, spacing and the other lines stay; an unquoted value that
    grows to two words gets quoted; a missing assignment is appended."""
    assert edited(GRUB, "audit", "audit=1") == GRUB.replace("audit=0", "audit=1")
    assert edited(GRUB, "pti", None) == GRUB.replace("'quiet  pti=on'", "'quiet'").replace("audit=0 pti", "audit=0")
    assert edited(GRUB, "pti", "pti=off") == GRUB.replace("'quiet  pti=on'", "'quiet'").replace("audit=0 pti", "audit=0 pti=off")
    assert edited(GRUB, "audit_backlog_limit", "audit_backlog_limit=8192") == GRUB.replace(
        "audit=0 pti", "audit=0 pti audit_backlog_limit=8192")
    assert edited("export GRUB_CMDLINE_LINUX=quiet\n", "audit", "audit=1") == 'export GRUB_CMDLINE_LINUX="quiet audit=1"\n'
    assert edited("GRUB_CMDLINE_LINUX=pti # comment\r\n", "pti", None) == "GRUB_CMDLINE_LINUX= # comment\r\n"
    assert edited("GRUB_TIMEOUT=5", "audit", "audit=1") == 'GRUB_TIMEOUT=5\nGRUB_CMDLINE_LINUX="audit=1"\n'
    assert edited(GRUB, "nosuch", None) == GRUB


@pytest.mark.parametrize("line", ['GRUB_CMDLINE_LINUX="$GRUB_CMDLINE_LINUX audit=0"', 'GRUB_CMDLINE_LINUX="a\\"b"',
                                  'GRUB_CMDLINE_LINUX="unbalanced', "GRUB_CMDLINE_LINUX=`cat /x`"])
def test_a_line_that_needs_a_shell_is_refused_naming_it(image: Path, line: str) -> None:
    """An assignment using expansion, escapes or unbalanced quotes is refused with the file and
    line named, and nothing changes."""
    path = image / "root/etc/default/grub"
    path.write_text(GRUB + line + "\n")
    host, before = LocalHost(str(image / "root")), snapshot(image)
    handler = REGISTRY["grub_parameter_set"]
    with pytest.raises(ParamError, match=r"/etc/default/grub \(under root .*\):7: "):
        handler.capture(host, {"key": "audit", "value": "1"})
    with pytest.raises(ParamError, match=r"/etc/default/grub"):
        handler.apply(host, {"key": "audit", "value": "1"}, None)
    assert snapshot(image) == before


CASES = [("grub_parameter_set", {"key": "audit", "value": "1"}),
         ("grub_parameter_set", {"key": "audit_backlog_limit", "value": "8192"}),
         ("grub_parameter_remove", {"key": "pti"})]


@pytest.mark.parametrize("mechanism, params", CASES)
def test_apply_validate_rollback_leaves_the_image_identical(image: Path, mechanism: str, params: Dict[str, Any]) -> None:
    """capture -> apply -> validate -> rollback in an image root leaves the whole tree identical
    (bytes, mode, owner, xattrs); on an image the step commits (no running kernel to wait for)."""
    handler, host = REGISTRY[mechanism], LocalHost(str(image / "root"))
    before = snapshot(image)
    assert handler.validate(host, params) is False
    pre = handler.capture(host, params)
    assert snapshot(image) == before
    result = handler.apply(host, params, pre)
    assert result.ok and result.changed and not result.staged, result
    assert handler.validate(host, params) is True
    rolled = handler.rollback(host, pre)
    assert rolled.ok, rolled.detail
    assert snapshot(image) == before


def test_remediate_commits_exactly_the_change_and_the_checks_hold(image: Path) -> None:
    """kensa remediate with the test grub rules changes only /etc/default/grub, exactly as
    intended, and kensa check then says compliant for every rule."""
    root, journal = image / "root", str(image / "journal.db")
    before = snapshot(root), snapshot(image / "outside")
    code, out = kensa_cli("--journal", journal, "--no-audit", "check", str(RULES), "--root", str(root), "--json")
    assert {r["verdict"] for r in json.loads(out)["rules"]} == {"not_compliant"}
    code, out = kensa_cli("--journal", journal, "--no-audit", "remediate", str(RULES), "--root", str(root), "--json")
    assert code == EXIT_OK, out
    assert {r["status"] for r in json.loads(out)["results"]} == {"committed"}
    after = snapshot(root)
    assert {p for p in set(before[0]) | set(after) if before[0].get(p) != after.get(p)} == {"etc/default/grub"}
    assert snapshot(image / "outside") == before[1]
    assert (root / "etc/default/grub").read_text() == GRUB.replace("'quiet  pti=on'", "'quiet'").replace(
        "audit=0 pti", "audit=1 audit_backlog_limit=8192")
    code, out = kensa_cli("--journal", journal, "--no-audit", "check", str(RULES), "--root", str(root), "--json")
    assert code == EXIT_OK and {r["verdict"] for r in json.loads(out)["rules"]} == {"compliant"}, out


def test_rollback_by_id_keeps_an_operator_edit_and_refuses_an_edit_of_kensa_s_line(
    image: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """After a commit, an operator's edit of another line survives a rollback by id, which puts
    back only the GRUB_CMDLINE_* lines; when those lines were edited since, rollback refuses,
    naming /etc/default/grub, and changes nothing."""
    root, journal = image / "root", str(image / "journal.db")
    rule = RULES / "grub-audit-enabled.yml"
    path = root / "etc/default/grub"
    for edit, refused in ((lambda t: t.replace("GRUB_TIMEOUT=5", "GRUB_TIMEOUT=1"), False),
                          (lambda t: t.replace("audit=1", "audit=1 nosmt"), True)):
        path.write_text(GRUB)
        code, out = kensa_cli("--journal", journal, "--no-audit", "remediate", str(rule), "--root", str(root), "--json")
        assert code == EXIT_OK, out
        txn = json.loads(out)["results"][0]["txn"]
        changed = edit(path.read_text())
        path.write_text(changed)
        code, out = kensa_cli("--journal", journal, "--no-audit", "rollback", txn, "--json")
        if refused:
            said = capsys.readouterr().err
            assert code != EXIT_OK and "/etc/default/grub: the part kensa wrote was changed since" in said, said
            assert path.read_text() == changed
        else:
            assert code == EXIT_OK and json.loads(out)["status"] == "rolled_back", out
            assert path.read_text() == GRUB.replace("GRUB_TIMEOUT=5", "GRUB_TIMEOUT=1")


@pytest.mark.parametrize("mechanism, params", [
    ("grub_parameter_set", {"key": "audit; reboot", "value": "1"}),
    ("grub_parameter_set", {"key": "audit", "value": "$(reboot)"}),
    ("grub_parameter_set", {"key": "audit", "value": "1 init=/bin/sh"}),
    ("grub_parameter_set", {"key": "audit", "value": "1\ninit=/bin/sh"}),
    ("grub_parameter_set", {"key": "audit", "value": '1"'}),
    ("grub_parameter_set", {"key": "-audit", "value": "1"}),
    ("grub_parameter_set", {"key": "audit"}),
    ("grub_parameter_remove", {"key": "a=b"}),
    ("grub_parameter_remove", {"key": ""}),
], ids=lambda p: repr(p)[:40])
def test_bad_parameters_are_a_clear_error_that_changes_nothing(image: Path, mechanism: str, params: Dict[str, Any]) -> None:
    """Hostile keys and values (shell syntax, spaces, newlines, quotes, an option-like key) are a
    ParamError naming the mechanism; nothing changes."""
    host, before = LocalHost(str(image / "root")), snapshot(image)
    for call in (lambda: REGISTRY[mechanism].capture(host, params), lambda: REGISTRY[mechanism].apply(host, params, None)):
        with pytest.raises(ParamError, match=mechanism):
            call()
    assert snapshot(image) == before


def test_a_symlinked_default_grub_is_refused_and_changes_nothing(image: Path) -> None:
    """/etc/default/grub planted as a symlink out of the root is refused; nothing changes in or out of the root."""
    path = image / "root/etc/default/grub"
    path.unlink()
    path.symlink_to("../../../outside/grub")
    host, before = LocalHost(str(image / "root")), snapshot(image)
    with pytest.raises((KensaError, OSError)):
        REGISTRY["grub_parameter_set"].capture(host, {"key": "audit", "value": "1"})
    with pytest.raises((KensaError, OSError)):
        REGISTRY["grub_parameter_set"].apply(host, {"key": "audit", "value": "1"}, None)
    assert snapshot(image) == before


def test_an_image_with_boot_loader_entries_is_not_available(image: Path) -> None:
    """An image whose boot loader entries (/boot/loader/entries) decide its command line is refused
    as not available (grubby writes those on the running system), before anything changes."""
    entries = image / "root/boot/loader/entries"
    entries.mkdir(parents=True)
    (entries / "abc-5.14.conf").write_text("title RHEL\noptions root=/dev/vda1 audit=0\n")
    host, before = LocalHost(str(image / "root")), snapshot(image)
    with pytest.raises(NotAvailableError, match="grub_parameter_set: not available on an image root with boot loader entries"):
        REGISTRY["grub_parameter_set"].capture(host, {"key": "audit", "value": "1"})
    assert snapshot(image) == before


def test_without_default_grub_it_is_not_available(tmp_path: Path) -> None:
    """A root without /etc/default/grub: not available on this host, naming the file."""
    with pytest.raises(NotAvailableError, match=r"not available on this host: /etc/default/grub .*does not exist"):
        REGISTRY["grub_parameter_remove"].capture(LocalHost(str(tmp_path)), {"key": "pti"})


def test_the_steps_run_on_a_remote_host_through_the_agent(image: Path) -> None:
    """Through kensa's agent (a Python without the 3.7+ features, as RHEL 8's): both mechanisms
    capture, apply, validate and roll back on a remote image root, which ends as it began."""
    for mechanism, params in CASES:
        applied = remote_round_trip(image / "root", image / "bin", mechanism, params)
        assert applied.changed and not applied.staged


LIVE_PROBE = """\
import sys
from kensa.handlers import default_registry
from kensa.hosts.local import LocalHost
try:
    default_registry()["grub_parameter_set"].capture(LocalHost("/"), {"key": "audit", "value": "1"})
except Exception as exc:
    print(type(exc).__name__, exc)
"""


def live_namespace(tmp_path: Path) -> Tuple[Path, Dict[str, str]]:
    """A copy of /etc with an /etc/default/grub, for a private mount namespace to put over /etc,
    and the environment its commands run with."""
    require_root()
    if shutil.which("unshare") is None:
        require_real("unshare is not installed")
    etc = tmp_path / "etc"
    copy_live_tree("/etc", etc)
    (etc / "default").mkdir(exist_ok=True)
    (etc / "default/grub").write_text(GRUB)
    return etc, dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))


def test_a_live_host_without_grubby_or_grub_mkconfig_is_not_available(tmp_path: Path) -> None:
    """On a live host (root "/", in a private mount namespace whose /etc is a copy with an
    /etc/default/grub, and whose /usr/sbin is emptied, so neither grubby nor grub-mkconfig is
    installed there): NotAvailableError naming them, raised by capture, before anything changes."""
    etc, env = live_namespace(tmp_path)
    before = snapshot(etc)
    script = f'mount --bind "{etc}" /etc && mount -t tmpfs kensa-test /usr/sbin && exec {sys.executable} -c \'{LIVE_PROBE}\''
    done = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        "NotAvailableError grub_parameter_set: not available on this host: grubby or grub-mkconfig is not installed")
    assert snapshot(etc) == before


LIVE_GRUB = """\
set -e
mount --bind "$ETC" /etc
mount --bind "$BOOT" /boot
mkdir -p /boot/grub
echo kernel > /boot/vmlinuz-6.1.0-kensa-test
grub-mkconfig -o /boot/grub/grub.cfg > /dev/null 2>&1
snap() {{ cp /boot/grub/grub.cfg "$OUT/$1.cfg"; cp /etc/default/grub "$OUT/$1.grub"; }}
snap before
{kensa} remediate "$RULE" --root / --json > "$OUT/remediate.json" || true
{kensa} remediate "$RULE" --root / > "$OUT/remediate.txt" || true
snap staged
txn=$({python} -c 'import json,sys; print(json.load(open(sys.argv[1]))["results"][0]["txn"])' "$OUT/remediate.json")
{kensa} rollback "$txn" > "$OUT/refused.txt" 2>&1 || true
{kensa} rollback "$txn" --force --json > "$OUT/rollback.json" || true
snap rolled_back
"""


def test_a_live_host_regenerates_grub_cfg_with_grub_mkconfig_and_is_staged(tmp_path: Path) -> None:
    """On a live host (root "/", in a private mount namespace with copies of /etc and /boot):
    the real grub-mkconfig regenerates grub.cfg with the parameter on every kernel line, the
    result is staged with "reboot needed" in the CLI, a rollback by id is refused without
    --force (a staged change), and with --force puts /etc/default/grub and grub.cfg back byte for byte."""
    if shutil.which("grub-mkconfig") is None:
        require_real("grub-mkconfig is not installed (apt-get install grub-common)")
    etc, env = live_namespace(tmp_path)
    boot, out = tmp_path / "boot", tmp_path / "out"
    boot.mkdir()
    out.mkdir()
    rule = tmp_path / "rule.yml"
    rule.write_text((RULES / "grub-audit-backlog.yml").read_text().replace("audit_backlog_limit", "kensa_test_param"))
    kensa = f"{sys.executable} -m kensa --journal {tmp_path / 'journal.db'} --no-audit"
    env.update(ETC=str(etc), BOOT=str(boot), OUT=str(out), RULE=str(rule))
    done = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                           LIVE_GRUB.format(kensa=kensa, python=sys.executable)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr

    def read(name: str) -> str:
        return (out / name).read_text()

    result = json.loads(read("remediate.json"))["results"][0]
    assert result["status"] == "staged", result
    assert result["steps"][0]["staged"] and "grub-mkconfig -o /boot/grub/grub.cfg" in result["steps"][0]["detail"]
    assert "staged" in read("remediate.txt") and "reboot needed" in read("remediate.txt")
    assert read("staged.grub") == GRUB.replace("audit=0 pti", "audit=0 pti kensa_test_param=8192")
    kernel_lines = [line for line in read("staged.cfg").splitlines() if line.strip().startswith("linux")]
    assert kernel_lines and all("kensa_test_param=8192" in line for line in kernel_lines)
    assert "kensa_test_param" not in read("before.cfg")
    assert "staged" in read("refused.txt") and "--force" in read("refused.txt")
    assert json.loads(read("rollback.json"))["status"] == "rolled_back", read("rollback.json")
    assert read("rolled_back.grub") == read("before.grub")
    assert read("rolled_back.cfg") == read("before.cfg")


def test_a_staged_result_says_a_reboot_is_needed() -> None:
    """The CLI's detail of a staged transaction starts with "reboot needed", then what changed."""
    from kensa.cli.render import result_detail
    from kensa.model import Status, StepResult, TransactionResult

    step = StepResult("grub_parameter_set", ok=True, changed=True, staged=True, detail="audit=1 in /etc/default/grub")
    staged = TransactionResult("t", "r", "localhost", Status.STAGED, False, steps=(step,))
    assert result_detail(staged) == "reboot needed; audit=1 in /etc/default/grub"
    committed = TransactionResult("t", "r", "localhost", Status.COMMITTED, False, steps=(step,))
    assert result_detail(committed) == "audit=1 in /etc/default/grub"


def test_a_copy_of_this_machine_s_etc_remediated_then_checked(tmp_path: Path) -> None:
    """A copy of this machine's /etc remediated with the test grub rules: with its own
    /etc/default/grub every rule commits and checks compliant; without one (this VM has none)
    every rule that would change it errors as not available and the copy is unchanged."""
    require_root()
    root = tmp_path / "root"
    copy_live_tree("/etc", root / "etc")
    journal = str(tmp_path / "journal.db")
    before = snapshot(root)
    code, out = kensa_cli("--journal", journal, "--no-audit", "remediate", str(RULES), "--root", str(root), "--json")
    results = json.loads(out)["results"]
    if (root / "etc/default/grub").exists():
        committed = [r["rule"] for r in results if r["status"] in ("committed", "skipped")]
        assert len(committed) == len(results), results
    else:
        # The removal rule's check holds without the file (nothing there has pti): skipped.
        assert {r["rule"]: r["status"] for r in results if r["status"] != "errored"} == {"test-grub-no-pti": "skipped"}
        assert all("not available on this host" in r["error"]["message"] for r in results if r["status"] == "errored")
        assert snapshot(root) == before
        return
    code, out = kensa_cli("--journal", journal, "--no-audit", "check", str(RULES), "--root", str(root), "--json")
    assert {r["verdict"] for r in json.loads(out)["rules"]} == {"compliant"}, out
