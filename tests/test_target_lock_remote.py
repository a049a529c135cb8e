"""One writer per target across machines: a remote run takes the target's own lock, on the target.

The controller's lock (:class:`kensa.hosts.TargetLocks` on the controller) keeps
out the controller's other processes only. The agent takes the lock a kensa run
on the target itself takes for the same root (``/run/kensa/targets`` there, named
by the root's identity), for each transaction, rollback by id and recovery, so a
local run on the target, a second controller and a second inventory alias of the
same machine all wait for it. The agents here run on this machine (the target is
this machine), so a local ``TargetLocks`` is the target's own lock.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Callable, ContextManager, Iterator, List, Optional

import pytest

from agent_targets import py36_path, transport, transport_for
from conftest import require_root
from kensa import default_engine
from kensa.errors import TargetLockError, TargetLockTimeout
from kensa.hosts.local import LocalHost
from kensa.hosts.payload import build_payload
from kensa.engine import Engine
from kensa.handlers import default_registry
from kensa.hosts.remote import RemoteHost, RemoteHosts, connect
from kensa.hosts.targetlock import SYSTEM_LOCK_DIRECTORY, TargetLocks
from kensa.model import Status, Step, Transaction


@pytest.fixture
def root(tmp_path: Path) -> Path:
    require_root("the target lock of a root lives in /run/kensa/targets")
    tree = tmp_path / "root"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc/app.conf").write_text("# app\n")
    return tree


@pytest.fixture
def host(root: Path) -> Iterator[RemoteHost]:
    found = connect(transport(), str(root))
    yield found
    found.close()


def _target_locks(timeout: float) -> TargetLocks:
    """The lock a kensa run on the target takes: root's, in the system directory."""
    return TargetLocks(SYSTEM_LOCK_DIRECTORY, timeout=timeout)


def _edit(root: Path, key: str, value: str, name: str = "target") -> Transaction:
    step = Step("config_set", {"path": "/etc/app.conf", "key": key, "value": value, "separator": " "})
    return Transaction(f"edit-{name}-{key}", (step,), host=f"ssh://{name}{root}")


def test_a_remote_transaction_waits_for_a_run_on_the_target(root: Path, tmp_path: Path) -> None:
    """While a kensa process on the target holds the lock of the root, a controller's transaction
    there ends errored, naming the host, that process and the lock file, and changes nothing."""
    engine = default_engine(str(tmp_path / "j.db"), audit=False, remote=transport_for, target_lock_timeout=0.3)
    before = (root / "etc/app.conf").read_bytes()
    with _target_locks(0).hold(str(root), LocalHost(str(root)).identity):
        result = engine.run(_edit(root, "Port", "22"))
    assert result.status is Status.ERRORED and result.host_unchanged, result
    assert result.error is not None and result.error.type == "TargetLockTimeout"
    message = result.error.message
    assert f"ssh://target{root}" in message and f"pid {os.getpid()}" in message and "/run/kensa/targets/" in message
    assert "nothing was changed" in message
    assert (root / "etc/app.conf").read_bytes() == before
    assert engine.run(_edit(root, "Port", "22")).status is Status.COMMITTED  # the lock is free again


def test_a_run_on_the_target_waits_for_a_remote_transaction(root: Path, host: RemoteHost) -> None:
    """While the agent holds the target's lock, a kensa run on the target cannot take it; the message
    names the agent's pid. Once released (the unlock is answered), the run takes it."""
    identity = LocalHost(str(root)).identity
    with host.hold_target_lock(5.0):
        with pytest.raises(TargetLockTimeout, match=f"pid {host.hello['pid']}"):
            with _target_locks(0.2).hold(str(root), identity):
                pass
    with _target_locks(5.0).hold(str(root), identity):
        pass


def test_an_agent_that_dies_holding_the_lock_leaves_it_free(root: Path, host: RemoteHost) -> None:
    """The lock is the agent's open file: killed while holding it, the agent holds nothing."""
    identity = LocalHost(str(root)).identity
    with pytest.raises(Exception):
        with host.hold_target_lock(5.0):
            os.kill(host.hello["pid"], signal.SIGKILL)
            host.info("/etc/app.conf")  # the connection is lost
    with _target_locks(5.0).hold(str(root), identity):
        pass


def test_two_aliases_of_one_target_take_turns(root: Path, tmp_path: Path) -> None:
    """Two host keys (two connections, two agents) for one root, run in parallel: each transaction
    waits for the other's, none deadlocks, and every edit of one file is kept."""
    engine = default_engine(str(tmp_path / "j.db"), audit=False, remote=transport_for, target_lock_timeout=60)
    txns = [_edit(root, f"Key{index}{name}", str(index), name) for index in range(30) for name in ("a", "b")]
    results = engine.run_many(txns, workers=2)
    assert [r.status for r in results] == [Status.COMMITTED] * len(txns), results
    text = (root / "etc/app.conf").read_text()
    assert all(f"Key{index}{name} {index}\n" in text for index in range(30) for name in ("a", "b")), text


def test_the_wait_is_bounded_and_retried(root: Path, host: RemoteHost) -> None:
    """A holder that lets go within the timeout is waited for: the lock is taken after it."""
    identity = LocalHost(str(root)).identity
    taken: List[float] = []
    held = threading.Event()

    def hold_briefly() -> None:
        with _target_locks(0).hold(str(root), identity):
            held.set()
            time.sleep(1.5)

    holder = threading.Thread(target=hold_briefly)
    holder.start()
    held.wait(5)
    with host.hold_target_lock(30.0):
        taken.append(time.monotonic())
    holder.join()
    assert taken and not holder.is_alive()


def test_the_agent_refuses_a_second_hold_and_a_lock_before_hello(root: Path, host: RemoteHost) -> None:
    """Asked to lock what it holds, the agent answers an error (a flock of a second descriptor would
    wait on itself); the connection stays usable."""
    with host.hold_target_lock(5.0):
        with pytest.raises(TargetLockError, match="already holds"):
            host.connection.request("lock_target", wait=0.0)
        assert host.info("/etc/app.conf") is not None
    answer = host.connection.request("lock_target", wait=0.0)
    assert answer["held"] is True
    assert host.connection.request("unlock_target") is None
    with _target_locks(5.0).hold(str(root), LocalHost(str(root)).identity):
        pass


def test_the_lock_works_on_a_python_36_agent(root: Path, tmp_path: Path) -> None:
    """The target side of the lock runs on Python 3.6: the payload has no module that needs
    os.register_at_fork (3.7+), and an agent without what 3.7 added takes and releases it."""
    assert "kensa.support.afterfork" not in build_payload().modules
    remote = connect(transport(path=py36_path(tmp_path / "py36")), str(root))
    try:
        with remote.hold_target_lock(5.0):
            with pytest.raises(TargetLockTimeout):
                with _target_locks(0).hold(str(root), LocalHost(str(root)).identity):
                    pass
    finally:
        remote.close()


def test_a_rollback_by_id_takes_the_targets_lock(root: Path, tmp_path: Path) -> None:
    """A rollback by id of a remote transaction holds the target's lock too (as recovery does, through
    the same engine lock): while a run on the target holds it, the rollback stops with
    TargetLockTimeout naming the host, and changes nothing."""
    engine = default_engine(str(tmp_path / "j.db"), audit=False, remote=transport_for, target_lock_timeout=0.3)
    done = engine.run(_edit(root, "Port", "22"))
    assert done.status is Status.COMMITTED
    after = (root / "etc/app.conf").read_bytes()
    with _target_locks(5).hold(str(root), LocalHost(str(root)).identity):
        with pytest.raises(TargetLockTimeout, match="on that host"):
            engine.rollback(done.txn_id)
    assert (root / "etc/app.conf").read_bytes() == after
    assert engine.rollback(done.txn_id).status is Status.ROLLED_BACK


def test_the_target_is_free_as_soon_as_a_remote_transaction_returns(root: Path, tmp_path: Path) -> None:
    """When Engine.run of a remote transaction returns, the target's lock is already released: a kensa
    run on the target that tries once (timeout 0) right after takes it, and so does the next
    transaction through another alias of the same machine with a lock timeout of 0."""
    engine = default_engine(str(tmp_path / "j.db"), audit=False, remote=transport_for, target_lock_timeout=0)
    identity = LocalHost(str(root)).identity
    for index in range(30):
        for name in ("a", "b"):
            result = engine.run(_edit(root, f"Key{index}{name}", str(index), name))
            assert result.status is Status.COMMITTED, result.error
            with _target_locks(0).hold(str(root), identity):
                pass



def test_a_short_operation_timeout_waits_for_the_lock_without_killing_the_agent(root: Path) -> None:
    """An operation timeout under a second (--timeout 0.5): a lock held on the target for longer is
    waited for with requests that each end within that timeout, so the agent is not stopped as hung
    and the lock is taken once the holder lets go."""
    remote = connect(transport(), str(root), operation_timeout=0.5)
    holder = threading.Thread(target=lambda: _hold(root, 1.5, held))
    held = threading.Event()
    holder.start()
    try:
        assert held.wait(5)
        with remote.hold_target_lock(30.0):
            assert remote.info("/etc/app.conf") is not None
        assert remote.alive
    finally:
        holder.join()
        remote.close()


def _hold(root: Path, seconds: float, held: threading.Event) -> None:
    """Hold the target's lock of ``root`` as a kensa run there would, for ``seconds``."""
    with _target_locks(0).hold(str(root), LocalHost(str(root)).identity):
        held.set()
        time.sleep(seconds)


def test_a_login_user_without_a_home_directory_still_locks_its_target() -> None:
    """An agent running as a user whose home does not exist (nobody: /nonexistent) takes the
    target's lock somewhere private to that user instead of failing every transaction, and a second
    agent of that user on the same root waits for it."""
    import pwd
    import shutil
    import tempfile

    from conftest import require_real
    from kensa.hosts.processes import SubprocessTransport

    require_root("to start the agent as another user")
    if shutil.which("setpriv") is None:
        require_real("setpriv is missing")
    assert not os.path.isdir(pwd.getpwnam("nobody").pw_dir)
    top = Path(tempfile.mkdtemp(prefix="kensa-lock-nobody-"))  # not under tmp_path: its parents are 0700
    try:
        top.chmod(0o755)
        as_nobody = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"]
        first, second = (connect(SubprocessTransport(as_nobody, name=f"nobody{n}", env={"PATH": "/usr/bin:/bin"}),
                                 str(top)) for n in range(2))
        try:
            with first.hold_target_lock(5.0):
                with pytest.raises(TargetLockTimeout, match=f"pid {first.hello['pid']}"):
                    with second.hold_target_lock(0.2):
                        pass
            with second.hold_target_lock(5.0):
                pass
        finally:
            first.close()
            second.close()
    finally:
        shutil.rmtree(top)


def test_a_rollback_never_runs_on_a_connection_it_did_not_lock(root: Path, tmp_path: Path) -> None:
    """A rollback by id resolves its host once: when that fails (the target did not answer) the
    rollback is refused and changes nothing, even though the target answers a moment later while a
    run there holds its lock; it never restores through a second connection that holds no lock."""
    from kensa.errors import RollbackRefusedError
    from kensa.hosts.processes import SubprocessTransport

    failing: List[str] = []

    def flapping(target: object) -> SubprocessTransport:
        if failing:
            failing.pop()
            return SubprocessTransport(["false"], name="flapping")  # the agent never starts
        return transport_for(target)  # type: ignore[arg-type]

    engine = default_engine(str(tmp_path / "j.db"), audit=False, remote=flapping, target_lock_timeout=0.3)
    done = engine.run(_edit(root, "Port", "22"))
    assert done.status is Status.COMMITTED
    engine.hosts(done.host).close()  # the next resolution connects again
    after = (root / "etc/app.conf").read_bytes()
    failing.append("once")
    with _target_locks(5).hold(str(root), LocalHost(str(root)).identity):
        with pytest.raises(RollbackRefusedError, match="nothing was changed"):
            engine.rollback(done.txn_id)
        assert (root / "etc/app.conf").read_bytes() == after
    assert engine.rollback(done.txn_id).status is Status.ROLLED_BACK


def test_a_hold_inside_a_hold_of_the_same_thread_costs_nothing_and_keeps_the_lock(root: Path, tmp_path: Path) -> None:
    """Transactions run inside an enclosing hold of their host (a command holding a host for its
    whole run) send no lock requests of their own: one lock and one unlock for all of them, and the
    target stays locked between them, until the enclosing hold ends."""
    hosts = RemoteHosts(transport_for)
    engine = Engine(default_registry(), hosts=hosts, target_lock=TargetLocks(tmp_path / "ctl", timeout=5))
    key = f"ssh://target{root}"
    host = hosts(key)
    identity = LocalHost(str(root)).identity
    try:
        host.connection.counts.clear()
        with host.hold_target_lock(5.0):
            for index in range(3):
                assert engine.run(_edit(root, f"Nested{index}", "1")).status is Status.COMMITTED
                with pytest.raises(TargetLockTimeout):
                    with _target_locks(0).hold(str(root), identity):
                        pass
        assert (host.connection.counts["lock_target"], host.connection.counts["unlock_target"]) == (1, 1)
        with _target_locks(0).hold(str(root), identity):
            pass
    finally:
        hosts.close()


def test_a_host_held_for_its_whole_run_takes_turns_with_another_controller_process(root: Path, tmp_path: Path) -> None:
    """A command holding a host for its whole run takes the controller's lock of the target with the
    target's own, in the order every transaction takes them (controller's first): another controller
    process whose transaction holds the controller's lock and waits for the target's then waits for
    the whole run and commits after it, instead of the two waiting on each other until one's lock
    timeout ends its transaction errored."""
    ctl = tmp_path / "ctl"
    hosts, theirs = RemoteHosts(transport_for), RemoteHosts(transport_for)
    engine = Engine(default_registry(), hosts=hosts, target_lock=TargetLocks(ctl, timeout=3))
    # Another process of the controller: its own engine (its own in-process locks) and connection.
    other = Engine(default_registry(), hosts=theirs, target_lock=TargetLocks(ctl, timeout=3))
    key = f"ssh://target{root}"
    host = hosts(key)
    results: List[Status] = []
    try:
        with engine.locks.target(key, host):  # what kensa remediate -H holds for a host's run
            worker = threading.Thread(target=lambda: results.append(other.run(_edit(root, "Other", "1")).status))
            worker.start()
            # Until the other's transaction holds the controller's lock (it then waits for the target's).
            probe = TargetLocks(ctl, timeout=0)
            while worker.is_alive():
                try:
                    with probe.hold(key, host.identity):
                        pass
                except TargetLockTimeout:
                    break
                time.sleep(0.01)
            mine = engine.run(_edit(root, "Mine", "1"))
        worker.join()
        assert mine.status is Status.COMMITTED, mine
        assert results == [Status.COMMITTED]
    finally:
        hosts.close()
        theirs.close()


def _hold_until(hold: Callable[[], ContextManager[None]], held: threading.Event, until: threading.Event) -> None:
    """Hold what ``hold`` gives until ``until`` is set."""
    with hold():
        held.set()
        until.wait(60)


@pytest.mark.parametrize("target_holder_lets_go", [None, 1.3], ids=["keeps-it", "lets-go-after-the-timeout"])
def test_the_lock_timeout_is_one_deadline_for_the_controllers_lock_and_the_targets(
        root: Path, tmp_path: Path, target_holder_lets_go: Optional[float]) -> None:
    """A transaction waits for the controller's lock, then the target's, within one lock timeout:
    another controller process holds the controller's lock for 0.6 of it, a run on the target holds
    the target's lock past it. The transaction ends errored with TargetLockTimeout naming the target's
    holder, also when that holder lets go at 1.3 of the timeout, which a second wait restarted after
    the first (up to 1.6 of it) would have outlasted, committing the transaction."""
    timeout = 3.0
    hosts = RemoteHosts(transport_for)
    key = f"ssh://target{root}"
    host = hosts(key)  # connected before the clock starts
    engine = Engine(default_registry(), hosts=hosts, target_lock=TargetLocks(tmp_path / "ctl", timeout=timeout))
    ctl_held, target_held, ctl_free, target_free = (threading.Event() for _ in range(4))
    holders = [
        threading.Thread(target=_hold_until, args=(
            lambda: TargetLocks(tmp_path / "ctl", timeout=0).hold(key, host.identity), ctl_held, ctl_free)),
        threading.Thread(target=_hold_until, args=(
            lambda: _target_locks(0).hold(str(root), LocalHost(str(root)).identity), target_held, target_free)),
    ]
    timers = [threading.Timer(0.6 * timeout, ctl_free.set)]
    if target_holder_lets_go is not None:
        timers.append(threading.Timer(target_holder_lets_go * timeout, target_free.set))
    try:
        for holder in holders:
            holder.start()
        assert ctl_held.wait(10) and target_held.wait(10)
        for timer in timers:
            timer.start()
        result = engine.run(_edit(root, "Late", "1"))
    finally:
        ctl_free.set()
        target_free.set()
        for thread in timers + holders:
            thread.join()
        hosts.close()
    assert result.status is Status.ERRORED, result
    assert result.error is not None and result.error.type == "TargetLockTimeout", result.error
    assert f"held by pid {os.getpid()}" in result.error.message and "on that host" in result.error.message
    assert "Late" not in (root / "etc/app.conf").read_text()


class _ReleaseWhenErrored:
    """An audit emitter that, at the record saying transaction ``rule`` ended errored, lets the
    holder of a target lock go (``release``) before the engine goes on: the lock is free from
    then on, at that exact point of a recovery."""

    def __init__(self, rule: str, release: Callable[[], None]) -> None:
        self.rule, self.release = rule, release

    def transaction(self, txn_id: str, rule: str, host: str) -> object:
        owner = self

        class Recorder:
            def emit(self, phase: str, ok: bool) -> None:
                if rule == owner.rule and phase == Status.ERRORED.value:
                    owner.release()

        return Recorder()


def test_an_older_entry_under_another_alias_waits_for_the_newer_one(root: Path, tmp_path: Path) -> None:
    """Two interrupted transactions of one target under two inventory names. The newer one's
    target lock is held by another holder, which lets go right after recovery gives up on it:
    the older one, under the other name, is not restored before the newer one (the lock is by
    the target, not by the name). It is errored too, both stay interrupted, and the next
    recovery restores both, newest first."""
    journal = str(tmp_path / "j.db")
    for name in ("older", "newer"):
        engine = default_engine(journal, audit=False, remote=transport_for, target_lock_timeout=5)
        txn = _edit(root, "Port", name, name)
        host = engine.hosts(txn.host)
        assert isinstance(host, RemoteHost)

        def kill_at_apply(op: str, mechanism: Optional[str], pid: int = host.hello["pid"]) -> None:
            if op == "apply":
                os.kill(pid, signal.SIGKILL)
                time.sleep(0.2)

        host.connection.observer = kill_at_apply
        assert engine.run(txn).status is Status.ERRORED
        engine.hosts.close()  # type: ignore[attr-defined]
    release, released = threading.Event(), threading.Event()

    def hold() -> None:
        with _target_locks(0).hold(str(root), LocalHost(str(root)).identity):
            held.set()
            release.wait(30)
        released.set()

    held = threading.Event()
    holder = threading.Thread(target=hold)
    holder.start()
    assert held.wait(10)

    def let_go() -> None:
        release.set()
        assert released.wait(10)

    fresh = default_engine(journal, audit=False, remote=transport_for, target_lock_timeout=0.3)
    fresh.trail.audit = _ReleaseWhenErrored("edit-newer-Port", let_go)  # type: ignore[assignment]
    try:
        results = {r.rule: r for r in fresh.recover()}
    finally:
        release.set()
        holder.join(10)
    assert results["edit-newer-Port"].status is Status.ERRORED, results
    older = results["edit-older-Port"]
    assert older.status is Status.ERRORED and older.error is not None, older
    assert "a newer interrupted transaction" in older.error.message
    assert [r.rule for r in fresh.recover()] == ["edit-newer-Port", "edit-older-Port"]

