"""Every capturable mechanism captures the exact pre-state of what it changes (bytes, mode,
owner, group, every xattr including ``security.selinux``, what exists) and its rollback puts
it back, verified by reading it back; a restore that does not read back is a failed rollback
naming the path."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest

from conftest import require_real, require_root, snapshot_tree
from kensa.engine import Engine
from kensa.handlers import default_registry
from kensa.hosts.local import LocalHost, resolve_host
from kensa.model import Status, Step, Transaction

REGISTRY = default_registry()
SELINUX = b"system_u:object_r:etc_t:s0\x00"
XATTRS = {"user.kensa": b"user label", "trusted.kensa": b"trusted label", "security.selinux": SELINUX}

TARGETS = {
    "etc/motd": b"old banner\n",
    "etc/issue": b"Authorized use only",
    "etc/ssh/sshd_config": b"Port 22\nPermitRootLogin yes\n",
    "etc/ssh/sshd_config.d/00-kensa.conf": b"MaxAuthTries 6\n",
    "etc/sysctl.d/99-kensa_vm.swappiness.conf": b"vm.swappiness = 60\n",
    "etc/audit/rules.d/99-kensa.rules": b"-w /etc/shadow -p wa -k identity\n",
    "etc/hosts.equiv": b"+ +\n",
    "proc/sys/vm/swappiness": b"60\n",
}

STEPS: List[Tuple[str, Dict[str, Any]]] = [
    ("file_content", {"path": "/etc/motd", "content": "authorized use only\n", "mode": "0600"}),
    ("file_absent", {"path": "/etc/hosts.equiv"}),
    ("file_permissions", {"path": "/etc/issue", "mode": "0600", "owner": "0", "group": "0"}),
    ("config_set", {"path": "/etc/ssh/sshd_config", "key": "PermitRootLogin", "value": "no", "separator": " "}),
    ("config_set_dropin", {"dir": "/etc/ssh/sshd_config.d", "file": "00-kensa.conf", "key": "MaxAuthTries", "value": "3",
                           "separator": " "}),
    ("config_append", {"path": "/etc/issue", "line": "Monitored system"}),
    ("sysctl_set", {"key": "vm.swappiness", "value": "10"}),
    ("audit_rule_set", {"rule": "-w /etc/passwd -p wa -k identity"}),
]


def _labelled_root(tmp_path: Path) -> Path:
    require_root("trusted.* and security.* xattrs and other owners")
    root = tmp_path / "root"
    for rel, data in TARGETS.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        os.chown(path, 1234, 2345)
        os.chmod(path, 0o640)
        for name, value in XATTRS.items():
            try:
                os.setxattr(path, name, value)
            except OSError as exc:
                require_real(f"cannot set {name} on {path}: {exc}")
    return root


@pytest.mark.parametrize("mechanism, params", STEPS, ids=[m for m, _ in STEPS])
def test_capture_holds_the_exact_state_and_rollback_restores_it(tmp_path: Path, mechanism: str, params: Dict[str, Any]) -> None:
    """Capture records the file's bytes, mode, owner, group and every xattr (security.selinux
    and trusted.* included); after apply, rollback leaves the whole tree identical to the
    snapshot before, read back and verified."""
    root = _labelled_root(tmp_path)
    host = LocalHost(str(root))
    handler = REGISTRY[mechanism]
    before = snapshot_tree(root)
    pre = handler.capture(host, params)
    files = [value for value in pre.data.values() if isinstance(value, dict) and "path" in value]
    files += [pre.data] if "path" in pre.data else []
    existing = [f for f in files if f.get("exists")]
    assert existing, pre.data
    for captured in existing:
        assert captured["xattrs"] == XATTRS, captured["path"]
        assert (captured["mode"], captured["uid"], captured["gid"]) == (0o640, 1234, 2345)
    assert handler.apply(host, params, pre).ok
    assert snapshot_tree(root) != before
    result = handler.rollback(host, pre)
    assert result.ok, result.detail
    assert "verified by read-back" in result.detail
    assert snapshot_tree(root) == before


@pytest.mark.parametrize("mechanism, params", STEPS, ids=[m for m, _ in STEPS])
def test_a_restore_that_does_not_read_back_fails_naming_the_path(tmp_path: Path, mechanism: str, params: Dict[str, Any]) -> None:
    """A transaction whose validate fails rolls back; when the changed file was made
    immutable (chattr +i) after apply, the restore cannot write it: the result is
    rollback_failed, naming the path, never rolled_back."""
    root = _labelled_root(tmp_path)
    registry = default_registry()
    inner = registry[mechanism]
    locked: List[Path] = []

    class ImmutableAfterApply(type(inner)):  # type: ignore[misc]
        def apply(self, host: Any, p: Any, pre: Any) -> Any:
            done = inner.apply(host, p, pre)
            # The files and their directories: neither a rewrite, a rename over, a
            # re-creation nor a chmod can restore them.
            for rel in TARGETS:
                for path in (root / rel, (root / rel).parent):
                    if path.exists() and not rel.startswith("proc/") and path not in locked:
                        locked.append(path)
            for path in locked:
                subprocess.run(["chattr", "+i", str(path)], check=True)
            return done

        def validate(self, host: Any, p: Any) -> bool:
            return False if locked else bool(inner.validate(host, p))

    registry[mechanism] = ImmutableAfterApply()
    try:
        result = Engine(registry, hosts=resolve_host).run(Transaction("locked", (Step(mechanism, params),), host=str(root)))
    finally:
        for path in locked:
            subprocess.run(["chattr", "-i", str(path)], check=False)
    assert result.status is Status.ROLLBACK_FAILED, result
    assert not result.host_unchanged
    [rollback] = result.rollbacks
    assert not rollback.ok
    assert any(str(Path(rel)) in rollback.detail for rel in TARGETS), rollback.detail
