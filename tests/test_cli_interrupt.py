"""Ctrl-C during ``kensa remediate``: nothing new begins, what is running ends, and the command says so.

Real processes: the CLI runs as ``python -m kensa`` against a real sshd on
loopback (three targets, each its own root), and gets a real SIGINT once its
first transaction is in the journal.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

from kensa.cli.exiting import EXIT_INTERRUPTED, Stop
from test_ssh_e2e import login

SRC = Path(__file__).resolve().parents[1] / "src"
RULES = 60


def _rules(directory: Path, count: int = RULES) -> None:
    directory.mkdir()
    for index in range(count):
        (directory / f"key-{index:03d}.yml").write_text(
            f"id: interrupt-key-{index:03d}\n"
            f"title: Key{index} is set\n"
            "description: Sets one key of the target root's sshd_config.\n"
            "severity: low\n"
            "category: access-control\n"
            "implementations:\n"
            "  - default: true\n"
            "    remediation:\n"
            "      mechanism: config_set\n"
            "      path: /etc/ssh/sshd_config\n"
            f"      key: Key{index}\n"
            '      value: "no"\n'
            '      separator: " "\n'
        )


def _statuses(journal: Path) -> Dict[Any, int]:
    if not journal.exists():
        return {}
    conn = sqlite3.connect(f"file:{journal}?mode=ro", uri=True, timeout=5)
    try:
        return dict(conn.execute("SELECT status, count(*) FROM transactions GROUP BY status").fetchall())
    except sqlite3.OperationalError:  # the schema is not written yet
        return {}
    finally:
        conn.close()


def _root(tmp_path: Path) -> Path:
    """A local target root with an sshd_config the rules edit."""
    root = tmp_path / "root"
    (root / "etc" / "ssh").mkdir(parents=True)
    (root / "etc" / "ssh" / "sshd_config").write_text("PermitRootLogin yes\n")
    return root


def _interrupted(argv: List[str], journal: Path, stderr_read: bool = True) -> Tuple[int, str, str]:
    """Run ``python -m kensa ARGV`` and send it SIGINT once its first transaction is journaled:
    its exit status, stdout and stderr (empty when ``stderr_read`` is False: its reader is closed at once)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")])))
    proc = subprocess.Popen([sys.executable, "-m", "kensa", "--journal", str(journal), "--no-audit", *argv],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    assert proc.stderr is not None
    if not stderr_read:
        proc.stderr.close()
    try:
        deadline = time.monotonic() + 120
        while not _statuses(journal):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no transaction was journaled in time"
            time.sleep(0.002)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, out, err or ""


def test_ctrl_c_on_a_fleet_run_begins_no_further_transaction(sshd_rig: Any, sshd_host: Any, tmp_path: Path) -> None:
    """SIGINT once the first host's first transaction is journaled: that host stops before its next
    transaction, the hosts after it are never started, every journal entry has its result (none is
    left for recovery), the command exits 130 saying what ran, with no traceback, and its report
    lists the rules and hosts not run."""
    roots: List[Path] = []
    for name in ("first", "second", "third"):
        root = sshd_rig.root(f"interrupt-{name}")
        (root / "etc" / "ssh").mkdir(parents=True)
        (root / "etc" / "ssh" / "sshd_config").write_text("PermitRootLogin yes\n")
        roots.append(root)
    inventory = tmp_path / "inventory.ini"
    inventory.write_text("[fleet]\n" + "".join(
        f"h{index} ansible_host=127.0.0.1 ansible_port={sshd_host.port} ansible_user=root kensa_root={root}\n"
        for index, root in enumerate(roots)))
    _rules(tmp_path / "rules")
    journal = tmp_path / "j.db"
    code, out, err = _interrupted(["remediate", str(tmp_path / "rules"), "--inventory", str(inventory), "--workers", "1",
                                   *login(sshd_rig, tmp_path), "--json"], journal)
    assert code == EXIT_INTERRUPTED, err
    assert "Traceback" not in err and "kensa: stopping: no further transaction begins" in err, err
    assert "kensa: interrupted: no transaction began after Ctrl-C" in err, err
    statuses = _statuses(journal)
    assert None not in statuses and set(statuses) == {"committed"}, statuses
    assert 1 <= statuses["committed"] < RULES
    first = (roots[0] / "etc" / "ssh" / "sshd_config").read_text()
    assert 1 <= first.count(" no\n") == statuses["committed"]
    for root in roots[1:]:
        assert (root / "etc" / "ssh" / "sshd_config").read_text() == "PermitRootLogin yes\n"
    report = json.loads(out)
    first_host, *others = report["hosts"]
    assert len(first_host["results"]) == statuses["committed"]
    not_run = [row for row in first_host["unsupported"] if row["status"] == "not_run"]
    assert len(not_run) == RULES - statuses["committed"]
    for host in others:
        assert host["error"] is None and host["results"] == []
        assert [row["detail"] for row in host["unsupported"]] == ["not run: the run was interrupted before this host began"] * RULES


def test_ctrl_c_on_a_local_run_ends_the_running_transaction_and_begins_no_other(tmp_path: Path) -> None:
    """SIGINT during a local run (``--root``): the transaction running ends, no other begins, the
    report lists what ran and each rule left as not_run, the exit is 130 with no traceback, and no
    entry is left for recovery."""
    rules = 300
    root = _root(tmp_path)
    _rules(tmp_path / "rules", rules)
    journal = tmp_path / "j.db"
    code, out, err = _interrupted(["remediate", str(tmp_path / "rules"), "--root", str(root), "--json"], journal)
    assert code == EXIT_INTERRUPTED, err
    assert "Traceback" not in err and "kensa: stopping: no further transaction begins" in err, err
    assert "kensa: interrupted: no transaction began after Ctrl-C" in err, err
    statuses = _statuses(journal)
    assert set(statuses) == {"committed"} and 1 <= statuses["committed"] < rules, statuses
    report = json.loads(out)
    assert len(report["results"]) == statuses["committed"]
    assert [row["status"] for row in report["unsupported"]] == ["not_run"] * (rules - statuses["committed"])


class _StoppedAtOnce(Stop):
    """A stop asked for before the first transaction (as a Ctrl-C right after the rules load)."""

    def is_set(self) -> bool:
        return True


def test_a_report_stopped_before_its_transactions_lists_each_rule_as_not_run(tmp_path: Path, monkeypatch: Any) -> None:
    """kensa report --remediate, stopped before its first transaction: nothing is changed or
    journaled, each rule is reported errored with why it did not run, and the exit is 130."""
    import importlib
    import io

    cli = importlib.import_module("kensa.cli.main")  # the module: kensa.cli's "main" is the function

    root = _root(tmp_path)
    _rules(tmp_path / "rules", 3)
    monkeypatch.setattr(cli, "Stop", _StoppedAtOnce)
    out = io.StringIO()
    code = cli.main(["--journal", str(tmp_path / "j.db"), "--no-audit", "report", str(tmp_path / "rules"), "--root",
                     str(root), "--remediate", "--format", "json"], out=out)
    assert code == EXIT_INTERRUPTED
    rows = json.loads(out.getvalue())["results"]
    assert [(row["outcome"], row["detail"]) for row in rows] == [("error", "not run: the run was interrupted before it began")] * 3
    assert (root / "etc" / "ssh" / "sshd_config").read_text() == "PermitRootLogin yes\n"
    assert not _statuses(tmp_path / "j.db")


def test_a_stop_after_every_rule_began_keeps_the_runs_own_exit_code(tmp_path: Path, monkeypatch: Any) -> None:
    """Ctrl-C after the last transaction began (during the restarts, or while the report is built)
    stopped nothing: the exit code is the run's own, not 130."""
    import importlib
    import io

    cli = importlib.import_module("kensa.cli.main")
    checking = importlib.import_module("kensa.cli.checking")
    real = checking.run_in_order

    def then_interrupted(*args: Any, **kwargs: Any) -> Any:
        found = real(*args, **kwargs)
        kwargs["stop"].set()  # as the handler does, once every transaction has run
        return found

    root = _root(tmp_path)
    _rules(tmp_path / "rules", 3)
    monkeypatch.setattr(checking, "run_in_order", then_interrupted)
    code = cli.main(["--journal", str(tmp_path / "j.db"), "--no-audit", "remediate", str(tmp_path / "rules"), "--root",
                     str(root), "--json"], out=io.StringIO())
    assert code == 0
    assert _statuses(tmp_path / "j.db") == {"committed": 3}


def test_stopped_code_says_what_ran_only_when_something_was_kept_from_running(capsys: Any) -> None:
    from kensa.cli.exiting import stopped_code

    ran = [{"status": "not_applicable"}]
    not_run = [{"status": "not_run"}] * 2
    assert stopped_code(1, [], ran) == 1 and capsys.readouterr().err == ""
    assert stopped_code(1, [], ran + not_run) == EXIT_INTERRUPTED
    assert "2 rules were not run" in capsys.readouterr().err
    assert stopped_code(3, [], not_run) == 3


def test_ctrl_c_when_stderr_is_gone_still_ends_the_run_cleanly(tmp_path: Path) -> None:
    """``kensa remediate ... 2>&1 | tee log``: the same Ctrl-C kills tee, so stderr is a pipe nobody
    reads. Saying "stopping" there must not raise into the transaction running: the run ends as
    asked, its report reaches stdout, and no entry is left for recovery."""
    rules = 300
    root = _root(tmp_path)
    _rules(tmp_path / "rules", rules)
    journal = tmp_path / "j.db"
    code, out, _ = _interrupted(["remediate", str(tmp_path / "rules"), "--root", str(root), "--json"], journal,
                                stderr_read=False)
    assert code == EXIT_INTERRUPTED
    statuses = _statuses(journal)
    assert set(statuses) == {"committed"} and statuses["committed"] < rules, statuses
    assert len(json.loads(out)["results"]) == statuses["committed"]
