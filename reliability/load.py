"""Threads over several target roots: serialization per root, every result journaled, every record counted.

``load_threads`` threads share one engine, one journal and one async
emitter; thread ``t`` runs ``load_transactions`` transactions of the
workload mix on root ``t % load_roots``. Every handler is wrapped by an
overlap detector, which counts calls that ran while another call on the same
root was running (the engine must serialize runs per host). Afterwards:

- each returned status is the one its kind must give;
- the journal holds one row per transaction, with the same status;
- once flushed, ``emitted == sent + dropped + failed``, and ``emitted`` is
  the number of records the transactions produced (5 per commit, ...);
- the kernel's multicast log is asked how many of them it delivered.

Two threads on one root whose host key is spelled two ways (``/r`` and
``/r/``) must serialize too: the engine runs each transaction under its
root's canonical key. A control run of the same two threads through an engine
told to take keys as given shows that the detector sees overlaps when they
happen.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Dict, List, Optional, Tuple

import kensa.audit.emitter
from kensa.engine import Engine
from kensa.hosts.local import resolve_host
from kensa.journal.store import SqliteJournal
from kensa.model import Status

from .context import Context
from .report import Section, table
from .trees import make_root
from .workload import EXPECTED, OverlapState, check, expected_records, prepare_root, registry, transactions

FLUSH_SECONDS = 60.0


ALIAS_TRANSACTIONS = 50


def aliased_overlaps(root: str, canonical: bool = True) -> Tuple[int, int]:
    """Overlapping handler calls when two threads name one root ``root`` and ``root + "/"``.

    ``canonical=False`` builds the engine with host keys taken as given (the
    control: the two spellings then run unserialized). Returns (calls, overlaps).
    """
    state = OverlapState()
    if canonical:
        engine = Engine(registry(state), hosts=resolve_host)
    else:
        engine = Engine(registry(state), hosts=resolve_host, host_key=lambda key: key)

    def worker(t: int) -> None:
        key = root if t == 0 else root + "/"
        for _, txn in transactions(key, ALIAS_TRANSACTIONS, start=10_000 + t * ALIAS_TRANSACTIONS, tag="alias"):
            engine.run(txn)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return state.calls, sum(state.overlaps.values())


def run(ctx: Context) -> Section:
    title = "Load: threads over several roots"
    if not ctx.is_root:
        return Section("load", title, "", "", skipped="needs root (the trees have owners)")
    size = ctx.size
    work = ctx.workdir("load")
    roots = [str(make_root(work / f"root{r}")) for r in range(size.load_roots)]
    for root in roots:
        prepare_root(root)
    overlaps = OverlapState()
    emitter = kensa.audit.open_emitter()
    journal = SqliteJournal(work / "journal.db")
    engine = Engine(registry(overlaps), audit=emitter, journal=journal, hosts=resolve_host)

    outcomes: List[List[Tuple[str, str, Status]]] = [[] for _ in range(size.load_threads)]
    errors: List[str] = []

    def worker(t: int) -> None:
        root = roots[t % len(roots)]
        start = (t // len(roots)) * size.load_transactions
        try:
            for kind, txn in transactions(root, size.load_transactions, start=start, tag=f"load{t}"):
                outcomes[t].append((kind, txn.id, engine.run(txn).status))
        except BaseException as exc:  # reported, never lost in a thread
            errors.append(f"thread {t}: {type(exc).__name__}: {exc}")

    began = time.monotonic()
    threads = [threading.Thread(target=worker, args=(t,), name=f"load-{t}") for t in range(size.load_threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - began
    flushed = emitter.flush(FLUSH_SECONDS)
    stats = emitter.stats()

    problems = list(errors)
    kinds = [kind for per in outcomes for kind, _, _ in per]
    statuses = [status for per in outcomes for _, _, status in per]
    wrong = check(kinds, statuses)
    problems += wrong[:5]
    run_count = len(statuses)

    journaled: Dict[str, Optional[Status]] = {}
    rows_per_root = []
    for root in roots:
        entries = journal.history(host=root)
        rows_per_root.append(len(entries))
        for entry in entries:
            journaled[entry.txn.id] = entry.result.status if entry.result is not None else None
    journal.close()
    missing = [tid for per in outcomes for _, tid, _ in per if tid not in journaled]
    differing = [tid for per in outcomes for _, tid, status in per if tid in journaled and journaled[tid] is not status]
    if missing:
        problems.append(f"{len(missing)} results are not in the journal")
    if differing:
        problems.append(f"{len(differing)} journaled statuses differ from the returned ones")
    total_overlaps = sum(overlaps.overlaps.values())
    if total_overlaps:
        problems.append(f"{total_overlaps} handler calls overlapped another on the same root")

    produced = expected_records(kinds)
    balanced = flushed and stats.emitted == stats.sent + stats.dropped + stats.failed
    if stats.enabled:
        if not balanced:
            problems.append(f"emitter does not balance: {stats}")
        if stats.emitted != produced:
            problems.append(f"emitter counted {stats.emitted} records, the transactions produced {produced}")
    logged: Optional[int] = None
    if ctx.kernel_log is not None:
        hosts = [f'host="{root}"' for root in roots]

        def ours(record: object) -> bool:
            body = getattr(record, "body", "")
            return any(h in body for h in hosts)

        ctx.kernel_log.wait_for(ours, stats.sent, timeout=30.0)
        logged = len(ctx.kernel_log.settle(ours, quiet=1.0, timeout=60.0))

    alias_root = str(make_root(work / "alias"))
    prepare_root(alias_root)
    alias_calls, alias_overlaps = aliased_overlaps(alias_root)
    control_root = str(make_root(work / "control"))
    prepare_root(control_root)
    control_calls, control_overlaps = aliased_overlaps(control_root, canonical=False)
    if alias_overlaps:
        problems.append(
            f"runs on one root spelled two ways ('/r' and '/r/') are not serialized: {alias_overlaps} of "
            f"{alias_calls} handler calls overlapped. Reproduction: "
            "tests/test_reliability.py::test_one_root_spelled_two_ways_is_serialized"
        )
    if not control_overlaps:
        problems.append("the overlap detector saw no overlap in the control run, so its zeros prove nothing")
    by_kind = Counter(kinds)
    body = [
        f"{size.load_threads} threads x {size.load_transactions:,} transactions over {size.load_roots} roots, "
        f"one engine, one SQLite journal, one async emitter; {elapsed:.1f} s "
        f"({run_count / elapsed:.0f} transactions/s on this machine).",
        "",
    ]
    body += table(["kind", "status", "transactions", "records each"], [
        (kind, EXPECTED[kind][0].value, n, EXPECTED[kind][1]) for kind, n in sorted(by_kind.items())
    ])
    body += ["", *table(["check", "figure"], [
        ("transactions run", run_count),
        ("statuses not the one their kind must give", len(wrong)),
        ("journal rows (per root)", f"{sum(rows_per_root):,} ({', '.join(f'{n:,}' for n in rows_per_root)})"),
        ("results missing from the journal", len(missing)),
        ("journaled status differs from returned", len(differing)),
        ("handler calls (overlap detector)", overlaps.calls),
        ("calls overlapping another on the same root", total_overlaps),
        ("records the transactions produced", produced),
        ("emitter: emitted / sent / dropped / failed", f"{stats.emitted:,} / {stats.sent:,} / {stats.dropped:,} / {stats.failed:,}"),
        ("emitter: gaps / stalls / worst send", f"{stats.gaps} / {stats.stalls} / {stats.worst_send_seconds * 1000:.1f} ms"),
        ("emitted == sent + dropped + failed (after flush)", "yes" if balanced else "NO"),
        ("records the kernel's multicast log delivered", "-" if logged is None else f"{logged:,}"),
        ("one root under two spellings, overlapping calls", f"{alias_overlaps:,} of {alias_calls:,}"),
        ("control: the same with keys taken as given (detector works)", f"{control_overlaps:,} of {control_calls:,}"),
    ])]
    figures = {
        "transactions": run_count,
        "wrong_statuses": len(wrong),
        "journal_rows": sum(rows_per_root),
        "missing_from_journal": len(missing),
        "journal_status_differs": len(differing),
        "overlaps": total_overlaps,
        "handler_calls": overlaps.calls,
        "records_produced": produced,
        "emitted": stats.emitted,
        "sent": stats.sent,
        "dropped": stats.dropped,
        "failed": stats.failed,
        "balanced": balanced,
        "emitter_enabled": stats.enabled,
        "kernel_logged": logged,
        "alias_overlaps": alias_overlaps,
        "control_overlaps": control_overlaps,
    }
    found = (
        f"{sum(rows_per_root):,}/{run_count:,} journaled, {total_overlaps} overlaps, "
        f"{stats.emitted:,} records = {stats.sent:,} sent + {stats.dropped:,} dropped + {stats.failed:,} failed"
    )
    return Section(
        "load", title,
        tried=f"{size.load_threads} threads x {size.load_transactions:,} transactions over {size.load_roots} roots",
        found=found, body=tuple(body), problems=tuple(problems), losses=len(missing) + len(differing),
        figures=figures,
    )
