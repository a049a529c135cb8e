"""Check methods on image roots: honest verdicts, details that say what was found, and
hostile fields refused or bounded. Real trees on disk; no mocks."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict

import pytest

from conftest import snapshot_tree as snapshot
from kensa.checks import CHECKS, compliance, evaluate_check
from kensa.errors import CheckError, KensaError, ParamError, PathEscapeError
from kensa.handlers import default_registry
from kensa.hosts.local import LocalHost
from kensa.model import Finding, Verdict
from kensa.rules import Check, Implementation


@pytest.fixture
def root(tmp_path: Path) -> Path:
    top = tmp_path / "root"
    for sub in ("etc/ssh", "etc/audit/rules.d", "etc/security/pwquality.conf.d", "var/lib/dpkg"):
        (top / sub).mkdir(parents=True)
    (top / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\nbob:x:1000:1000::/home/bob:/bin/sh\n")
    (top / "etc/group").write_text("root:x:0:\nbob:x:1000:\n")
    return top


def run(root: Path, method: str, **params: Any) -> Finding:
    return evaluate_check(Check(method, params), LocalHost(str(root)))


def write(root: Path, path: str, text: str, mode: int = 0o644) -> Path:
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    os.chmod(target, mode)
    return target


# --- verdicts and details --------------------------------------------------------


@pytest.mark.parametrize("method, params", [
    ("config_value", {"path": "/etc/login.defs", "key": "PASS_MAX_DAYS", "expected": "365", "delimiter": " "}),
    ("file_permission", {"path": "/etc/shadow", "mode": "0640"}),
    ("file_content_match", {"path": "/etc/issue", "pattern": "^Authorized"}),
    ("file_content", {"path": "/etc/issue", "expected_content": "Authorized"}),
    ("file_exists", {"path": "/etc/at.allow"}),
    ("audit_rule_exists", {"rule": "-w /etc/shadow -p wa -k identity"}),
    ("mount_option", {"mount_point": "/tmp", "options": ["nodev"]}),
    ("grub_parameter", {"key": "audit", "expected": "1"}),
])
def test_a_missing_file_is_not_compliant_and_says_so(tmp_path: Path, method: str, params: Dict[str, Any]) -> None:
    """On an empty root a check of a file that is not there is a definite not compliant whose
    detail names what is missing, never an error verdict."""
    empty = tmp_path / "empty"
    empty.mkdir()
    found = run(empty, method, **params)
    assert found.verdict is Verdict.NOT_COMPLIANT, found
    assert "no such file" in found.detail or "not in the audit rules files" in found.detail, found


def test_config_value_detail_names_the_file_the_value_and_the_expectation(root: Path) -> None:
    """A config_value that does not hold says which file, which value it found, and what was expected."""
    write(root, "/etc/ssh/sshd_config", "# PermitRootLogin no\nPermitRootLogin yes\n")
    found = run(root, "config_value", path="/etc/ssh/sshd_config", key="PermitRootLogin", expected="no", delimiter=" ")
    assert found.verdict is Verdict.NOT_COMPLIANT
    assert found.detail.startswith("/etc/ssh/sshd_config") and found.detail.endswith(": PermitRootLogin is 'yes', expected 'no'")
    assert run(root, "config_value", path="/etc/ssh/sshd_config", key="permitrootlogin", expected="YES").holds


def test_config_value_comparators_compare_numbers(root: Path) -> None:
    """'>=' and '<=' compare whole numbers; a value that is not a number cannot satisfy them."""
    write(root, "/etc/login.defs", "PASS_MIN_LEN\t14\nPASS_WARN_AGE abc\n")
    defs = {"path": "/etc/login.defs", "delimiter": " "}
    assert run(root, "config_value", key="PASS_MIN_LEN", expected="12", comparator=">=", **defs).holds
    assert not run(root, "config_value", key="PASS_MIN_LEN", expected="12", comparator="<=", **defs).holds
    odd = run(root, "config_value", key="PASS_WARN_AGE", expected="7", comparator=">=", **defs)
    assert odd.verdict is Verdict.NOT_COMPLIANT and "not both whole numbers" in odd.detail
    with pytest.raises(ParamError, match="comparator must be one of"):
        CHECKS["config_value"].evaluate(LocalHost(str(root)), {**defs, "key": "A", "expected": "1", "comparator": "=~"})


def test_config_value_drop_in_directory_overrides_the_base_file(root: Path) -> None:
    """With dropin_dir the base file and every *.conf drop-in are read in order and the last value
    wins, so a value set only in a drop-in is seen (as pwquality reads them)."""
    write(root, "/etc/security/pwquality.conf", "minlen = 8\n")
    params = {"path": "/etc/security/pwquality.conf", "key": "minlen", "expected": "14", "comparator": ">="}
    assert not run(root, "config_value", **params).holds
    write(root, "/etc/security/pwquality.conf.d/50-cis.conf", "minlen = 14\n")
    write(root, "/etc/security/pwquality.conf.d/README", "minlen = 1\n")
    found = run(root, "config_value", dropin_dir="/etc/security/pwquality.conf.d", **params)
    assert found.holds and "50-cis.conf" in found.detail, found
    assert not run(root, "config_value", **params).holds


def test_config_value_scan_pattern_reads_the_matching_files_of_a_directory(root: Path) -> None:
    """scan_pattern makes path a directory whose files ending in .PATTERN are read in name order."""
    write(root, "/etc/sudoers.d/10-a.conf", "Defaults use_pty\n")
    write(root, "/etc/sudoers.d/20-b.conf", "Defaults logfile=/var/log/sudo.log\n")
    found = run(root, "config_value", path="/etc/sudoers.d", key="Defaults", expected="use_pty", delimiter=" ", scan_pattern="conf")
    assert found.holds and "10-a.conf" in found.detail


# --- files ------------------------------------------------------------------------


def test_file_permission_reports_each_difference(root: Path) -> None:
    """A file with the wrong mode and owner is not compliant; the detail gives what it is and what was asked."""
    path = write(root, "/etc/shadow", "root:*:1::::::\n", 0o644)
    found = run(root, "file_permission", path="/etc/shadow", mode="0640", owner="root", group="root")
    assert found.verdict is Verdict.NOT_COMPLIANT
    assert "mode is 0644, expected 0640" in found.detail
    os.chmod(path, 0o640)
    assert run(root, "file_permission", path="/etc/shadow", mode="0640").holds


def test_file_permission_with_a_wildcard_judges_every_matching_file(root: Path) -> None:
    """A path with a wildcard in its last component (ssh host keys) covers each file it matches."""
    write(root, "/etc/ssh/ssh_host_ed25519_key", "k", 0o600)
    write(root, "/etc/ssh/ssh_host_rsa_key", "k", 0o644)
    write(root, "/etc/ssh/ssh_host_rsa_key.pub", "k", 0o644)
    found = run(root, "file_permission", path="/etc/ssh/ssh_host_*_key", mode="0600")
    assert found.verdict is Verdict.NOT_COMPLIANT and "ssh_host_rsa_key" in found.detail and "mode is 0644" in found.detail
    assert ".pub" not in found.detail
    os.chmod(root / "etc/ssh/ssh_host_rsa_key", 0o600)
    assert run(root, "file_permission", path="/etc/ssh/ssh_host_*_key", mode="0600").holds


def test_file_exists_and_absent_are_opposites_with_a_detail(root: Path) -> None:
    """file_exists holds where file_absent does not, and both say what is at the path."""
    write(root, "/etc/at.allow", "root\n")
    assert run(root, "file_exists", path="/etc/at.allow").holds
    assert not run(root, "file_absent", path="/etc/at.allow").holds
    gone = run(root, "file_absent", path="/etc/at.deny")
    assert gone.holds and "no such file" in gone.detail


def test_file_content_match_uses_extended_regular_expressions(root: Path) -> None:
    """Patterns are POSIX extended expressions, as Kensa's rules are written for grep -E."""
    write(root, "/etc/issue", "Authorized uses only.\n")
    assert run(root, "file_content_match", path="/etc/issue", pattern="^Authorized[[:space:]]+uses").holds
    assert not run(root, "file_content_match", path="/etc/issue", pattern="^Unauthorized").holds
    assert run(root, "file_content", path="/etc/issue", expected_content="uses only.").holds


# --- audit rules --------------------------------------------------------------------


def test_audit_rule_exists_finds_a_rule_in_any_rules_file(root: Path) -> None:
    """A rule written to the persist file its remediation names (not 99-kensa.rules) is found,
    matched by meaning: -k and -F key=, auid!=unset and auid!=-1, syscall order."""
    write(root, "/etc/audit/rules.d/50-time-change.rules",
          "## time\n-a always,exit -F arch=b64 -S settimeofday,adjtimex -F auid>=1000 -F auid!=-1 -F key=time-change\n")
    rule = "-a always,exit -F arch=b64 -S adjtimex -S settimeofday -F auid>=1000 -F auid!=unset -k time-change"
    found = run(root, "audit_rule_exists", rule=rule)
    assert found.holds, found
    other = run(root, "audit_rule_exists", rule="-a always,exit -F arch=b64 -S adjtimex -F auid>=1000 -k time-change")
    assert other.verdict is Verdict.NOT_COMPLIANT and "50-time-change.rules" in other.detail


def test_audit_rule_exists_needs_every_line_of_a_multi_line_rule(root: Path) -> None:
    """A rule field of several lines (b32 and b64) holds only when each line is present."""
    write(root, "/etc/audit/rules.d/mounts.rules", "-a always,exit -F arch=b64 -S mount -k mounts\n")
    both = "-a always,exit -F arch=b64 -S mount -k mounts\n-a always,exit -F arch=b32 -S mount -k mounts\n"
    found = run(root, "audit_rule_exists", rule=both)
    assert found.verdict is Verdict.NOT_COMPLIANT and "arch=b32" in found.detail
    write(root, "/etc/audit/audit.rules", "-a always,exit -F arch=b32 -S mount -F key=mounts\n")
    assert run(root, "audit_rule_exists", rule=both).holds


# --- not assessable, compliance of several checks ------------------------------------------


def test_command_on_an_image_root_is_not_assessable_and_not_run(root: Path) -> None:
    """A command check is not run under an image root (it would read the controller): the
    verdict is not assessable, with the reason, and nothing is executed."""
    marker = root.parent / "ran"
    found = run(root, "command", run=f"touch {marker}", expected_exit=0)
    assert found.verdict is Verdict.NOT_ASSESSABLE and "image root" in found.detail
    assert not marker.exists()


def test_compliance_combines_verdicts_not_compliant_first(root: Path) -> None:
    """Of several checks one that does not hold decides; otherwise one that cannot be answered
    makes the rule not assessable; all holding make it compliant, with each detail."""
    write(root, "/etc/at.allow", "root\n")
    host, handlers = LocalHost(str(root)), default_registry()
    exists = Check("file_exists", {"path": "/etc/at.allow"})
    command = Check("command", {"run": "true"})
    absent = Check("file_exists", {"path": "/etc/cron.allow"})

    def impl(*checks: Check) -> Implementation:
        return Implementation(when=None, default=True, checks=checks, steps=())

    assert compliance(impl(exists), host, handlers).verdict is Verdict.COMPLIANT
    assert compliance(impl(exists, command), host, handlers).verdict is Verdict.NOT_ASSESSABLE
    worst = compliance(impl(command, absent, exists), host, handlers)
    assert worst.verdict is Verdict.NOT_COMPLIANT and "cron.allow" in worst.detail and "no such file" in worst.detail


# --- hostile fields -------------------------------------------------------------------


def test_a_path_escaping_the_root_is_an_error_naming_it_and_reads_nothing_outside(tmp_path: Path, root: Path) -> None:
    """A symlink leading out of the root is refused as an error naming the path, not followed."""
    (tmp_path / "outside").write_text("PermitRootLogin no\n")
    os.symlink(tmp_path / "outside", root / "etc/ssh/sshd_config")
    with pytest.raises(PathEscapeError, match="symlink"):
        run(root, "config_value", path="/etc/ssh/sshd_config", key="PermitRootLogin", expected="no")


def test_an_invalid_regular_expression_is_refused_as_a_field_error(root: Path) -> None:
    """A pattern grep -E cannot compile is a ParamError naming the field, before any file is read."""
    with pytest.raises(ParamError, match="pattern is not a valid regular expression"):
        CHECKS["file_content_match"].evaluate(LocalHost(str(root)), {"path": "/etc/issue", "pattern": "a[b"})


def test_a_catastrophic_regular_expression_is_bounded(root: Path) -> None:
    """A back-reference pattern that would take exponential time is stopped and reported as an
    error within the check's time limit, never left hanging."""
    from kensa.checks import patterns

    hostile = r"(a*)(a*)(a*)(a*)(a*)(a*)(a*)\7\6\5\4\3\2\1b"
    with pytest.raises(CheckError, match="took longer than 0.5 s"):
        patterns.search(hostile, b"a" * 60 + b"cb\n", timeout=0.5)


def test_a_file_above_the_size_cap_is_an_error_not_a_read(root: Path) -> None:
    """A file larger than the host's cap is refused (EFBIG), naming it, not loaded."""
    write(root, "/etc/issue", "x" * 4096)
    host = LocalHost(str(root), max_file_bytes=1024)
    with pytest.raises(KensaError, match="above the cap"):
        evaluate_check(Check("file_content", {"path": "/etc/issue", "expected_content": "x"}), host)


def test_checks_change_nothing(root: Path) -> None:
    """Evaluating every method on an image root leaves the tree byte for byte as it was."""
    write(root, "/etc/ssh/sshd_config", "PermitRootLogin no\n")
    before = snapshot(root)
    for method, params in [
        ("sshd_effective_config", {"key": "permitrootlogin", "expected": "no"}),
        ("package_state", {"name": "hello", "state": "absent"}),
        ("service_state", {"name": "sshd", "enabled": True}),
        ("kernel_module_state", {"name": "cramfs", "state": "disabled"}),
        ("selinux_state", {"state": "Enforcing"}),
    ]:
        assert isinstance(run(root, method, **params), Finding)
    assert snapshot(root) == before


def test_audit_rule_exists_with_only_a_key_needs_some_rule_with_that_key(root: Path) -> None:
    """'-k logins' as the whole rule holds when some rule of the rules files carries the key
    logins (-k or -F key=), and not otherwise."""
    assert not run(root, "audit_rule_exists", rule="-k logins").holds
    write(root, "/etc/audit/rules.d/50-logins.rules", "-w /var/log/lastlog -p wa -k logins\n")
    assert run(root, "audit_rule_exists", rule="-k logins").holds
    assert not run(root, "audit_rule_exists", rule="-k session").holds


def test_an_owner_the_target_does_not_know_is_not_compliant(root: Path) -> None:
    """A file that must be owned by an account the target has no entry for cannot comply: the
    verdict is not compliant, naming the account, not an error."""
    write(root, "/var/log/syslog", "")
    found = run(root, "file_permission", path="/var/log/syslog", owner="syslog")
    assert found.verdict is Verdict.NOT_COMPLIANT and "'syslog' is not listed" in found.detail


def test_list_dir_lists_confined_and_planned_entries(tmp_path: Path, root: Path) -> None:
    """A host lists a directory's names sorted, None when absent, refuses a directory reached
    through a symlink; a planned view adds the files it plans there and drops those it removes."""
    from kensa.model import FileInfo

    write(root, "/etc/audit/rules.d/b.rules", "")
    write(root, "/etc/audit/rules.d/a.rules", "")
    os.symlink(tmp_path, root / "etc/linked")
    host = LocalHost(str(root))
    assert host.list_dir("/etc/audit/rules.d") == ["a.rules", "b.rules"]
    assert host.list_dir("/etc/none") is None and host.list_dir("/nowhere/at/all") is None
    with pytest.raises(PathEscapeError):
        host.list_dir("/etc/linked")
    planned = host.overlay({"/etc/audit/rules.d/c.rules": FileInfo("file", 0o600, 0, 0, content=b""),
                            "/etc/audit/rules.d/a.rules": None, "/etc/new.d/x.conf": FileInfo("file", 0o600, 0, 0)})
    assert planned.list_dir("/etc/audit/rules.d") == ["b.rules", "c.rules"]
    assert planned.list_dir("/etc/new.d") == ["x.conf"]


def test_sysctl_value_on_an_image_judges_what_its_sysctl_files_set_at_boot(root: Path) -> None:
    """Without a running kernel an image is judged by its sysctl files, read as systemd-sysctl
    does: lexical order across directories, /etc hiding a same-named file, /etc/sysctl.conf last;
    a key no file sets is not assessable."""
    write(root, "/usr/lib/sysctl.d/50-default.conf", "net.ipv4.ip_forward = 1\nkernel.kptr_restrict = 1\n")
    write(root, "/usr/lib/sysctl.d/60-hidden.conf", "kernel.dmesg_restrict = 0\n")
    write(root, "/etc/sysctl.d/60-hidden.conf", "kernel.dmesg_restrict = 1\n")
    write(root, "/etc/sysctl.d/90-cis.conf", "net/ipv4/ip_forward=0\n")
    write(root, "/etc/sysctl.conf", "kernel.kptr_restrict = 2\n")
    os.symlink("../sysctl.conf", root / "etc/sysctl.d/99-sysctl.conf")
    assert run(root, "sysctl_value", key="net.ipv4.ip_forward", expected="0").holds
    assert run(root, "sysctl_value", key="kernel.dmesg_restrict", expected="1").holds
    restricted = run(root, "sysctl_value", key="kernel.kptr_restrict", expected="1")
    assert restricted.verdict is Verdict.NOT_COMPLIANT and "'2' at boot" in restricted.detail and "sysctl.conf" in restricted.detail
    assert run(root, "sysctl_value", key="vm.swappiness", expected="10").verdict is Verdict.NOT_ASSESSABLE


def test_a_path_through_a_file_holds_nothing(root: Path) -> None:
    """A path whose parent is a regular file names nothing: not compliant, not an error."""
    write(root, "/etc/ssh/sshd_config", "PermitRootLogin no\n")
    found = run(root, "file_permission", path="/etc/ssh/sshd_config/extra", mode="0600")
    assert found.verdict is Verdict.NOT_COMPLIANT and "no such file" in found.detail


def test_an_sshd_include_loop_is_an_error_not_a_hang(root: Path) -> None:
    """An sshd_config that includes itself is stopped at sshd's nesting limit and reported."""
    write(root, "/etc/ssh/sshd_config", "Include /etc/ssh/sshd_config\n")
    with pytest.raises(CheckError, match="Include nested more than 16 deep"):
        run(root, "sshd_effective_config", key="PermitRootLogin", expected="no")


@pytest.mark.parametrize("method, params", [
    ("config_value", {"path": "/etc/../../outside", "key": "A", "expected": "1"}),
    ("config_value", {"path": "/etc/x.conf", "key": "A", "expected": "1", "dropin_dir": "/../outside.d"}),
    ("file_permission", {"path": "/../../outside", "mode": "0600"}),
    ("file_content_match", {"path": "/../outside", "pattern": "A"}),
])
def test_a_field_climbing_out_of_the_root_is_refused_naming_it(root: Path, method: str, params: Dict[str, Any]) -> None:
    """A path field whose '..' climbs above the target root is an error naming the path; the
    file beside the root with the same name is never read."""
    (root.parent / "outside").write_text("A=1\n")
    (root.parent / "outside.d").mkdir()
    with pytest.raises(PathEscapeError, match="outside"):
        run(root, method, **params)


def test_a_finding_cannot_be_used_as_a_truth_value() -> None:
    """``if finding:`` would call every verdict compliant (a dataclass is always true): it is refused."""
    from kensa.model import Finding, Verdict

    with pytest.raises(TypeError, match="holds"):
        bool(Finding(Verdict.NOT_COMPLIANT, "x"))
