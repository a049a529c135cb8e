"""How many records per second the sender thread puts into the kernel, and
what a full ring drops when records are offered faster than that."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional, Tuple

import kensa.audit.emitter as audit

from . import conditions
from .emission import HOST, PHASE, RULE, TXN, open_warm, ring_bytes
from .sizes import Sizes


@dataclass(frozen=True)
class Sustained:
    """N records emitted as fast as the caller can, then flushed."""

    mode: str
    records: int
    seconds: float
    sent: int
    dropped: int
    kernel_lost: Optional[int]  # rise of the kernel's own lost counter

    @property
    def per_second(self) -> float:
        return self.sent / self.seconds if self.seconds else 0.0


@dataclass(frozen=True)
class Paced:
    """Records offered at a fixed rate for a while into the default-sized ring."""

    rate: int
    seconds: float
    offered: int
    sent: int
    dropped: int
    failed: int
    gaps: int
    kernel_lost: Optional[int]
    flushed: bool

    @property
    def offered_per_second(self) -> float:
        return self.offered / self.seconds if self.seconds else 0.0

    @property
    def drop_percent(self) -> float:
        return 100.0 * self.dropped / self.offered if self.offered else 0.0


@dataclass(frozen=True)
class Throughput:
    sustained: Tuple[Sustained, ...] = ()
    paced: Tuple[Paced, ...] = ()
    capacity: int = audit.DEFAULT_CAPACITY
    why_not: str = ""


def _lost_delta(before: Optional[int]) -> Optional[int]:
    after = conditions.kernel_lost()
    return None if before is None or after is None else after - before


def _sustained(mode: str, n: int) -> Sustained:
    # Room for every record, so the sender's pace is measured, not the ring's size.
    emitter = open_warm(mode, ring_bytes(n))
    emit = emitter.transaction(TXN, RULE, HOST).emit
    lost = conditions.kernel_lost()
    start = time.perf_counter()
    for _ in range(n):
        emit(PHASE, True)
    emitter.flush(120.0)
    seconds = time.perf_counter() - start
    stats = emitter.stats()
    emitter.close(1.0)
    return Sustained(mode, n, seconds, stats.sent, stats.dropped, _lost_delta(lost))


def _paced(rate: int, seconds: float) -> Paced:
    emitter = audit.open_emitter("async")
    emit = emitter.transaction(TXN, RULE, HOST).emit
    lost = conditions.kernel_lost()
    pc = time.perf_counter_ns
    start = pc()
    end = start + int(seconds * 1e9)
    offered = 0
    now = start
    while now < end:
        due = (now - start) * rate // 1_000_000_000
        while offered < due:
            emit(PHASE, True)
            offered += 1
        now = pc()
    elapsed = (now - start) / 1e9
    flushed = emitter.flush(30.0)
    stats = emitter.stats()
    emitter.close(1.0)
    return Paced(
        rate, elapsed, offered, stats.sent, stats.dropped, stats.failed, stats.gaps, _lost_delta(lost), flushed
    )


def measure(sizes: Sizes) -> Throughput:
    """Sustained sender rate (async and, for comparison, sync) and paced drop rates."""
    if isinstance(audit.open_emitter("sync"), audit.NoopEmitter):
        return Throughput(why_not=f"emission is off: {audit.status().detail}")
    sustained = (_sustained("async", sizes.sustained), _sustained("sync", sizes.sustained))
    conditions.wait_backlog_drained()
    paced = []
    for rate in sizes.paced_rates:
        paced.append(_paced(rate, sizes.paced_seconds))
        conditions.wait_backlog_drained()
    return Throughput(sustained, tuple(paced))
