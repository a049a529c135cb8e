"""The kensa command with hostile input and surroundings: FIFOs, closed or broken stdout, missing journals, bad numbers, corrupt journals, pruning.

Real processes (``python -m kensa``) where the behaviour lives outside Python:
pipes, closed file descriptors, FIFOs.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sqlite3
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import List, Optional, Tuple

import pytest

from kensa.cli.main import EXIT_BAD_INPUT, EXIT_NEEDS_OPERATOR, EXIT_OK, main
from kensa.journal.store import SqliteJournal
from kensa.model import PreState, Status, Step, Transaction, TransactionResult

REPO = Path(__file__).resolve().parent.parent
ROOT_LOGIN_RULE = REPO / "examples" / "rules" / "access-control" / "ssh-disable-root-login.yml"

# A rule whose second step cannot run in a target root: the first step's change
# stays, so the run ends needing an operator (exit 3).
NEEDS_OPERATOR_RULE = """\
id: needs-operator
title: t
severity: low
category: c
transactional: false
implementations:
  - default: true
    remediation:
      steps:
        - mechanism: config_set
          path: /etc/ssh/sshd_config
          key: PermitRootLogin
          value: "no"
        - mechanism: command_exec
          run: "false"
"""


def make_root(base: Path, name: str = "root") -> Path:
    root = base / name
    (root / "etc/ssh").mkdir(parents=True)
    (root / "etc/ssh/sshd_config").write_text("PermitRootLogin yes\n")
    return root


def kensa_cli(*argv: str) -> Tuple[int, str]:
    out = io.StringIO()
    code = main(list(argv), out=out)
    return code, out.getvalue()


def kensa_process(argv: List[str], shell_redirect: str = "", stdout: Optional[int] = None) -> "subprocess.CompletedProcess[str]":
    """``python -m kensa ARGV`` in a real process; ``shell_redirect`` is applied by sh (e.g. ``>&-``)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    command = [sys.executable, "-m", "kensa", *argv]
    if shell_redirect:
        command = ["sh", "-c", f'exec "$@" {shell_redirect}', "sh", *command]
    return subprocess.run(command, stdout=stdout, stderr=subprocess.PIPE, text=True, env=env, timeout=120, check=False)


# --- FIFOs and other non-regular files among rules -----------------------------------------


def test_a_fifo_in_a_rules_directory_is_an_error_naming_it_and_never_opened_blocking(tmp_path: Path) -> None:
    """kensa check on a directory holding a FIFO named *.yml ends with exit 2 naming the FIFO; it does not wait for a writer."""
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "a.yml").write_bytes(ROOT_LOGIN_RULE.read_bytes())
    fifo = rules / "b.yml"
    os.mkfifo(fifo)
    root = make_root(tmp_path)
    # The timeout in kensa_process only keeps a regression from hanging the suite.
    proc = kensa_process(["--no-audit", "check", str(rules), "--root", str(root)], stdout=subprocess.PIPE)
    assert proc.returncode == EXIT_BAD_INPUT, proc.stderr
    assert f"{fifo}: cannot read rule file: not a regular file (a FIFO)" in proc.stderr and "Traceback" not in proc.stderr
    proc = kensa_process(["--no-audit", "check", str(fifo), "--root", str(root)], stdout=subprocess.PIPE)
    assert proc.returncode == EXIT_BAD_INPUT and "not a regular file" in proc.stderr


def test_a_device_named_as_a_rule_file_is_refused_before_it_is_opened(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A character device given as a rule file is refused by type, naming it."""
    code, _ = kensa_cli("check", "/dev/zero")
    assert code == EXIT_BAD_INPUT
    assert "/dev/zero: cannot read rule file: not a regular file (a character device)" in capsys.readouterr().err


# --- the exit code survives a closed or broken stdout -------------------------------------------


@pytest.mark.parametrize("command", ["check", "remediate"])
def test_the_exit_code_survives_a_stdout_whose_reader_is_gone(tmp_path: Path, command: str) -> None:
    """With the reading end of stdout's pipe closed (EPIPE), kensa exits with the same code as with a working stdout."""
    rule = tmp_path / "rule.yml"
    rule.write_text(NEEDS_OPERATOR_RULE if command == "remediate" else ROOT_LOGIN_RULE.read_text())
    base = ["--journal", str(tmp_path / "journal.db"), "--no-audit", command, str(rule)]
    expected = kensa_process([*base, "--root", str(make_root(tmp_path, "baseline"))], stdout=subprocess.PIPE)
    assert expected.returncode != EXIT_OK and expected.stdout, expected.stderr
    reader, writer = os.pipe()
    os.close(reader)
    try:
        proc = kensa_process([*base, "--root", str(make_root(tmp_path, "broken"))], stdout=writer)
    finally:
        os.close(writer)
    assert proc.returncode == expected.returncode, proc.stderr
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr


def test_the_exit_code_survives_a_closed_stdout_and_no_output_lands_in_the_journal(tmp_path: Path) -> None:
    """With fd 1 closed, remediate exits with the code it would have had, and the journal (which would get fd 1) stays a valid journal."""
    rule = tmp_path / "rule.yml"
    rule.write_text(NEEDS_OPERATOR_RULE)
    journal = tmp_path / "journal.db"
    proc = kensa_process(["--journal", str(journal), "--no-audit", "remediate", str(rule), "--root", str(make_root(tmp_path))], ">&-")
    assert proc.returncode == EXIT_NEEDS_OPERATOR, proc.stderr
    assert "Traceback" not in proc.stderr
    with SqliteJournal(journal, create=False) as opened:
        (entry,) = opened.history()
    assert entry.result is not None and entry.result.status is Status.PARTIALLY_APPLIED


def test_an_output_that_cannot_be_written_is_reported_and_is_not_success(tmp_path: Path) -> None:
    """With stdout on a full device (ENOSPC), check says it could not write its output and exits 2 instead of claiming a result nobody saw."""
    proc = kensa_process(["--no-audit", "check", str(ROOT_LOGIN_RULE), "--root", str(make_root(tmp_path))], ">/dev/full")
    assert proc.returncode == EXIT_BAD_INPUT
    assert "could not write the output" in proc.stderr and "Traceback" not in proc.stderr


# --- a journal that does not exist -----------------------------------------------------------


@pytest.mark.parametrize("command", [["recover"], ["rollback", "0123"], ["history"], ["history", "--prune", "--older-than", "1"],
                                     ["audit", "reconcile", "--log", "/dev/null"]])
def test_a_missing_journal_is_an_error_naming_it_and_nothing_is_created(tmp_path: Path, command: List[str], capsys: pytest.CaptureFixture[str]) -> None:
    """recover, rollback, history and audit reconcile with a journal path that does not exist exit 2 naming it,
    and create no file or directory."""
    typo = tmp_path / "typo" / "typo.db"
    code, out = kensa_cli("--journal", str(typo), "--no-audit", *command)
    err = capsys.readouterr().err
    assert code == EXIT_BAD_INPUT
    assert f"{typo}: no such file" in err and "nothing to recover" not in out
    assert list(tmp_path.iterdir()) == []


# --- numbers ---------------------------------------------------------------------------


@pytest.mark.parametrize("limit", ["-1", "x", "9" * 5000])
def test_history_limit_must_be_a_count(tmp_path: Path, limit: str, capsys: pytest.CaptureFixture[str]) -> None:
    """history --limit that is negative, not a number or absurdly long exits 2 naming --limit; no traceback."""
    journal = tmp_path / "journal.db"
    SqliteJournal(journal).close()
    with pytest.raises(SystemExit) as caught:
        main(["--journal", str(journal), "history", "--limit", limit], out=io.StringIO())
    assert caught.value.code == EXIT_BAD_INPUT
    assert "--limit" in capsys.readouterr().err


def test_a_5000_digit_number_in_a_rule_is_an_error_naming_file_and_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A hex number of 5,000 digits (and a decimal one of 4,000) in a rule exits 2 with file:line, not a traceback."""
    for line, number in ((10, "0x" + "f" * 5000), (10, "9" * 4000)):
        rule = tmp_path / "big.yml"
        rule.write_text(
            "id: big\ntitle: t\nseverity: low\ncategory: c\nimplementations:\n  - default: true\n"
            f"    remediation:\n      mechanism: command_exec\n      run: 'true'\n      timeout: {number}\n"
        )
        code, _ = kensa_cli("check", str(rule))
        err = capsys.readouterr().err
        assert code == EXIT_BAD_INPUT, err
        assert f"{rule}:{line}:" in err and "too large" in err and len(err) < 400, err


# --- corrupt journals ----------------------------------------------------------------------


def interrupted_entry(journal: SqliteJournal, root: Path, text: str) -> Transaction:
    """Journal intent for a file_content step on root, as a run killed right after begin leaves it."""
    (root / "etc").mkdir(parents=True, exist_ok=True)
    (root / "etc/motd").write_text("before\n")
    txn = Transaction("motd", (Step("file_content", {"path": "/etc/motd", "content": text}),), host=str(root))
    pre = PreState("file_content", {"path": "/etc/motd", "content": text}, {"path": "/etc/motd", "exists": True})
    journal.begin(txn, [pre])
    return txn


class Crash(BaseException):
    """Stands for the process dying."""


class DiesBeforeFinish(SqliteJournal):
    def finish(self, result: TransactionResult) -> None:
        raise Crash


def interrupted_run(journal_path: Path, root: Path, text: str) -> str:
    """Change root's /etc/motd to ``text`` but never record the result, as a kill before the terminal write leaves it."""
    from kensa.engine import Engine
    from kensa.handlers import default_registry
    from kensa.hosts.local import resolve_host

    (root / "etc").mkdir(parents=True)
    (root / "etc/motd").write_text("before\n")
    txn = Transaction("motd", (Step("file_content", {"path": "/etc/motd", "content": text}),), host=str(root))
    with DiesBeforeFinish(journal_path) as journal:
        with pytest.raises(Crash):
            Engine(default_registry(), journal=journal, hosts=resolve_host).run(txn)
    return txn.id


def test_recover_restores_every_other_entry_and_reports_the_corrupt_one_by_id(tmp_path: Path) -> None:
    """One interrupted entry with a damaged pre-state: recover restores the other interrupted entry, reports the damaged one by id, exits 3, and keeps it interrupted."""
    path = tmp_path / "journal.db"
    root_a, root_b = tmp_path / "a", tmp_path / "b"
    damaged = interrupted_run(path, root_a, "a\n")
    intact = interrupted_run(path, root_b, "b\n")
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("UPDATE pre_states SET state = CAST('junk' AS BLOB) WHERE txn_id = ?", (damaged,))
        conn.commit()

    code, out = kensa_cli("--journal", str(path), "--no-audit", "recover", "--json")

    results = {r["txn"]: r for r in json.loads(out)}
    assert code == EXIT_NEEDS_OPERATOR
    assert (results[intact]["status"], results[intact]["host_unchanged"]) == ("recovered", True)
    assert (root_b / "etc/motd").read_text() == "before\n"
    assert (results[damaged]["status"], results[damaged]["host_unchanged"]) == ("errored", False)
    message = results[damaged]["error"]["message"]
    assert damaged in message and "SHA-256" in message
    assert (root_a / "etc/motd").read_text() == "a\n"
    code, out = kensa_cli("--journal", str(path), "--no-audit", "recover")
    assert code == EXIT_NEEDS_OPERATOR and damaged in out and intact not in out


def test_history_shows_a_corrupt_entry_as_corrupt_and_verify_finds_a_damaged_pre_state(tmp_path: Path) -> None:
    """history lists an entry with a garbled row as corrupt (no traceback); --verify also finds one whose pre-state was damaged, and exits 3."""
    path = tmp_path / "journal.db"
    with SqliteJournal(path) as journal:
        garbled = interrupted_entry(journal, tmp_path / "a", "a\n")
        damaged = interrupted_entry(journal, tmp_path / "b", "b\n")
        fine = interrupted_entry(journal, tmp_path / "c", "c\n")
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("UPDATE transactions SET steps = '[' WHERE id = ?", (garbled.id,))
        conn.execute("UPDATE pre_states SET sha256 = zeroblob(32) WHERE txn_id = ?", (damaged.id,))
        conn.commit()

    code, out = kensa_cli("--journal", str(path), "history")
    assert code == EXIT_OK
    lines = {line.split()[2]: line for line in out.splitlines()[1:]}
    assert f"{garbled.id}: its steps are corrupt: they fail their SHA-256 check" in lines[garbled.id]
    assert lines[damaged.id].endswith("  interrupted") and lines[fine.id].endswith("  interrupted")

    code, out = kensa_cli("--journal", str(path), "history", "--verify", "--json")
    assert code == EXIT_NEEDS_OPERATOR
    listed = json.loads(out)
    assert [e["seq"] for e in listed] == sorted((e["seq"] for e in listed), reverse=True)
    corrupt = {e["txn"]: e["corrupt"] for e in listed}
    assert corrupt[fine.id] is None
    assert garbled.id in corrupt[garbled.id] and "SHA-256" in corrupt[damaged.id]


# --- pruning ----------------------------------------------------------------------------


def test_history_prune_older_than_days_keeps_interrupted_entries_and_says_so(tmp_path: Path) -> None:
    """kensa history --prune --older-than 30 deletes finished entries older than 30 days, keeps the interrupted one and says so."""
    path = tmp_path / "journal.db"
    old = [datetime.now(timezone.utc) - timedelta(days=40)]
    with SqliteJournal(path, clock=lambda: old[0]) as journal:
        for rule in ("old-1", "old-2"):
            txn = Transaction(rule, (), host="localhost")
            journal.finish(TransactionResult(txn.id, txn.rule, txn.host, Status.SKIPPED, True))
        interrupted = interrupted_entry(journal, tmp_path / "a", "a\n")
        old[0] = datetime.now(timezone.utc)
        recent = Transaction("recent", (), host="localhost")
        journal.finish(TransactionResult(recent.id, recent.rule, recent.host, Status.SKIPPED, True))

    code, out = kensa_cli("--journal", str(path), "history", "--prune", "--older-than", "30")
    assert code == EXIT_OK, out
    assert "deleted 2 entries" in out and "kept 1 interrupted" in out and "never deletes an interrupted" in out
    with SqliteJournal(path) as journal:
        assert {e.txn.rule for e in journal.history()} == {"recent", interrupted.rule}


@pytest.mark.parametrize(
    "argv",
    [
        ["--prune"],
        ["--prune", "--older-than", "-1"],
        ["--prune", "--older-than", "nan"],
        ["--prune", "--older-than", "1", "--host", "h"],
        ["--prune", "--keep-last", "1", "--limit", "0"],
        ["--older-than", "3"],
    ],
)
def test_history_prune_refuses_incomplete_or_mixed_options(tmp_path: Path, argv: List[str], capsys: pytest.CaptureFixture[str]) -> None:
    """--prune without a bound, with a negative one, mixed with listing filters, or a bound without --prune is exit 2 and deletes nothing."""
    path = tmp_path / "journal.db"
    with SqliteJournal(path) as journal:
        txn = Transaction("r", (), host="localhost")
        journal.finish(TransactionResult(txn.id, txn.rule, txn.host, Status.SKIPPED, True))
    try:
        code, _ = kensa_cli("--journal", str(path), "history", *argv)
    except SystemExit as exc:
        code = int(exc.code or 0)
    assert code == EXIT_BAD_INPUT
    assert "--" in capsys.readouterr().err
    with SqliteJournal(path) as journal:
        assert len(journal.history()) == 1


def test_recover_with_no_default_journal_says_nothing_ran_here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without --journal or KENSA_JOURNAL, a default journal that does not exist means kensa never ran here: recover exits 0 saying so, and creates nothing."""
    import kensa.journal.store as journal_module

    default = tmp_path / "state" / "journal.db"
    monkeypatch.delenv("KENSA_JOURNAL", raising=False)
    monkeypatch.setattr(journal_module, "default_journal_path", lambda: default)
    code, out = kensa_cli("--no-audit", "recover")
    assert code == EXIT_OK
    assert "nothing to recover" in out and str(default) in out
    assert list(tmp_path.iterdir()) == []
