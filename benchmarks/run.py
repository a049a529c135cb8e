"""Command line: ``python -m benchmarks [--quick] [--no-write] ...``.

Prints the table, then writes it with JSON and a PNG chart under
benchmarks/results/ (``full.*`` or ``quick.*``). Needs root and a running
auditd for the kernel rows; without them it runs what it can and lists what it
skipped. Exits 0 whenever the run completed, whatever the targets say.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from types import FrameType
from typing import List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
SECTIONS = ("emission", "throughput", "transactions")


def _interrupt(signum: int, frame: Optional[FrameType]) -> None:
    # Turn termination into KeyboardInterrupt so every `finally` runs: above
    # all the one that resumes a stopped auditd.
    raise KeyboardInterrupt(f"signal {signum}")


def _ensure_kensa() -> None:
    """Use the installed kensa, or the checkout's src/ when it is not installed."""
    try:
        import kensa  # noqa: F401
    except ImportError:
        sys.path.insert(0, os.path.join(os.path.dirname(HERE), "src"))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true", help="small sample counts: a smoke run under a minute")
    p.add_argument("--no-write", action="store_true", help="print the table only; write no files")
    p.add_argument(
        "--out",
        default=os.path.join(HERE, "results"),
        help="directory for the JSON, table and chart (default: benchmarks/results)",
    )
    p.add_argument("--only", action="append", choices=SECTIONS, help="run only this section (repeatable)")
    p.add_argument("--no-stop-auditd", action="store_true", help="skip the scenario that stops auditd with SIGSTOP")
    p.add_argument(
        "--scratch",
        default=None,
        help="directory for the journal and the fsync floor (default: a new one under /var/tmp)",
    )
    return p


def _progress(message: str) -> None:
    print(f"... {message}", file=sys.stderr, flush=True)


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    _ensure_kensa()
    from . import conditions, emission, report, throughput, transactions
    from .sizes import FULL, QUICK

    sizes = QUICK if args.quick else FULL
    sections = set(args.only or SECTIONS)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    refusal = conditions.audit_write_refusal()
    if refusal:
        _progress(
            f"{refusal}: the kernel rows, the stopped-auditd scenario and throughput are skipped (see NOT MEASURED)"
        )
    start = time.monotonic()
    machine = conditions.machine()
    scenarios = []
    tput = None
    txns = None
    try:
        if "emission" in sections:
            for name in (emission.HEALTHY, emission.STOPPED, emission.BUSY):
                if name == emission.STOPPED and args.no_stop_auditd:
                    scenarios.append(emission.Scenario(name, emission.SCENARIOS[name], why_not="--no-stop-auditd"))
                    continue
                _progress(f"emission per record: {name}")
                scenarios.append(emission.measure(sizes, name))
        if "throughput" in sections:
            _progress("sender throughput")
            tput = throughput.measure(sizes)
        if "transactions" in sections:
            _progress("transactions and batch")
            txns = transactions.measure(sizes, args.scratch)
    except KeyboardInterrupt:
        print("interrupted; auditd was resumed if it had been stopped", file=sys.stderr)
        return 130
    machine["loadavg_at_end"] = os.getloadavg()
    run = report.Run(sizes.name, machine, scenarios, tput, txns, time.monotonic() - start)
    goals = report.targets(run)
    text = report.render(run, goals)
    print(text, end="")
    if args.no_write:
        return 0
    os.makedirs(args.out, exist_ok=True)
    base = os.path.join(args.out, sizes.name)
    with open(base + ".txt", "w", encoding="utf-8") as f:
        f.write(text)
    with open(base + ".json", "w", encoding="utf-8") as f:
        f.write(report.to_json(run, goals))
    why = report.chart(run, base + ".png")
    written = [base + ".txt", base + ".json"] + ([] if why else [base + ".png"])
    print("wrote " + ", ".join(os.path.relpath(p) for p in written))
    if why:
        print(why)
    return 0
