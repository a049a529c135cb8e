"""Python-level state a forked child must not inherit: locks held by parent threads.

A lock or condition held by another thread at ``fork`` stays held in the child,
where that thread does not exist, so the child's next use waits forever.
Objects that hold such state register with :func:`reset_in_child`; in the child,
before any other code runs, each live one gets its ``_after_fork_in_child()``
called (single-threaded). Objects are held weakly: registering keeps nothing alive.
"""

from __future__ import annotations

import os
import weakref
from typing import Protocol


class ForkAware(Protocol):
    def _after_fork_in_child(self) -> None: ...


_LIVE: "weakref.WeakSet[ForkAware]" = weakref.WeakSet()


def reset_in_child(obj: ForkAware) -> None:
    """Call ``obj._after_fork_in_child()`` in every child forked while ``obj`` is alive."""
    _LIVE.add(obj)


def _reset_all() -> None:
    for obj in list(_LIVE):
        obj._after_fork_in_child()


os.register_at_fork(after_in_child=_reset_all)
