"""sysctl_set and audit_rule_set against this machine's kernel (root "/"), restored afterwards."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Iterator, List

import pytest

from conftest import require_audit, require_root
from kensa.handlers import default_registry
from kensa.hosts.local import LocalHost
from kensa.model import Drift

# Changes, floods or reads the kernel's audit state: one at a time (tests/conftest.py).
pytestmark = pytest.mark.serial

REGISTRY = default_registry()


def sysctl(key: str) -> str:
    return subprocess.run(["sysctl", "-n", key], capture_output=True, text=True, check=True).stdout.strip()


def audit_rules() -> List[str]:
    out = subprocess.run(["auditctl", "-l"], capture_output=True, text=True, check=True).stdout.strip()
    return [] if out == "No rules" else out.splitlines()


@pytest.fixture
def live() -> LocalHost:
    require_root()
    if shutil.which("sysctl") is None:
        require_audit("sysctl is not installed")
    return LocalHost("/")


@pytest.fixture
def audit(live: LocalHost) -> Iterator[LocalHost]:
    """The live host with a working, mutable audit subsystem; the rule list is put back afterwards."""
    if shutil.which("auditctl") is None:
        require_audit("auditctl is not installed")
    status = subprocess.run(["auditctl", "-s"], capture_output=True, text=True)
    if status.returncode != 0:
        require_audit(f"auditctl -s failed: {status.stderr.strip()}")
    if "enabled 2" in status.stdout:
        require_audit("the audit configuration is immutable (enabled 2)")
    before = audit_rules()
    yield live
    for line in audit_rules():
        if "kensa_test_" in line and line not in before:
            tokens = line.split()
            subprocess.run(["auditctl", {"-w": "-W", "-a": "-d"}[tokens[0]], *tokens[1:]], check=False)


def test_sysctl_set_changes_the_running_kernel_and_rolls_back(live: LocalHost) -> None:
    """sysctl_set changes vm.swappiness as sysctl -n reads it, persists it, and rollback
    restores the value and removes the persist file."""
    original = sysctl("vm.swappiness")
    wanted = "10" if original != "10" else "11"
    persist = f"/etc/sysctl.d/99-kensa-test-{uuid.uuid4().hex[:8]}.conf"
    params = {"key": "vm.swappiness", "value": wanted, "persist_file": persist}
    handler = REGISTRY["sysctl_set"]
    try:
        assert handler.validate(live, params) is False
        pre = handler.capture(live, params)
        assert handler.apply(live, params, pre).ok
        assert sysctl("vm.swappiness") == wanted
        assert Path(persist).read_text() == f"vm.swappiness = {wanted}\n"
        assert handler.validate(live, params) is True
        result = handler.rollback(live, pre)
        assert result.ok, result.detail
        assert sysctl("vm.swappiness") == original
        assert not os.path.lexists(persist)
    finally:
        subprocess.run(["sysctl", "-q", "-w", f"vm.swappiness={original}"], check=False)
        if os.path.lexists(persist):
            os.unlink(persist)


def test_audit_rule_set_loads_rules_and_rolls_back_exactly(audit: LocalHost, tmp_path: Path) -> None:
    """audit_rule_set loads a watch and a syscall rule (auditctl -l lists them), persists them,
    and rollback leaves auditctl -l exactly as before and removes the persist file."""
    key = f"kensa_test_{uuid.uuid4().hex[:8]}"
    watched = tmp_path / "watched"
    watched.write_text("x\n")
    rules = [f"-w {watched} -p aw -k {key}", f"-a exit,always -F arch=b64 -S sethostname -S setdomainname -k {key}"]
    persist = f"/etc/audit/rules.d/99-{key}.rules"
    params = {"rule": rules, "persist_file": persist}
    handler = REGISTRY["audit_rule_set"]
    before = audit_rules()
    try:
        assert handler.validate(audit, params) is False
        pre = handler.capture(audit, params)
        result = handler.apply(audit, params, pre)
        assert result.ok and not result.staged, result.detail
        loaded = [line for line in audit_rules() if key in line]
        assert len(loaded) == 2, loaded
        assert f"-w {watched} -p wa -k {key}" in loaded
        assert Path(persist).read_text() == "".join(line + "\n" for line in rules)
        assert handler.validate(audit, params) is True
        back = handler.rollback(audit, pre)
        assert back.ok, back.detail
        assert audit_rules() == before
        assert not os.path.lexists(persist)
    finally:
        if os.path.lexists(persist):
            os.unlink(persist)


def test_audit_rollback_keeps_a_rule_that_was_already_loaded(audit: LocalHost, tmp_path: Path) -> None:
    """A rule already in the kernel (in another spelling) is not loaded again and survives rollback;
    only the rule the step added is deleted."""
    key = f"kensa_test_{uuid.uuid4().hex[:8]}"
    (tmp_path / "a").write_text("")
    (tmp_path / "b").write_text("")
    subprocess.run(["auditctl", "-w", f"{tmp_path}/a/", "-p", "wa", "-k", key], check=True)
    before = audit_rules()
    persist = f"/etc/audit/rules.d/99-{key}.rules"
    params = {"rule": [f"-w {tmp_path}/a -p aw -k {key}", f"-w {tmp_path}/b -p wa -k {key}"], "persist_file": persist}
    handler = REGISTRY["audit_rule_set"]
    try:
        pre = handler.capture(audit, params)
        assert [rule.split()[1] for rule in pre.data["kernel"]["rules_added"]] == [f"{tmp_path}/b"]
        assert handler.apply(audit, params, pre).ok
        assert len([line for line in audit_rules() if key in line]) == 2
        back = handler.rollback(audit, pre)
        assert back.ok, back.detail
        assert audit_rules() == before
        assert f"-w {tmp_path}/a -p wa -k {key}" in audit_rules()
    finally:
        if os.path.lexists(persist):
            os.unlink(persist)


def test_audit_rule_set_assesses_and_restores_the_kernels_rules(audit: LocalHost, tmp_path: Path) -> None:
    """Rollback by id's path on a live kernel: assess says as-kensa-left-it, restore deletes only the
    rules the step loaded; after one of two rules kensa loaded is deleted by hand, assess says conflict."""
    key = f"kensa_test_{uuid.uuid4().hex[:8]}"
    (tmp_path / "w").write_text("")
    (tmp_path / "v").write_text("")
    persist = f"/etc/audit/rules.d/99-{key}.rules"
    params = {"rule": [f"-w {tmp_path}/w -p wa -k {key}", f"-w {tmp_path}/v -p wa -k {key}"], "persist_file": persist}
    handler = REGISTRY["audit_rule_set"]
    before = audit_rules()
    try:
        pre = handler.capture(audit, params)
        assert handler.apply(audit, params, pre).ok
        assessment = handler.assess(audit, pre)
        assert assessment.drift is Drift.AT_POST, assessment.details
        back = handler.restore(audit, pre, assessment)
        assert back.ok, back.detail
        assert audit_rules() == before and not os.path.lexists(persist)

        pre = handler.capture(audit, params)
        assert handler.apply(audit, params, pre).ok
        subprocess.run(["auditctl", "-W", f"{tmp_path}/w", "-p", "wa", "-k", key], check=True)
        assessment = handler.assess(audit, pre)
        assert assessment.drift is Drift.CONFLICT
        assert any("deleted since" in detail for detail in assessment.details), assessment.details
    finally:
        if os.path.lexists(persist):
            os.unlink(persist)
