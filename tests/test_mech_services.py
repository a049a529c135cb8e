"""service_enabled, service_disabled, service_masked on image roots made of this machine's
real systemd files, changed by the real ``systemctl --root``.

Each image root holds a copy of /etc/systemd and of /usr/lib/systemd (with /lib -> usr/lib,
as on this merged-/usr Debian), so systemctl reads real unit files and [Install] sections.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Mapping

import pytest

from conftest import copy_live_tree, require_real, require_root, snapshot_tree as snapshot
from test_restore_safety import engine_on
from kensa.cli.main import main
from kensa.engine import Engine
from kensa.errors import NotAvailableError, RollbackRefusedError
from kensa.facts.services import manager_running
from kensa.handlers import default_registry
from kensa.handlers.services import ServiceDisabled, ServiceEnabled, ServiceMasked, unit
from kensa.hosts.local import LocalHost
from kensa.journal.store import SqliteJournal
from kensa.model import Status, Step, Transaction, TransactionResult

RULES = Path(__file__).parent / "data" / "rules" / "services"
UNITS = "etc/systemd/system"
WANTS = f"{UNITS}/multi-user.target.wants"


def _systemctl() -> None:
    if shutil.which("systemctl") is None or not Path("/usr/lib/systemd/system/cron.service").is_file():
        require_real("systemctl and this machine's unit files (systemd, cron) are not installed")


def build_image(root: Path, etc: str = "systemd") -> Path:
    """An image root with this machine's /etc/<etc> (all of /etc for "."), its unit files and os-release."""
    _systemctl()
    (root / "usr/lib").mkdir(parents=True)
    shutil.copytree("/usr/lib/systemd", root / "usr/lib/systemd", symlinks=True)
    shutil.copy2("/usr/lib/os-release", root / "usr/lib/os-release")
    (root / "lib").symlink_to("usr/lib")
    if etc == ".":
        copy_live_tree("/etc", root / "etc")
    else:
        (root / "etc").mkdir()
        copy_live_tree(f"/etc/{etc}", root / "etc" / etc)
        (root / "etc/os-release").symlink_to("../usr/lib/os-release")
    return root


@pytest.fixture
def image(tmp_path: Path) -> Path:
    """An image root in which cron, ssh and e2scrub_reap are enabled, systemd-networkd and e2scrub_all.timer not."""
    root = build_image(tmp_path / "root")
    for name in ("cron.service", "ssh.service", "e2scrub_reap.service"):
        link = root / WANTS / name
        if not link.is_symlink():
            link.symlink_to(f"/lib/systemd/system/{name}")
    for name in ("systemd-networkd", "e2scrub_all.timer"):
        if systemctl(root, "is-enabled", unit(name)) == "enabled":
            systemctl(root, "disable", unit(name))
    return root


def systemctl(root: Path, *args: str) -> str:
    done = subprocess.run(["systemctl", f"--root={root}", *args], capture_output=True, text=True, check=False)
    return done.stdout.strip()


def run(engine: Engine, root: Path, mechanism: str, params: Mapping[str, Any]) -> TransactionResult:
    return engine.run(Transaction(f"test-{mechanism}", (Step(mechanism, dict(params)),), host=str(root)))


def kensa_cli(*argv: str) -> Dict[str, Any]:
    import io

    out = io.StringIO()
    main(list(argv), out=out)
    return json.loads(out.getvalue())  # type: ignore[no-any-return]


CASES = [
    (ServiceDisabled, "cron", "disabled"),
    (ServiceMasked, "ssh", "masked"),
    (ServiceEnabled, "systemd-networkd", "enabled"),
]


@pytest.mark.parametrize("handler, name, state", CASES, ids=[case[0].name for case in CASES])
def test_apply_validate_rollback_leaves_the_image_identical(image: Path, handler: Any, name: str, state: str) -> None:
    """Capture, apply (systemctl --root changes links and, for networkd's Also= units, creates .wants
    directories), validate holds, rollback: every file, link target, mode, owner and xattr
    (a user.* and a security.* one) is as before."""
    require_root("sets a security.* xattr and owns the copied tree")
    os.setxattr(image / WANTS, "user.kensa-test", b"wants")
    os.setxattr(image / UNITS, "security.kensa-test", b"units")
    before = snapshot(image)
    host, step, params = LocalHost(str(image)), handler(), {"name": name}
    assert not step.validate(host, params)
    pre = step.capture(host, params)
    done = step.apply(host, params, pre)
    assert done.ok and "an image root" in done.detail
    assert step.validate(host, params)
    assert systemctl(image, "is-enabled", unit(name)) == state
    assert snapshot(image) != before
    back = step.rollback(host, pre)
    assert back.ok, back.detail
    assert snapshot(image) == before


def test_commit_changes_exactly_the_units_links(image: Path, tmp_path: Path) -> None:
    """Committed: disabling cron removes its wants link only; masking ssh adds only ssh.service -> /dev/null
    (its alias link sshd.service and its wants link stay)."""
    before = snapshot(image)
    with engine_on(tmp_path / "j.db") as engine:
        assert run(engine, image, "service_disabled", {"name": "cron"}).status is Status.COMMITTED
        assert run(engine, image, "service_masked", {"name": "ssh"}).status is Status.COMMITTED
    after = snapshot(image)
    changed = {path for path in set(before) | set(after) if before.get(path) != after.get(path)}
    assert changed == {f"{WANTS}/cron.service", f"{UNITS}/ssh.service"}
    assert f"{WANTS}/cron.service" not in after
    assert after[f"{UNITS}/ssh.service"] == ("link", "/dev/null")


def test_already_compliant_is_skipped_and_changes_nothing(image: Path, tmp_path: Path) -> None:
    """A unit with no unit file is not enabled: service_disabled of it is skipped, nothing is written."""
    before = snapshot(image)
    with engine_on(tmp_path / "j.db") as engine:
        assert run(engine, image, "service_disabled", {"name": "no-such-unit"}).status is Status.SKIPPED
    assert snapshot(image) == before


def test_enabling_a_unit_that_is_not_installed_is_refused_before_anything_changes(image: Path, tmp_path: Path) -> None:
    """service_enabled of a unit with no unit file: errored at capture, saying it is not installed."""
    before = snapshot(image)
    with engine_on(tmp_path / "j.db") as engine:
        result = run(engine, image, "service_enabled", {"name": "kensa-test-not-installed"})
    assert result.status is Status.ERRORED and result.host_unchanged
    assert result.error is not None and "is not installed on this host" in result.error.message
    assert snapshot(image) == before


def test_rollback_by_id_keeps_an_operators_later_link(image: Path, tmp_path: Path) -> None:
    """After cron's disable commits, an operator enables e2scrub_all.timer (a new link); rollback by id
    brings cron's link back with its exact target and keeps the operator's link, saying so."""
    before = snapshot(image)
    with engine_on(tmp_path / "j.db") as engine:
        done = run(engine, image, "service_disabled", {"name": "cron"})
        assert done.status is Status.COMMITTED
        systemctl(image, "enable", "e2scrub_all.timer")
        later = image / UNITS / "timers.target.wants/e2scrub_all.timer"
        assert later.is_symlink()
        back = engine.rollback(done.txn_id)
    assert back.status is Status.ROLLED_BACK and not back.host_unchanged
    assert any("e2scrub_all.timer" in kept for rb in back.rollbacks for kept in rb.kept)
    after = snapshot(image)
    assert after[f"{WANTS}/cron.service"] == before[f"{WANTS}/cron.service"]
    assert later.is_symlink()


def test_rollback_by_id_refuses_when_the_unit_was_changed_since(image: Path, tmp_path: Path) -> None:
    """After ssh is masked, an operator points /etc/systemd/system/ssh.service at a local unit file:
    rollback by id refuses naming that link; force restores the exact pre-state and says so."""
    before = snapshot(image)
    with engine_on(tmp_path / "j.db") as engine:
        done = run(engine, image, "service_masked", {"name": "ssh"})
        assert done.status is Status.COMMITTED
        mask = image / UNITS / "ssh.service"
        mask.unlink()
        mask.symlink_to("/usr/local/lib/systemd/system/ssh.service")
        with pytest.raises(RollbackRefusedError, match="ssh.service"):
            engine.rollback(done.txn_id)
        assert mask.is_symlink() and os.readlink(mask) == "/usr/local/lib/systemd/system/ssh.service"
        forced = engine.rollback(done.txn_id, force=True)
    assert forced.status is Status.ROLLED_BACK and "overwriting" in forced.rollbacks[0].detail
    assert snapshot(image) == before


def test_rules_remediate_then_check_compliant_through_the_cli(image: Path, tmp_path: Path) -> None:
    """kensa check finds the test rules not compliant, kensa remediate commits each, kensa check then
    finds each compliant (the rules' own checks: service_state, service_enabled)."""
    journal = str(tmp_path / "j.db")
    first = kensa_cli("--journal", journal, "--no-audit", "check", str(RULES), "--root", str(image), "--json")
    assert {rule["verdict"] for rule in first["rules"]} == {"not_compliant"}
    done = kensa_cli("--journal", journal, "--no-audit", "remediate", str(RULES), "--root", str(image), "--json")
    assert {result["status"] for result in done["results"]} == {"committed"}, done
    again = kensa_cli("--journal", journal, "--no-audit", "check", str(RULES), "--root", str(image), "--json")
    assert {rule["verdict"] for rule in again["rules"]} == {"compliant"}, again


@pytest.mark.parametrize("name", ["../../etc/passwd", "cron;rm -rf /", "cron\nfoo", "-r", "a b", ".hidden", "cron@@x.service", ""])
def test_hostile_unit_names_are_refused_and_change_nothing(image: Path, tmp_path: Path, name: str) -> None:
    """A name outside systemd's unit grammar is refused before anything runs, naming the field."""
    before = snapshot(image)
    with engine_on(tmp_path / "j.db") as engine:
        result = run(engine, image, "service_masked", {"name": name})
    assert result.status is Status.ERRORED and result.host_unchanged
    assert result.error is not None and "name" in result.error.message
    assert snapshot(image) == before


@pytest.mark.parametrize("planted, mechanism, named", [
    (WANTS, "service_enabled", "multi-user.target.wants"),  # systemctl would write through it
    (UNITS, "service_disabled", "symlink"),
], ids=["wants-directory", "unit-directory"])
def test_a_planted_directory_symlink_is_refused_and_nothing_outside_changes(
    image: Path, tmp_path: Path, planted: str, mechanism: str, named: str,
) -> None:
    """multi-user.target.wants, or /etc/systemd/system itself, moved outside the root and replaced by a
    symlink to it: capture refuses naming it; neither tree changes."""
    outside = tmp_path / "outside"
    shutil.move(str(image / planted), str(outside))
    (image / planted).symlink_to(outside)
    before, elsewhere = snapshot(image), snapshot(outside)
    with engine_on(tmp_path / "j.db") as engine:
        result = run(engine, image, mechanism, {"name": "systemd-networkd" if mechanism == "service_enabled" else "cron"})
    assert result.status is Status.ERRORED and result.host_unchanged
    assert result.error is not None and named in result.error.message
    assert snapshot(image) == before and snapshot(outside) == elsewhere


def test_start_on_a_live_host_without_systemd_is_refused_before_anything_changes() -> None:
    """This machine is not booted with systemd: 'start: true' cannot be honoured, and capture says
    "not available on this host: systemd is not running" (it only reads; the unit does not exist)."""
    live = LocalHost("/")
    if manager_running(live):
        pytest.skip("systemd runs this machine; the refusal is for hosts it does not run")
    params = {"name": "kensa-test-no-such-unit", "start": True}
    with pytest.raises(NotAvailableError, match="not available on this host: systemd is not running"):
        ServiceEnabled().capture(live, params)


def test_running_state_is_captured_and_restored_where_systemd_runs() -> None:
    """Where systemd is PID 1, stop is undone by start on rollback (needs a booted systemd)."""
    live = LocalHost("/")
    if not manager_running(live):
        pytest.skip("systemd is not PID 1 here (no /run/systemd/system): no running state to capture")
    step, params = ServiceDisabled(), {"name": "cron", "stop": True}
    pre = step.capture(live, params)
    assert pre.data["active"] is not None
    step.apply(live, params, pre)
    back = step.rollback(live, pre)
    assert back.ok, back.detail


def machine_copy(tmp_path: Path) -> Path:
    """A root of a copy of this machine's /etc over its /usr (hard links, with /bin, /lib ... -> usr/...)."""
    require_root("copies root-only files of /etc")
    _systemctl()
    root = tmp_path / "root"
    root.mkdir()
    for name in ("bin", "sbin", "lib", "lib64"):
        (root / name).symlink_to(f"usr/{name}")
    # Hard links: nothing here writes under /usr, and kensa refuses in-place writes to shared inodes.
    subprocess.run(["cp", "-al", "/usr", str(root / "usr")], check=True)
    copy_live_tree("/etc", root / "etc")
    return root


def test_copy_of_this_machines_etc_remediates_to_compliant_and_rolls_back_exactly(tmp_path: Path) -> None:
    """A copy of this machine's whole /etc over its /usr (hard links, so systemctl --root reads every
    real unit, and systemd-sysv-install can run update-rc.d chrooted into it: Debian's SysV links in
    /etc/rc?.d change too): the test rules remediate, each committed rule's check is then compliant,
    and rolling each back by id (newest first) leaves the copy of /etc identical."""
    root = machine_copy(tmp_path)
    before = snapshot(root / "etc")
    journal = str(tmp_path / "j.db")
    done = kensa_cli("--journal", journal, "--no-audit", "remediate", str(RULES), "--root", str(root), "--json")
    statuses = {result["rule"]: result["status"] for result in done["results"]}
    assert set(statuses.values()) <= {"committed", "skipped"} and "committed" in statuses.values(), done
    checked = kensa_cli("--journal", journal, "--no-audit", "check", str(RULES), "--root", str(root), "--json")
    verdicts = {rule["rule"]: rule["verdict"] for rule in checked["rules"]}
    assert all(verdicts[rule] == "compliant" for rule, status in statuses.items() if status == "committed"), verdicts
    for result in reversed(done["results"]):  # newest first: each then finds only its own change
        if result["status"] == "committed":
            back = kensa_cli("--journal", journal, "--no-audit", "rollback", result["txn"], "--json")
            assert back["status"] == "rolled_back" and back["host_unchanged"], back
    assert snapshot(root / "etc") == before


def test_service_and_kmod_steps_run_on_a_remote_host_through_the_agent(image: Path, tmp_path: Path) -> None:
    """Over kensa's agent (SubprocessTransport, ssh:// keys): a transaction masking ssh and disabling
    cramfs commits with each phase on the target, and a rollback by id (assess and restore on the
    target too) leaves the remote tree identical."""
    from agent_targets import transport_for
    from kensa.hosts.remote import RemoteHosts

    if shutil.which("modprobe") is None:
        require_real("modprobe (kmod) is not installed")
    (image / "etc/modprobe.d").mkdir()
    before = snapshot(image)
    hosts = RemoteHosts(transport_for)
    try:
        with SqliteJournal(tmp_path / "j.db") as journal:
            engine = Engine(default_registry(), journal=journal, hosts=hosts)
            steps = (Step("service_masked", {"name": "ssh"}), Step("kernel_module_disable", {"name": "cramfs"}))
            txn = Transaction("remote-units", steps, host=f"ssh://admin@target{image}")
            done = engine.run(txn)
            assert done.status is Status.COMMITTED, done.error
            assert os.readlink(image / UNITS / "ssh.service") == "/dev/null"
            assert (image / "etc/modprobe.d/kensa-cramfs.conf").read_text() == "install cramfs /bin/false\nblacklist cramfs\n"
            back = engine.rollback(txn.id)
    finally:
        hosts.close()
    assert back.status is Status.ROLLED_BACK and back.host_unchanged, back.error
    assert snapshot(image) == before


def _corpus_rules(tmp_path: Path) -> Path:
    """The corpus's rules that remediate with a service or kernel module mechanism, copied apart."""
    corpus = os.environ.get("KENSA_CORPUS")
    if not corpus:
        pytest.skip("KENSA_CORPUS does not name a rule corpus")
    picked = tmp_path / "corpus"
    picked.mkdir()
    for path in sorted(Path(corpus).rglob("*.yml")):
        text = path.read_text(encoding="utf-8", errors="replace")
        if any(f"mechanism: {name}" in text for name in ("service_enabled", "service_disabled", "service_masked", "kernel_module_disable")):
            shutil.copy2(path, picked / path.name)
    assert any(picked.iterdir()), f"no service or kernel module rule in {corpus}"
    return picked


@pytest.mark.parametrize("os_release", [None, 'ID=ubuntu\nVERSION_ID="24.04"\n'], ids=["debian", "labelled-ubuntu"])
def test_corpus_service_and_kmod_rules_on_a_copy_of_this_machines_etc(tmp_path: Path, os_release: Any) -> None:
    """The corpus's service and kernel module rules on a copy of this machine's /etc: as Debian every
    rule is not applicable (they name RHEL and Ubuntu); labelled Ubuntu 24.04, each one that applies is
    committed or already compliant and then checks compliant, the rest are not applicable; none errors,
    except a service_enabled of a unit this machine does not have, refused before any change."""
    rules = _corpus_rules(tmp_path)
    root = machine_copy(tmp_path)
    if os_release is not None:
        (root / "etc/os-release").unlink()
        (root / "etc/os-release").write_text(os_release)
    journal = str(tmp_path / "j.db")
    done = kensa_cli("--journal", journal, "--no-audit", "remediate", str(rules), "--root", str(root), "--json")
    missing = {result["rule"] for result in done["results"] if result["status"] == "errored" and result["host_unchanged"]
               and "is not installed on this host" in result["error"]["message"]}
    statuses = {result["rule"]: result["status"] for result in done["results"] if result["rule"] not in missing}
    assert set(statuses.values()) <= {"committed", "skipped"}, [r for r in done["results"] if r["rule"] in statuses
                                                                and r["status"] not in ("committed", "skipped")]
    checked = kensa_cli("--journal", journal, "--no-audit", "check", str(rules), "--root", str(root), "--json")
    verdicts = {rule["rule"]: rule["verdict"] for rule in checked["rules"]}
    if os_release is None:
        assert set(verdicts.values()) == {"not_applicable"} and not statuses
    else:
        assert "committed" in statuses.values()
        assert {rule: verdicts[rule] for rule in statuses if verdicts[rule] != "compliant"} == {}
        assert all(verdicts[rule] in ("compliant", "not_applicable") for rule in verdicts if rule not in missing), verdicts


def test_a_host_without_systemctl_is_refused_before_anything_changes(image: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With no systemctl on PATH, capture says "not available on this host: systemctl is not installed"."""
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    before = snapshot(image)
    with pytest.raises(NotAvailableError, match="not available on this host: systemctl is not installed"):
        ServiceDisabled().capture(LocalHost(str(image)), {"name": "cron"})
    assert snapshot(image) == before


LIVE_IN_NAMESPACE = """
import json, os, subprocess, sys
copy = sys.argv[1]
subprocess.run(["mount", "--bind", copy, "/etc/systemd/system"], check=True)
seen, wanted = os.stat("/etc/systemd/system"), os.stat(copy)
if (seen.st_dev, seen.st_ino) != (wanted.st_dev, wanted.st_ino):
    sys.exit("the copy is not mounted over /etc/systemd/system: refusing to touch this machine")
from kensa.handlers.services import ServiceDisabled
from kensa.hosts.local import LocalHost
host, step, params = LocalHost("/"), ServiceDisabled(), {"name": "e2scrub_reap"}
pre = step.capture(host, params)
done = step.apply(host, params, pre)
held = step.validate(host, params)
gone = not os.path.lexists("/etc/systemd/system/multi-user.target.wants/e2scrub_reap.service")
back = step.rollback(host, pre)
print(json.dumps({"live": host.is_live, "detail": done.detail, "held": held, "gone": gone, "back": back.ok,
                  "back_detail": back.detail, "active": pre.data["active"]}))
"""


def test_a_live_host_without_systemd_gets_its_links_set_and_says_nothing_was_stopped(tmp_path: Path) -> None:
    """The live host "/" of a private mount namespace whose /etc/systemd/system is a copy: systemctl
    (no --root, client-side as systemd is not PID 1) disables e2scrub_reap, the result says it was not
    stopped, and rollback leaves the copy identical; this machine's own links are untouched."""
    require_root("mounts in a private mount namespace")
    _systemctl()
    if manager_running(LocalHost("/")):
        pytest.skip("systemd runs this machine; this is the host it does not run")
    if shutil.which("unshare") is None:
        require_real("unshare (util-linux) is not installed")
    copy = tmp_path / "units"
    copy_live_tree("/etc/systemd/system", copy)
    wants = copy / "multi-user.target.wants/e2scrub_reap.service"
    if not wants.is_symlink():
        wants.symlink_to("/lib/systemd/system/e2scrub_reap.service")
    own = Path("/etc/systemd/system/multi-user.target.wants/e2scrub_reap.service")
    before, machine = snapshot(copy), (own.is_symlink() and os.readlink(own))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent / "src")}
    ran = subprocess.run(["unshare", "--mount", "--propagation", "private", sys.executable, "-c", LIVE_IN_NAMESPACE, str(copy)],
                         capture_output=True, text=True, env=env, timeout=300, check=False)
    assert ran.returncode == 0, ran.stderr[-3000:]
    found = json.loads(ran.stdout)
    assert found["live"] and found["held"] and found["gone"] and found["active"] is None
    assert "systemd is not running here: e2scrub_reap.service was not stopped" in found["detail"]
    assert found["back"], found["back_detail"]
    assert snapshot(copy) == before
    assert (own.is_symlink() and os.readlink(own)) == machine  # others may change this machine's other links meanwhile


def test_the_steps_run_on_an_agent_without_the_python_37_features(image: Path, tmp_path: Path) -> None:
    """On an agent whose Python lacks dataclasses and typing.Protocol (as 3.6: agent_targets.py36_path),
    service_masked and kernel_module_disable capture, apply, validate and roll back exactly."""
    from agent_targets import py36_path, transport
    from kensa.hosts.remote import connect

    if shutil.which("modprobe") is None:
        require_real("modprobe (kmod) is not installed")
    (image / "etc/modprobe.d").mkdir()
    before = snapshot(image)
    host = connect(transport("old-python", py36_path(tmp_path / "bin")), str(image))
    try:
        handlers = host.handlers(default_registry())
        steps = [("service_masked", {"name": "ssh"}), ("kernel_module_disable", {"name": "cramfs"})]
        done = []
        for mechanism, params in steps:
            pre = handlers[mechanism].capture(host, params)
            assert handlers[mechanism].apply(host, params, pre).ok
            assert handlers[mechanism].validate(host, params)
            done.append((handlers[mechanism], pre))
        for handler, pre in reversed(done):
            assert handler.rollback(host, pre).ok
    finally:
        host.close()
    assert snapshot(image) == before
