"""crypto_policy_set and crypto_policy_subpolicy: refused where update-crypto-policies is not, restored exactly where it is.

Debian 12 does not package crypto-policies, so the real tool is not run here. What
is run for real: the "not available on this host" refusal on this machine itself, on
image roots, and through kensa's agent. The enabled path (capture, the tool's command
line, rollback by the tool and by bytes, the assessment of a rollback by id) runs on a
live host in a private mount namespace against a stand-in ``update-crypto-policies``
written here from the tool's documented behaviour (``--set POLICY`` writes the policy as
the config file's one line and regenerates the back-end files; ``--show`` prints it;
an unknown policy or module is an error); it proves kensa's side, not the tool's.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Dict

import pytest

from conftest import require_real, require_root
from conftest import snapshot_tree as snapshot
from remediation_rig import agent_engine, agent_key, check, in_private_namespace, remediate, write_rule
from kensa.errors import ParamError, NotAvailableError
from kensa.handlers.crypto_policy import CryptoPolicySet, CryptoPolicySubpolicy, current_policy, with_module
from kensa.hosts.local import LocalHost
from kensa.model import Status, Step, Transaction

STAND_IN = '''#!/usr/bin/python3
# A stand-in for update-crypto-policies (crypto-policies is not packaged here).
import os, sys
BASE = ("DEFAULT", "FIPS", "LEGACY", "FUTURE")
MODULES = ("NO-SHA1", "NO-CBC", "NO-WEAKMAC", "AD-SUPPORT")
config = "/etc/crypto-policies/config"
args = sys.argv[1:]
if args == ["--show"]:
    for line in open(config):
        if line.strip() and not line.startswith("#"):
            print(line.strip())
            sys.exit(0)
if len(args) == 2 and args[0] == "--set":
    parts = args[1].split(":")
    if parts[0] not in BASE or any(m not in MODULES for m in parts[1:]):
        sys.stderr.write("Unknown policy or subpolicy: %s\\n" % args[1])
        sys.exit(1)
    with open(config, "w") as f:
        f.write(args[1] + "\\n")
    os.makedirs("/etc/crypto-policies/back-ends", exist_ok=True)
    for lib in ("openssh", "openssl", "gnutls"):
        with open("/etc/crypto-policies/back-ends/%s.config" % lib, "w") as f:
            f.write("# generated for %s\\n" % args[1])
    sys.exit(0)
sys.stderr.write("usage\\n")
sys.exit(2)
'''

LIVE = '''
import json, os, subprocess
from kensa.hosts.local import LocalHost
from kensa.handlers.crypto_policy import CryptoPolicySet, CryptoPolicySubpolicy
from kensa.errors import KensaError

def tree():
    found = {}
    for top, dirs, files in os.walk("/etc/crypto-policies"):
        for name in files:
            path = os.path.join(top, name)
            st = os.lstat(path)
            found[path] = [open(path).read(), st.st_mode, st.st_uid]
    return found

os.makedirs("/etc/crypto-policies")
subprocess.run(["update-crypto-policies", "--set", "DEFAULT"], check=True)
with open("/etc/crypto-policies/config", "w") as f:
    f.write("# chosen at install time\\nDEFAULT\\n")
host, seen = LocalHost("/"), {}
before = tree()
sub, params = CryptoPolicySubpolicy(), {"subpolicy": "NO-SHA1"}
seen["valid_before"] = sub.validate(host, params)
pre = sub.capture(host, params)
seen["apply"] = sub.apply(host, params, pre).detail
seen["config_after"] = open("/etc/crypto-policies/config").read()
seen["backend_after"] = open("/etc/crypto-policies/back-ends/openssh.config").read()
seen["valid_after"] = sub.validate(host, params)
back = sub.rollback(host, pre)
seen["rollback"] = [back.ok, back.detail]
seen["exact_after_rollback"] = tree() == before

pre = sub.capture(host, params)
sub.apply(host, params, pre)
assessment = sub.assess(host, pre)
seen["assess_untouched"] = assessment.drift.value
restored = sub.restore(host, pre, assessment)
seen["restore"] = [restored.ok, restored.detail]
seen["exact_after_restore"] = tree() == before

policy_set, fips = CryptoPolicySet(), {"policy": "FIPS"}
pre = policy_set.capture(host, fips)
policy_set.apply(host, fips, pre)
subprocess.run(["update-crypto-policies", "--set", "LEGACY"], check=True)
assessment = policy_set.assess(host, pre)
seen["assess_edited"] = [assessment.drift.value, list(assessment.details)]
seen["restore_edited"] = policy_set.restore(host, pre, assessment).detail
seen["config_kept"] = open("/etc/crypto-policies/config").read()

subprocess.run(["update-crypto-policies", "--set", "DEFAULT"], check=True)
before = tree()
bad = {"policy": "NO-SUCH-POLICY"}
pre = policy_set.capture(host, bad)
try:
    policy_set.apply(host, bad, pre)
except KensaError as exc:
    seen["bad_policy"] = [type(exc).__name__, str(exc)]
seen["unchanged_after_bad"] = tree() == before
print(json.dumps(seen))
'''


def test_with_module_adds_a_subpolicy_once() -> None:
    """A subpolicy is added to the current policy once, compared without case; the config's first line is the policy."""
    assert with_module("DEFAULT", "NO-SHA1") == "DEFAULT:NO-SHA1"
    assert with_module("DEFAULT:no-sha1", "NO-SHA1") == "DEFAULT:no-sha1"
    assert with_module("FIPS:NO-CBC", "NO-SHA1") == "FIPS:NO-CBC:NO-SHA1"
    assert current_policy(b"# comment\n\nFIPS:OSPP\n") == "FIPS:OSPP"
    assert current_policy(b"# only a comment\n") is None


def test_this_machine_has_no_update_crypto_policies_and_says_so_changing_nothing() -> None:
    """On this machine (Debian: crypto-policies is not packaged) both mechanisms refuse at capture:
    "not available on this host: update-crypto-policies is not installed"; /etc/crypto-policies stays absent."""
    if shutil.which("update-crypto-policies") is not None:
        pytest.skip("this machine has update-crypto-policies; the refusal is shown on image roots below")
    host = LocalHost("/")
    existed = os.path.exists("/etc/crypto-policies")
    for handler, params in ((CryptoPolicySet(), {"policy": "FIPS"}), (CryptoPolicySubpolicy(), {"subpolicy": "NO-SHA1"})):
        with pytest.raises(NotAvailableError, match="not available on this host: update-crypto-policies is not installed"):
            handler.capture(host, params)
    assert os.path.exists("/etc/crypto-policies") == existed


def test_an_image_root_is_refused_with_or_without_the_tool(tmp_path: Path) -> None:
    """An image root without the tool is "not available on this host"; one that has it is refused
    as an image root (the tool acts on the running system only); the tree is unchanged either way."""
    root = tmp_path / "root"
    (root / "etc/crypto-policies").mkdir(parents=True)
    (root / "etc/crypto-policies/config").write_text("DEFAULT\n")
    (root / "usr/bin").mkdir(parents=True)
    before = snapshot(root)
    with pytest.raises(NotAvailableError, match="not available on this host: update-crypto-policies is not installed"):
        CryptoPolicySet().capture(LocalHost(str(root)), {"policy": "FIPS"})
    (root / "usr/bin/update-crypto-policies").write_text("#!/bin/sh\nexit 0\n")
    before = snapshot(root)
    with pytest.raises(NotAvailableError, match="not available on an image root"):
        CryptoPolicySubpolicy().capture(LocalHost(str(root)), {"subpolicy": "NO-SHA1"})
    assert snapshot(root) == before


@pytest.mark.parametrize("params, field", [
    ({"policy": "DEFAULT; reboot"}, "policy"), ({"policy": "DEFAULT\nFIPS"}, "policy"), ({"policy": "../../x"}, "policy"),
    ({"policy": "-h"}, "policy"), ({"subpolicy": "NO-SHA1:NO-CBC"}, "subpolicy"), ({"subpolicy": "--set"}, "subpolicy"),
])
def test_hostile_policy_names_are_refused_naming_the_field(params: Dict[str, Any], field: str) -> None:
    """A shell word, a newline, a path or an option where a policy name belongs is a ParamError naming the field."""
    handler = CryptoPolicySet() if "policy" in params else CryptoPolicySubpolicy()
    with pytest.raises(ParamError) as caught:
        handler.schema.read(params)
    assert caught.value.field == field


@pytest.mark.parametrize("with_config", [True, False])
def test_remediate_on_an_image_root_errors_before_any_change(tmp_path: Path, with_config: bool) -> None:
    """`kensa check` of a crypto_policy_set rule on an image root without the tool (with or without
    /etc/crypto-policies) says not compliant; `kensa remediate` ends errored, saying the mechanism is
    not available, and the tree is unchanged."""
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    if with_config:
        (root / "etc/crypto-policies").mkdir()
        (root / "etc/crypto-policies/config").write_text("DEFAULT\n")
    before = snapshot(root)
    rules = write_rule(tmp_path / "rules", "crypto-fips", None, [{"mechanism": "crypto_policy_set", "policy": "FIPS"}])
    assert check(tmp_path / "j.db", rules, root) == {"crypto-fips": "not_compliant"}
    results = remediate(tmp_path / "j.db", rules, root)
    assert [r["status"] for r in results] == ["errored"], results
    assert "not available on this host: update-crypto-policies is not installed" in results[0]["error"]["message"]
    assert snapshot(root) == before


def test_through_the_agent_the_refusal_names_the_mechanism(tmp_path: Path) -> None:
    """Over kensa's agent (a real process over SubprocessTransport) the capture on the target refuses
    the same way: the transaction is errored with the host unchanged."""
    root = tmp_path / "root"
    (root / "etc/crypto-policies").mkdir(parents=True)
    (root / "etc/crypto-policies/config").write_text("DEFAULT\n")
    before = snapshot(root)
    with agent_engine(tmp_path / "j.db") as engine:
        step = Step("crypto_policy_subpolicy", {"subpolicy": "NO-SHA1"})
        result = engine.run(Transaction("remote-crypto", (step,), host=agent_key(root)))
    assert result.status is Status.ERRORED and result.host_unchanged
    assert "not available on this host: update-crypto-policies is not installed" in str(result.error)
    assert snapshot(root) == before


def test_on_a_live_host_with_the_tool_rollback_restores_the_config_and_back_ends_exactly(tmp_path: Path) -> None:
    """With a stand-in update-crypto-policies on a live host (private mount namespace, /etc a copy):
    a subpolicy is added through --set CURRENT:MODULE; rollback sets the old policy back and restores
    the config's own bytes (its comment included), so every file is as before; a rollback by id of an
    untouched change restores too; a policy changed since is a conflict naming the config and left as
    it is; a policy the tool refuses fails with the tool's words and changes nothing."""
    require_root()
    if shutil.which("unshare") is None:
        require_real("unshare is not installed")
    seen = in_private_namespace(LIVE, {"update-crypto-policies": STAND_IN}, tmp_path)
    assert seen["valid_before"] is False and "DEFAULT -> DEFAULT:NO-SHA1" in seen["apply"]
    assert seen["config_after"] == "DEFAULT:NO-SHA1\n" and "DEFAULT:NO-SHA1" in seen["backend_after"]
    assert seen["valid_after"] is True
    assert seen["rollback"][0] and "best-effort" in seen["rollback"][1]
    assert seen["exact_after_rollback"] and seen["exact_after_restore"]
    assert seen["assess_untouched"] == "at_post" and seen["restore"][0]
    assert seen["assess_edited"][0] == "conflict" and "/etc/crypto-policies/config" in " ".join(seen["assess_edited"][1])
    assert "withheld" in seen["restore_edited"] and seen["config_kept"] == "LEGACY\n"
    assert seen["bad_policy"][0] == "StepFailedError" and "Unknown policy or subpolicy: NO-SUCH-POLICY" in seen["bad_policy"][1]
    assert seen["unchanged_after_bad"]
