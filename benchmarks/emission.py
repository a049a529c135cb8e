"""Per-record emission cost on the calling thread: kensa against its peers.

Every row writes the same record body (libaudit's ``audit_log_user_message``
builds its own tail from the same message). Rows are interleaved in rounds so
that drift on a shared machine hits them alike, and the garbage collector is
off while sampling (a collection is not the emitter's cost; it is run between
rounds instead).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import kensa.audit.emitter as audit

from . import conditions, peers
from .sizes import Sizes
from .timing import Summary, sample_calls, sample_timer, summarize

TXN = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
RULE = "ssh-disable-root-login"
HOST = "web01"
PHASE = "apply"
BODY = audit.format_phase_record(TXN, PHASE, True, RULE, HOST)
# libaudit appends its own " res=success" (and exe, hostname, addr, terminal).
MESSAGE = BODY[: -len(b" res=success")]


# Above glibc's largest mmap threshold (32 MiB): always a fresh, untouched mapping.
FRESH_RING = 64 << 20
_MCL_FUTURE = 2


def open_warm(mode: str, capacity: int) -> audit.Emitter:
    """An emitter whose ring is already in memory.

    A process that has emitted a ring's worth of records has faulted every
    page of its ring in; a fresh one pays a page fault every few records on
    its first pass. ``mlockall(MCL_FUTURE)`` around the allocation populates
    the pages up front, so steady-state rows measure the steady state (the
    fresh-ring row shows the first pass).
    """
    libc = ctypes.CDLL(None, use_errno=True)
    locked = libc.mlockall(_MCL_FUTURE) == 0
    try:
        emitter = audit.open_emitter(mode, capacity=capacity)
    finally:
        if locked:
            libc.munlockall()
    if locked and isinstance(emitter, audit.NoopEmitter) and emitter.reason == "no_memory":
        # Over RLIMIT_MEMLOCK (no CAP_IPC_LOCK): a cold ring beats none.
        emitter = audit.open_emitter(mode, capacity=capacity)
    return emitter


def ring_bytes(records: int) -> int:
    """A ring capacity that holds ``records`` of BODY whatever the entry header
    (the extension's per-entry overhead is well under 128 bytes)."""
    return max(audit.DEFAULT_CAPACITY, (records + 1024) * (len(BODY) + 128))


HEALTHY = "healthy"
STOPPED = "auditd_stopped"
BUSY = "busy_core"
SCENARIOS = {
    HEALTHY: "auditd running normally",
    STOPPED: "auditd stopped with SIGSTOP (a hung audit daemon)",
    BUSY: "auditd running, a busy-loop process loading the other core",
}

TIMER = "timer: perf_counter_ns pair"
EMPTY = "empty Python call, 2 args"
NOOP = "kensa no-op emitter"
ASYNC = "kensa async"
ASYNC_FULL = "kensa async, ring full (drops)"
ASYNC_FRESH = "kensa async, fresh ring (page faults)"
SYNC = "kensa sync"
STDLIB = "stdlib socket sendto"
AUDIT_SEND = "libaudit audit_send"
LOG_ADDR = "libaudit audit_log_user_message, addr"
LOG_HOST = "libaudit audit_log_user_message, hostname"


@dataclass(frozen=True)
class Row:
    """One way of writing a record, measured; ``why_not`` when it was not."""

    name: str
    summary: Optional[Summary]
    why_not: str = ""
    note: str = ""


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    rows: Tuple[Row, ...] = ()
    emitters: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    why_not: str = ""

    def row(self, name: str) -> Optional[Summary]:
        for row in self.rows:
            if row.name == name:
                return row.summary
        return None


@dataclass
class _Case:
    name: str
    fn: Optional[Callable[..., Any]]  # None: the timer row
    args: Tuple[Any, ...] = ()
    count: int = 0
    budget_s: float = 0.0  # 0: no time budget
    spent_ns: int = 0
    note: str = ""
    why_not: str = ""
    after_round: Optional[Callable[[], Any]] = None
    samples: List[int] = field(default_factory=list)


def _empty_call(phase: str, ok: bool) -> None:
    return None


def _kensa_case(
    name: str,
    mode: str,
    capacity: int,
    count: int,
    budget_s: float,
    stack: contextlib.ExitStack,
    stats: Dict[str, Dict[str, Any]],
    flush_between: bool,
    warm: bool = True,
) -> _Case:
    emitter = open_warm(mode, capacity) if warm else audit.open_emitter(mode, capacity=capacity)
    if isinstance(emitter, audit.NoopEmitter):
        return _Case(name, None, why_not=f"emission is off: {emitter.detail}")

    def finish() -> None:
        emitter.flush(5.0)
        stats[name] = dict(vars(emitter.stats()), capacity=capacity if mode == "async" else None)
        emitter.close(1.0)

    stack.callback(finish)
    rec = emitter.transaction(TXN, RULE, HOST)
    after = (lambda: emitter.flush(5.0)) if flush_between else None
    return _Case(name, rec.emit, (PHASE, True), count, budget_s, after_round=after)


def _peer_case(
    name: str,
    make: Callable[[], peers.PeerCall],
    count: int,
    budget_s: float,
    stack: contextlib.ExitStack,
    note: str = "",
) -> _Case:
    refusal = conditions.audit_write_refusal()
    if refusal:
        return _Case(name, None, why_not=refusal)
    try:
        call = make()
    except peers.PeerUnavailable as exc:
        return _Case(name, None, why_not=str(exc))
    stack.callback(call.close)
    return _Case(name, call.fn, call.args, count, budget_s, note=note)


def _cases(sizes: Sizes, scenario: str, stack: contextlib.ExitStack, stats: Dict[str, Dict[str, Any]]) -> List[_Case]:
    stopped = scenario == STOPPED
    kernel_budget = sizes.stopped_budget_s if stopped else 0.0
    big_ring = ring_bytes(sizes.cheap)
    noop = audit.NoopEmitter("async", "benchmark", "no-op baseline").transaction(TXN, RULE, HOST)
    cases = [
        _Case(TIMER, None, count=sizes.cheap, note="not subtracted from any row"),
        _Case(EMPTY, _empty_call, (PHASE, True), sizes.cheap),
        _Case(NOOP, noop.emit, (PHASE, True), sizes.cheap, note="validates the phase name"),
        _kensa_case(ASYNC, "async", big_ring, sizes.cheap, 0.0, stack, stats, flush_between=not stopped),
    ]
    if scenario == HEALTHY:
        cases.append(
            _kensa_case(
                ASYNC_FRESH, "async", FRESH_RING, sizes.cheap, 0.0, stack, stats, flush_between=True, warm=False
            )
        )
    if stopped:
        cases.append(_kensa_case(ASYNC_FULL, "async", 1024, sizes.cheap, 0.0, stack, stats, flush_between=False))
    cases.append(
        _kensa_case(
            SYNC, "sync", audit.DEFAULT_CAPACITY, sizes.kernel, kernel_budget, stack, stats, flush_between=False
        )
    )
    others: List[Tuple[str, Callable[[], peers.PeerCall], int, float, str]] = [
        (STDLIB, lambda: peers.stdlib_socket(BODY), sizes.kernel, kernel_budget, ""),
        (AUDIT_SEND, lambda: peers.libaudit_send(BODY), sizes.kernel, kernel_budget, "waits for the ACK"),
        (
            LOG_ADDR,
            lambda: peers.libaudit_log_user_message(MESSAGE, b"", b"127.0.0.1"),
            sizes.kernel,
            kernel_budget,
            "",
        ),
        (
            LOG_HOST,
            lambda: peers.libaudit_log_user_message(MESSAGE, HOST.encode(), b""),
            sizes.hostname,
            sizes.hostname_budget_s,
            f"resolves {HOST!r} on every call; few samples",
        ),
    ]
    if stopped and sizes.name == "quick":
        # One blocked send can take seconds with auditd stopped: a smoke run
        # keeps kensa sync as the only kernel row to show it.
        return cases + [_Case(name, None, why_not="skipped in a quick run with auditd stopped") for name, *_ in others]
    return cases + [_peer_case(name, make, count, budget, stack, note) for name, make, count, budget, note in others]


def _run_rounds(cases: List[_Case], rounds: int) -> None:
    """Sample every case a share at a time. A case with a time budget gets a
    share of it per round and none once it has spent it all: one blocked call
    can overrun its round, never the whole budget by more than that call."""
    for _ in range(rounds):
        for case in cases:
            if case.why_not:
                continue
            share = -(-case.count // rounds)
            share = min(share, case.count - len(case.samples))
            budget_ns = int(case.budget_s * 1e9)
            if share <= 0 or (budget_ns and case.spent_ns >= budget_ns):
                continue
            started = time.perf_counter_ns()
            deadline = started + budget_ns // rounds if budget_ns else 0
            try:
                if case.fn is None:
                    sample_timer(share, case.samples)
                else:
                    sample_calls(case.fn, case.args, share, case.samples, deadline)
            except OSError as exc:
                case.why_not = f"failed after {len(case.samples)} samples: {exc}"
            case.spent_ns += time.perf_counter_ns() - started
            if case.after_round is not None:
                case.after_round()
            gc.collect()


def measure(sizes: Sizes, scenario: str) -> Scenario:
    """Measure every row under one scenario (healthy, auditd stopped, busy core)."""
    description = SCENARIOS[scenario]
    pid = None
    if scenario == STOPPED:
        refusal = conditions.audit_write_refusal()
        if refusal:
            return Scenario(scenario, description, why_not=f"nothing to write into a hung audit log: {refusal}")
        pid = conditions.auditd_pid()
        if pid is None:
            return Scenario(scenario, description, why_not="no running auditd found (auditctl -s names none)")
    stats: Dict[str, Dict[str, Any]] = {}
    try:
        return _measure(sizes, scenario, description, pid, stats)
    except PermissionError as exc:
        return Scenario(scenario, description, why_not=f"could not stop auditd: {exc}")


def _measure(
    sizes: Sizes, scenario: str, description: str, pid: Optional[int], stats: Dict[str, Dict[str, Any]]
) -> Scenario:
    with contextlib.ExitStack() as stack:
        cases = _cases(sizes, scenario, stack, stats)
        if pid is not None:
            stack.enter_context(conditions.auditd_stopped(pid))
        elif scenario == BUSY:
            stack.enter_context(conditions.busy_core())
        gc_was_enabled = gc.isenabled()
        gc.collect()
        gc.disable()
        try:
            _run_rounds(cases, sizes.rounds)
        finally:
            if gc_was_enabled:
                gc.enable()
    rows = tuple(Row(c.name, summarize(c.samples), c.why_not, c.note) for c in cases)
    return Scenario(scenario, description, rows, stats)
