"""authselect_feature_enable: refused where authselect is not, its files restored exactly where it is.

Debian 12 does not package authselect, so the real tool is not run here. Run for real:
the "not available on this host" refusal on this machine, on image roots, through
`kensa remediate` and through kensa's agent. The enabled path runs on a live host in a
private mount namespace against a stand-in ``authselect`` written here from its documented
behaviour (``enable-feature F`` adds F to ``/etc/authselect/authselect.conf`` and
regenerates the files of /etc/authselect; ``check`` fails when one of them was edited by
hand; with no profile selected ``enable-feature`` fails); it proves kensa's side, not the tool's.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from conftest import require_real, require_root
from conftest import snapshot_tree as snapshot
from remediation_rig import agent_engine, agent_key, in_private_namespace, remediate, write_rule
from kensa.errors import ParamError, NotAvailableError
from kensa.handlers.authselect_feature import SCHEMA, AuthselectFeatureEnable, configuration
from kensa.hosts.local import LocalHost
from kensa.model import Status, Step, Transaction

STAND_IN = '''#!/usr/bin/python3
# A stand-in for authselect (it is not packaged here).
import os, sys
D = "/etc/authselect"
CONF = D + "/authselect.conf"
def current():
    lines = [l.strip() for l in open(CONF) if l.strip()] if os.path.exists(CONF) else []
    return (lines[0], lines[1:]) if lines else (None, [])
def generated(profile, features):
    files = {"system-auth": "auth required pam_unix.so\\n", "password-auth": "auth required pam_unix.so\\n",
             "nsswitch.conf": "passwd: files %s\\n" % profile}
    if "with-faillock" in features:
        files["system-auth"] = "auth required pam_faillock.so preauth\\n" + files["system-auth"]
    if "with-smartcard" in features:
        files["smartcard-auth"] = "auth sufficient pam_pkcs11.so\\n"
    return files
args = sys.argv[1:]
profile, features = current()
if args[:1] == ["enable-feature"] and len(args) == 2:
    if profile is None:
        sys.stderr.write("No existing configuration detected.\\n"); sys.exit(1)
    if args[1] not in features:
        features.append(args[1])
    with open(CONF, "w") as f:
        f.write("\\n".join([profile] + features) + "\\n")
    for name, text in generated(profile, features).items():
        with open(os.path.join(D, name), "w") as f:
            f.write(text)
    sys.exit(0)
if args == ["check"]:
    for name, text in generated(profile, features).items():
        if open(os.path.join(D, name)).read() != text:
            print("File %s/%s was modified outside authselect." % (D, name)); sys.exit(4)
    sys.exit(0)
if args == ["select", "sssd", "--force"]:
    os.makedirs(D, exist_ok=True)
    with open(CONF, "w") as f:
        f.write("sssd\\n")
    for name, text in generated("sssd", []).items():
        with open(os.path.join(D, name), "w") as f:
            f.write(text)
    sys.exit(0)
sys.stderr.write("usage\\n"); sys.exit(2)
'''

LIVE = '''
import json, os, subprocess
from kensa.hosts.local import LocalHost
from kensa.handlers.authselect_feature import AuthselectFeatureEnable
from kensa.errors import KensaError

def tree():
    found = {}
    for name in sorted(os.listdir("/etc/authselect")):
        path = "/etc/authselect/" + name
        st = os.lstat(path)
        found[path] = [open(path).read(), st.st_mode, st.st_uid, os.listxattr(path)]
    return found

host, handler, seen = LocalHost("/"), AuthselectFeatureEnable(), {}
try:
    handler.capture(host, {"feature": "with-faillock"})
except KensaError as exc:
    seen["no_profile"] = str(exc)
subprocess.run(["authselect", "select", "sssd", "--force"], check=True)
os.setxattr("/etc/authselect/system-auth", "user.kensa-test", b"kept")
before = tree()
for feature in ("with-faillock", "with-smartcard"):
    params = {"feature": feature}
    pre = handler.capture(host, params)
    seen[feature + "_apply"] = handler.apply(host, params, pre).detail
    seen[feature + "_valid"] = handler.validate(host, params)
    seen[feature + "_changed"] = tree() != before
    back = handler.rollback(host, pre)
    seen[feature + "_rollback"] = back.ok
    seen[feature + "_exact"] = tree() == before

params = {"feature": "with-faillock"}
pre = handler.capture(host, params)
handler.apply(host, params, pre)
assessment = handler.assess(host, pre)
seen["assess_untouched"] = assessment.drift.value
seen["restore_ok"] = handler.restore(host, pre, assessment).ok
seen["exact_after_restore"] = tree() == before

pre = handler.capture(host, params)
handler.apply(host, params, pre)
with open("/etc/authselect/system-auth", "a") as f:
    f.write("auth optional pam_operator.so\\n")
assessment = handler.assess(host, pre)
seen["assess_edited"] = [assessment.drift.value, list(assessment.details)]
seen["restore_edited"] = handler.restore(host, pre, assessment).detail
seen["edit_kept"] = "pam_operator" in open("/etc/authselect/system-auth").read()
print(json.dumps(seen))
'''


def test_configuration_reads_the_profile_and_its_features() -> None:
    """authselect.conf's first line is the profile, each further line a feature; empty means none selected."""
    assert configuration(b"sssd\nwith-faillock\nwith-mkhomedir\n") == ("sssd", ["with-faillock", "with-mkhomedir"])
    assert configuration(b"") == (None, [])
    assert configuration(None) == (None, [])


def test_this_machine_has_no_authselect_and_says_so_changing_nothing() -> None:
    """On this machine (Debian: authselect is not packaged) capture refuses with "not available on
    this host: authselect is not installed"; /etc/authselect stays as it was (absent)."""
    if shutil.which("authselect") is not None:
        pytest.skip("this machine has authselect; the refusal is shown on image roots below")
    existed = os.path.exists("/etc/authselect")
    with pytest.raises(NotAvailableError, match="not available on this host: authselect is not installed"):
        AuthselectFeatureEnable().capture(LocalHost("/"), {"feature": "with-faillock"})
    assert os.path.exists("/etc/authselect") == existed


def test_an_image_root_is_refused_with_or_without_the_tool(tmp_path: Path) -> None:
    """An image root without authselect is "not available on this host"; one that has it is refused
    as an image root (authselect acts on the running system only); nothing changes."""
    root = tmp_path / "root"
    (root / "etc/authselect").mkdir(parents=True)
    (root / "etc/authselect/authselect.conf").write_text("sssd\n")
    (root / "usr/sbin").mkdir(parents=True)
    with pytest.raises(NotAvailableError, match="not available on this host: authselect is not installed"):
        AuthselectFeatureEnable().capture(LocalHost(str(root)), {"feature": "with-faillock"})
    (root / "usr/sbin/authselect").write_text("#!/bin/sh\nexit 0\n")
    before = snapshot(root)
    with pytest.raises(NotAvailableError, match="not available on an image root"):
        AuthselectFeatureEnable().capture(LocalHost(str(root)), {"feature": "with-faillock"})
    assert snapshot(root) == before


@pytest.mark.parametrize("feature", ["with-faillock; reboot", "--force", "with\nfaillock", "../x", "With-Faillock", ""])
def test_hostile_feature_names_are_refused(feature: str) -> None:
    """A shell word, an option, a newline, a path or an empty string is a ParamError naming 'feature'."""
    with pytest.raises(ParamError) as caught:
        SCHEMA.read({"feature": feature})
    assert caught.value.field == "feature"


def test_remediate_and_the_agent_refuse_before_any_change(tmp_path: Path) -> None:
    """`kensa remediate` of an authselect rule on an image root without the tool, and the same step
    through kensa's agent (a real process over SubprocessTransport), end errored naming the missing
    tool; the tree is unchanged."""
    root = tmp_path / "root"
    (root / "etc/authselect").mkdir(parents=True)
    (root / "etc/authselect/authselect.conf").write_text("sssd\n")
    before = snapshot(root)
    rules = write_rule(tmp_path / "rules", "authselect-faillock", None,
                       [{"mechanism": "authselect_feature_enable", "feature": "with-faillock"}])
    results = remediate(tmp_path / "j.db", rules, root)
    assert [r["status"] for r in results] == ["errored"], results
    assert "not available on this host: authselect is not installed" in results[0]["error"]["message"]
    with agent_engine(tmp_path / "remote.db") as engine:
        step = Step("authselect_feature_enable", {"feature": "with-faillock"})
        result = engine.run(Transaction("remote-authselect", (step,), host=agent_key(root)))
    assert result.status is Status.ERRORED and result.host_unchanged
    assert "not available on this host: authselect is not installed" in str(result.error)
    assert snapshot(root) == before


def test_on_a_live_host_with_the_tool_rollback_restores_authselects_files_exactly(tmp_path: Path) -> None:
    """With a stand-in authselect on a live host (private mount namespace, /etc a copy): no profile
    selected is refused; enabling with-faillock (which rewrites system-auth) and with-smartcard (which
    adds a file) rolls back to exactly the files before, xattrs included; a rollback by id of an
    untouched change restores; a hand edit of a generated file since is a conflict, and the edit stays."""
    require_root()
    if shutil.which("unshare") is None:
        require_real("unshare is not installed")
    seen = in_private_namespace(LIVE, {"authselect": STAND_IN}, tmp_path)
    assert "no authselect profile is selected" in seen["no_profile"]
    for feature in ("with-faillock", "with-smartcard"):
        assert f"enabled authselect feature {feature}" in seen[feature + "_apply"]
        assert seen[feature + "_valid"] and seen[feature + "_changed"]
        assert seen[feature + "_rollback"] and seen[feature + "_exact"], feature
    assert seen["assess_untouched"] == "at_post" and seen["restore_ok"] and seen["exact_after_restore"]
    assert seen["assess_edited"][0] == "conflict" and "modified outside authselect" in " ".join(seen["assess_edited"][1])
    assert "withheld" in seen["restore_edited"] and seen["edit_kept"]
