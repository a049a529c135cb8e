"""The event bus: bounded per-subscriber queues, counted drops and errors, never blocking the publisher."""

from __future__ import annotations

import dataclasses
import threading
from typing import Any, List

import pytest

from kensa.engine.events import EventBus, PhaseEvent, TerminalEvent
from kensa.model import Phase, Status, TransactionResult


def phase_event(n: int) -> PhaseEvent:
    return PhaseEvent(f"txn-{n}", "rule", "host", Phase.APPLY, True, 0.0)


def test_every_subscriber_gets_every_event_in_order() -> None:
    """Two subscribers each receive all published events, in publish order."""
    bus = EventBus()
    first: List[Any] = []
    second: List[Any] = []
    subs = [bus.subscribe(first.append), bus.subscribe(second.append)]
    events = [phase_event(n) for n in range(50)]
    for event in events:
        bus.publish(event)
    assert all(sub.close(timeout=5.0) for sub in subs)
    assert first == events and second == events
    assert [sub.delivered for sub in subs] == [50, 50] and [sub.dropped for sub in subs] == [0, 0]


def test_full_queue_drops_and_counts_without_blocking_the_publisher() -> None:
    """With the callback stuck and the queue full, publish returns and counts each drop."""
    bus = EventBus()
    entered = threading.Event()
    release = threading.Event()

    def stuck(event: Any) -> None:
        entered.set()
        release.wait()

    sub = bus.subscribe(stuck, maxsize=2)
    try:
        bus.publish(phase_event(0))
        assert entered.wait(5.0)
        for n in range(1, 11):  # two fit in the queue, eight are dropped
            bus.publish(phase_event(n))
        assert sub.dropped == 8
        assert sub.close(timeout=0.05) is False  # still inside the callback
    finally:
        release.set()
    assert sub.close(timeout=5.0) is True
    assert sub.delivered == 3


def test_raising_subscriber_is_counted_and_keeps_receiving() -> None:
    """A callback that raises has each error counted and the last kept; later events still arrive."""
    bus = EventBus()
    seen: List[int] = []

    def flaky(event: Any) -> None:
        seen.append(len(seen))
        if len(seen) % 2:
            raise RuntimeError(f"bad event {len(seen)}")

    sub = bus.subscribe(flaky)
    for n in range(6):
        bus.publish(phase_event(n))
    assert sub.close(timeout=5.0)
    assert len(seen) == 6 and sub.errors == 3 and sub.delivered == 3
    assert isinstance(sub.last_error, RuntimeError) and "bad event 5" in str(sub.last_error)


def test_unsubscribe_stops_new_events_but_delivers_queued_ones() -> None:
    """After unsubscribe nothing new is queued; what was queued is still delivered."""
    bus = EventBus()
    gate = threading.Event()
    seen: List[Any] = []

    def slow(event: Any) -> None:
        gate.wait(5.0)
        seen.append(event)

    sub = bus.subscribe(slow)
    queued = [phase_event(n) for n in range(3)]
    for event in queued:
        bus.publish(event)
    sub.unsubscribe()
    assert not bus.active and not sub.active
    bus.publish(phase_event(99))
    gate.set()
    assert sub.close(timeout=5.0)
    assert seen == queued


def test_bus_without_subscribers_is_inactive() -> None:
    """The engine skips building events when nobody listens: active is False until a subscribe."""
    bus = EventBus()
    assert not bus.active
    sub = bus.subscribe(lambda event: None)
    assert bus.active
    assert bus.close(timeout=5.0)
    assert not bus.active and not sub.active


def test_terminal_event_carries_the_result() -> None:
    """publish_terminal sends the result's ids, status and ok, and the result itself."""
    bus = EventBus()
    seen: List[Any] = []
    sub = bus.subscribe(seen.append)
    result = TransactionResult("t1", "r1", "h1", Status.ROLLED_BACK, True)
    bus.publish_terminal(result, False)
    assert sub.close(timeout=5.0)
    (event,) = seen
    assert isinstance(event, TerminalEvent)
    assert (event.txn_id, event.rule, event.host, event.status, event.ok) == ("t1", "r1", "h1", Status.ROLLED_BACK, False)
    assert event.result is result and event.time > 0


def test_events_are_frozen() -> None:
    """Events cross threads, so they cannot be changed after publishing."""
    with pytest.raises(dataclasses.FrozenInstanceError):
        phase_event(0).ok = False  # type: ignore[misc]


@pytest.mark.parametrize("maxsize", [0, -1, True, 1.5])
def test_queue_size_must_be_positive(maxsize: Any) -> None:
    """A subscription needs room for at least one event."""
    with pytest.raises(ValueError):
        EventBus().subscribe(lambda event: None, maxsize=maxsize)
