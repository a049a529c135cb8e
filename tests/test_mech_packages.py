"""apt_present, apt_absent, package_present and package_absent against this machine's apt and dpkg.

Tiny Debian packages built in the test (tests/debrepo.py) are served as a local
apt repository and installed, removed and rolled back on this live machine;
``dpkg -l`` before and after is the measure. The image-root, bad-parameter and
missing-tool cases change nothing, which the same listing and a snapshot of
the root show.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator, List, Tuple

import pytest

from conftest import copy_live_tree, require_real, require_root, snapshot_tree
from debrepo import PREFIX, DebRepo, auto_marks, dpkg_list, installed_test_packages, missing_components
from kensa.cli.main import EXIT_OK, main
from kensa.errors import NotAvailableError, ParamError
from kensa.facts.packages import rpm_database
from kensa.handlers import SCHEMAS, default_registry
from kensa.hosts.local import LocalHost
from kensa.model import Drift

# Every test here installs and removes packages of this machine: one at a time.
pytestmark = pytest.mark.xdist_group("dpkg")

REGISTRY = default_registry()
TINY, DEP, APP = PREFIX + "tiny", PREFIX + "dep", PREFIX + "app"


@pytest.fixture(scope="module")
def debrepo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DebRepo]:
    if os.geteuid() != 0:
        require_real("the package tests install packages on this machine and need root")
    why = missing_components()
    if why is not None:
        require_real(why)
    repo = DebRepo(tmp_path_factory.mktemp("debrepo"))
    try:
        repo.build("tiny", "1.0")
        repo.build("tiny", "1.1")
        repo.build("dep", "1.0")
        repo.build("app", "1.0", depends="dep", recommends="tiny")
        yield repo
    finally:
        repo.close()


@pytest.fixture
def repo(debrepo: DebRepo) -> Iterator[DebRepo]:
    """The repository with every package served and none of them installed, before and after."""
    debrepo.purge_all()
    debrepo.publish()
    yield debrepo
    debrepo.purge_all()


@pytest.fixture
def live() -> LocalHost:
    require_root()
    return LocalHost("/")


def apt_install(*specs: str) -> None:
    subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *specs], check=True,
                   capture_output=True, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def kensa(*argv: str) -> Tuple[int, Any]:
    out = io.StringIO()
    code = main(list(argv), out=out)
    text = out.getvalue()
    try:
        return code, json.loads(text)
    except ValueError:
        return code, text


RULE = """\
id: {id}
title: Test package {package} is {state}
description: A package the test built is {state}.
severity: low
category: system
platforms: [{{family: debian, min_version: 12}}]
implementations:
  - default: true
    check:
      method: {method}
      name: {package}{extra}
    remediation:
      mechanism: {mechanism}
      name: {package}
"""


def rule_file(directory: Path, rule_id: str, mechanism: str, package: str, method: str, extra: str = "") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    state = "installed" if mechanism.endswith("present") else "absent"
    path = directory / f"{rule_id}.yml"
    path.write_text(RULE.format(id=rule_id, package=package, state=state, method=method, mechanism=mechanism, extra=extra))
    return path


def test_install_then_rollback_leaves_dpkg_identical_and_removes_the_dependency(repo: DebRepo, live: LocalHost) -> None:
    """apt_present of a package with a dependency (and a recommendation, not installed) installs
    exactly both, as its capture planned (``dpkg -l`` gains their two lines and nothing else); its rollback purges both, leaving ``dpkg -l`` and apt's automatic marks
    as they were, and says the restore is best-effort."""
    before, marks = dpkg_list(), auto_marks()
    handler, params = REGISTRY["apt_present"], {"name": APP}
    assert handler.validate(live, params) is False
    pre = handler.capture(live, params)
    assert dict(pre.data["plan"]) == {APP: "1.0", DEP: "1.0"}
    result = handler.apply(live, params, pre)
    assert result.ok, result.detail
    assert handler.validate(live, params) is True
    assert installed_test_packages() == {APP: ("ii", "1.0"), DEP: ("ii", "1.0")}
    added = sorted(set(dpkg_list()) - set(before))
    assert [line.split()[:3] for line in added] == [["ii", APP, "1.0"], ["ii", DEP, "1.0"]]
    assert set(before) - set(dpkg_list()) == set()
    assert DEP in auto_marks()

    back = handler.rollback(live, pre)
    assert back.ok, back.detail
    assert "best-effort" in back.detail
    assert installed_test_packages() == {}
    assert dpkg_list() == before
    assert auto_marks() == marks
    assert not Path(f"/etc/{APP}.conf").exists()


def test_remove_then_rollback_reinstalls_the_captured_version_with_its_edited_config(repo: DebRepo, live: LocalHost) -> None:
    """apt_absent of tiny 1.0 (the repository's candidate is 1.1) removes it and keeps its config
    file; the rollback reinstalls exactly 1.0, and the operator's edit of the config file survives."""
    apt_install(f"{TINY}=1.0")
    conf = Path(f"/etc/{TINY}.conf")
    conf.write_text("version=1.0\nedited=by the operator\n")
    before = dpkg_list()
    handler, params = REGISTRY["apt_absent"], {"name": TINY}
    pre = handler.capture(live, params)
    assert handler.apply(live, params, pre).ok
    assert handler.validate(live, params) is True
    assert installed_test_packages() == {TINY: ("rc", "1.0")}  # removed, not purged

    back = handler.rollback(live, pre)
    assert back.ok, back.detail
    assert installed_test_packages() == {TINY: ("ii", "1.0")}
    assert dpkg_list() == before
    assert conf.read_text() == "version=1.0\nedited=by the operator\n"


def test_rollback_by_id_fails_naming_the_version_the_repository_no_longer_has(repo: DebRepo, tmp_path: Path) -> None:
    """A committed removal of tiny 1.0 cannot be rolled back once the repository offers only 1.1:
    ``kensa rollback`` says rollback_failed naming the package, the version and what is offered."""
    apt_install(f"{TINY}=1.0")
    journal = str(tmp_path / "journal.db")
    rules = rule_file(tmp_path / "rules", "pkg-tiny-absent", "apt_absent", TINY, "dpkg_absent")
    code, out = kensa("--journal", journal, "--no-audit", "remediate", str(rules), "--json")
    assert code == EXIT_OK, out
    (result,) = out["results"]
    assert result["status"] == "committed"
    repo.publish(only=[(TINY, "1.1")])
    offered = subprocess.run(["apt-cache", "madison", TINY], capture_output=True, text=True).stdout
    assert "1.0" not in offered, offered

    code, out = kensa("--journal", journal, "--no-audit", "rollback", result["txn"], "--json")
    assert out["status"] == "rollback_failed", out
    message = json.dumps(out)
    assert f"{TINY} 1.0 cannot be reinstalled" in message and "offer 1.1" in message
    assert installed_test_packages() == {TINY: ("rc", "1.0")}


def test_a_held_dpkg_lock_fails_the_apply_quoting_apt_and_changes_nothing(repo: DebRepo, live: LocalHost) -> None:
    """While another process holds dpkg's frontend lock, apt_present waits ``lock_timeout`` seconds
    and then fails with apt's own message; nothing is installed."""
    before = dpkg_list()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys\n"
         "f = open('/var/lib/dpkg/lock-frontend', 'w')\n"
         "fcntl.lockf(f, fcntl.LOCK_EX)\n"
         "print('held', flush=True)\nsys.stdin.read()\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        handler, params = REGISTRY["apt_present"], {"name": TINY, "lock_timeout": 1}
        pre = handler.capture(live, params)
        result = handler.apply(live, params, pre)
    finally:
        holder.communicate("")
    assert not result.ok
    assert "Could not get lock /var/lib/dpkg/lock-frontend" in result.detail, result.detail
    assert f"It is held by process {holder.pid}" in result.detail
    assert dpkg_list() == before


def test_rules_remediate_then_check_compliant_and_roll_back_by_id(repo: DebRepo, tmp_path: Path) -> None:
    """Rules of each mechanism with the check methods package_installed, dpkg_installed,
    package_absent and package_state commit through ``kensa remediate``; ``kensa check`` then says
    compliant for each; ``kensa rollback`` of each puts ``dpkg -l`` back as it was."""
    apt_install(f"{DEP}=1.0")
    before = dpkg_list()
    rules = tmp_path / "rules"
    rule_file(rules, "pkg-app-present", "package_present", APP, "package_installed")
    rule_file(rules, "pkg-tiny-present", "apt_present", TINY, "dpkg_installed")
    rule_file(rules, "pkg-dep-absent", "package_absent", DEP, "package_state", "\n      state: absent")
    # The absent rule runs on its own, after the others are rolled back: removing dep while app is
    # installed would remove app too, and the two rules would undo each other.
    journal = str(tmp_path / "journal.db")
    code, out = kensa("--journal", journal, "--no-audit", "check", str(rules), "--json")
    assert {r["rule"]: r["verdict"] for r in out["rules"]} == {
        "pkg-app-present": "not_compliant", "pkg-tiny-present": "not_compliant", "pkg-dep-absent": "not_compliant"}

    present = [str(rules / "pkg-app-present.yml"), str(rules / "pkg-tiny-present.yml")]
    code, out = kensa("--journal", journal, "--no-audit", "remediate", *present, "--json")
    assert code == EXIT_OK, out
    assert {r["status"] for r in out["results"]} == {"committed"}
    code, checked = kensa("--journal", journal, "--no-audit", "check", *present, "--json")
    assert code == EXIT_OK and {r["verdict"] for r in checked["rules"]} == {"compliant"}, checked
    for result in out["results"]:
        code, back = kensa("--journal", journal, "--no-audit", "rollback", result["txn"], "--json")
        assert code == EXIT_OK and back["status"] == "rolled_back", back
    assert dpkg_list() == before

    absent = str(rules / "pkg-dep-absent.yml")
    code, out = kensa("--journal", journal, "--no-audit", "remediate", absent, "--json")
    assert code == EXIT_OK and out["results"][0]["status"] == "committed", out
    code, checked = kensa("--journal", journal, "--no-audit", "check", absent, "--json")
    assert code == EXIT_OK and checked["rules"][0]["verdict"] == "compliant", checked
    code, back = kensa("--journal", journal, "--no-audit", "rollback", out["results"][0]["txn"], "--json")
    assert code == EXIT_OK and back["status"] == "rolled_back", back
    assert dpkg_list() == before


def test_rollback_by_id_keeps_a_later_install_and_refuses_when_its_own_package_changed(repo: DebRepo, live: LocalHost) -> None:
    """After an apt_present commit, a package the operator installed later is outside the step's
    footprint: rollback reverts only kensa's packages and keeps it (not host_unchanged). When the
    operator changed kensa's own package (downgraded it), the assessment is a conflict naming it."""
    handler, params = REGISTRY["apt_present"], {"name": APP}
    pre = handler.capture(live, params)
    assert handler.apply(live, params, pre).ok
    apt_install(f"{TINY}=1.0")
    assessment = handler.assess(live, pre)
    assert assessment.drift is Drift.OUTSIDE and TINY in " ".join(assessment.details)
    back = handler.restore(live, pre, assessment)
    assert back.ok and back.kept, back
    assert installed_test_packages() == {TINY: ("ii", "1.0")}

    tiny = REGISTRY["apt_present"]
    repo.purge_all()
    pre = tiny.capture(live, {"name": TINY})
    assert dict(pre.data["plan"]) == {TINY: "1.1"}
    assert tiny.apply(live, {"name": TINY}, pre).ok
    assert tiny.assess(live, pre).drift is Drift.AT_POST
    apt_install("--allow-downgrades", f"{TINY}=1.0")
    assessment = tiny.assess(live, pre)
    assert assessment.drift is Drift.CONFLICT
    assert f"package {TINY} is 1.0 now, kensa left it 1.1" in assessment.details
    refused = tiny.restore(live, pre, assessment)
    assert not refused.ok and "withheld" in refused.detail
    assert installed_test_packages() == {TINY: ("ii", "1.0")}


@pytest.mark.parametrize("name", [
    "-oAPT::Get::Assume-Yes=1", "foo bar", f"{TINY}=1.0", "Tiny", "a\nb", "../etc/passwd", "/tmp/x.deb",
    "xorg-x11-server*", "", "x" * 300,
])
def test_hostile_names_are_refused_before_anything_changes(repo: DebRepo, live: LocalHost, name: str) -> None:
    """A name outside Debian's grammar (an option, a space, a version pin, upper case, a newline, a
    path, a glob) is a ParamError from the schema the loader uses too; nothing is run or changed."""
    before = dpkg_list()
    for mechanism in ("apt_present", "apt_absent"):
        with pytest.raises(ParamError):
            SCHEMAS[mechanism].read({"name": name})
        with pytest.raises(ParamError):
            REGISTRY[mechanism].capture(live, {"name": name})
    assert dpkg_list() == before


def test_an_rpm_name_that_is_no_debian_name_is_refused_on_debian(repo: DebRepo, live: LocalHost) -> None:
    """package_present accepts an rpm name such as ``NetworkManager``, but on a Debian target apt is
    used, and a name outside Debian's grammar is refused before anything runs."""
    assert SCHEMAS["package_present"].read({"name": "NetworkManager"})["name"] == "NetworkManager"
    with pytest.raises(ParamError, match="not a Debian package name"):
        REGISTRY["package_present"].capture(live, {"name": "NetworkManager"})


def test_an_unknown_package_is_a_clear_error_quoting_apt(repo: DebRepo, live: LocalHost) -> None:
    """Capture of a package no repository has fails with apt's message, before any change."""
    before = dpkg_list()
    with pytest.raises(ParamError, match="Unable to locate package kensa-test-nosuch"):
        REGISTRY["apt_present"].capture(live, {"name": PREFIX + "nosuch"})
    assert dpkg_list() == before


def test_an_image_root_is_refused_and_left_identical(repo: DebRepo, tmp_path: Path) -> None:
    """On an image root (a copy of this machine's dpkg status and /etc/apt, with a user and a
    security xattr set), the check reads the image's database, and capture refuses: nothing in the
    tree or on this machine changes."""
    root = tmp_path / "image"
    (root / "var/lib/dpkg").mkdir(parents=True)
    shutil.copy("/var/lib/dpkg/status", root / "var/lib/dpkg/status")
    copy_live_tree("/etc/apt", root / "etc/apt")
    os.setxattr(root / "var/lib/dpkg/status", "user.kensa-test", b"kept")
    os.setxattr(root / "var/lib/dpkg/status", "security.kensa-test", b"kept")
    image, before, listing = LocalHost(str(root)), snapshot_tree(root), dpkg_list()
    for mechanism in ("apt_present", "package_present", "apt_absent", "package_absent"):
        handler = REGISTRY[mechanism]
        assert handler.validate(image, {"name": "dpkg"}) is mechanism.endswith("present")
        with pytest.raises(NotAvailableError, match="not available on an image root"):
            handler.capture(image, {"name": TINY})
    assert snapshot_tree(root) == before
    assert dpkg_list() == listing


def test_a_host_without_apt_get_says_so_before_anything_changes(repo: DebRepo, tmp_path: Path) -> None:
    """A target whose PATH has dpkg but no apt-get: capture says "not available on this host:
    apt-get is not installed" (a NotAvailableError), and nothing changes."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("dpkg", "dpkg-query"):
        (bin_dir / tool).symlink_to(shutil.which(tool) or tool)
    script = (
        "from kensa.handlers import default_registry\n"
        "from kensa.hosts.local import LocalHost\n"
        "from kensa.errors import NotAvailableError\n"
        "try:\n"
        f"    default_registry()['apt_present'].capture(LocalHost('/'), {{'name': {TINY!r}}})\n"
        "except NotAvailableError as exc:\n"
        "    print(exc)\n"
    )
    before = dpkg_list()
    env = {**os.environ, "PATH": str(bin_dir)}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert done.stdout.strip() == "apt_present: not available on this host: apt-get is not installed", done
    assert dpkg_list() == before


def test_over_ssh_with_sudo_a_package_step_runs_on_the_target_and_rolls_back(
        repo: DebRepo, sshd_rig: Any, sshd_host: Any, tmp_path: Path) -> None:
    """An unprivileged login with --sudo remediates an apt_present rule on the target (this machine
    behind sshd, the step run by kensa's agent there); check then says compliant; rollback by id
    over the same login purges the package again, leaving ``dpkg -l`` as it was."""
    before = dpkg_list()
    rules = rule_file(tmp_path / "rules", "pkg-remote-tiny", "apt_present", TINY, "package_installed")
    login = ["-H", f"{sshd_rig.users['nopasswd']}@127.0.0.1:{sshd_host.port}", "-k", str(sshd_rig.user_key),
             "--known-hosts", str(tmp_path / "known_hosts"), "--connect-timeout", "20", "--sudo"]
    journal = str(tmp_path / "journal.db")
    code, out = kensa("--journal", journal, "--no-audit", "remediate", str(rules), *login, "--json")
    assert code == EXIT_OK, out
    (host,) = out["hosts"]
    assert [r["status"] for r in host["results"]] == ["committed"], out
    assert host["results"][0]["host"].startswith("ssh://")
    assert installed_test_packages() == {TINY: ("ii", "1.1")}
    code, out_check = kensa("--journal", journal, "--no-audit", "check", str(rules), *login, "--json")
    assert code == EXIT_OK, out_check
    code, back = kensa("--journal", journal, "--no-audit", "rollback", host["results"][0]["txn"], *login[2:], "--json")
    assert code == EXIT_OK and back["status"] == "rolled_back", back
    assert dpkg_list() == before


CORPUS = os.environ.get("KENSA_CORPUS", "")
PACKAGE_MECHANISMS = ("apt_present", "apt_absent", "package_present", "package_absent")


def corpus_package_rules(directory: Path) -> List[str]:
    """Copy the corpus rules that use a package mechanism into ``directory``; their ids."""
    directory.mkdir()
    ids = []
    for path in sorted(Path(CORPUS).rglob("*.yml")):
        text = path.read_text()
        if any(f"mechanism: {name}" in text for name in PACKAGE_MECHANISMS):
            shutil.copy(path, directory / path.name)
            ids.append(path.stem)
    return ids


@pytest.mark.skipif(not os.path.isdir(CORPUS), reason="set KENSA_CORPUS to a rule corpus directory")
def test_corpus_package_rules_on_a_copy_of_etc_check_plan_and_refuse_to_change_an_image(repo: DebRepo, tmp_path: Path) -> None:
    """The corpus's package rules on a copy of this machine's /etc and dpkg database, as an Ubuntu
    22.04 (the corpus's Debian-family platform): those for Ubuntu get compliant or not compliant from
    the image's dpkg database (not assessable for command checks), the others not applicable, none
    an error; the dry plan names the package steps; a real remediation of the image errors with "not
    available on an image root" and leaves the tree and this machine's packages as they were."""
    rules = tmp_path / "rules"
    corpus_package_rules(rules)
    root = tmp_path / "root"
    root.mkdir()
    subprocess.run(["cp", "-a", "/etc", str(root / "etc")], check=True)
    (root / "etc/os-release").unlink()
    (root / "etc/os-release").write_text('ID=ubuntu\nVERSION_ID="22.04"\nID_LIKE=debian\n')
    (root / "var/lib/dpkg").mkdir(parents=True)
    shutil.copy("/var/lib/dpkg/status", root / "var/lib/dpkg/status")
    journal = str(tmp_path / "journal.db")

    code, out = kensa("--journal", journal, "--no-audit", "check", str(rules), "--root", str(root), "--json")
    verdicts = {r["rule"]: r["verdict"] for r in out["rules"]}
    assert out["problems"] == []
    assert set(verdicts.values()) <= {"compliant", "not_compliant", "not_applicable", "not_assessable"}, verdicts
    for name, verdict in verdicts.items():
        ubuntu = "family: ubuntu" in (rules / f"{name}.yml").read_text()
        assert (verdict != "not_applicable") == ubuntu, (name, verdict)
    assert verdicts["package-sudo-installed"] == "compliant"  # sudo is installed here

    code, plan = kensa("--journal", journal, "--no-audit", "remediate", str(rules), "--root", str(root), "--dry-run",
                       "--allow-conflicts", "--json")
    plans = {r["rule"]: r["plan"] for r in plan["rules"]}
    would = [name for name, text in plans.items() if text.startswith("would apply")]
    assert would and all(any(m in plans[name] for m in PACKAGE_MECHANISMS) for name in would), plans

    only_packages = [str(rules / f"{name}.yml") for name in would
                     if set(plans[name].split(": ", 1)[1].split(", ")) <= {*PACKAGE_MECHANISMS, "rule_check"}]
    assert only_packages
    tree, listing = snapshot_tree(root), dpkg_list()
    code, done = kensa("--journal", journal, "--no-audit", "remediate", *only_packages, "--root", str(root), "--json")
    assert {r["status"] for r in done["results"]} == {"errored"}, done
    assert all("not available on an image root" in json.dumps(r) for r in done["results"]), done
    assert snapshot_tree(root) == tree
    assert dpkg_list() == listing


def test_a_rule_whose_check_fails_after_the_install_rolls_back_to_an_identical_dpkg(repo: DebRepo, tmp_path: Path) -> None:
    """Through ``kensa remediate``: apt_present of app whose rule's check (tiny installed) still fails
    after the install is rolled back by the run itself: rolled_back, host_unchanged, and app and
    the dependency it pulled in are gone, ``dpkg -l`` as before."""
    before = dpkg_list()
    rules = rule_file(tmp_path / "rules", "pkg-app-checked-wrongly", "apt_present", APP, "dpkg_installed")
    rules.write_text(rules.read_text().replace(f"name: {APP}\n    remediation", f"name: {TINY}\n    remediation"))
    code, out = kensa("--journal", str(tmp_path / "journal.db"), "--no-audit", "remediate", str(rules), "--json")
    (result,) = out["results"]
    assert result["status"] == "rolled_back" and result["host_unchanged"] is True, out
    (package_step,) = [rb for rb in result["rollbacks"] if rb["mechanism"] == "apt_present"]
    assert package_step["ok"] and "best-effort" in package_step["detail"]
    assert installed_test_packages() == {}
    assert dpkg_list() == before


def test_the_rpm_database_is_found_where_the_other_candidate_has_no_parent(tmp_path: Path) -> None:
    """A root with /var/lib/rpm and no /usr/lib/sysimage (a Debian machine with rpm installed)
    has its rpm database at /var/lib/rpm: the missing candidate's parent is no error."""
    (tmp_path / "var/lib/rpm").mkdir(parents=True)
    (tmp_path / "usr/lib").mkdir(parents=True)
    assert rpm_database(LocalHost(str(tmp_path))) == "/var/lib/rpm"
