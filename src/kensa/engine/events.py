"""In-process event bus: phase and terminal events of transactions, for observers.

A subscriber can never delay or change a transaction. Each subscription owns a
bounded queue and a daemon thread that calls the callback; the engine's thread
only appends to the queue. A full queue drops the event and counts the drop; an
exception raised by the callback is counted and kept (``last_error``), never
propagated. A callback that blocks forever only stalls its own queue, which then
drops.

Forking is safe: in the child every bus and subscription gets fresh locks (a
parent thread may have held one at fork time), events queued before the fork
are left to the parent, and a subscription's delivery thread, which does not
exist in the child, is started again with the child's first event.
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass
from typing import Callable, Deque, Optional, Tuple, Union

from kensa.support.afterfork import reset_in_child
from kensa.model import Phase, Status, TransactionResult

__all__ = ["DEFAULT_QUEUE_SIZE", "Event", "EventBus", "PhaseEvent", "Subscription", "TerminalEvent"]

#: Events a subscription holds before it starts dropping.
DEFAULT_QUEUE_SIZE = 1024


@dataclass(frozen=True)
class PhaseEvent:
    """A transaction crossed a phase boundary (the same boundaries as the audit records)."""

    txn_id: str
    rule: str
    host: str
    phase: Phase
    ok: bool
    time: float  # seconds since the epoch (time.time())


@dataclass(frozen=True)
class TerminalEvent:
    """A transaction ended; ``result`` is the result the engine returned."""

    txn_id: str
    rule: str
    host: str
    status: Status
    ok: bool
    time: float  # seconds since the epoch (time.time())
    result: TransactionResult


Event = Union[PhaseEvent, TerminalEvent]
Callback = Callable[[Event], object]


class Subscription:
    """One subscriber's queue and delivery thread; see the module docstring."""

    def __init__(self, bus: EventBus, callback: Callback, maxsize: int) -> None:
        if isinstance(maxsize, bool) or not isinstance(maxsize, int) or maxsize < 1:
            raise ValueError(f"maxsize must be a positive number of events, got {maxsize!r}")
        self._bus = bus
        self._callback = callback
        self._maxsize = maxsize
        self._items: Deque[Event] = collections.deque()
        self._cond = threading.Condition(threading.Lock())
        self._open = True
        self._dropped = 0
        self._errors = 0
        self._delivered = 0
        self._last_error: Optional[BaseException] = None
        self._thread: Optional[threading.Thread] = None
        self._start_delivery()
        reset_in_child(self)

    def _start_delivery(self) -> None:
        name = getattr(self._callback, "__qualname__", type(self._callback).__name__)
        self._thread = threading.Thread(target=self._deliver, name=f"kensa-events-{name}", daemon=True)
        self._thread.start()

    def _after_fork_in_child(self) -> None:
        # Runs single-threaded in the child: the lock may have been held by a parent
        # thread, the queued events are the parent's to deliver, and the delivery
        # thread is gone.
        self._cond = threading.Condition(threading.Lock())
        self._items.clear()
        self._thread = None

    @property
    def dropped(self) -> int:
        """Events not queued because the queue was full."""
        with self._cond:
            return self._dropped

    @property
    def errors(self) -> int:
        """Calls of the callback that raised."""
        with self._cond:
            return self._errors

    @property
    def delivered(self) -> int:
        """Calls of the callback that returned."""
        with self._cond:
            return self._delivered

    @property
    def last_error(self) -> Optional[BaseException]:
        """The exception the callback raised most recently, if any."""
        with self._cond:
            return self._last_error

    @property
    def active(self) -> bool:
        """True until :meth:`unsubscribe` (or :meth:`close`)."""
        return self._open

    def offer(self, event: Event) -> None:
        """Queue ``event`` without blocking; drop and count it when the queue is full."""
        with self._cond:
            if not self._open:
                return
            if len(self._items) >= self._maxsize:
                self._dropped += 1
                return
            self._items.append(event)
            if self._thread is None:
                self._start_delivery()
            self._cond.notify()

    def unsubscribe(self) -> None:
        """Receive no new events; events already queued are still delivered."""
        self._bus._remove(self)
        with self._cond:
            self._open = False
            self._cond.notify()

    def close(self, timeout: Optional[float] = 1.0) -> bool:
        """Unsubscribe and wait up to ``timeout`` seconds for the queue to drain.

        Returns False when the callback is still running (a blocked callback
        keeps its daemon thread; it never holds up the process's exit).
        """
        self.unsubscribe()
        thread = self._thread
        if thread is None:
            return True
        thread.join(timeout)
        return not thread.is_alive()

    def _deliver(self) -> None:
        while True:
            with self._cond:
                while not self._items and self._open:
                    self._cond.wait()
                if not self._items:
                    return
                event = self._items.popleft()
            try:
                self._callback(event)
            except Exception as exc:  # a subscriber's bug is its own: count it, keep going
                with self._cond:
                    self._errors += 1
                    self._last_error = exc
            else:
                with self._cond:
                    self._delivered += 1

    def __repr__(self) -> str:
        return f"Subscription(active={self._open}, dropped={self.dropped}, errors={self.errors})"


class EventBus:
    """Fans events out to subscriptions; publishing never blocks on a subscriber."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Replaced, never mutated, so publish can iterate without the lock.
        self._subs: Tuple[Subscription, ...] = ()
        reset_in_child(self)

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()

    @property
    def active(self) -> bool:
        """True when anyone listens: the engine builds no event objects otherwise."""
        return bool(self._subs)

    def subscribe(self, callback: Callback, maxsize: int = DEFAULT_QUEUE_SIZE) -> Subscription:
        """Call ``callback(event)`` for every later event, on a thread of its own."""
        sub = Subscription(self, callback, maxsize)
        with self._lock:
            self._subs = self._subs + (sub,)
        return sub

    def publish(self, event: Event) -> None:
        """Queue ``event`` for every subscription (dropping where a queue is full)."""
        for sub in self._subs:
            sub.offer(event)

    def publish_phase(self, txn_id: str, rule: str, host: str, phase: Phase, ok: bool) -> None:
        """Publish a :class:`PhaseEvent` stamped now, if anyone listens."""
        if self._subs:
            self.publish(PhaseEvent(txn_id, rule, host, phase, ok, time.time()))

    def publish_terminal(self, result: TransactionResult, ok: bool) -> None:
        """Publish the :class:`TerminalEvent` of ``result`` stamped now, if anyone listens."""
        if self._subs:
            self.publish(TerminalEvent(result.txn_id, result.rule, result.host, result.status, ok, time.time(), result))

    def close(self, timeout: Optional[float] = 1.0) -> bool:
        """Close every subscription; True when all drained within ``timeout`` each."""
        with self._lock:
            subs = self._subs
        return all([sub.close(timeout) for sub in subs])

    def _remove(self, sub: Subscription) -> None:
        with self._lock:
            self._subs = tuple(s for s in self._subs if s is not sub)
