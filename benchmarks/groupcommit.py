"""The journal's group commit against one commit per write: N threads doing begin + finish.

``python -m benchmarks.groupcommit [--threads 16] [--per-thread 25] [--rounds 3] [--no-write]``

Each thread runs transactions of two steps the way the engine does (``begin``
with two pre-states, then ``finish``), all threads on one
:class:`~kensa.journal.SqliteJournal`, as ``run_many --workers N`` does. The
two variants are the same journal with ``group_commit=True`` (the default)
and ``group_commit=False`` (every write its own fsync'ed commit, as before),
alternated round by round on a fresh journal file in a disk-backed scratch
directory (``/var/tmp``, not a tmpfs). Reported: wall time (median of the
rounds), transactions per second, durable commits and writes (the journal's
own counters), and the fsync/fdatasync calls counted by ``strace -c -f`` in
a separate run of each variant (strace slows every syscall, so that run is
not timed). The verdict is the ratio, measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
VARIANTS = {"per-call": False, "group": True}


def _ensure_kensa() -> None:
    try:
        import kensa  # noqa: F401
    except ImportError:
        sys.path.insert(0, os.path.join(os.path.dirname(HERE), "src"))


def workload(path: str, threads: int, per_thread: int, grouped: bool) -> Dict[str, Any]:
    """Run the workload once on a new journal at ``path``: wall seconds and the journal's counters."""
    _ensure_kensa()
    from kensa.journal import SqliteJournal
    from kensa.model import PreState, Status, Step, Transaction, TransactionResult

    errors: List[BaseException] = []
    with SqliteJournal(path, group_commit=grouped) as journal:

        def worker(thread: int) -> None:
            try:
                for number in range(per_thread):
                    steps = tuple(Step("config_set", {"path": f"/etc/app{i}.conf", "key": "k", "value": "v"}) for i in range(2))
                    txn = Transaction(rule=f"rule-{number}", host=f"host-{thread}", steps=steps)
                    pres = [PreState("config_set", dict(s.params), {"exists": True, "content": b"k old\n" * 40}) for s in steps]
                    journal.begin(txn, pres)
                    journal.finish(TransactionResult(txn.id, txn.rule, txn.host, Status.COMMITTED, False))
            except BaseException as exc:  # reported below, not swallowed
                errors.append(exc)

        pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
        start = time.perf_counter()
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()
        wall = time.perf_counter() - start
        commits, writes = journal.commit_counts
    if errors:
        raise RuntimeError(f"the workload failed: {errors[0]!r}")
    return {"wall_s": wall, "commits": commits, "writes": writes}


def count_fsyncs(scratch: str, threads: int, per_thread: int, grouped: bool) -> Optional[int]:
    """fsync + fdatasync calls of one run of the workload in a child under ``strace -c -f``; None without strace."""
    strace = shutil.which("strace")
    if strace is None:
        return None
    path = os.path.join(scratch, f"strace-{int(grouped)}.db")
    summary = os.path.join(scratch, f"strace-{int(grouped)}.txt")
    code = (
        "import sys; sys.path[:0] = sys.argv[1:2]; from benchmarks.groupcommit import workload; "
        f"workload({path!r}, {threads}, {per_thread}, {grouped})"
    )
    subprocess.run(
        [strace, "-f", "-c", "-e", "trace=fsync,fdatasync", "-o", summary, sys.executable, "-c", code, os.path.dirname(HERE)],
        check=True,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.join(os.path.dirname(HERE), "src"), *sys.path])),
    )
    calls = 0
    with open(summary, encoding="utf-8") as handle:
        for line in handle:
            found = re.match(r"\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(fsync|fdatasync)\s*$", line)
            if found:
                calls += int(found.group(1))
    return calls


def measure(threads: int, per_thread: int, rounds: int, scratch: str) -> Dict[str, Any]:
    """Both variants, alternated over ``rounds``; medians, counters, fsyncs and the ratio."""
    runs: Dict[str, List[Dict[str, Any]]] = {name: [] for name in VARIANTS}
    for number in range(rounds):
        order = list(VARIANTS) if number % 2 == 0 else list(reversed(VARIANTS))
        for name in order:
            path = os.path.join(scratch, f"{name}-{number}.db")
            runs[name].append(workload(path, threads, per_thread, VARIANTS[name]))
    transactions = threads * per_thread
    rows: Dict[str, Dict[str, Any]] = {}
    for name, grouped in VARIANTS.items():
        wall = statistics.median(run["wall_s"] for run in runs[name])
        rows[name] = {
            "wall_s": wall,
            "txn_per_s": transactions / wall,
            "commits": runs[name][-1]["commits"],
            "writes": runs[name][-1]["writes"],
            "fsyncs": count_fsyncs(scratch, threads, per_thread, grouped),
        }
    return {
        "threads": threads,
        "transactions": transactions,
        "rounds": rounds,
        "variants": rows,
        "throughput_ratio": rows["group"]["txn_per_s"] / rows["per-call"]["txn_per_s"],
    }


def render(result: Dict[str, Any]) -> str:
    lines = [
        f"JOURNAL GROUP COMMIT: {result['threads']} threads, {result['transactions']} transactions "
        f"(begin + finish each), median of {result['rounds']} rounds",
        f"{'variant':<10} {'wall s':>8} {'txn/s':>9} {'commits':>8} {'writes':>7} {'fsyncs':>7}",
    ]
    for name, row in result["variants"].items():
        fsyncs = "n/a" if row["fsyncs"] is None else str(row["fsyncs"])
        lines.append(
            f"{name:<10} {row['wall_s']:>8.3f} {row['txn_per_s']:>9.0f} {row['commits']:>8} {row['writes']:>7} {fsyncs:>7}"
        )
    lines.append(f"group commit / per-call throughput: {result['throughput_ratio']:.1f}x")
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.groupcommit", description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--threads", type=int, default=16)
    p.add_argument("--per-thread", type=int, default=25, help="transactions per thread")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--no-write", action="store_true", help="print the table only")
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    args = p.parse_args(argv)
    scratch = tempfile.mkdtemp(prefix="kensa-groupcommit-", dir="/var/tmp" if os.path.isdir("/var/tmp") else None)
    try:
        result = measure(args.threads, args.per_thread, args.rounds, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    text = render(result)
    print(text, end="")
    if not args.no_write:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "groupcommit.txt"), "w", encoding="utf-8") as handle:
            handle.write(text)
        with open(os.path.join(args.out, "groupcommit.json"), "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
