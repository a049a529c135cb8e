"""kernel_module_disable in temporary roots, confirmed by the real ``modprobe --dry-run``; and the
live unload and reload where this machine's kernel can load modules."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, Dict

import pytest

from conftest import copy_live_tree, require_real, require_root, snapshot_tree as snapshot
from test_restore_safety import engine_on
from kensa.checks import evaluate_check
from kensa.cli.main import main
from kensa.engine import Engine
from kensa.errors import NotAvailableError, RollbackRefusedError
from kensa.facts import modules
from kensa.facts.files import real_dirs
from kensa.handlers import kernel_module
from kensa.handlers.kernel_module import KernelModuleDisable, conf_path, modprobe_refuses
from kensa.hosts.local import LocalHost
from kensa.model import Status, Step, Transaction, TransactionResult, Verdict
from kensa.rules import Check

RULES = Path(__file__).parent / "data" / "rules" / "kmod"
CONF = "etc/modprobe.d/kensa-cramfs.conf"
LOCAL = b"# the operator's own line\noptions cramfs debug=0\n"


def _modprobe() -> None:
    if shutil.which("modprobe") is None:
        require_real("modprobe (kmod) is not installed")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """An image root with a modprobe.d holding an operator's file, and no /run (as an unbooted image)."""
    _modprobe()
    root = tmp_path / "root"
    (root / "etc/modprobe.d").mkdir(parents=True)
    (root / "etc/modprobe.d/local.conf").write_bytes(b"options loop max_loop=8\n")
    return root


def run(engine: Engine, root: Path, name: str) -> TransactionResult:
    return engine.run(Transaction("test-kmod", (Step("kernel_module_disable", {"name": name}),), host=str(root)))


def kensa_cli(*argv: str) -> Dict[str, Any]:
    out = io.StringIO()
    main(list(argv), out=out)
    return json.loads(out.getvalue())  # type: ignore[no-any-return]


def test_real_dirs_skips_a_directory_whose_parent_is_missing(tmp_path: Path) -> None:
    """An image root without /run: /run/modprobe.d is simply not there, not an error."""
    (tmp_path / "etc/modprobe.d").mkdir(parents=True)
    assert real_dirs(LocalHost(str(tmp_path)), ["/run/modprobe.d", "/etc/modprobe.d"]) == ["/etc/modprobe.d"]


def test_apply_validate_rollback_leaves_the_root_identical(root: Path) -> None:
    """The kensa file is created with both lines, modprobe --dry-run then answers install /bin/false,
    and rollback leaves every file, mode, owner and xattr (user.* and security.*) as before."""
    require_root("sets a security.* xattr")
    os.setxattr(root / "etc/modprobe.d", "user.kensa-test", b"dir")
    os.setxattr(root / "etc/modprobe.d/local.conf", "security.kensa-test", b"file")
    before = snapshot(root)
    host, step, params = LocalHost(str(root)), KernelModuleDisable(), {"name": "cramfs"}
    assert not step.validate(host, params) and not modprobe_refuses(host, "cramfs")
    pre = step.capture(host, params)
    assert step.apply(host, params, pre).ok
    assert (root / CONF).read_bytes() == b"install cramfs /bin/false\nblacklist cramfs\n"
    assert step.validate(host, params) and modprobe_refuses(host, "cramfs")
    assert step.rollback(host, pre).ok
    assert snapshot(root) == before


def test_commit_adds_only_the_two_lines_to_an_existing_kensa_file(root: Path, tmp_path: Path) -> None:
    """An existing file of that name keeps its lines; only install and blacklist are appended."""
    (root / CONF).write_bytes(LOCAL)
    before = snapshot(root)
    with engine_on(tmp_path / "j.db") as engine:
        assert run(engine, root, "cramfs").status is Status.COMMITTED
    after = snapshot(root)
    assert {path for path in set(before) | set(after) if before.get(path) != after.get(path)} == {CONF}
    assert (root / CONF).read_bytes() == LOCAL + b"install cramfs /bin/false\nblacklist cramfs\n"


def test_rollback_by_id_keeps_an_operators_later_line(root: Path, tmp_path: Path) -> None:
    """After the commit an operator adds a line to the kensa file: rollback by id removes only
    kensa's two lines and keeps it."""
    (root / CONF).write_bytes(LOCAL)
    with engine_on(tmp_path / "j.db") as engine:
        done = run(engine, root, "cramfs")
        with (root / CONF).open("ab") as handle:
            handle.write(b"options cramfs later=1\n")
        back = engine.rollback(done.txn_id)
    assert back.status is Status.ROLLED_BACK and not back.host_unchanged
    assert (root / CONF).read_bytes() == LOCAL + b"options cramfs later=1\n"


def test_rollback_by_id_refuses_when_kensas_line_was_edited(root: Path, tmp_path: Path) -> None:
    """An operator changes kensa's install line: rollback by id refuses naming the file; force restores."""
    before = snapshot(root)
    with engine_on(tmp_path / "j.db") as engine:
        done = run(engine, root, "cramfs")
        edited = (root / CONF).read_bytes().replace(b"/bin/false", b"/bin/true")
        (root / CONF).write_bytes(edited)
        with pytest.raises(RollbackRefusedError, match="kensa-cramfs.conf"):
            engine.rollback(done.txn_id)
        assert (root / CONF).read_bytes() == edited
        assert engine.rollback(done.txn_id, force=True).status is Status.ROLLED_BACK
    assert snapshot(root) == before


def test_rules_remediate_then_check_compliant_through_the_cli(root: Path, tmp_path: Path) -> None:
    """kensa check: not compliant; kensa remediate commits; kensa check: compliant (the rules'
    kernel_module_state checks, disabled and blacklisted)."""
    (root / "lib/modules/6.1.0-test/kernel/fs").mkdir(parents=True)
    (root / "lib/modules/6.1.0-test/modules.dep").write_text(
        "kernel/fs/cramfs/cramfs.ko:\nkernel/drivers/usb/storage/usb-storage.ko:\n"
    )
    journal = str(tmp_path / "j.db")
    first = kensa_cli("--journal", journal, "--no-audit", "check", str(RULES), "--root", str(root), "--json")
    assert {rule["verdict"] for rule in first["rules"]} == {"not_compliant"}, first
    done = kensa_cli("--journal", journal, "--no-audit", "remediate", str(RULES), "--root", str(root), "--json")
    assert {result["status"] for result in done["results"]} == {"committed"}, done
    again = kensa_cli("--journal", journal, "--no-audit", "check", str(RULES), "--root", str(root), "--json")
    assert {rule["verdict"] for rule in again["rules"]} == {"compliant"}, again
    assert (root / "etc/modprobe.d/kensa-usb_storage.conf").read_text() == "install usb-storage /bin/false\nblacklist usb-storage\n"


@pytest.mark.parametrize("name", ["../../etc/passwd", "cramfs\ninstall x /bin/sh", "cramfs /bin/true", "-r", "", "a" * 65, "cr$fs"])
def test_hostile_module_names_are_refused_and_change_nothing(root: Path, tmp_path: Path, name: str) -> None:
    """A name that is not a module name (a path, a newline injecting a directive, an option) is refused
    before anything is written, naming the field."""
    before = snapshot(root)
    with engine_on(tmp_path / "j.db") as engine:
        result = run(engine, root, name)
    assert result.status is Status.ERRORED and result.host_unchanged
    assert result.error is not None and "name" in result.error.message
    assert snapshot(root) == before


def test_a_symlinked_modprobe_dir_is_refused_and_nothing_outside_changes(root: Path, tmp_path: Path) -> None:
    """/etc/modprobe.d planted as a symlink to a directory outside the root: refused, neither changes."""
    outside = tmp_path / "outside"
    shutil.move(str(root / "etc/modprobe.d"), str(outside))
    (root / "etc/modprobe.d").symlink_to(outside)
    before, elsewhere = snapshot(root), snapshot(outside)
    with engine_on(tmp_path / "j.db") as engine:
        result = run(engine, root, "cramfs")
    assert result.status is Status.ERRORED and result.error is not None and "symlink" in result.error.message
    assert snapshot(root) == before and snapshot(outside) == elsewhere


def test_a_host_without_modprobe_is_refused_before_anything_changes(root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With no modprobe where kensa looks (PATH, /usr/sbin, /sbin; here a name that exists nowhere),
    capture says "not available on this host: modprobe is not installed"."""
    monkeypatch.setattr(kernel_module, "_MODPROBES", ("kensa-test-no-such-modprobe", str(tmp_path / "modprobe")))
    before = snapshot(root)
    with pytest.raises(NotAvailableError, match="not available on this host: modprobe is not installed"):
        KernelModuleDisable().capture(LocalHost(str(root)), {"name": "cramfs"})
    assert snapshot(root) == before


def _loadable_module() -> str:
    """A module this kernel can load and nothing uses (dummy), or a skip saying why there is none."""
    if not Path("/proc/modules").exists():
        pytest.skip("this kernel has no loadable module support (no /proc/modules): no live unload to show")
    done = subprocess.run(["modinfo", "dummy"], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        require_real("the dummy module is not installed for the running kernel")
    return "dummy"


def test_live_unload_and_reload(tmp_path: Path) -> None:
    """On the live host a loaded, unused module is unloaded by apply and loaded again by rollback,
    and the kensa file is gone again."""
    require_root("loads and unloads a kernel module")
    name = _loadable_module()
    subprocess.run(["modprobe", name], check=True)
    live, step, params = LocalHost("/"), KernelModuleDisable(), {"name": name}
    pre = step.capture(live, params)
    assert pre.data["loaded"] is True
    try:
        assert step.apply(live, params, pre).ok
        assert modules.in_running_kernel(live, name) is None
        assert evaluate_check(Check("kernel_module_state", {"name": name}), live).verdict is Verdict.COMPLIANT
    finally:
        back = step.rollback(live, pre)
    assert back.ok, back.detail
    assert modules.in_running_kernel(live, name) == "loaded"
    assert not Path(conf_path(name)).exists()


def test_copy_of_this_machines_etc_remediates_to_compliant(tmp_path: Path) -> None:
    """A copy of this machine's /etc with its kernel's module index (if any): each test rule is
    committed or already compliant (a kernel without the module), and every one checks compliant."""
    require_root("copies root-only files of /etc")
    _modprobe()
    root = tmp_path / "root"
    root.mkdir()
    copy_live_tree("/etc", root / "etc")
    release = os.uname().release
    if Path(f"/usr/lib/modules/{release}/modules.dep").is_file():
        (root / "usr/lib/modules" / release).mkdir(parents=True)
        shutil.copy2(f"/usr/lib/modules/{release}/modules.dep", root / "usr/lib/modules" / release)
    journal = str(tmp_path / "j.db")
    done = kensa_cli("--journal", journal, "--no-audit", "remediate", str(RULES), "--root", str(root), "--json")
    assert {result["status"] for result in done["results"]} <= {"committed", "skipped"}, done
    checked = kensa_cli("--journal", journal, "--no-audit", "check", str(RULES), "--root", str(root), "--json")
    assert {rule["verdict"] for rule in checked["rules"]} == {"compliant"}, checked
