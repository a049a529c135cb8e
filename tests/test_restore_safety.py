"""A rollback by id or a recovery never destroys what kensa did not write.

Each step journals its pre-state and the state it wrote. Rolling back compares
the file now with both: as kensa left it, the pre-state comes back exactly;
changed only outside the step's own change (its key's line, its appended line,
the mode bits it set), only that change is reverted and the rest is kept;
anything else is refused naming the path, and ``force`` restores anyway saying
what it overwrote. Recovery restores only what is exactly as kensa would have
left it; at the pre-state there is nothing to do; anything else is withheld.

Real handlers, a real temporary root, a real SQLite journal.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import pytest

from conftest import snapshot_tree as snapshot
from kensa.errors import RollbackRefusedError
from kensa.engine import Engine
from kensa.handlers import default_registry
from kensa.hosts.local import resolve_host
from kensa.journal.store import SqliteJournal
from kensa.model import PreState, Status, Step, Transaction, TransactionResult

SSHD = "etc/ssh/sshd_config"
ORIGINAL = b"Port 22\nPermitRootLogin yes\n"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "etc/ssh").mkdir(parents=True)
    (root / "etc/sysctl.d").mkdir(parents=True)
    (root / "proc/sys/net/ipv4").mkdir(parents=True)
    (root / SSHD).write_bytes(ORIGINAL)
    (root / SSHD).chmod(0o644)
    (root / "etc/motd").write_bytes(b"welcome\n")
    (root / "etc/motd").chmod(0o644)
    (root / "proc/sys/net/ipv4/ip_forward").write_bytes(b"1\n")
    return root


@contextlib.contextmanager
def engine_on(path: Path) -> Iterator[Engine]:
    with SqliteJournal(path) as journal:
        yield Engine(default_registry(), journal=journal, hosts=resolve_host)


def run(engine: Engine, root: Path, *steps: Step) -> TransactionResult:
    result = engine.run(Transaction("rule-" + steps[0].mechanism, steps, host=str(root)))
    assert result.status is Status.COMMITTED, result
    return result


PERMIT = Step("config_set", {"path": "/etc/ssh/sshd_config", "key": "PermitRootLogin", "value": "no", "separator": " "})


# --- rollback by id -------------------------------------------------------------------


def test_rollback_keeps_an_operators_later_line_and_mode(root: Path, tmp_path: Path) -> None:
    """After a config_set commit an operator appends a line and sets mode 600: rollback reverts only the key, keeps both, and does not claim host_unchanged."""
    with engine_on(tmp_path / "j.db") as engine:
        done = run(engine, root, PERMIT)
        path = root / SSHD
        path.write_bytes(path.read_bytes() + b"PasswordAuthentication no\n")
        path.chmod(0o600)
        result = engine.rollback(done.txn_id)
    assert (result.status, result.host_unchanged) == (Status.ROLLED_BACK, False)
    assert path.read_bytes() == b"Port 22\nPermitRootLogin yes\nPasswordAuthentication no\n"
    assert oct(path.stat().st_mode & 0o777) == oct(0o600)
    assert "kept a later change" in result.rollbacks[0].detail and "/etc/ssh/sshd_config" in result.rollbacks[0].detail


def test_rollback_of_an_untouched_commit_restores_the_exact_pre_state(root: Path, tmp_path: Path) -> None:
    """With nothing edited since the commit, rollback puts back the exact bytes and metadata and says host_unchanged."""
    before = snapshot(root)
    with engine_on(tmp_path / "j.db") as engine:
        done = run(engine, root, PERMIT)
        result = engine.rollback(done.txn_id)
    assert (result.status, result.host_unchanged) == (Status.ROLLED_BACK, True)
    assert snapshot(root) == before


def test_rollback_refuses_when_the_operator_changed_kensas_own_key_and_force_says_what_it_overwrote(root: Path, tmp_path: Path) -> None:
    """The key kensa set was changed by hand: rollback is refused naming the file and changes nothing; force restores and names what it overwrote."""
    with engine_on(tmp_path / "j.db") as engine:
        done = run(engine, root, PERMIT)
        path = root / SSHD
        path.write_bytes(b"Port 22\nPermitRootLogin prohibit-password\n")
        with pytest.raises(RollbackRefusedError, match="/etc/ssh/sshd_config.*part kensa wrote was changed") as refused:
            engine.rollback(done.txn_id)
        assert refused.value.drifted == ("/etc/ssh/sshd_config",)
        assert path.read_bytes() == b"Port 22\nPermitRootLogin prohibit-password\n"
        forced = engine.rollback(done.txn_id, force=True)
    assert forced.status is Status.ROLLED_BACK
    assert "overwriting" in forced.rollbacks[0].detail and "/etc/ssh/sshd_config" in forced.rollbacks[0].detail
    assert path.read_bytes() == ORIGINAL


def test_rollback_of_config_append_removes_only_its_own_line(root: Path, tmp_path: Path) -> None:
    """An appended line is taken out while a line the operator appended after it stays."""
    step = Step("config_append", {"path": "/etc/motd", "line": "authorized use only"})
    with engine_on(tmp_path / "j.db") as engine:
        done = run(engine, root, step)
        motd = root / "etc/motd"
        motd.write_bytes(motd.read_bytes() + b"operator note\n")
        result = engine.rollback(done.txn_id)
    assert result.status is Status.ROLLED_BACK and not result.host_unchanged
    assert motd.read_bytes() == b"welcome\noperator note\n"


def test_rollback_of_sysctl_keeps_an_operators_line_in_the_persist_file(root: Path, tmp_path: Path) -> None:
    """The operator added a setting to kensa's persist file: rollback removes kensa's key line, keeps theirs, and restores the runtime value."""
    step = Step("sysctl_set", {"key": "net.ipv4.ip_forward", "value": "0"})
    with engine_on(tmp_path / "j.db") as engine:
        done = run(engine, root, step)
        (persist,) = (root / "etc/sysctl.d").iterdir()
        persist.write_bytes(persist.read_bytes() + b"net.ipv4.tcp_syncookies = 1\n")
        result = engine.rollback(done.txn_id)
    assert result.status is Status.ROLLED_BACK and not result.host_unchanged
    assert persist.read_bytes() == b"net.ipv4.tcp_syncookies = 1\n"
    assert (root / "proc/sys/net/ipv4/ip_forward").read_bytes() == b"1\n"


def test_rollback_of_a_sysctl_persist_file_kensa_created_removes_it(root: Path, tmp_path: Path) -> None:
    """Untouched since the commit, the persist file kensa created is removed again and the tree is as before."""
    before = snapshot(root)
    step = Step("sysctl_set", {"key": "net.ipv4.ip_forward", "value": "0"})
    with engine_on(tmp_path / "j.db") as engine:
        done = run(engine, root, step)
        assert engine.rollback(done.txn_id).host_unchanged
    assert snapshot(root) == before


def test_rollback_of_file_content_refuses_edited_content_but_keeps_a_later_mode(root: Path, tmp_path: Path) -> None:
    """file_content owns the whole content: edited content is a refusal; a mode change it did not ask for is kept while the content goes back."""
    step = Step("file_content", {"path": "/etc/motd", "content": "authorized use only\n"})
    motd = root / "etc/motd"
    with engine_on(tmp_path / "j.db") as engine:
        first = run(engine, root, step)
        motd.write_bytes(b"edited\n")
        with pytest.raises(RollbackRefusedError, match="/etc/motd"):
            engine.rollback(first.txn_id)
        assert motd.read_bytes() == b"edited\n"
        engine.rollback(first.txn_id, force=True)
        second = run(engine, root, step)
        motd.chmod(0o600)
        result = engine.rollback(second.txn_id)
    assert result.status is Status.ROLLED_BACK and not result.host_unchanged
    assert motd.read_bytes() == b"welcome\n" and motd.stat().st_mode & 0o777 == 0o600


def test_rollback_of_file_permissions_keeps_later_content_and_refuses_a_changed_mode(root: Path, tmp_path: Path) -> None:
    """file_permissions owns the mode bits it set: a content edit is kept while the mode goes back; a hand-set mode is a refusal."""
    step = Step("file_permissions", {"path": "/etc/motd", "mode": "0600"})
    motd = root / "etc/motd"
    with engine_on(tmp_path / "j.db") as engine:
        first = run(engine, root, step)
        motd.write_bytes(b"edited\n")
        motd.chmod(0o600)
        result = engine.rollback(first.txn_id)
        assert result.status is Status.ROLLED_BACK
        assert motd.read_bytes() == b"edited\n" and motd.stat().st_mode & 0o777 == 0o644
        second = run(engine, root, step)
        motd.chmod(0o640)
        with pytest.raises(RollbackRefusedError, match="/etc/motd.*mode is 0640, kensa set 0600"):
            engine.rollback(second.txn_id)
    assert motd.stat().st_mode & 0o777 == 0o640


def test_rollback_of_a_journal_entry_without_post_state_is_refused(root: Path, tmp_path: Path) -> None:
    """An entry journaled without the state kensa wrote (an older kensa) cannot be told from later edits: refused unless forced."""
    journal_path = tmp_path / "j.db"
    with engine_on(journal_path) as engine:
        done = run(engine, root, PERMIT)
    with SqliteJournal(journal_path) as journal:
        entry = journal.get(done.txn_id)

        class OldJournal(SqliteJournal):
            def get(self, txn_id: str) -> Any:
                found = super().get(txn_id)
                old = [None if p is None else PreState(p.mechanism, p.params, {k: v for k, v in p.data.items() if k != "post"})
                       for p in found.pre_states]
                return type(found)(**{**found.__dict__, "pre_states": tuple(old)})

        assert entry.pre_states[0] is not None and "post" in entry.pre_states[0].data
    with OldJournal(journal_path) as old:
        engine = Engine(default_registry(), journal=old, hosts=resolve_host)
        with pytest.raises(RollbackRefusedError, match="older kensa"):
            engine.rollback(done.txn_id)
        assert engine.rollback(done.txn_id, force=True).status is Status.ROLLED_BACK
    assert (root / SSHD).read_bytes() == ORIGINAL


# --- recovery -------------------------------------------------------------------------


class Crash(BaseException):
    """Stands for the process dying."""


class DiesAfterBegin(SqliteJournal):
    """Journals the intent, then the process 'dies' before any step is applied."""

    def begin(self, txn: Transaction, pre_states: Sequence[Optional[PreState]]) -> None:
        super().begin(txn, pre_states)
        raise Crash

    def finish(self, result: TransactionResult) -> None:
        raise Crash


class DiesBeforeFinish(SqliteJournal):
    def finish(self, result: TransactionResult) -> None:
        raise Crash


def interrupt(journal_cls: type, journal_path: Path, root: Path, *steps: Step) -> str:
    txn = Transaction("rule-crash", steps, host=str(root))
    with journal_cls(journal_path) as journal:
        with pytest.raises(Crash):
            Engine(default_registry(), journal=journal, hosts=resolve_host).run(txn)
    return txn.id


def test_recovery_never_overwrites_an_operators_fix_made_after_the_crash(root: Path, tmp_path: Path) -> None:
    """Killed after begin, before apply; the operator then fixes the file by hand: recovery withholds it, naming the path, and says an operator must look."""
    journal_path = tmp_path / "j.db"
    txn_id = interrupt(DiesAfterBegin, journal_path, root, PERMIT)
    assert (root / SSHD).read_bytes() == ORIGINAL
    (root / SSHD).write_bytes(b"Port 22\nPermitRootLogin no\nMaxAuthTries 3\n")
    with engine_on(journal_path) as engine:
        (result,) = engine.recover()
    assert result.txn_id == txn_id
    assert (result.status, result.host_unchanged) == (Status.ROLLBACK_FAILED, False)
    assert result.error is not None and "/etc/ssh/sshd_config" in result.error.message
    assert "operator must look" in result.rollbacks[0].detail
    assert (root / SSHD).read_bytes() == b"Port 22\nPermitRootLogin no\nMaxAuthTries 3\n"


def test_recovery_at_the_pre_state_writes_nothing(root: Path, tmp_path: Path) -> None:
    """Killed before apply and untouched since: recovery has nothing to restore and does not rewrite the file (its inode stays)."""
    journal_path = tmp_path / "j.db"
    inode = (root / SSHD).stat().st_ino
    interrupt(DiesAfterBegin, journal_path, root, PERMIT)
    with engine_on(journal_path) as engine:
        (result,) = engine.recover()
    assert (result.status, result.host_unchanged) == (Status.RECOVERED, True)
    assert "nothing to restore" in result.rollbacks[0].detail
    assert (root / SSHD).stat().st_ino == inode


def test_recovery_restores_what_is_exactly_as_kensa_left_it(root: Path, tmp_path: Path) -> None:
    """Killed before the terminal write with the change in place: recovery restores the pre-state exactly."""
    before = snapshot(root)
    journal_path = tmp_path / "j.db"
    interrupt(DiesBeforeFinish, journal_path, root, PERMIT, Step("sysctl_set", {"key": "net.ipv4.ip_forward", "value": "0"}))
    assert snapshot(root) != before
    with engine_on(journal_path) as engine:
        (result,) = engine.recover()
    assert (result.status, result.host_unchanged) == (Status.RECOVERED, True)
    assert snapshot(root) == before


def test_recovery_withholds_a_sysctl_whose_runtime_value_someone_else_set(root: Path, tmp_path: Path) -> None:
    """The runtime value is neither the captured one nor kensa's: recovery leaves it and names the key."""
    journal_path = tmp_path / "j.db"
    interrupt(DiesBeforeFinish, journal_path, root, Step("sysctl_set", {"key": "net.ipv4.ip_forward", "value": "0"}))
    (root / "proc/sys/net/ipv4/ip_forward").write_bytes(b"2\n")
    with engine_on(journal_path) as engine:
        (result,) = engine.recover()
    assert result.status is Status.ROLLBACK_FAILED
    assert "net.ipv4.ip_forward" in result.rollbacks[0].detail
    assert (root / "proc/sys/net/ipv4/ip_forward").read_bytes() == b"2\n"


# --- a run's own rollback -------------------------------------------------------------


def test_a_failed_apply_that_changed_nothing_is_rolled_back_without_a_write(root: Path, tmp_path: Path) -> None:
    """When apply fails before changing the file, the run's rollback sees the pre-state and writes nothing (no false rollback_failed on a read-only file)."""
    os.chmod(root / "etc/ssh", 0o755)
    (root / SSHD).chmod(0o444)
    registry = default_registry()
    inner = registry["config_set"]

    class FailsFirst:
        name, capturable = inner.name, inner.capturable
        capture, validate, rollback = inner.capture, inner.validate, inner.rollback

        def apply(self, host: Any, params: Any, pre: Any) -> Any:
            raise OSError(30, "Read-only file system")

    registry["config_set"] = FailsFirst()  # type: ignore[assignment]
    inode = (root / SSHD).stat().st_ino
    with SqliteJournal(tmp_path / "j.db") as journal:
        result = Engine(registry, journal=journal, hosts=resolve_host).run(Transaction("r", (PERMIT,), host=str(root)))
    assert (result.status, result.host_unchanged) == (Status.ROLLED_BACK, True)
    assert (root / SSHD).stat().st_ino == inode


# --- the command line -----------------------------------------------------------------


def test_cli_rollback_keeps_an_operators_later_line(tmp_path: Path) -> None:
    """kensa remediate, an operator appends a line and sets mode 600, kensa rollback TXN: both kept, the key reverted, host_unchanged no."""
    import io
    import json

    from kensa.cli.main import EXIT_OK, main

    rule = tmp_path / "permit.yml"
    rule.write_text(
        "id: permit-root-no\ntitle: no root login\nseverity: high\nimplementations:\n"
        "  - default: true\n    check:\n      method: config_value\n      path: /etc/ssh/sshd_config\n"
        "      key: PermitRootLogin\n      expected: \"no\"\n"
        "    remediation:\n      mechanism: config_set\n      path: /etc/ssh/sshd_config\n"
        "      key: PermitRootLogin\n      value: \"no\"\n"
    )
    root = tmp_path / "root"
    (root / "etc/ssh").mkdir(parents=True)
    (root / SSHD).write_bytes(ORIGINAL)
    journal = str(tmp_path / "j.db")

    def cli(*argv: str) -> "tuple[int, str]":
        out = io.StringIO()
        return main(["--journal", journal, "--no-audit", *argv], out=out), out.getvalue()

    code, out = cli("remediate", str(rule), "--root", str(root), "--json")
    assert code == EXIT_OK, out
    txn = json.loads(out)["results"][0]["txn"]
    (root / SSHD).write_bytes((root / SSHD).read_bytes() + b"PasswordAuthentication no\n")
    (root / SSHD).chmod(0o600)
    code, out = cli("rollback", txn, "--json")
    assert code == EXIT_OK, out
    shown = json.loads(out)
    assert (shown["status"], shown["host_unchanged"]) == ("rolled_back", False)
    assert (root / SSHD).read_bytes() == b"Port 22\nPermitRootLogin yes\nPasswordAuthentication no\n"
    assert (root / SSHD).stat().st_mode & 0o777 == 0o600


def test_rollback_keeps_an_xattr_set_after_the_commit(root: Path, tmp_path: Path) -> None:
    """An extended attribute an operator set after the commit is outside kensa's change: the key reverts, the xattr stays."""
    with engine_on(tmp_path / "j.db") as engine:
        done = run(engine, root, PERMIT)
        os.setxattr(root / SSHD, "user.operator", b"reviewed")
        result = engine.rollback(done.txn_id)
    assert result.status is Status.ROLLED_BACK and not result.host_unchanged
    assert (root / SSHD).read_bytes() == ORIGINAL
    assert os.getxattr(root / SSHD, "user.operator") == b"reviewed"


def test_rollback_restores_the_mtime_and_names_the_new_inode_and_broken_hard_links(root: Path, tmp_path: Path) -> None:
    """An exact restore puts back the modification time too, and says plainly that the file is a new inode no longer hard-linked with its other name."""
    sshd = root / SSHD
    os.link(sshd, root / "etc/ssh/sshd_config.link")
    os.utime(sshd, ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))
    inode = sshd.stat().st_ino
    with engine_on(tmp_path / "j.db") as engine:
        done = run(engine, root, PERMIT)
        result = engine.rollback(done.txn_id)
    assert result.status is Status.ROLLED_BACK
    assert sshd.stat().st_mtime_ns == 1_600_000_000_123_456_789
    assert sshd.read_bytes() == ORIGINAL and sshd.stat().st_ino != inode
    detail = result.rollbacks[0].detail
    assert "new inode" in detail and "2 hard links" in detail


KILLED_INSIDE_THE_WRITE = r"""
import os, signal, sys
from kensa.engine import Engine
from kensa.handlers import default_registry
from kensa.hosts.local import resolve_host
from kensa.journal.store import SqliteJournal
from kensa.model import Step, Transaction

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

os.rename = die  # the temporary file is written and fsynced; the rename never happens
step = Step("config_set", {"path": "/etc/ssh/sshd_config", "key": "PermitRootLogin", "value": "no", "separator": " "})
Engine(default_registry(), journal=SqliteJournal(sys.argv[2]), hosts=resolve_host).run(Transaction("r", (step,), host=sys.argv[1]))
"""


def test_recovery_removes_the_temporary_file_a_killed_write_left(root: Path, tmp_path: Path) -> None:
    """SIGKILL between writing the temporary file and renaming it: recovery finds the file in its pre-state and removes kensa's leftover."""
    import signal
    import subprocess
    import sys

    journal_path = tmp_path / "j.db"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.run([sys.executable, "-c", KILLED_INSIDE_THE_WRITE, str(root), str(journal_path)], env=env, timeout=60)
    assert proc.returncode == -signal.SIGKILL
    leftovers = [p.name for p in (root / "etc/ssh").iterdir() if p.name != "sshd_config"]
    assert len(leftovers) == 1 and "kensa" in leftovers[0]
    with engine_on(journal_path) as engine:
        (result,) = engine.recover()
    assert (result.status, result.host_unchanged) == (Status.RECOVERED, True)
    assert sorted(p.name for p in (root / "etc/ssh").iterdir()) == ["sshd_config"]
    assert (root / SSHD).read_bytes() == ORIGINAL


# --- several steps on one file --------------------------------------------------------

X11 = Step("config_set", {"path": "/etc/ssh/sshd_config", "key": "X11Forwarding", "value": "no", "separator": " "})


def test_two_steps_on_one_file_roll_back_to_the_exact_original(root: Path, tmp_path: Path) -> None:
    """Two config_set steps on one file: an untouched rollback gives back the original bytes, host_unchanged, nothing reported as kept."""
    before = snapshot(root)
    with engine_on(tmp_path / "j.db") as engine:
        done = run(engine, root, PERMIT, X11)
        assert (root / SSHD).read_bytes() == b"Port 22\nPermitRootLogin no\nX11Forwarding no\n"
        result = engine.rollback(done.txn_id)
    assert (result.status, result.host_unchanged) == (Status.ROLLED_BACK, True), result
    assert not any(rb.kept for rb in result.rollbacks)
    assert snapshot(root) == before


def test_two_steps_on_one_file_keep_an_operators_later_line(root: Path, tmp_path: Path) -> None:
    """Two steps on one file, then an operator's line: both of kensa's keys revert, the operator's line stays."""
    with engine_on(tmp_path / "j.db") as engine:
        done = run(engine, root, PERMIT, X11)
        (root / SSHD).write_bytes((root / SSHD).read_bytes() + b"Banner /etc/issue\n")
        result = engine.rollback(done.txn_id)
    assert result.status is Status.ROLLED_BACK and not result.host_unchanged
    assert (root / SSHD).read_bytes() == ORIGINAL + b"Banner /etc/issue\n"


@pytest.mark.parametrize("journal_cls", [DiesBeforeFinish, DiesAfterBegin])
def test_recovery_of_two_steps_on_one_file(root: Path, tmp_path: Path, journal_cls: type) -> None:
    """Interrupted with both steps applied, or before any: recovery ends with the original file and calls it recovered."""
    before = snapshot(root)
    interrupt(journal_cls, tmp_path / "j.db", root, PERMIT, X11)
    with engine_on(tmp_path / "j.db") as engine:
        (result,) = engine.recover()
    assert (result.status, result.host_unchanged) == (Status.RECOVERED, True), result
    assert snapshot(root) == before


def test_recovery_of_two_steps_on_one_file_killed_between_them(root: Path, tmp_path: Path) -> None:
    """Interrupted after the first of two steps on one file: the second is at its pre-state, the first is restored."""
    before = snapshot(root)
    registry = default_registry()
    inner = registry["config_set"]

    class DiesOnSecond:
        name, capturable = inner.name, inner.capturable
        capture, validate, rollback, assess, restore, planned, settled = (
            inner.capture, inner.validate, inner.rollback, inner.assess, inner.restore, inner.planned, inner.settled)  # type: ignore[attr-defined]
        calls = 0

        def apply(self, host: Any, params: Any, pre: Any) -> Any:
            DiesOnSecond.calls += 1
            if DiesOnSecond.calls == 2:
                raise Crash
            return inner.apply(host, params, pre)

    registry["config_set"] = DiesOnSecond()  # type: ignore[assignment]

    class NoUndo(SqliteJournal):
        def finish(self, result: TransactionResult) -> None:
            raise Crash

    class NoRollback(DiesOnSecond):
        def rollback(self, host: Any, pre: Any) -> Any:
            raise Crash  # the process is dead: nothing is rolled back

    registry["config_set"] = NoRollback()  # type: ignore[assignment]
    with NoUndo(tmp_path / "j.db") as journal:
        with pytest.raises(Crash):
            Engine(registry, journal=journal, hosts=resolve_host).run(Transaction("r", (PERMIT, X11), host=str(root)))
    assert (root / SSHD).read_bytes() == b"Port 22\nPermitRootLogin no\n"
    with engine_on(tmp_path / "j.db") as engine:
        (result,) = engine.recover()
    assert (result.status, result.host_unchanged) == (Status.RECOVERED, True), result
    assert snapshot(root) == before


def test_config_append_of_a_line_already_there_never_removes_it(root: Path, tmp_path: Path) -> None:
    """A config_append whose line was already in the file wrote nothing: a later edit plus rollback leaves the original line."""
    (root / "etc/motd").write_bytes(b"Authorized use only\n")
    step = Step("config_append", {"path": "/etc/motd", "line": "Authorized use only"})
    with engine_on(tmp_path / "j.db") as engine:
        done = run(engine, root, step, PERMIT)
        (root / "etc/motd").write_bytes(b"Authorized use only\nContact: ops\n")
        result = engine.rollback(done.txn_id)
    assert result.status is Status.ROLLED_BACK
    assert (root / "etc/motd").read_bytes() == b"Authorized use only\nContact: ops\n"
    assert (root / SSHD).read_bytes() == ORIGINAL


def test_partial_revert_of_a_chown_puts_back_the_capabilities_it_cleared(root: Path, tmp_path: Path) -> None:
    """file_permissions chowned a binary with file capabilities (the kernel drops them), then an operator changed its mode: rollback restores owner and capabilities, keeps the mode."""
    import shutil
    import subprocess

    from conftest import require_audit, require_root

    require_root("it sets file capabilities")
    if shutil.which("setcap") is None:
        require_audit("setcap is not installed (libcap2-bin)")
    ping = root / "usr/bin/ping"
    ping.parent.mkdir(parents=True)
    ping.write_bytes(b"\x7fELF not really\n")
    ping.chmod(0o755)
    subprocess.run(["setcap", "cap_net_raw+ep", str(ping)], check=True)
    capability = os.getxattr(ping, "security.capability")
    step = Step("file_permissions", {"path": "/usr/bin/ping", "owner": 65534})
    with engine_on(tmp_path / "j.db") as engine:
        done = run(engine, root, step)
        assert "security.capability" not in os.listxattr(ping)
        ping.chmod(0o750)
        result = engine.rollback(done.txn_id)
    assert result.status is Status.ROLLED_BACK and not result.host_unchanged
    assert ping.stat().st_uid == 0 and ping.stat().st_mode & 0o777 == 0o750
    assert os.getxattr(ping, "security.capability") == capability


@pytest.mark.parametrize("fault", ["read-only filesystem", "full filesystem"])
def test_an_apply_the_filesystem_refuses_is_rolled_back_with_the_host_unchanged(tmp_path: Path, fault: str) -> None:
    """A write refused by a read-only (EROFS) or full (ENOSPC) filesystem changed nothing: the result is rolled_back with host_unchanged, never rollback_failed."""
    import subprocess

    from conftest import tmpfs

    with tmpfs(tmp_path, "size=64k") as mnt:
        root = mnt / "root"
        (root / "etc/ssh").mkdir(parents=True)
        body = b"Port 22\nPermitRootLogin yes\n" + b"# padding\n" * 2500  # about 25 KiB
        (root / SSHD).write_bytes(body)
        if fault == "full filesystem":
            (mnt / "filler").write_bytes(b"\0" * (mnt.stat().st_size or 1))
            with contextlib.suppress(OSError):
                with open(mnt / "filler2", "wb") as filler:
                    while True:
                        filler.write(b"\0" * 4096)
                        filler.flush()
        else:
            subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        before = snapshot(root)
        with SqliteJournal(tmp_path / "j.db") as journal:
            result = Engine(default_registry(), journal=journal, hosts=resolve_host).run(
                Transaction("r", (PERMIT,), host=str(root)))
        assert (result.status, result.host_unchanged) == (Status.ROLLED_BACK, True), result
        assert result.rollbacks and result.rollbacks[0].ok
        assert snapshot(root) == before
