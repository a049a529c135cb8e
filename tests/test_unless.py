"""``unless`` on every mechanism: a command that, exiting 0 on the target, says the step is
already done, so the engine neither captures nor applies it, and the result says so.

``unless`` runs only where the target's own commands run (a live host): the tests that run
it use a private mount namespace with a tmpfs over /mnt as the live host's changed tree, so
this machine's files are never touched.
"""

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

from conftest import require_real, require_root
from kensa.engine import Engine
from kensa.errors import ParamError, RuleError
from kensa.facts.params import command_line
from kensa.handlers import default_registry
from kensa.hosts.local import resolve_host
from kensa.model import Status, Step, Transaction
from kensa.rules import load_rules

REPO = Path(__file__).resolve().parent.parent
ENV = dict(os.environ, PYTHONPATH=str(REPO / "src"))

LIVE = textwrap.dedent(r"""
    import json, os, sys
    from kensa.engine import Engine
    from kensa.handlers import default_registry
    from kensa.hosts.local import resolve_host
    from kensa.journal import SqliteJournal
    from kensa.model import Step, Transaction

    os.makedirs("/mnt/t/etc", exist_ok=True)
    with open("/mnt/t/etc/motd", "w") as f:
        f.write("old\n")
    engine = Engine(default_registry(), hosts=resolve_host, journal=SqliteJournal(sys.argv[1]))
    out = []
    for case in json.loads(sys.argv[2]):
        for path in case.get("touch", []):
            open(path, "w").close()
        steps = tuple(Step(mechanism, params) for mechanism, params in case["steps"])
        result = engine.run(Transaction(case["name"], steps, host="/"))
        entry = {"status": result.status.value, "unchanged": result.host_unchanged,
                 "steps": [[s.ok, s.changed, s.skipped, s.detail] for s in result.steps],
                 "motd": open("/mnt/t/etc/motd").read(), "issue": open("/mnt/t/etc/issue").read() if os.path.exists("/mnt/t/etc/issue") else None}
        if case.get("rollback"):
            back = engine.rollback(result.txn_id)
            entry["rollback"] = back.status.value
            entry["after_rollback"] = [open("/mnt/t/etc/motd").read(), os.path.exists("/mnt/t/etc/issue")]
        out.append(entry)
    print(json.dumps(out))
""")


def _live(tmp_path: Path, cases: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    require_root("mount namespaces")
    if shutil.which("unshare") is None:
        require_real("unshare is not installed")
    script = 'mount -t tmpfs kensa-unless /mnt && exec "$@"'
    done = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", sys.executable, "-c", LIVE,
         str(tmp_path / "j.db"), json.dumps(cases)],
        capture_output=True, text=True, env=ENV, timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    found: List[Dict[str, Any]] = json.loads(done.stdout)
    return found


MOTD = ("file_content", {"path": "/mnt/t/etc/motd", "content": "new\n"})
ISSUE = ("file_content", {"path": "/mnt/t/etc/issue", "content": "authorized use only\n"})


def test_a_step_whose_unless_exits_zero_is_neither_captured_nor_applied(tmp_path: Path) -> None:
    """On the live host: a step whose ``unless`` exits 0 is already done (the transaction of
    only that step is skipped, the file untouched); one whose ``unless`` exits 1 is applied
    and commits; in a two-step transaction the done step is recorded as not applied, the
    other commits, and a rollback by id reverses that one without calling the skipped step
    irreversible. A manual step whose ``unless`` exits 0 is done (skipped), not ``manual``.
    A string ``unless`` runs in /bin/sh (a pipe works), a list runs as is."""
    marker = "/mnt/t/done"
    cases = [
        {"name": "done", "touch": [marker],
         "steps": [(MOTD[0], dict(MOTD[1], unless=f"test -e {marker} && echo yes | grep -q yes"))]},
        {"name": "not-done", "steps": [(MOTD[0], dict(MOTD[1], unless=["test", "-e", "/mnt/t/absent"]))]},
        {"name": "mixed", "rollback": True,
         "steps": [(ISSUE[0], dict(ISSUE[1], unless=["false"])),
                   ("config_set", {"path": "/mnt/t/etc/motd", "key": "new", "value": "x", "unless": ["true"]})]},
        {"name": "manual-done", "steps": [("manual", {"note": "do it", "unless": ["true"]})]},
        {"name": "manual-not-done", "steps": [("manual", {"note": "do it", "unless": ["false"]})]},
    ]
    done, not_done, mixed, manual_done, manual_not_done = _live(tmp_path, cases)
    assert manual_done["status"] == "skipped"
    assert manual_not_done["status"] == "manual" and manual_not_done["steps"][0][3] == "an operator must act: do it"
    assert done["status"] == "skipped" and done["unchanged"] and done["motd"] == "old\n"
    assert not_done["status"] == "committed" and not_done["motd"] == "new\n"
    assert mixed["status"] == "committed", mixed
    assert mixed["issue"] == "authorized use only\n" and mixed["motd"] == "new\n"
    applied, skipped = mixed["steps"]
    assert applied[:3] == [True, True, False]
    assert skipped == [True, False, True, "not applied: its unless command 'true' exited 0"]
    assert mixed["rollback"] == "rolled_back"
    assert mixed["after_rollback"] == ["new\n", False]


def test_unless_is_not_run_on_an_image_root_and_the_step_applies(tmp_path: Path) -> None:
    """On an image root an ``unless`` would run on the controller, not in the image: it is
    not run (its side effect does not happen) and the step is applied."""
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    witness = tmp_path / "ran"
    engine = Engine(default_registry(), hosts=resolve_host)
    step = Step("file_content", {"path": "/etc/motd", "content": "x\n", "unless": ["touch", str(witness)]})
    result = engine.run(Transaction("image", (step,), host=str(root)))
    assert result.status is Status.COMMITTED
    assert (root / "etc/motd").read_text() == "x\n"
    assert not witness.exists()


RULE = """\
id: {id}
title: t
severity: low
implementations:
  - default: true
    remediation:
      mechanism: {mechanism}
{fields}
"""


@pytest.mark.parametrize("mechanism, fields", [
    ("file_content", {"path": "/etc/motd", "content": "x\n"}),
    ("file_permissions", {"path": "/etc/shadow", "mode": "0640"}),
    ("config_set", {"path": "/etc/login.defs", "key": "UMASK", "value": "027"}),
    ("config_set_dropin", {"dir": "/etc/ssh/sshd_config.d", "file": "x.conf", "key": "A", "value": "b"}),
    ("sysctl_set", {"key": "kernel.randomize_va_space", "value": "2"}),
    ("command_exec", {"run": "passwd -l root"}),
])
def test_every_mechanism_loads_with_unless(tmp_path: Path, mechanism: str, fields: Dict[str, str]) -> None:
    """A rule of any mechanism may give ``unless`` (a shell string, as Kensa's rules write
    it): it loads as supported and the step carries it."""
    body = "\n".join(f"      {key}: {json.dumps(value)}" for key, value in fields.items())
    body += "\n      unless: \"passwd -S root 2>/dev/null | grep -q '^root L'\""
    path = tmp_path / "r.yml"
    path.write_text(RULE.format(id=f"u-{mechanism}".replace("_", "-"), mechanism=mechanism, fields=body))
    [rule] = load_rules([path])
    [impl] = rule.implementations
    assert impl.supported, impl.unsupported_reason
    assert impl.steps[0].params["unless"] == "passwd -S root 2>/dev/null | grep -q '^root L'"


@pytest.mark.parametrize("value, problem", [
    ("5", "must be a command line or an argument list"),
    ('""', "must be a command line or an argument list"),
    ("[]", "non-empty list"),
    ('["ls", 3]', "non-empty list"),
])
def test_a_bad_unless_is_a_rule_error_naming_the_field(tmp_path: Path, value: str, problem: str) -> None:
    """An ``unless`` that is not a command (a number, an empty string or list, a list with a
    non-string) is a malformed rule naming file, line and field."""
    path = tmp_path / "r.yml"
    path.write_text(RULE.format(id="bad-unless", mechanism="file_content",
                                fields=f'      path: /etc/motd\n      content: "x"\n      unless: {value}'))
    with pytest.raises(RuleError) as caught:
        load_rules([path])
    assert "remediation.unless" in str(caught.value) and problem in str(caught.value)


def test_command_line_reader() -> None:
    """A string is run by /bin/sh; a list is the argument vector as given; NUL is refused."""
    assert command_line("a | b") == ["/bin/sh", "-c", "a | b"]
    assert command_line(["test", "-e", "/x"]) == ["test", "-e", "/x"]
    with pytest.raises(ParamError):
        command_line(["a\x00b"])
    with pytest.raises(ParamError):
        command_line("a\x00b")


def test_a_rolled_back_run_names_the_unless_in_its_steps(tmp_path: Path) -> None:
    """``kensa remediate`` on the live host (in a private namespace): a rule whose check fails
    while its step's ``unless`` says done applies nothing; the rule's check then still fails,
    so it rolls back with the host unchanged, and the step's result names the unless."""
    require_root("mount namespaces")
    rule = tmp_path / "r.yml"
    rule.write_text(textwrap.dedent("""\
        id: unless-but-not-compliant
        title: t
        severity: low
        implementations:
          - default: true
            check:
              method: file_content
              path: /mnt/t/motd
              expected_content: "new\\n"
            remediation:
              mechanism: file_content
              path: /mnt/t/motd
              content: "new\\n"
              unless: "true"
        """))
    script = 'mount -t tmpfs kensa-unless /mnt && mkdir /mnt/t && echo old > /mnt/t/motd && exec "$@"'
    done = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", sys.executable, "-m", "kensa",
         "--journal", str(tmp_path / "j.db"), "--no-audit", "remediate", str(rule), "--json"],
        capture_output=True, text=True, env=ENV, timeout=300,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    [result] = json.loads(done.stdout)["results"]
    assert result["status"] == "rolled_back" and result["host_unchanged"] is True
    assert result["steps"][0]["skipped"] is True
    assert "unless command 'true' exited 0" in result["steps"][0]["detail"]
