"""Check methods against the real components of this machine: dpkg's database, sshd -T,
systemctl --root on image roots with real unit files, /proc/self/mounts in a private
mount namespace, the running kernel's modules and command line, auditctl, /bin/sh.

Each test needs root or the component it names; it skips on a laptop and fails
under KENSA_REQUIRE_REAL=1."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Dict, List

import pytest

from agent_targets import transport
from conftest import require_auditd, require_real, require_root
from kensa.checks import evaluate_check
from kensa.errors import KensaError
from kensa.facts.auditrules import kernel_rules, missing
from kensa.facts.packages import dpkg_status
from kensa.facts.sshd import DEFAULTS, configured, normalise
from kensa.hosts.local import LocalHost
from kensa.hosts.remote import connect
from kensa.model import Finding, Verdict
from kensa.rules import Check

LIVE = LocalHost("/")


def run(host: LocalHost, method: str, **params: Any) -> Finding:
    return evaluate_check(Check(method, params), host)


def need(tool: str) -> str:
    found = shutil.which(tool) or (f"/usr/sbin/{tool}" if os.path.exists(f"/usr/sbin/{tool}") else None)
    if found is None:
        require_real(f"{tool} is not installed")
    return str(found)


def write(root: Path, path: str, text: str) -> Path:
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    return target


# --- packages ---------------------------------------------------------------------


def test_dpkg_status_agrees_with_dpkg_query_on_this_machine() -> None:
    """kensa's reading of this machine's dpkg status database gives every package the status
    word dpkg-query itself reports."""
    need("dpkg-query")
    listed = subprocess.run(["dpkg-query", "-W", "-f", "${Package}\t${db:Status-Status}\n"], capture_output=True,
                            text=True, check=True).stdout
    theirs = dict(line.split("\t") for line in listed.splitlines() if "\t" in line)
    ours = dpkg_status(LIVE)
    assert ours is not None and theirs
    assert {name: ours.get(name) for name in theirs} == theirs


def test_package_checks_on_the_live_host_and_on_a_crafted_image(tmp_path: Path) -> None:
    """An installed package of this machine (dpkg itself) is installed live; in an image root the
    image's own status file decides: config-files and unlisted packages are absent."""
    need("dpkg-query")
    assert run(LIVE, "package_state", name="dpkg", state="present").holds
    assert run(LIVE, "dpkg_installed", name="dpkg").holds
    image = tmp_path / "image"
    write(image, "/var/lib/dpkg/status", textwrap.dedent("""\
        Package: hello
        Status: install ok installed
        Architecture: amd64
        Version: 2.10-3

        Package: telnet
        Status: deinstall ok config-files
        Architecture: amd64
        Version: 0.17
        """))
    host = LocalHost(str(image))
    query = subprocess.run(["dpkg-query", f"--admindir={image}/var/lib/dpkg", "-W", "-f", "${Package} ${db:Status-Status}\n"],
                           capture_output=True, text=True, check=True).stdout.split("\n")
    assert "hello installed" in query and "telnet config-files" in query
    assert run(host, "package_installed", name="hello").holds
    assert not run(host, "package_installed", name="dpkg").holds  # installed here, not in the image
    removed = run(host, "package_absent", name="telnet")
    assert removed.holds and "config-files" in removed.detail
    assert run(host, "dpkg_absent", name="nmap").holds


SPEC = """Name: kensa-probe
Version: 1.0
Release: 1
Summary: a package with no files, for the rpm database of a test image
License: MIT
BuildArch: noarch
%description
probe
%files
"""


def rpm_image(tmp_path: Path) -> Path:
    """An image root whose rpm database (built here with rpm itself) records kensa-probe."""
    for tool in ("rpm", "rpmbuild"):
        need(tool)
    (tmp_path / "probe.spec").write_text(SPEC)
    subprocess.run(["rpmbuild", "--define", f"_topdir {tmp_path / 'build'}", "-bb", str(tmp_path / "probe.spec")],
                   check=True, capture_output=True)
    package = next((tmp_path / "build").rglob("*.rpm"))
    image = tmp_path / "image"
    image.mkdir()
    rpm = ["rpm", "--root", str(image), "--dbpath", "/var/lib/rpm"]
    subprocess.run([*rpm, "--initdb"], check=True, capture_output=True)
    subprocess.run([*rpm, "-i", "--justdb", "--nodeps", str(package)], check=True, capture_output=True)
    return image


def test_package_checks_read_an_images_rpm_database_with_rpm_root(tmp_path: Path) -> None:
    """An image root with an rpm database (built here with rpm itself) answers through
    rpm --root: the package recorded there is installed, another is absent."""
    host = LocalHost(str(rpm_image(tmp_path)))
    found = run(host, "package_state", name="kensa-probe", state="present")
    assert found.holds and "rpm: kensa-probe-1.0-1" in found.detail, found
    assert run(host, "package_absent", name="openssh-server").holds
    assert not run(host, "package_installed", name="openssh-server").holds


def outcome(host: Any, method: str, **params: Any) -> str:
    """A check's verdict, or its fault's class: what a check run reports for a rule."""
    try:
        return run(host, method, **params).verdict.value
    except KensaError as exc:
        return f"error: {type(exc).__name__}: {exc}"


def test_package_checks_of_a_remote_image_root_read_that_images_rpm_database(tmp_path: Path) -> None:
    """A remote host whose root is an image on the target answers package checks as a local
    host of that image does: rpm runs there with --root the image's path on the target, not
    the controller's name of the host (an ssh:// key is no path on the target)."""
    image = rpm_image(tmp_path)
    local = LocalHost(str(image))
    remote = connect(transport("rpm-image"), str(image), key=f"ssh://root@rpm-image{image}")
    try:
        for method, params in (("package_state", {"name": "kensa-probe", "state": "present"}),
                               ("package_absent", {"name": "kensa-probe"}),
                               ("package_installed", {"name": "openssh-server"})):
            assert outcome(remote, method, **params) == outcome(local, method, **params), (method, params)
    finally:
        remote.close()


def test_package_checks_without_any_package_database_are_not_assessable(tmp_path: Path) -> None:
    """A root with neither a dpkg nor an rpm database cannot say what is installed."""
    found = run(LocalHost(str(tmp_path)), "package_state", name="hello", state="absent")
    assert found.verdict is Verdict.NOT_ASSESSABLE and "no package database" in found.detail


# --- sshd ---------------------------------------------------------------------------


def _sshd_T(image: Path, hostkey: Path) -> Dict[str, str]:
    """sshd -T of the image's own files: in a private mount namespace the image's /etc/ssh is
    bind-mounted over /etc/ssh, so sshd reads exactly the files kensa read."""
    script = f"mount --bind {image}/etc/ssh /etc/ssh && exec {need('sshd')} -T -f /etc/ssh/sshd_config -h {hostkey}"
    done = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    settings: Dict[str, str] = {}
    for line in done.stdout.splitlines():
        key, _, value = line.partition(" ")
        settings.setdefault(key, value)
    return settings


def test_image_sshd_reading_matches_sshd_T_of_the_same_files(tmp_path: Path) -> None:
    """kensa's resolution of Include (relative and absolute, globs, nested) and Match blocks on an
    image gives every key the files set, and every built-in default it knows, the value sshd -T
    computes from the very same files."""
    require_root()
    need("sshd")
    if shutil.which("unshare") is None:
        require_real("unshare is not installed")
    image = tmp_path / "image"
    write(image, "/etc/ssh/sshd_config", textwrap.dedent("""\
        # a comment
        Include sshd_config.d/*.conf
        PermitRootLogin yes
        MaxAuthTries=6
        LoginGraceTime 1m30s
        Match User bob
            PermitRootLogin no
            X11Forwarding yes
            Include /etc/ssh/extra.d/*.conf
        Match all
            MaxSessions 3
        """))
    write(image, "/etc/ssh/sshd_config.d/10-root.conf", "permitrootlogin without-password\nInclude /etc/ssh/nested.conf\n")
    write(image, "/etc/ssh/sshd_config.d/20-tries.conf", "MaxAuthTries 4\nClientAliveCountMax 0\n")
    write(image, "/etc/ssh/sshd_config.d/ignored.txt", "MaxAuthTries 1\n")
    write(image, "/etc/ssh/nested.conf", "LogLevel VERBOSE\nRekeyLimit 512M 1h\n")
    write(image, "/etc/ssh/extra.d/a.conf", "PermitEmptyPasswords yes\n")
    hostkey = tmp_path / "hostkey"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(hostkey)], check=True)
    theirs = _sshd_T(image, hostkey)
    ours, files = configured(LocalHost(str(image)))
    assert len(files) == 5
    assert set(ours) >= {"permitrootlogin", "maxauthtries", "logingracetime", "maxsessions", "loglevel", "rekeylimit"}
    for key, value in ours.items():
        assert normalise(key, value).lower() == normalise(key, theirs[key]).lower(), key
    for key, value in DEFAULTS.items():
        if key not in ours:
            assert normalise(key, value).lower() == normalise(key, theirs[key]).lower(), key
    host = LocalHost(str(image))
    assert run(host, "sshd_effective_config", key="MaxAuthTries", expected="4").holds
    assert run(host, "sshd_effective_config", key="x11forwarding", expected="no").holds
    assert run(host, "sshd_effective_config", key="permitemptypasswords", expected="no").holds
    wrong = run(host, "sshd_effective_config", key="permitrootlogin", expected="no")
    assert wrong.verdict is Verdict.NOT_COMPLIANT and "without-password" in wrong.detail


def test_live_sshd_effective_config_asks_sshd_T() -> None:
    """On the live host the check compares sshd -T's own value: it holds for the value sshd -T
    prints and not for another."""
    require_root()
    done = subprocess.run([need("sshd"), "-T"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    value = next(line.split(" ", 1)[1] for line in done.stdout.splitlines() if line.startswith("maxauthtries "))
    assert run(LIVE, "sshd_effective_config", key="MaxAuthTries", expected=value).holds
    found = run(LIVE, "sshd_effective_config", key="MaxAuthTries", expected=str(int(value) + 1))
    assert found.verdict is Verdict.NOT_COMPLIANT and found.detail.startswith("sshd -T: maxauthtries is")


# --- systemd ------------------------------------------------------------------------------


UNIT = "[Unit]\nDescription={0}\n[Service]\nExecStart=/bin/true\n{1}"


def test_service_state_reads_unit_files_of_an_image_with_systemctl_root(tmp_path: Path) -> None:
    """In an image root with real unit files, systemctl --root decides enabled: an enabled
    unit, a disabled one, a static one (no [Install]), a masked one, and one with no file."""
    systemctl = need("systemctl")
    image = tmp_path / "image"
    install = "[Install]\nWantedBy=multi-user.target\n"
    write(image, "/usr/lib/systemd/system/multi-user.target", "[Unit]\nDescription=Multi-User\n")
    write(image, "/usr/lib/systemd/system/graphical.target", "[Unit]\nDescription=Graphical\n")
    for name, extra in (("on", install), ("off", install), ("fixed", ""), ("hidden", install)):
        write(image, f"/usr/lib/systemd/system/{name}.service", UNIT.format(name, extra))
    for args in (["enable", "on.service"], ["mask", "hidden.service"], ["set-default", "multi-user.target"]):
        subprocess.run([systemctl, f"--root={image}", *args], check=True, capture_output=True)
    host = LocalHost(str(image))
    assert run(host, "service_state", name="on", enabled=True).holds
    off = run(host, "service_enabled", name="off")
    assert off.verdict is Verdict.NOT_COMPLIANT and "is-enabled: disabled" in off.detail
    assert run(host, "service_state", name="off", enabled=False).holds
    assert run(host, "service_state", name="fixed", enabled=True).holds  # static counts as enabled
    assert run(host, "service_state", name="fixed", enabled=False).holds  # and is not explicitly enabled
    assert run(host, "service_state", name="hidden", enabled=False).holds
    assert run(host, "service_state", name="telnet.socket", enabled=False, active=False).holds
    unknown = run(host, "service_state", name="on", active=True)
    assert unknown.verdict is Verdict.NOT_ASSESSABLE and "image root" in unknown.detail
    assert run(host, "systemd_target", expected="multi-user.target").holds
    assert not run(host, "systemd_target", not_expected="multi-user.target").holds


def test_service_checks_of_a_remote_image_root_read_that_images_unit_files(tmp_path: Path) -> None:
    """A remote host whose root is an image on the target answers service checks as a local
    host of that image does: systemctl runs there with --root the image's path on the target,
    not the controller's ssh:// name of the host. An enabled unit that must not be enabled is
    not compliant, never 'compliant, no such unit'."""
    systemctl = need("systemctl")
    image = tmp_path / "image"
    write(image, "/usr/lib/systemd/system/multi-user.target", "[Unit]\nDescription=Multi-User\n")
    write(image, "/usr/lib/systemd/system/on.service", UNIT.format("on", "[Install]\nWantedBy=multi-user.target\n"))
    subprocess.run([systemctl, f"--root={image}", "enable", "on.service"], check=True, capture_output=True)
    local = LocalHost(str(image))
    remote = connect(transport("svc-image"), str(image), key=f"ssh://root@svc-image{image}")
    try:
        for params in ({"name": "on", "enabled": False}, {"name": "on", "enabled": True},
                       {"name": "on", "enabled": False, "active": False}):
            assert outcome(remote, "service_state", **params) == outcome(local, "service_state", **params), params
        assert outcome(local, "service_state", name="on", enabled=False) == "not_compliant"
    finally:
        remote.close()


# --- mounts, modules, boot, SELinux ------------------------------------------------------


MOUNT_PROBE = """
import json, sys
from kensa.checks import evaluate_check
from kensa.hosts.local import LocalHost
from kensa.hosts.remote import connect
from kensa.rules import Check
point = sys.argv[1]
print(json.dumps([evaluate_check(Check("mount_option", {"mount_point": point, "options": opts}), LocalHost("/")).verdict.value
                  for opts in (["nodev", "nosuid"], ["noexec"])]))
"""


def test_mount_option_reads_the_mounts_of_the_targets_namespace(tmp_path: Path) -> None:
    """In a private mount namespace a tmpfs mounted nodev,nosuid is seen by mount_option: those
    options hold, noexec does not; outside the namespace the mount point is not a mount."""
    require_root()
    if shutil.which("unshare") is None:
        require_real("unshare is not installed")
    point = tmp_path / "private"
    point.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    script = f"mount -t tmpfs -o nodev,nosuid,size=64k tmpfs {point} && exec {sys.executable} -c '{MOUNT_PROBE}' {point}"
    done = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == ["compliant", "not_compliant"]
    outside = run(LIVE, "mount_option", mount_point=str(point), options=["nodev"])
    assert outside.verdict is Verdict.NOT_COMPLIANT and "not a separate mount" in outside.detail


def test_mount_option_on_an_image_reads_its_fstab(tmp_path: Path) -> None:
    """On an image root the image's /etc/fstab decides, spaces in mount points included."""
    write(tmp_path, "/etc/fstab", "# comment\nUUID=1 / ext4 defaults 0 1\ntmpfs /tmp tmpfs nodev,nosuid,noexec 0 0\n"
          "tmpfs /srv/my\\040data tmpfs nodev 0 0\n")
    host = LocalHost(str(tmp_path))
    assert run(host, "mount_option", mount_point="/tmp", options=["nodev", "noexec"]).holds
    assert run(host, "mount_option", mount_point="/srv/my data", options=["nodev"]).holds
    assert not run(host, "mount_option", mount_point="/var/tmp", options=["nodev"]).holds


def test_kernel_module_state_on_the_running_kernel() -> None:
    """A module the running kernel has (in /proc/modules, or built in under /sys/module) is not
    disabled; a module this kernel has no file for cannot be loaded, so it is disabled."""
    require_root()
    listing = Path("/proc/modules")
    loaded = [line.split()[0] for line in listing.read_text().splitlines()] if listing.exists() else []
    builtin = [p.name for p in Path("/sys/module").iterdir() if not (p / "initstate").exists()]
    present = (loaded or builtin)[0]
    found = run(LIVE, "kernel_module_state", name=present, state="disabled")
    assert found.verdict is Verdict.NOT_COMPLIANT and ("loaded" in found.detail or "built in" in found.detail)
    release = os.uname().release
    indexes = [Path(d, release, "modules.dep") for d in ("/lib/modules", "/usr/lib/modules")]
    if not any(index.exists() and "kensa_no_such_module" in index.read_text() for index in indexes):
        assert run(LIVE, "kernel_module_state", name="kensa_no_such_module").holds


def test_kernel_module_state_on_an_image_reads_modprobe_d_and_modules_dep(tmp_path: Path) -> None:
    """In an image: an install-to-false line disables, a blacklist line blacklists, and a module
    listed in modules.dep without either can be loaded."""
    write(tmp_path, "/etc/modprobe.d/cis.conf", "install cramfs /bin/false\nblacklist usb-storage  # no USB disks\n")
    write(tmp_path, "/usr/lib/modules/6.1.0-1-amd64/modules.dep",
          "kernel/fs/cramfs/cramfs.ko:\nkernel/drivers/usb/storage/usb-storage.ko.xz:\nkernel/fs/squashfs/squashfs.ko:\n")
    host = LocalHost(str(tmp_path))
    assert run(host, "kernel_module_state", name="cramfs", state="disabled").holds
    assert run(host, "kernel_module_state", name="usb_storage", state="blacklisted").holds
    loadable = run(host, "kernel_module_state", name="squashfs", state="disabled")
    assert loadable.verdict is Verdict.NOT_COMPLIANT and "modules.dep" in loadable.detail
    assert not run(host, "kernel_module_state", name="squashfs", state="blacklisted").holds


def test_grub_parameter_live_and_on_an_image(tmp_path: Path) -> None:
    """Live, the running command line must carry key=expected; on an image, /etc/default/grub's
    GRUB_CMDLINE_LINUX(_DEFAULT) decides."""
    words = [w for w in Path("/proc/cmdline").read_text().split() if "=" in w]
    if words:
        key, value = words[0].split("=", 1)
        mismatch = run(LIVE, "grub_parameter", key=key, expected=value + "x")
        assert mismatch.verdict is Verdict.NOT_COMPLIANT and "/proc/cmdline" in mismatch.detail
        persisted = run(LIVE, "grub_parameter", key=key, expected=value)
        assert persisted.holds == (f"{key}={value}" in (Path("/etc/default/grub").read_text()
                                                       if Path("/etc/default/grub").exists() else ""))
    write(tmp_path, "/etc/default/grub", 'GRUB_TIMEOUT=5\nGRUB_CMDLINE_LINUX="quiet audit=1"\nGRUB_CMDLINE_LINUX_DEFAULT="audit_backlog_limit=8192"\n')
    host = LocalHost(str(tmp_path))
    assert run(host, "grub_parameter", key="audit", expected="1").holds
    assert run(host, "grub_parameter", key="audit_backlog_limit", expected="8192").holds
    assert not run(host, "grub_parameter", key="pti", expected="on").holds


def test_grub_parameter_reads_every_boot_loader_entry_of_an_image(tmp_path: Path) -> None:
    """Where boot loader entries exist they decide, each one, with $kernelopts from grubenv;
    /etc/default/grub no longer does."""
    write(tmp_path, "/etc/default/grub", 'GRUB_CMDLINE_LINUX="audit=0"\n')
    write(tmp_path, "/boot/grub2/grubenv", "# GRUB Environment Block\nkernelopts=root=/dev/vda1 ro audit=1\n")
    write(tmp_path, "/boot/loader/entries/a-5.14.conf", "title A\nlinux /vmlinuz-5.14\noptions $kernelopts pti=on\n")
    write(tmp_path, "/boot/loader/entries/b-rescue.conf", "title B\nlinux /vmlinuz-0\noptions root=/dev/vda1 ro audit=1\n")
    host = LocalHost(str(tmp_path))
    assert run(host, "grub_parameter", key="audit", expected="1").holds
    partial = run(host, "grub_parameter", key="pti", expected="on")
    assert partial.verdict is Verdict.NOT_COMPLIANT and "b-rescue.conf" in partial.detail and "a-5.14" not in partial.detail


def test_selinux_state_live_and_on_an_image(tmp_path: Path) -> None:
    """Live, the kernel's selinuxfs decides (none: disabled); on an image, /etc/selinux/config."""
    live = "disabled" if not Path("/sys/fs/selinux/enforce").exists() else (
        "enforcing" if Path("/sys/fs/selinux/enforce").read_text().strip() == "1" else "permissive")
    assert run(LIVE, "selinux_state", state=live.capitalize()).holds
    write(tmp_path, "/etc/selinux/config", "# comment\nSELINUX=enforcing\nSELINUXTYPE=targeted\n")
    assert run(LocalHost(str(tmp_path)), "selinux_state", state="Enforcing").holds
    assert not run(LocalHost(str(tmp_path)), "selinux_state", state="Disabled").holds


# --- commands and audit --------------------------------------------------------------------


def test_command_runs_under_sh_with_exit_and_output_semantics() -> None:
    """A command runs as /bin/sh -c on the live host: the exit status must be expected_exit and the
    output contain expected_stdout (empty: no output); not_assessable_exit defers the verdict."""
    assert run(LIVE, "command", run="echo compliant; exit 3", expected_exit=3, expected_stdout="compliant").holds
    assert not run(LIVE, "command", run="echo x", expected_exit=0, expected_stdout="").holds
    assert not run(LIVE, "command", run="exit 1").holds
    deferred = run(LIVE, "command", run="echo no threshold declared; exit 7", not_assessable_exit=7)
    assert deferred.verdict is Verdict.NOT_ASSESSABLE and "no threshold declared" in deferred.detail
    with pytest.raises(KensaError, match="timed out"):
        run(LIVE, "command", run="sleep 30", timeout=0.5)


def test_set_compare_reports_unauthorized_members() -> None:
    """Each observed line must be authorized under one of its names; an empty declaration is not assessable."""
    observe = "printf 'root:0\\nbob:1000\\n'"
    assert run(LIVE, "set_compare", observed_command=observe, authorized="root,1000", alias_separator=":").holds
    found = run(LIVE, "set_compare", observed_command=observe, authorized=["root"], alias_separator=":")
    assert found.verdict is Verdict.NOT_COMPLIANT and "present but not authorized: bob" in found.detail
    assert run(LIVE, "set_compare", observed_command=observe, authorized="").verdict is Verdict.NOT_ASSESSABLE


@pytest.mark.serial
def test_loaded_audit_rules_match_their_other_spellings() -> None:
    """A rule loaded into the kernel is found in auditctl -l's canonical spelling when the check
    writes it differently (-k for -F key=, two -S for one list, auid!=unset for -1, no -S for all)."""
    require_auditd()
    loaded = ["-a", "always,exit", "-F", "arch=b64", "-S", "settimeofday", "-S", "adjtimex", "-F", "auid>=1000",
              "-F", "auid!=unset", "-k", "kensa_check_probe"]
    watch = ["-a", "always,exit", "-F", "path=/usr/bin/kensa-probe", "-F", "perm=x", "-F", "auid!=4294967295", "-k", "kensa_check_probe"]
    for rule in (loaded, watch):
        subprocess.run(["auditctl", *rule], check=True, capture_output=True)
    try:
        kernel = kernel_rules(LIVE)
        assert kernel is not None
        spelled: List[str] = [
            "-a exit,always -F arch=b64 -S adjtimex,settimeofday -F auid>=1000 -F auid!=-1 -F key=kensa_check_probe",
            "-a always,exit -F path=/usr/bin/kensa-probe -F perm=x -F auid!=unset -k kensa_check_probe",
        ]
        assert missing(spelled, kernel["rules"]) == []
        assert missing(["-a always,exit -F arch=b64 -S adjtimex -k kensa_check_probe"], kernel["rules"]) != []
    finally:
        for rule in (loaded, watch):
            subprocess.run(["auditctl", "-d", *rule[1:]], check=False, capture_output=True)
