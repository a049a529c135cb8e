"""The handlers in a temporary root: exact rollback, exact commit, confinement, bad input."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Set

import pytest

from conftest import require_root, snapshot_tree as snapshot
from kensa.errors import HostAccessError, KensaError, ParamError, PathEscapeError
from kensa.checks import evaluate_check
from kensa.engine import Engine
from kensa.handlers import FileContent, default_registry
from kensa.handlers.audit_rule_set import rule_identity
from kensa.handlers.config_set import get_value, set_value
from kensa.hosts.local import LocalHost, resolve_host
from kensa.model import PreState, Status, Step, Transaction
from kensa.rules import Check
from kensa.rules.contract import KENSA_MECHANISMS

REGISTRY = default_registry()
IS_ROOT = os.geteuid() == 0

SSHD = """\
# kensa test sshd_config
#PermitRootLogin yes
Port 22
permitrootlogin yes
PasswordAuthentication yes

Match User bob
    PermitRootLogin yes
    MaxAuthTries 10
"""


def xattrs_supported(directory: Path) -> bool:
    probe = directory / ".xattr-probe"
    probe.write_bytes(b"")
    try:
        os.setxattr(probe, "user.kensa", b"1")
        return True
    except OSError:
        return False
    finally:
        probe.unlink()




def changed_paths(before: Mapping[str, Any], after: Mapping[str, Any]) -> Set[str]:
    return {key for key in set(before) | set(after) if before.get(key) != after.get(key)}


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """tmp_path holding a target root ("root") and a sentinel directory outside it ("outside")."""
    root = tmp_path / "root"
    for sub in ("etc/ssh", "etc/sysctl.d", "etc/audit/rules.d", "proc/sys/vm", "srv/data"):
        (root / sub).mkdir(parents=True)
    (root / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\nalice:x:1234:1234::/home/alice:/bin/sh\n")
    (root / "etc/group").write_text("root:x:0:\nstaff:x:2345:\n")
    (root / "etc/ssh/sshd_config").write_text(SSHD)
    os.chmod(root / "etc/ssh/sshd_config", 0o600)
    issue = root / "etc/issue"
    issue.write_bytes(b"Authorized use only")  # no final newline on purpose
    if IS_ROOT:
        os.chown(issue, 1234, 2345)
    os.chmod(issue, 0o640)
    (root / "proc/sys/vm/swappiness").write_text("60\n")
    (root / "etc/audit/rules.d/audit.rules").write_text("-D\n-b 8192\n-w /etc/shadow/ -p aw -k identity\n")
    outside = tmp_path / "outside"
    (outside / "sub").mkdir(parents=True)
    (outside / "secret").write_text("outside\n")
    (outside / "sub" / "file").write_text("outside too\n")
    if xattrs_supported(tmp_path):
        os.setxattr(issue, "user.kensa", b"keep me")
        os.setxattr(root / "etc/ssh/sshd_config", "user.label", b"sshd")
        os.setxattr(outside / "secret", "user.kensa", b"outside")
    return tmp_path


def journalable(value: Any) -> bool:
    """True when value is made only of JSON-like values plus bytes."""
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        return True
    if isinstance(value, (list, tuple)):
        return all(journalable(item) for item in value)
    if isinstance(value, Mapping):
        return all(isinstance(k, str) and journalable(v) for k, v in value.items())
    return False


def _to_json(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"__bytes__": base64.b64encode(value).decode()}
    if isinstance(value, Mapping):
        return {k: _to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_json(v) for v in value]
    return value


ROLLBACK_IN_A_FRESH_PROCESS = """
import base64, json, sys
from kensa.handlers import default_registry
from kensa.hosts.local import LocalHost
from kensa.model import PreState

def load(value):
    if isinstance(value, dict):
        if set(value) == {"__bytes__"}:
            return base64.b64decode(value["__bytes__"])
        return {k: load(v) for k, v in value.items()}
    if isinstance(value, list):
        return [load(v) for v in value]
    return value

doc = load(json.load(sys.stdin))
pre = PreState(doc["mechanism"], doc["params"], doc["data"])
result = default_registry()[pre.mechanism].rollback(LocalHost(doc["root"]), pre)
print(json.dumps({"ok": result.ok, "detail": result.detail}))
"""


def rollback_in_fresh_process(root: Path, pre: PreState) -> Dict[str, Any]:
    doc = {"root": str(root), "mechanism": pre.mechanism, "params": _to_json(dict(pre.params)), "data": _to_json(dict(pre.data))}
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    done = subprocess.run(
        [sys.executable, "-c", ROLLBACK_IN_A_FRESH_PROCESS], input=json.dumps(doc), capture_output=True, text=True, env=env, check=True
    )
    result: Dict[str, Any] = json.loads(done.stdout)
    return result


def check_new_motd(root: Path) -> None:
    st = os.stat(root / "etc/motd")
    assert (root / "etc/motd").read_bytes() == b"hello\n"
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o600, 1234, 2345)


def check_issue_rewritten(root: Path) -> None:
    issue = root / "etc/issue"
    assert issue.read_bytes() == b"changed\n"
    assert stat.S_IMODE(os.stat(issue).st_mode) == 0o640
    assert os.getxattr(issue, "user.kensa") == b"keep me"


def check_issue_absent(root: Path) -> None:
    assert not os.path.lexists(root / "etc/issue")


def check_issue_permissions(root: Path) -> None:
    st = os.stat(root / "etc/issue")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o600, 0, 0)
    assert (root / "etc/issue").read_bytes() == b"Authorized use only"


def check_dir_permissions(root: Path) -> None:
    assert stat.S_IMODE(os.stat(root / "srv/data").st_mode) == 0o700


def check_permit_root_login(root: Path) -> None:
    text = (root / "etc/ssh/sshd_config").read_text()
    assert text == SSHD.replace("permitrootlogin yes", "PermitRootLogin no")
    assert stat.S_IMODE(os.stat(root / "etc/ssh/sshd_config").st_mode) == 0o600


def check_max_auth_tries(root: Path) -> None:
    text = (root / "etc/ssh/sshd_config").read_text()
    assert text == SSHD.replace("\nMatch User bob", "\nMaxAuthTries 4\nMatch User bob")


def check_new_config(root: Path) -> None:
    assert (root / "etc/pwquality.conf").read_text() == "minlen = 14\n"
    assert stat.S_IMODE(os.stat(root / "etc/pwquality.conf").st_mode) == 0o644


def check_appended(root: Path) -> None:
    assert (root / "etc/issue").read_bytes() == b"Authorized use only\nMonitored system\n"


def check_sysctl(root: Path) -> None:
    assert (root / "proc/sys/vm/swappiness").read_text() == "10\n"
    assert (root / "etc/sysctl.d/99-kensa_vm.swappiness.conf").read_text() == "vm.swappiness = 10\n"


def check_audit_new_file(root: Path) -> None:
    assert (root / "etc/audit/rules.d/99-kensa.rules").read_text() == (
        "-w /etc/passwd -p wa -k identity\n-a always,exit -F arch=b64 -S sethostname -S setdomainname -k system-locale\n"
    )


def check_audit_merged(root: Path) -> None:
    assert (root / "etc/audit/rules.d/audit.rules").read_text() == (
        "-D\n-b 8192\n-w /etc/shadow/ -p aw -k identity\n-w /etc/group -p wa -k identity\n"
    )


AUDIT_RULES = "-w /etc/passwd -p wa -k identity\n-a always,exit -F arch=b64 -S sethostname -S setdomainname -k system-locale"

CASES: List[Any] = [
    pytest.param("file_content", {"path": "/etc/motd", "content": "hello\n", "mode": "0600", "owner": "alice", "group": "staff"},
                 {"root/etc/motd"}, check_new_motd, id="file_content-new"),
    pytest.param("file_content", {"path": "/etc/issue", "content": "changed\n"}, {"root/etc/issue"}, check_issue_rewritten,
                 id="file_content-rewrite"),
    pytest.param("file_absent", {"path": "/etc/issue"}, {"root/etc/issue"}, check_issue_absent, id="file_absent"),
    pytest.param("file_permissions", {"path": "/etc/issue", "mode": "0600", "owner": 0, "group": "root"}, {"root/etc/issue"},
                 check_issue_permissions, id="file_permissions-file"),
    pytest.param("file_permissions", {"path": "/srv/data", "mode": 0o700}, {"root/srv/data"}, check_dir_permissions,
                 id="file_permissions-dir"),
    pytest.param("config_set", {"path": "/etc/ssh/sshd_config", "key": "PermitRootLogin", "value": "no", "separator": " "},
                 {"root/etc/ssh/sshd_config"}, check_permit_root_login, id="config_set-replace"),
    pytest.param("config_set", {"path": "/etc/ssh/sshd_config", "key": "MaxAuthTries", "value": 4, "separator": " "},
                 {"root/etc/ssh/sshd_config"}, check_max_auth_tries, id="config_set-before-match"),
    pytest.param("config_set", {"path": "/etc/pwquality.conf", "key": "minlen", "value": 14, "separator": " = "},
                 {"root/etc/pwquality.conf"}, check_new_config, id="config_set-new-file"),
    pytest.param("config_append", {"path": "/etc/issue", "line": "Monitored system"}, {"root/etc/issue"}, check_appended,
                 id="config_append"),
    pytest.param("sysctl_set", {"key": "vm.swappiness", "value": 10},
                 {"root/proc/sys/vm/swappiness", "root/etc/sysctl.d/99-kensa_vm.swappiness.conf"}, check_sysctl, id="sysctl_set"),
    pytest.param("audit_rule_set", {"rule": AUDIT_RULES}, {"root/etc/audit/rules.d/99-kensa.rules"}, check_audit_new_file,
                 id="audit_rule_set-new-file"),
    pytest.param("audit_rule_set",
                 {"rule": ["-w /etc/shadow -p wa -k identity", "-w /etc/group -p wa -k identity", "-w /etc/group/ -p aw -k identity"],
                  "persist_file": "/etc/audit/rules.d/audit.rules"},
                 {"root/etc/audit/rules.d/audit.rules"}, check_audit_merged, id="audit_rule_set-merge"),
]


def needs_root_for_owner(params: Mapping[str, Any]) -> None:
    if "owner" in params or "group" in params:
        require_root("changing owners")


@pytest.mark.parametrize("mechanism, params, changes, check", CASES)
def test_apply_validate_rollback_restores_the_tree_exactly(
    tree: Path, mechanism: str, params: Dict[str, Any], changes: Set[str], check: Callable[[Path], None]
) -> None:
    """capture -> apply -> validate -> rollback leaves root and outside byte-for-byte, mode, owner and xattr identical."""
    needs_root_for_owner(params)
    handler, host = REGISTRY[mechanism], LocalHost(str(tree / "root"))
    before = snapshot(tree)
    assert handler.validate(host, params) is False
    pre = handler.capture(host, params)
    assert journalable(dict(pre.data))
    assert snapshot(tree) == before
    assert handler.apply(host, params, pre).ok
    assert handler.validate(host, params) is True
    result = handler.rollback(host, pre)
    assert result.ok, result.detail
    assert snapshot(tree) == before
    assert handler.validate(host, params) is False


@pytest.mark.parametrize("mechanism, params, changes, check", CASES)
def test_apply_then_keep_makes_exactly_the_intended_change(
    tree: Path, mechanism: str, params: Dict[str, Any], changes: Set[str], check: Callable[[Path], None]
) -> None:
    """apply -> validate, kept, changes exactly the intended paths and nothing else; a second apply is a no-op."""
    needs_root_for_owner(params)
    handler, host = REGISTRY[mechanism], LocalHost(str(tree / "root"))
    before = snapshot(tree)
    result = handler.apply(host, params, handler.capture(host, params))
    assert result.ok and result.changed and not result.staged
    assert handler.validate(host, params) is True
    after = snapshot(tree)
    assert changed_paths(before, after) == changes
    check(tree / "root")
    if mechanism != "sysctl_set":  # sysctl rewrites the runtime value every time, by design
        assert handler.apply(host, params, None).changed is False
        assert snapshot(tree) == after


@pytest.mark.parametrize("mechanism, params, changes, check", CASES)
def test_rollback_works_from_the_journaled_pre_state_in_a_fresh_process(
    tree: Path, mechanism: str, params: Dict[str, Any], changes: Set[str], check: Callable[[Path], None]
) -> None:
    """The pre-state, stored as JSON plus bytes and read by a new interpreter, restores the tree exactly."""
    needs_root_for_owner(params)
    handler, host = REGISTRY[mechanism], LocalHost(str(tree / "root"))
    before = snapshot(tree)
    pre = handler.capture(host, params)
    handler.apply(host, params, pre)
    assert snapshot(tree) != before
    result = rollback_in_fresh_process(tree / "root", pre)
    assert result["ok"], result["detail"]
    assert snapshot(tree) == before


ESCAPES = {
    # name: (link to plant under root/etc, its target, the path a rule names)
    "dotdot": (None, None, "/etc/../../outside/secret"),
    "absolute-final": ("abs", "{outside}/secret", "/etc/abs"),
    "relative-final": ("rel", "../../outside/secret", "/etc/rel"),
    "absolute-parent": ("absdir", "{outside}", "/etc/absdir/secret"),
    "relative-parent": ("reldir", "../../outside", "/etc/reldir/secret"),
    "absolute-parent-deep": ("absdir", "{outside}", "/etc/absdir/sub/file"),
    "inside-final": ("inlink", "issue", "/etc/inlink"),
}

ESCAPE_PARAMS: Dict[str, Callable[[str], Dict[str, Any]]] = {
    "file_content": lambda p: {"path": p, "content": "owned\n"},
    "file_absent": lambda p: {"path": p},
    "file_permissions": lambda p: {"path": p, "mode": "0777"},
    "config_set": lambda p: {"path": p, "key": "Owned", "value": "yes"},
    "config_append": lambda p: {"path": p, "line": "owned"},
    "sysctl_set": lambda p: {"key": "vm.swappiness", "value": 1, "persist_file": p},
    "audit_rule_set": lambda p: {"rule": "-w /etc/shadow -p wa -k x", "persist_file": p},
}


@pytest.mark.parametrize("escape", sorted(ESCAPES))
@pytest.mark.parametrize("mechanism", sorted(ESCAPE_PARAMS))
def test_paths_that_leave_the_root_are_refused_and_change_nothing(tree: Path, mechanism: str, escape: str) -> None:
    """'..' above the root and symlinks (absolute, relative, final or parent) are refused by
    validate, capture and apply with PathEscapeError naming the component; nothing changes anywhere."""
    name, target, path = ESCAPES[escape]
    if name is not None:
        (tree / "root/etc" / name).symlink_to(str(target).format(outside=tree / "outside"))
    handler, host = REGISTRY[mechanism], LocalHost(str(tree / "root"))
    params = ESCAPE_PARAMS[mechanism](path)
    before = snapshot(tree)
    for call in (lambda: handler.validate(host, params), lambda: handler.capture(host, params),
                 lambda: handler.apply(host, params, None)):
        with pytest.raises(PathEscapeError) as caught:
            call()
        assert caught.value.component == (name or "..")
        assert path in str(caught.value)
    assert snapshot(tree) == before


def test_sysctl_through_a_symlinked_proc_is_refused(tree: Path) -> None:
    """A /proc/sys planted as a symlink out of the root is refused before anything is written."""
    (tree / "root/proc/sys/vm/swappiness").unlink()
    (tree / "root/proc/sys/vm").rmdir()
    (tree / "root/proc/sys/vm").symlink_to(tree / "outside")
    (tree / "outside/swappiness").write_text("60\n")
    handler, host = REGISTRY["sysctl_set"], LocalHost(str(tree / "root"))
    params = {"key": "vm.swappiness", "value": 1}
    before = snapshot(tree)
    for call in (lambda: handler.capture(host, params), lambda: handler.apply(host, params, None)):
        with pytest.raises(PathEscapeError):
            call()
    assert snapshot(tree) == before


@pytest.mark.parametrize("key", [
    "kernel/../../../etc/shadow", "kernel/..", "vm/../../../etc/shadow", "vm.swappiness/..", "net..ipv4",
    "vm/./swappiness", "vm/", ".vm.swappiness", "/vm/swappiness", "vm.swap@piness", "vm.swap:piness", "",
])
def test_a_sysctl_key_that_could_leave_proc_sys_is_refused_and_changes_nothing(tree: Path, key: str) -> None:
    """A key with an empty, '.' or '..' component (either spelling) or a foreign character is refused
    before anything is read or written: a '..' key can never write in place to a file of the root."""
    (tree / "root/etc/shadow").write_text("root:$6$hash:19000:0:99999:7:::\n")
    before = snapshot(tree)
    result = Engine(default_registry(), hosts=resolve_host).run(
        Transaction("r", (Step("sysctl_set", {"key": key, "value": "pwned"}),), host=str(tree / "root")))
    assert result.status is Status.ERRORED, result
    assert result.error is not None and "sysctl" in result.error.message
    assert snapshot(tree) == before


@pytest.mark.parametrize("key", ["net/ipv4/conf/eth0.100/forwarding", "net.ipv4.conf.eth0/100.forwarding"])
def test_sysctl_handler_and_check_read_the_same_file_for_dotted_components(tree: Path, key: str) -> None:
    """Both spellings of a key whose component holds a dot name one /proc/sys file, for the handler
    and for the sysctl_value check alike, so 'kensa check' and the engine agree."""
    knob = tree / "root/proc/sys/net/ipv4/conf/eth0.100/forwarding"
    knob.parent.mkdir(parents=True)
    knob.write_text("0\n")
    host = LocalHost(str(tree / "root"))
    params = {"key": key, "value": "1", "persist_file": "/etc/sysctl.d/vlan.conf"}
    check = Check("sysctl_value", {"key": key, "expected": "1"})
    assert evaluate_check(check, host).holds is False
    assert REGISTRY["sysctl_set"].apply(host, params, None).ok
    assert knob.read_text() == "1\n"
    assert evaluate_check(check, host).holds is True
    assert REGISTRY["sysctl_set"].validate(host, params) is True


def test_sysctl_rollback_refuses_a_journaled_path_the_key_does_not_name(tree: Path) -> None:
    """A pre-state whose runtime path is not the file its key names (edited or written by an older
    kensa) is not written through; rollback reports it instead."""
    handler, host = REGISTRY["sysctl_set"], LocalHost(str(tree / "root"))
    (tree / "root/etc/shadow").write_text("secret\n")
    pre = handler.capture(host, {"key": "vm.swappiness", "value": 1})
    forged = PreState(pre.mechanism, pre.params, {**pre.data, "runtime_path": "/proc/sys/vm/../../../etc/shadow"})
    result = handler.rollback(host, forged)
    assert result.ok is False and "etc/shadow" in result.detail
    assert (tree / "root/etc/shadow").read_text() == "secret\n"


def test_file_permissions_on_a_hard_link_to_outside_the_root_rolls_back_cleanly(tree: Path) -> None:
    """A file hard-linked to one outside the root is refused before its shared inode changes;
    the transaction rolls back verified, with the host and the outside file unchanged."""
    os.chmod(tree / "outside/secret", 0o600)
    os.link(tree / "outside/secret", tree / "root/etc/passwd-backup")
    before = snapshot(tree)
    result = Engine(default_registry(), hosts=resolve_host).run(Transaction(
        "r", (Step("file_permissions", {"path": "/etc/passwd-backup", "mode": "0644"}),), host=str(tree / "root")))
    assert result.status is Status.ROLLED_BACK and result.host_unchanged, result
    assert result.error is not None and "hard links" in result.error.message
    assert all(rb.ok for rb in result.rollbacks)
    assert snapshot(tree) == before


BAD_PARAMS = [
    ("file_content", {}),
    ("file_content", {"path": "etc/relative", "content": "x"}),
    ("file_content", {"path": "/etc/x", "content": 5}),
    ("file_content", {"path": "/etc/x", "content": "x", "mode": "rw-r--r--"}),
    ("file_content", {"path": "/etc/x", "content": "x", "mode": 0o17777}),
    ("file_content", {"path": "/etc/x", "content": "x", "owner": "no-such-user"}),
    ("file_content", {"path": "/etc/x", "content": "x", "group": ["staff"]}),
    ("file_content", {"path": "/", "content": "x"}),
    ("file_content", {"path": "/etc/ssh", "content": "x"}),
    ("file_absent", {"path": "/srv/data"}),
    ("file_permissions", {"path": "/etc/issue"}),
    ("file_permissions", {"path": "/etc/absent", "mode": "0600"}),
    ("config_set", {"path": "/etc/ssh/sshd_config", "key": "Match", "value": "all", "separator": " "}),
    ("config_set", {"path": "/etc/ssh/sshd_config", "key": "PermitRootLogin", "value": False, "separator": " "}),
    ("config_set", {"path": "/etc/ssh/sshd_config", "key": "Banner", "value": "a\nEvil yes", "separator": " "}),
    ("config_set", {"path": "/etc/ssh/sshd_config", "key": "two words", "value": "x", "separator": " "}),
    ("config_set", {"path": "/etc/ssh/sshd_config", "key": "Banner", "value": "=none", "separator": " "}),
    ("config_append", {"path": "/etc/issue", "line": "one\ntwo"}),
    ("config_append", {"path": "/etc/issue"}),
    ("sysctl_set", {"key": "../../etc/passwd", "value": 1}),
    ("sysctl_set", {"key": "vm.no_such_knob", "value": 1}),
    ("sysctl_set", {"key": "vm.swappiness"}),
    ("audit_rule_set", {"rule": "-D"}),
    ("audit_rule_set", {"rule": "-e 2"}),
    ("audit_rule_set", {"rule": ["-w /etc/passwd -p wa", "-W /etc/passwd"]}),
    ("audit_rule_set", {"rule": "-w '/etc/passwd -p wa"}),
    ("audit_rule_set", {"rule": 5}),
    ("command_exec", {"run": "touch /tmp/kensa-must-not-exist"}),
    ("command_exec", {"command": "touch /tmp/kensa-must-not-exist"}),
]


@pytest.mark.parametrize("mechanism, params", BAD_PARAMS, ids=[f"{m}-{i}" for i, (m, _) in enumerate(BAD_PARAMS)])
def test_bad_input_is_a_clear_kensa_error_and_changes_nothing(tree: Path, mechanism: str, params: Dict[str, Any]) -> None:
    """Missing, ill-typed or unusable parameters raise a KensaError from validate, capture and apply; nothing changes."""
    handler, host = REGISTRY[mechanism], LocalHost(str(tree / "root"))
    before = snapshot(tree)
    calls: List[Callable[[], object]] = [lambda: handler.validate(host, params), lambda: handler.apply(host, params, None)]
    if handler.capturable:
        calls.append(lambda: handler.capture(host, params))
    for call in calls:
        with pytest.raises(KensaError) as caught:
            call()
        assert isinstance(caught.value, (ParamError, HostAccessError))
        assert mechanism in str(caught.value) or "/" in str(caught.value)
    assert snapshot(tree) == before
    assert not os.path.exists("/tmp/kensa-must-not-exist")


def test_an_unrestorable_rollback_is_reported_honestly(tree: Path) -> None:
    """When the tree is tampered with after apply (a parent swapped for a symlink), rollback
    restores nothing through it and returns ok=False with the reason."""
    handler, host = REGISTRY["file_content"], LocalHost(str(tree / "root"))
    params = {"path": "/etc/ssh/sshd_config", "content": "PermitRootLogin no\n"}
    pre = handler.capture(host, params)
    handler.apply(host, params, pre)
    (tree / "root/etc/ssh").rename(tree / "root/etc/ssh.moved")
    (tree / "root/etc/ssh").symlink_to(tree / "outside")
    outside = snapshot(tree / "outside")
    result = handler.rollback(host, pre)
    assert result.ok is False
    assert "symlink" in result.detail and "'ssh'" in result.detail
    assert snapshot(tree / "outside") == outside


def test_file_permissions_rollback_restores_setuid_and_capability_xattrs(tree: Path) -> None:
    """A chown clears set-id bits and security.capability; rollback puts both back exactly."""
    require_root("changing owners and security.* xattrs")
    tool = tree / "root/srv/tool"
    tool.write_bytes(b"\x7fELF")
    os.chmod(tool, 0o4755)
    cap = bytes.fromhex("0000000200200000000000000000000000000000")  # cap_net_raw, permitted
    os.setxattr(tool, "security.capability", cap)
    handler, host = REGISTRY["file_permissions"], LocalHost(str(tree / "root"))
    params = {"path": "/srv/tool", "owner": "alice"}
    before = snapshot(tree)
    pre = handler.capture(host, params)
    handler.apply(host, params, pre)
    assert stat.S_IMODE(os.stat(tool).st_mode) == 0o4755
    result = handler.rollback(host, pre)
    assert result.ok, result.detail
    assert snapshot(tree) == before
    assert os.getxattr(tool, "security.capability") == cap


def test_config_set_follows_sshd_rules() -> None:
    """Keys compare case-insensitively, comments are skipped, the first global line wins,
    and a key inside a Match block is not the global setting."""
    text = "# PermitRootLogin no\nPORT 22\nPort 2222\nMatch User x\n  PasswordAuthentication no\n"
    assert get_value(text, "port") == "22"
    assert get_value(text, "PermitRootLogin") is None
    assert get_value(text, "PasswordAuthentication") is None
    assert get_value("Key=value\n", "key") == "value"
    assert set_value(text, "Port", "2200") == text.replace("PORT 22\n", "Port 2200\n")
    assert set_value(text, "PasswordAuthentication", "no") == text.replace("Match", "PasswordAuthentication no\nMatch")
    assert set_value("A 1", "B", "2") == "A 1\nB 2\n"
    assert set_value("A 1\r\n", "a", "3") == "a 3\r\n"


def test_audit_rule_identity_matches_auditctl_spellings() -> None:
    """Rules compare equal across the spellings auditctl -l prints them in, and differ when they mean different things."""
    assert rule_identity("-w /etc/passwd/ -p aw -k identity") == rule_identity("-w /etc/passwd -p wa -k identity")
    assert rule_identity("-a exit,always -F arch=b64 -S sethostname -S setdomainname -k loc") == rule_identity(
        "-a always,exit -F arch=b64 -S setdomainname,sethostname -F key=loc"
    )
    assert rule_identity("-w /etc/passwd -p wa -k a") != rule_identity("-w /etc/passwd -p wa -k b")
    assert rule_identity("-w /etc/passwd -p w") != rule_identity("-w /etc/passwd -p wa")
    assert rule_identity("-w /etc/passwd") == rule_identity("-w /etc/passwd -p rwxa")


HOSTILE_AUDIT_RULES = [
    ("-w /etc/passwd -p wa -k identity -e 2", "-e"),
    ("-w /etc/passwd -p wa -f 2", "-f"),
    ("-w /etc/passwd -D -k x", "-D"),
    ("-w /etc/passwd -p wa -W /etc/shadow", "-W"),
    ("-w /etc/passwd -b 1", "-b"),
    ("-w /etc/passwd -F dir=/etc", "-F dir=/etc"),
    ("-a always,exit -S open -k x -e 2", "-e"),
    ("-a always,exit -S open -d always,exit", "-d"),
    ("-a always,exit -S open -r 0", "-r"),
    ("-a always,exit -S open -R /etc/evil.rules", "-R"),
    ("-a always,exit -S open -a never,exit", "-a"),
    ("-A exit,always -S open -w /etc/passwd", "-w"),
    ("-a always,exit -S open -s x", "-s"),
]


@pytest.mark.parametrize("rule, option", HOSTILE_AUDIT_RULES, ids=[r for r, _ in HOSTILE_AUDIT_RULES])
def test_control_options_after_an_audit_rule_are_refused(tree: Path, rule: str, option: str) -> None:
    """Every option on a rule line reaches auditctl, so a control or deletion option after a
    watch or syscall rule is refused by validate, capture and apply, naming the option; nothing changes."""
    handler, host = REGISTRY["audit_rule_set"], LocalHost(str(tree / "root"))
    before = snapshot(tree)
    for params in ({"rule": rule}, {"rule": ["-w /etc/group -p wa -k identity", rule]}):
        for call in (lambda: handler.validate(host, params), lambda: handler.capture(host, params),
                     lambda: handler.apply(host, params, None)):
            with pytest.raises(ParamError) as caught:
                call()
            assert f"'{option}'" in str(caught.value), str(caught.value)
    assert snapshot(tree) == before


def test_audit_rollback_after_a_foreign_edit_removes_only_its_own_lines(tree: Path) -> None:
    """When the rules file changed after apply, rollback takes out exactly the lines it added."""
    handler, host = REGISTRY["audit_rule_set"], LocalHost(str(tree / "root"))
    path = tree / "root/etc/audit/rules.d/audit.rules"
    original = path.read_text()
    params = {"rule": "-w /etc/group -p wa -k identity", "persist_file": "/etc/audit/rules.d/audit.rules"}
    pre = handler.capture(host, params)
    handler.apply(host, params, pre)
    with open(path, "a") as handle:
        handle.write("-w /etc/hosts -p wa -k other\n")
    result = handler.rollback(host, pre)
    assert result.ok, result.detail
    assert path.read_text() == original + "-w /etc/hosts -p wa -k other\n"


class FakeLiveHost(LocalHost):
    """A temporary root that claims to be the live host, with a scripted auditctl."""

    def __init__(self, root: str, status: Optional[str]) -> None:
        super().__init__(root)
        self.status = status
        self.calls: List[List[str]] = []

    @property
    def is_live(self) -> bool:
        return True

    def run(self, argv: Sequence[str], timeout: float) -> "subprocess.CompletedProcess[str]":
        self.calls.append(list(argv))
        if self.status is None:
            raise HostAccessError(2, "command 'auditctl' not found")
        out = self.status if argv[1:] == ["-s"] else "No rules" if argv[1:] == ["-l"] else ""
        return subprocess.CompletedProcess(list(argv), 0, out, "")


@pytest.mark.parametrize("status", ["enabled 2\nfailure 1\n", None], ids=["immutable", "no-auditctl"])
def test_audit_rules_are_staged_when_the_kernel_cannot_take_them(tree: Path, status: Optional[str]) -> None:
    """With an immutable audit configuration (enabled 2) or no auditctl, the rules are persisted,
    nothing is loaded, the result is staged, and rollback restores the file."""
    host = FakeLiveHost(str(tree / "root"), status)
    handler = REGISTRY["audit_rule_set"]
    params = {"rule": "-w /etc/passwd -p wa -k identity"}
    before = snapshot(tree)
    pre = handler.capture(host, params)
    result = handler.apply(host, params, pre)
    assert result.ok and result.staged and result.changed
    assert (tree / "root/etc/audit/rules.d/99-kensa.rules").read_text() == "-w /etc/passwd -p wa -k identity\n"
    assert all(call[1:] in (["-s"], ["-l"]) for call in host.calls)
    assert handler.rollback(host, pre).ok
    assert snapshot(tree) == before


def test_command_exec_runs_without_a_shell_and_honours_unless(tmp_path: Path) -> None:
    """command_exec is not capturable, runs an argument list (no shell), and validate is
    True only when the unless command succeeds."""
    handler, host = REGISTRY["command_exec"], LocalHost("/")
    assert handler.capturable is False
    marker = tmp_path / "made; echo injected"
    params = {"run": f"touch '{marker}'"}
    assert handler.validate(host, params) is False
    assert handler.apply(host, params, None).ok
    assert marker.exists() and sorted(os.listdir(tmp_path)) == [marker.name]
    assert handler.validate(host, {"run": "true", "unless": f"test -e '{marker}'"}) is True
    assert handler.validate(host, {"run": "true", "unless": "false"}) is False
    assert handler.validate(host, {"command": "true", "unless": "true"}) is True
    failed = handler.apply(host, {"run": "sh -c 'echo boom >&2; exit 3'"}, None)
    assert not failed.ok and "exit status 3" in failed.detail and "boom" in failed.detail


def test_default_registry_covers_every_mechanism() -> None:
    """The registry names every mechanism once, every one of Kensa's schema, and only
    command_exec and manual are not capturable."""
    assert sorted(REGISTRY) == sorted(KENSA_MECHANISMS) == sorted([
        "file_content", "file_absent", "file_permissions", "config_set", "config_set_dropin", "config_append",
        "sysctl_set", "audit_rule_set", "command_exec", "manual", "mount_option_set",
        "grub_parameter_set", "grub_parameter_remove", "selinux_boolean_set",
        "dconf_set", "authselect_feature_enable", "crypto_policy_set", "crypto_policy_subpolicy",
        "service_enabled", "service_disabled", "service_masked", "kernel_module_disable",
        "pam_module_configure", "pam_module_arg", "cron_job",
        "apt_present", "apt_absent", "package_present", "package_absent",
    ])
    assert [name for name, h in REGISTRY.items() if not h.capturable] == ["command_exec", "manual"]
    assert all(h.name == name for name, h in REGISTRY.items())


class NeverHolds(FileContent):
    """file_content whose desired state never verifies (as if a daemon rewrote the file at once)."""

    name = "file_content_never_holds"

    def validate(self, host: LocalHost, params: Mapping[str, Any]) -> bool:
        return False


def engine_steps(root: Path) -> List[Step]:
    (root / "etc/hosts.equiv").write_text("+ +\n")
    owner = {"owner": "alice", "group": "staff"} if IS_ROOT else {}
    return [
        Step("file_content", {"path": "/etc/motd", "content": "hello\n", "mode": "0600", **owner}),
        Step("file_content", {"path": "/etc/issue", "content": "changed\n"}),
        Step("config_set", {"path": "/etc/ssh/sshd_config", "key": "PermitRootLogin", "value": "no", "separator": " "}),
        Step("config_set", {"path": "/etc/ssh/sshd_config", "key": "MaxAuthTries", "value": 4, "separator": " "}),
        Step("config_append", {"path": "/etc/ssh/sshd_config", "line": "# managed by kensa"}),
        Step("config_set", {"path": "/etc/pwquality.conf", "key": "minlen", "value": 14, "separator": " = "}),
        Step("sysctl_set", {"key": "vm.swappiness", "value": 10}),
        Step("audit_rule_set", {"rule": AUDIT_RULES}),
        Step("file_permissions", {"path": "/srv/data", "mode": "0700"}),
        Step("file_absent", {"path": "/etc/hosts.equiv"}),
    ]


def test_engine_rolls_back_every_handler_when_the_last_step_fails_validation(tree: Path) -> None:
    """A real Engine transaction mixing every capturable handler, whose last step fails validation,
    rolls all of them back: the tree is identical to the snapshot and the result says so."""
    registry: Dict[str, Any] = dict(REGISTRY)
    registry[NeverHolds.name] = NeverHolds()
    steps = engine_steps(tree / "root")
    steps.append(Step(NeverHolds.name, {"path": "/etc/banner", "content": "x\n"}))
    before = snapshot(tree)
    result = Engine(registry, hosts=resolve_host).run(Transaction("mixed", tuple(steps), host=str(tree / "root")))
    assert result.status is Status.ROLLED_BACK, result.error
    assert result.host_unchanged
    assert len(result.rollbacks) == len(steps) and all(rb.ok for rb in result.rollbacks), result.rollbacks
    assert snapshot(tree) == before


def test_engine_commits_every_handler_with_exactly_the_intended_changes(tree: Path) -> None:
    """The same transaction without the failing step commits, changing exactly the paths its steps name."""
    steps = engine_steps(tree / "root")
    before = snapshot(tree)
    result = Engine(REGISTRY, hosts=resolve_host).run(Transaction("mixed", tuple(steps), host=str(tree / "root")))
    assert result.status is Status.COMMITTED, result.error
    assert changed_paths(before, snapshot(tree)) == {
        "root/etc/motd", "root/etc/issue", "root/etc/ssh/sshd_config", "root/etc/pwquality.conf",
        "root/proc/sys/vm/swappiness", "root/etc/sysctl.d/99-kensa_vm.swappiness.conf",
        "root/etc/audit/rules.d/99-kensa.rules", "root/srv/data", "root/etc/hosts.equiv",
    }
    check_issue_rewritten(tree / "root")
    check_sysctl(tree / "root")
    check_audit_new_file(tree / "root")


@pytest.mark.parametrize("mechanism, extra", [("file_permissions", {}), ("file_content", {"content": "x\n"})])
@pytest.mark.parametrize("name", ["svc@example.com", "1backup"])
def test_owner_names_the_target_knows_are_looked_up_not_refused(tree: Path, mechanism: str, extra: Dict[str, Any], name: str) -> None:
    """An owner or group named in the target's /etc/passwd and /etc/group is resolved there,
    whatever its spelling (an SSSD-style 'user@domain', a name starting with a digit):
    validate answers whether the file holds it instead of refusing the parameter."""
    root = tree / "root"
    with open(root / "etc/passwd", "a") as passwd:
        passwd.write(f"{name}:x:1500:1500::/:/bin/sh\n")
    with open(root / "etc/group", "a") as group:
        group.write(f"{name}:x:1500:\n")
    (root / "srv/data/f").write_text("x\n")
    host = LocalHost(str(root))
    params = {"path": "/srv/data/f", "owner": name, "group": name, **extra}
    assert REGISTRY[mechanism].validate(host, params) is (os.stat(root / "srv/data/f").st_uid == 1500)
