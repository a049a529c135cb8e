"""restart / reload / notify on a remediation: carried out after the commit where a service
manager runs, recorded as skipped (with why) where none does, a failure reported, and a
transactional rule's change rolled back when its service action fails.

This machine has no systemd as PID 1. What runs here for real: the skip on an image root
and on this live host; and, inside a private mount namespace whose /run/systemd/system
exists (so kensa takes systemd for running), the real systemctl, which fails for want of a
service manager: that is the failure path, locally and through the agent.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Dict, Tuple

import pytest

from conftest import require_real, require_root
from kensa.cli.main import EXIT_NOT_APPLIED, EXIT_OK, main
from kensa.engine import Engine
from kensa.engine.services import argv
from kensa.errors import RuleError
from kensa.handlers import default_registry
from kensa.hosts.local import resolve_host
from kensa.journal.store import SqliteJournal
from kensa.model import ServiceAction, ServiceStatus, ServiceVerb, Status, Step, Transaction
from kensa.rules import load_rule_file

RULE = """\
id: {id}
title: A test rule with service actions
description: Test rule; sets a key, then asks for service actions.
severity: low
category: services
{extra}implementations:
  - default: true
    check: {{method: config_value, path: /etc/ssh/sshd_config, key: PermitRootLogin, expected: "no"}}
    remediation:
      mechanism: config_set
      path: /etc/ssh/sshd_config
      key: PermitRootLogin
      value: "no"
{services}"""


def write_rule(directory: Path, rule_id: str, services: str, extra: str = "") -> Path:
    path = directory / f"{rule_id}.yml"
    path.write_text(RULE.format(id=rule_id, services=textwrap.indent(services, "      "), extra=extra))
    return path


def kensa_cli(*argv_: str) -> Tuple[int, str]:
    out = io.StringIO()
    return main(list(argv_), out=out), out.getvalue()


def image(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "etc/ssh").mkdir(parents=True)
    (root / "etc/ssh/sshd_config").write_text("PermitRootLogin yes\n")
    return root


def test_the_loader_reads_restart_reload_and_notify(tmp_path: Path) -> None:
    """restart/reload/notify beside the mechanism become the transaction's service actions
    (``notify: sshd`` restarts at the end, ``notify: reload sshd`` reloads); the mechanism's
    own parameters no longer carry them, and the systemctl arguments name the unit after '--'."""
    rule = load_rule_file(write_rule(tmp_path, "svc", "restart: sshd\nreload: rsyslog\nnotify: reload sshd\n"))
    assert rule.supported, rule.unsupported_reason
    txn = rule.to_transaction("/srv/image")
    assert txn.services == (ServiceAction(ServiceVerb.RESTART, "sshd"), ServiceAction(ServiceVerb.RELOAD, "rsyslog"),
                            ServiceAction(ServiceVerb.RELOAD, "sshd", at_end=True))
    assert "reload" not in txn.steps[0].params
    assert argv(txn.services[0]) == ["restart", "--", "sshd"]
    plain = load_rule_file(write_rule(tmp_path, "svc2", "notify: chronyd\n")).to_transaction()
    assert plain.services == (ServiceAction(ServiceVerb.RESTART, "chronyd", at_end=True),)


@pytest.mark.parametrize("services", ["restart: 'sshd; reboot'\n", "reload: -sshd\n", "notify: [sshd]\n", "restart: 'a b c'\n"])
def test_a_bad_service_name_is_a_rule_error_naming_the_field(tmp_path: Path, services: str) -> None:
    """A service name that is not a systemd unit name (shell syntax, an option, a list) is a
    RuleError naming the file, line and field."""
    path = write_rule(tmp_path, "bad", services)
    with pytest.raises(RuleError, match=rf"{path.name}:\d+: field 'implementations\[0\]\.remediation\.(restart|reload|notify)'"):
        load_rule_file(path)


def test_on_an_image_root_the_actions_are_recorded_as_skipped(tmp_path: Path) -> None:
    """On an image root the change commits and each action is recorded skipped, with the reason,
    in the result, the JSON output, the table and the journal; a notify is reported at the end.
    The exit code is success: a skip is not a failure."""
    root, journal = image(tmp_path), str(tmp_path / "journal.db")
    rule = write_rule(tmp_path, "svc", "reload: sshd\nnotify: reload sshd\n")
    code, out = kensa_cli("--journal", journal, "--no-audit", "remediate", str(rule), "--root", str(root), "--json")
    doc = json.loads(out)
    assert code == EXIT_OK, out
    result = doc["results"][0]
    assert result["status"] == "committed"
    assert result["services"] == [
        {"verb": "reload", "unit": "sshd", "status": "skipped", "detail": "an image root has no running service manager"},
        {"verb": "reload", "unit": "sshd", "status": "pending", "detail": "once, at the end of the run"},
    ]
    assert doc["notified"] == [{"host": str(root), "action": "reload sshd", "status": "skipped",
                                "detail": "an image root has no running service manager"}]
    with SqliteJournal(journal) as opened:
        entry = opened.get(result["txn"])
    assert entry.result is not None and [s.status for s in entry.result.services] == [ServiceStatus.SKIPPED, ServiceStatus.PENDING]
    (root / "etc/ssh/sshd_config").write_text("PermitRootLogin yes\n")
    code, out = kensa_cli("--journal", journal, "--no-audit", "remediate", str(rule), "--root", str(root))
    assert "reload sshd: skipped (an image root has no running service manager)" in out
    assert "NOTIFIED" in out


def test_on_this_live_host_without_systemd_the_action_is_skipped(tmp_path: Path) -> None:
    """On this machine (live, systemd not PID 1: no /run/systemd/system) a committed change's
    restart is recorded skipped, saying systemd is not running; the change stands."""
    require_root()
    if os.path.isdir("/run/systemd/system"):
        pytest.skip("systemd runs this machine: the skip cannot be shown")
    path = tmp_path / "kensa-test.conf"
    txn = Transaction("svc", (Step("file_content", {"path": str(path), "content": "a\n"}),), host="localhost",
                      services=(ServiceAction(ServiceVerb.RESTART, "kensa-test-nosuch"),))
    result = Engine(default_registry(), hosts=resolve_host).run(txn)
    assert result.status is Status.COMMITTED, result.error
    assert [(s.status, s.detail) for s in result.services] == [
        (ServiceStatus.SKIPPED, "systemd is not running on this host (no /run/systemd/system)")]
    assert path.read_text() == "a\n"


# --- the failure path, with the real systemctl ----------------------------------------------

IN_NAMESPACE = r"""
import json, sys
from pathlib import Path
sys.path[:0] = sys.argv[2].split(":")
from agent_targets import transport_for
from kensa.engine import Engine
from kensa.handlers import default_registry
from kensa.hosts.local import resolve_host
from kensa.hosts.remote import RemoteHosts
from kensa.journal.fields import result_view
from kensa.journal.store import SqliteJournal
from kensa.model import ServiceAction, ServiceVerb, Step, Transaction

top = Path(sys.argv[1])
found = {}
restart = ServiceAction(ServiceVerb.RESTART, "kensa-test-nosuch")
notify = ServiceAction(ServiceVerb.RELOAD, "kensa-test-nosuch", at_end=True)
with SqliteJournal(top / "journal.db") as journal:
    for name, transactional, hosts, key in (
        ("local-transactional", True, resolve_host, "localhost"),
        ("local-not-transactional", False, resolve_host, "localhost"),
        ("remote-transactional", True, RemoteHosts(transport_for), "ssh://root@target/"),
    ):
        path = top / (name + ".conf")
        path.write_text("before\n")
        engine = Engine(default_registry(), journal=journal, hosts=hosts)
        txn = Transaction(name, (Step("file_content", {"path": str(path), "content": "after\n"}),), host=key,
                          transactional=transactional, services=(restart,))
        found[name] = {"result": result_view(engine.run(txn)), "content": path.read_text()}
    engine = Engine(default_registry(), journal=journal, hosts=resolve_host)
    for index in range(2):
        path = top / ("notify-%d.conf" % index)
        result = engine.run(Transaction("notify", (Step("file_content", {"path": str(path), "content": "x\n"}),),
                                        host="localhost", services=(notify,)))
        found["notify-%d" % index] = result_view(result)
    found["notified"] = [[host, o.verb.value, o.unit, o.status.value, o.detail] for host, o in engine.notify_pending()]
    found["notified-again"] = len(engine.notify_pending())
print(json.dumps(found))
"""


@pytest.fixture
def failing_manager(tmp_path: Path) -> Dict[str, Any]:
    """The scenarios of IN_NAMESPACE, run in a private mount namespace where /run/systemd is a
    fresh tmpfs holding an empty system/ (kensa's sign that systemd runs), so the real systemctl
    is asked and fails."""
    require_root()
    if shutil.which("unshare") is None or shutil.which("systemctl") is None:
        require_real("unshare or systemctl is not installed")
    if os.path.isdir("/run/systemd/system"):
        pytest.skip("systemd runs this machine: systemctl would not fail")
    tests = str(Path(__file__).resolve().parent)
    path = os.pathsep.join([tests, *(p for p in sys.path if p)])
    script = ("mkdir -p /run/systemd && mount -t tmpfs kensa-test /run/systemd && mkdir /run/systemd/system && "
              f'exec {sys.executable} -c "$SCRIPT" "{tmp_path}" "{path}"')
    done = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                          env=dict(os.environ, SCRIPT=IN_NAMESPACE, PYTHONPATH=path), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    found: Dict[str, Any] = json.loads(done.stdout)
    return found


def test_a_failed_restart_rolls_back_a_transactional_rule_s_change(failing_manager: Dict[str, Any]) -> None:
    """A transactional rule whose restart fails (the real systemctl, exiting non-zero) ends
    rolled back with its file restored; its error and service outcomes say the restart failed,
    and the restart is asked again after the rollback so the service runs the restored file."""
    found = failing_manager["local-transactional"]
    result = found["result"]
    assert result["status"] == "rolled_back" and found["content"] == "before\n", result
    assert result["error"]["type"] == "ServiceActionError" and "the rule's change was rolled back" in result["error"]["message"]
    first, again = result["services"]
    assert (first["verb"], first["unit"], first["status"]) == ("restart", "kensa-test-nosuch", "failed")
    assert first["detail"].startswith("systemctl restart -- kensa-test-nosuch exited ")
    assert again["status"] == "failed" and again["detail"].startswith("after the rollback: systemctl restart")


def test_a_failed_restart_of_a_non_transactional_rule_is_reported_and_the_change_stands(failing_manager: Dict[str, Any]) -> None:
    """A non-transactional rule keeps its change when its restart fails; the result says the
    restart failed."""
    found = failing_manager["local-not-transactional"]
    assert found["result"]["status"] == "committed" and found["content"] == "after\n"
    assert [s["status"] for s in found["result"]["services"]] == ["failed"]


def test_through_the_agent_a_failed_restart_rolls_back_on_the_remote_host(failing_manager: Dict[str, Any]) -> None:
    """On a remote host (kensa's agent, root "/"), systemctl runs on the target through host.run,
    fails there, and the transactional rule's change is rolled back on the target."""
    found = failing_manager["remote-transactional"]
    assert found["result"]["status"] == "rolled_back" and found["content"] == "before\n", found["result"]
    assert found["result"]["services"][0]["detail"].startswith("systemctl restart -- kensa-test-nosuch exited ")


def test_notify_runs_once_per_host_at_the_end(failing_manager: Dict[str, Any]) -> None:
    """Two transactions notifying the same reload on one host: each result records it pending;
    notify_pending carries it out once, and nothing is left pending afterwards."""
    for name in ("notify-0", "notify-1"):
        result = failing_manager[name]
        assert result["status"] == "committed"
        assert [s["status"] for s in result["services"]] == ["pending"]
    (host, verb, unit, status, detail), = failing_manager["notified"]
    assert (host, verb, unit, status) == ("localhost", "reload", "kensa-test-nosuch", "failed")
    assert detail.startswith("systemctl reload -- kensa-test-nosuch exited ")
    assert failing_manager["notified-again"] == 0


def test_the_cli_exit_code_says_a_restart_failed() -> None:
    """kensa remediate's exit code is not success when a result's service action failed, even
    though the change was committed; a skipped one is no failure."""
    from kensa.cli.main import exit_code_for
    from kensa.model import ServiceOutcome, TransactionResult

    failed = ServiceOutcome(ServiceVerb.RESTART, "sshd", ServiceStatus.FAILED, "systemctl restart -- sshd exited 1")
    skipped = ServiceOutcome(ServiceVerb.RESTART, "sshd", ServiceStatus.SKIPPED, "an image root has no running service manager")
    assert exit_code_for([TransactionResult("t", "r", "h", Status.COMMITTED, False, services=(failed,))], False) == EXIT_NOT_APPLIED
    assert exit_code_for([TransactionResult("t", "r", "h", Status.COMMITTED, False, services=(skipped,))], False) == EXIT_OK
