"""The target's own lock, held through its agent: one writer per target across machines.

The controller's :class:`kensa.hosts.targetlock.TargetLocks` keeps out the
controller's other processes. A remote target is also written by kensa runs
on that machine, by other controllers and by a second inventory name of the
same machine: :func:`hold_target_lock` has the agent take the lock a kensa
run on the target takes for the same root (:mod:`kensa.hosts.lockfiles`:
``/run/kensa/targets`` for root there), for one transaction, rollback by id
or recovery of one entry. The agent tries for at most :data:`ATTEMPT_SECONDS`
per request (half the operation timeout when that is shorter), so no request
outlasts the operation timeout however long the
wait; the controller asks again until its own timeout. The lock is the
agent's open file: an agent that ends (its connection lost, its controller
gone) holds nothing. The unlock is answered, so once the ``with`` block has
ended the target's lock is free.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Iterator, Optional

from kensa.errors import KensaError
from kensa.hosts.connection import AgentConnection
from kensa.hosts.lockfiles import busy

__all__ = ["ATTEMPT_SECONDS", "hold_target_lock"]

#: Longest the agent tries for the lock in one request.
ATTEMPT_SECONDS = 1.0


def _lock_answer(value: Any) -> bool:
    return (isinstance(value, dict) and isinstance(value.get("held"), bool) and isinstance(value.get("path"), str)
            and isinstance(value.get("holders"), list) and all(type(pid) is int for pid in value["holders"]))


@contextlib.contextmanager
def hold_target_lock(connection: AgentConnection, key: str, timeout: Optional[float],
                     deadline: Optional[float] = None) -> Iterator[None]:
    """Hold the target's lock (see the module docstring) for the ``with`` block.

    ``timeout``: seconds to wait for another holder (None: as long as it takes);
    ``deadline``, when given, is the ``time.monotonic()`` by which the wait ends
    instead: what is left of ``timeout`` after the controller's own lock was
    waited for. Raises TargetLockTimeout naming ``key``, ``timeout``, the holders'
    pids on the target and the lock file there; nothing has run then."""
    if deadline is None and timeout is not None:
        deadline = time.monotonic() + timeout
    # Half the operation timeout at most: a request that waits longer is taken for a hung agent.
    attempt = min(ATTEMPT_SECONDS, connection.operation_timeout / 2)
    while True:
        left = attempt if deadline is None else max(0.0, min(attempt, deadline - time.monotonic()))
        found = connection.request("lock_target", wait=left)
        if not _lock_answer(found):
            connection.broken(f"answered lock_target with {type(found).__name__}, which is not what lock_target answers")
        if found["held"]:
            break
        if deadline is not None and time.monotonic() >= deadline:
            raise busy(key, found["holders"], found["path"], timeout, " on that host")
    try:
        yield
    finally:
        try:
            # Answered, not sent one way: when the block's caller goes on, the target is free for
            # a run there or another connection's agent (a one-way unlock could still be queued).
            connection.request("unlock_target")
        except KensaError:
            # The agent is gone, was stopped (no answer in time, an answer not the protocol) or
            # answered an error: closing ends it, so its lock goes with it whatever happened, and
            # what the block raised or returned is what counts.
            connection.close()
