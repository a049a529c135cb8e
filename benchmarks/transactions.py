"""What emission adds to whole transactions, and what the journal adds to a batch.

Per transaction: the same transactions run through the engine with no emitter
(the engine's default), kensa async and kensa sync, alternating. The
wall time of ``Engine.run`` gives the added time per transaction; a thin
wrapper around the recorder, in separate runs, times each boundary's emit call
inside the engine, which is the added time per phase (the engine's own phase
timings deliberately exclude emission).

Batch: ``Engine.run_many`` over N transactions of a trivial handler, without
and with the SQLite journal, against the floor of N and 2N fsyncs of a small
write to a file in the journal's directory, measured in the same run.
"""

from __future__ import annotations

import gc
import os
import random
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple

import kensa.audit.emitter as audit
from kensa.model import PreState, RollbackResult, Step, StepResult, Transaction

from .sizes import Sizes
from .timing import Summary, summarize

BASELINE = "no emitter (engine default)"
BASELINE_AGAIN = "no emitter, again (noise)"
ASYNC = "kensa async"
SYNC = "kensa sync"
# The per-transaction call that encodes txn, rule and host once.
BIND = "transaction()"


class MemoryFlag:
    """A trivial capturable handler: one value in a dict, nothing else."""

    name = "bench_memory"
    capturable = True

    def __init__(self) -> None:
        self.store: Dict[str, Any] = {}

    def validate(self, host: Any, params: Mapping[str, Any]) -> bool:
        return bool(self.store.get(params["key"]) == params["value"])

    def capture(self, host: Any, params: Mapping[str, Any]) -> PreState:
        key = params["key"]
        return PreState(self.name, params, {"present": key in self.store, "value": self.store.get(key)})

    def apply(self, host: Any, params: Mapping[str, Any], pre: Optional[PreState]) -> StepResult:
        self.store[params["key"]] = params["value"]
        return StepResult(self.name, ok=True, changed=True)

    def rollback(self, host: Any, pre: PreState) -> RollbackResult:
        key = pre.params["key"]
        if pre.data["present"]:
            self.store[key] = pre.data["value"]
        else:
            self.store.pop(key, None)
        return RollbackResult(self.name, ok=True)


class _EmptyRecorder:
    __slots__ = ()

    def emit(self, phase: str, ok: bool) -> None:
        pass


class _EmptyEmitter:
    """The same nothing the engine's default emitter does, to wrap for timing."""

    def transaction(self, txn: str, rule: str, host: str) -> _EmptyRecorder:
        return _EmptyRecorder()


class _TimedRecorder:
    __slots__ = ("_emit", "_out")

    def __init__(self, inner: Any, out: List[Tuple[str, int]]) -> None:
        self._emit = inner.emit
        self._out = out

    def emit(self, phase: str, ok: bool) -> None:
        pc = time.perf_counter_ns
        t0 = pc()
        self._emit(phase, ok)
        t1 = pc()
        self._out.append((phase, t1 - t0))


class _TimedEmitter:
    """Times each emit call the engine makes; the same wrapper for every variant."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.samples: List[Tuple[str, int]] = []

    def transaction(self, txn: str, rule: str, host: str) -> _TimedRecorder:
        pc = time.perf_counter_ns
        t0 = pc()
        inner = self.inner.transaction(txn, rule, host)
        t1 = pc()
        self.samples.append((BIND, t1 - t0))
        return _TimedRecorder(inner, self.samples)


@dataclass(frozen=True)
class Variant:
    """One emitter's transactions: wall time per transaction, emit time per phase."""

    name: str
    per_txn: Optional[Summary] = None
    per_phase: Dict[str, Summary] = field(default_factory=dict)
    statuses: Dict[str, int] = field(default_factory=dict)
    why_not: str = ""


@dataclass(frozen=True)
class Workload:
    name: str
    description: str
    variants: Tuple[Variant, ...] = ()
    why_not: str = ""

    def variant(self, name: str) -> Optional[Variant]:
        for v in self.variants:
            if v.name == name and v.per_txn is not None:
                return v
        return None

    def added_percent(self, name: str) -> Optional[float]:
        """Wall clock: how much longer the median transaction takes, in % of the baseline's."""
        base, other = self.variant(BASELINE), self.variant(name)
        if base is None or other is None or base.per_txn is None or other.per_txn is None:
            return None
        return 100.0 * (other.per_txn.p50_ns - base.per_txn.p50_ns) / base.per_txn.p50_ns

    def added_direct_ns(self, name: str) -> Optional[int]:
        """Direct: the emitter's calls inside the engine (transaction() and every
        boundary's emit), median per call, less the same calls with no emitter."""
        base, other = self.variant(BASELINE), self.variant(name)
        if base is None or other is None:
            return None
        total = 0
        for call, summary in other.per_phase.items():
            mine = base.per_phase.get(call)
            total += summary.p50_ns - (mine.p50_ns if mine else 0)
        return total

    def added_direct_percent(self, name: str) -> Optional[float]:
        """:meth:`added_direct_ns` in % of the baseline's median transaction."""
        base, added = self.variant(BASELINE), self.added_direct_ns(name)
        if base is None or base.per_txn is None or added is None:
            return None
        return 100.0 * added / base.per_txn.p50_ns


@dataclass(frozen=True)
class Batch:
    transactions: int
    emitter: str
    reps: int
    no_journal_s: float
    journal_s: float
    floor_1x_s: float
    floor_2x_s: float
    statuses: Dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Transactions:
    workloads: Tuple[Workload, ...] = ()
    batch: Optional[Batch] = None
    batch_why_not: str = ""
    why_not: str = ""


def _engine_class() -> Tuple[Any, str]:
    try:
        from kensa.engine import Engine
    except ImportError as exc:
        return None, f"kensa.engine.Engine is not available ({exc})"
    return Engine, ""


def _emitters() -> Dict[str, Any]:
    """Variant name -> emitter (None: the engine's default), or a reason string."""
    out: Dict[str, Any] = {BASELINE: None, BASELINE_AGAIN: None}
    for name, mode in ((ASYNC, "async"), (SYNC, "sync")):
        emitter = audit.open_emitter(mode)
        out[name] = f"emission is off: {emitter.detail}" if isinstance(emitter, audit.NoopEmitter) else emitter
    return out


def _counter() -> Iterator[int]:
    n = 0
    while True:
        n += 1
        yield n


def _trivial_txn(n: int) -> Transaction:
    return Transaction("bench-trivial", (Step(MemoryFlag.name, {"key": "k", "value": n}),), host="bench")


def _file_txn(n: int) -> Transaction:
    content = f"# kensa benchmark\nvalue = {n}\n"
    return Transaction(
        "bench-file", (Step("file_content", {"path": "/etc/kensa-bench.conf", "content": content}),), host="bench"
    )


def _run_workload(
    name: str,
    description: str,
    engine_cls: Any,
    registry: Mapping[str, Any],
    hosts: Callable[[str], Any],
    make_txn: Callable[[int], Transaction],
    count: int,
    rounds: int,
    emitters: Dict[str, Any],
) -> Workload:
    numbers = _counter()
    live = {k: v for k, v in emitters.items() if not isinstance(v, str)}
    plain = {k: engine_cls(registry, audit=v, hosts=hosts) for k, v in live.items()}
    timed_emitters = {k: _TimedEmitter(_EmptyEmitter() if v is None else v) for k, v in live.items()}
    timed = {k: engine_cls(registry, audit=timed_emitters[k], hosts=hosts) for k in live}
    wall: Dict[str, List[int]] = {k: [] for k in live}
    statuses: Dict[str, Dict[str, int]] = {k: {} for k in live}
    per_round = max(1, -(-count // rounds))
    pc = time.perf_counter_ns
    keys = list(live)
    shuffle = random.Random(1).shuffle
    for key in live:  # warm caches and lazy imports; not measured
        for _ in range(max(5, count // 20)):
            plain[key].run(make_txn(next(numbers)))
            timed[key].run(make_txn(next(numbers)))
    for t in timed_emitters.values():
        t.samples.clear()
    for _ in range(rounds):
        for _ in range(per_round):
            # Variants alternate transaction by transaction, in a fresh random
            # order each time: drift on a shared machine hits them alike, and
            # no variant always follows the same one (a transaction pays for
            # the after-effects of the one before it: auditd still at work).
            shuffle(keys)
            for key in keys:
                emitter = live[key]
                txn = make_txn(next(numbers))
                t0 = pc()
                result = plain[key].run(txn)
                t1 = pc()
                wall[key].append(t1 - t0)
                status = result.status.value
                statuses[key][status] = statuses[key].get(status, 0) + 1
                timed[key].run(make_txn(next(numbers)))
                if emitter is not None:
                    emitter.flush(5.0)  # the next variant starts with the kernel idle
        gc.collect()
    variants = []
    for key, value in emitters.items():
        if isinstance(value, str):
            variants.append(Variant(key, why_not=value))
            continue
        phases: Dict[str, List[int]] = {}
        for phase, ns in timed_emitters[key].samples:
            phases.setdefault(phase, []).append(ns)
        per_phase = {p: s for p, s in ((p, summarize(v)) for p, v in phases.items()) if s is not None}
        variants.append(Variant(key, summarize(wall[key]), per_phase, statuses[key]))
    return Workload(name, description, tuple(variants))


def _fsync_floor(directory: str, count: int) -> float:
    """Seconds for ``count`` small appends, each followed by fsync."""
    path = os.path.join(directory, "fsync-floor")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    try:
        record = b"x" * 100
        start = time.perf_counter()
        for _ in range(count):
            os.write(fd, record)
            os.fsync(fd)
        return time.perf_counter() - start
    finally:
        os.close(fd)
        os.unlink(path)


def _batch(engine_cls: Any, sizes: Sizes, directory: str) -> Batch:
    from kensa.journal.store import SqliteJournal

    emitter = audit.open_emitter("async")
    label = "kensa async" if not isinstance(emitter, audit.NoopEmitter) else f"none ({emitter.reason})"
    n = sizes.batch
    numbers = _counter()
    handler = MemoryFlag()
    registry = {handler.name: handler}
    totals: Dict[str, List[float]] = {"none": [], "journal": [], "floor1": [], "floor2": []}
    statuses: Dict[str, int] = {}
    # Each repetition is measured in slices that alternate between the four
    # kinds, so a change in the disk's pace hits the journal and its floor alike.
    slices = 5
    for rep in range(sizes.batch_reps):
        journal = SqliteJournal(os.path.join(directory, f"journal-{rep}.db"))
        engines = {
            "none": engine_cls(registry, audit=emitter),
            "journal": engine_cls(registry, audit=emitter, journal=journal),
        }
        spent = dict.fromkeys(totals, 0.0)
        for part in range(slices):
            size = n // slices + (1 if part < n % slices else 0)
            spent["floor1"] += _fsync_floor(directory, size)
            spent["floor2"] += _fsync_floor(directory, 2 * size)
            for kind, engine in engines.items():
                txns = [_trivial_txn(next(numbers)) for _ in range(size)]
                start = time.perf_counter()
                results = engine.run_many(txns)
                spent[kind] += time.perf_counter() - start
                for r in results:
                    statuses[r.status.value] = statuses.get(r.status.value, 0) + 1
            emitter.flush(5.0)
        journal.close()
        for kind, seconds in spent.items():
            totals[kind].append(seconds)
    emitter.close(1.0)
    med = {k: statistics.median(v) for k, v in totals.items()}
    return Batch(n, label, sizes.batch_reps, med["none"], med["journal"], med["floor1"], med["floor2"], statuses)


def _scratch_parent() -> Optional[str]:
    # /var/tmp is disk-backed on usual systems; /tmp is often tmpfs, where
    # fsync costs nothing and the floor would mean nothing.
    return "/var/tmp" if os.path.isdir("/var/tmp") else None


def measure(sizes: Sizes, directory: Optional[str] = None) -> Transactions:
    """Per-transaction and per-phase cost of emission, then the batch against the fsync floor."""
    engine_cls, why = _engine_class()
    if engine_cls is None:
        return Transactions(why_not=why)
    emitters = _emitters()
    workdir = tempfile.mkdtemp(prefix="kensa-bench-", dir=directory or _scratch_parent())
    try:
        memory = MemoryFlag()
        workloads = [
            _run_workload(
                "trivial",
                "one in-memory step (a dict entry)",
                engine_cls,
                {memory.name: memory},
                lambda key: key,
                _trivial_txn,
                sizes.txn_trivial,
                sizes.rounds,
                emitters,
            )
        ]
        try:
            from kensa.handlers.file_content import FileContent
            from kensa.hosts.local import LocalHost
        except ImportError as exc:
            workloads.append(Workload("file_content", "", why_not=f"file_content handler not available ({exc})"))
        else:
            root = os.path.join(workdir, "root")
            os.makedirs(os.path.join(root, "etc"))
            host = LocalHost(root)
            workloads.append(
                _run_workload(
                    "file_content",
                    "one file_content step in a temporary root (atomic write, fsyncs)",
                    engine_cls,
                    {"file_content": FileContent()},
                    lambda key: host,
                    _file_txn,
                    sizes.txn_file,
                    sizes.rounds,
                    emitters,
                )
            )
        try:
            batch: Optional[Batch] = _batch(engine_cls, sizes, workdir)
            batch_why = ""
        except ImportError as exc:
            batch, batch_why = None, f"kensa.journal.SqliteJournal is not available ({exc})"
        return Transactions(tuple(workloads), batch, batch_why)
    finally:
        for value in emitters.values():
            if value is not None and not isinstance(value, str):
                value.close(2.0)
        shutil.rmtree(workdir, ignore_errors=True)
