"""Targets, the printed table, the JSON file and the chart of one run."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

from . import emission as em
from . import transactions as tx
from .throughput import Throughput
from .timing import Summary, fmt_ns


@dataclass(frozen=True)
class Target:
    """One goal from the spec and how this run measured against it."""

    name: str
    goal: str
    measured: str
    met: Optional[bool]  # None: not measured in this run

    @property
    def verdict(self) -> str:
        return "SKIPPED" if self.met is None else ("MET" if self.met else "MISSED")


@dataclass(frozen=True)
class Run:
    sizes: str
    machine: Dict[str, Any]
    scenarios: Sequence[em.Scenario]
    throughput: Optional[Throughput]
    transactions: Optional[tx.Transactions]
    seconds: float = 0.0

    def scenario(self, name: str) -> Optional[em.Scenario]:
        for s in self.scenarios:
            if s.name == name and not s.why_not:
                return s
        return None


def _row(run: Run, scenario: str, row: str) -> Optional[Summary]:
    s = run.scenario(scenario)
    return s.row(row) if s is not None else None


def _workload(run: Run, name: str) -> Optional[tx.Workload]:
    if run.transactions is None:
        return None
    for w in run.transactions.workloads:
        if w.name == name and not w.why_not:
            return w
    return None


def targets(run: Run) -> List[Target]:
    out = []
    a = _row(run, em.HEALTHY, em.ASYNC)
    timer = _row(run, em.HEALTHY, em.TIMER)
    timer_note = f"; timer pair itself {fmt_ns(timer.p50_ns)}, not subtracted" if timer else ""
    out.append(
        Target(
            "async p50",
            "kensa async calling-thread p50 <= 0.5 us per record (auditd healthy)",
            f"{fmt_ns(a.p50_ns)} over {a.n} records{timer_note}" if a else "not measured",
            a.p50_ns <= 500 if a else None,
        )
    )
    out.append(
        Target(
            "async p99",
            "kensa async calling-thread p99 <= 2 us per record (auditd healthy)",
            f"{fmt_ns(a.p99_ns)} over {a.n} records" if a else "not measured",
            a.p99_ns <= 2000 if a else None,
        )
    )
    s = _row(run, em.HEALTHY, em.SYNC)
    if a and s:
        ratio = s.p50_ns / a.p50_ns
        measured = f"kensa sync p50 {fmt_ns(s.p50_ns)} = {ratio:.1f}x async p50 (p99: {s.p99_ns / a.p99_ns:.1f}x)"
        out.append(
            Target(
                "async vs sync",
                "kensa async p50 at least 10x below the synchronous kernel send (kensa sync), same run",
                measured,
                ratio >= 10,
            )
        )
    else:
        out.append(
            Target("async vs sync", "kensa async p50 at least 10x below kensa sync, same run", "not measured", None)
        )
    stopped = _row(run, em.STOPPED, em.ASYNC)
    noop_stopped = _row(run, em.STOPPED, em.NOOP)
    if stopped:
        context = (
            f"; the no-op emitter's max in the same scenario: {fmt_ns(noop_stopped.max_ns)}" if noop_stopped else ""
        )
        measured = f"max {fmt_ns(stopped.max_ns)}, p99.9 {fmt_ns(stopped.p999_ns)} over {stopped.n} records{context}"
        out.append(
            Target(
                "async, auditd stopped",
                "worst kensa async calling-thread time <= 1 ms over 100,000 records with auditd stopped",
                measured,
                stopped.max_ns <= 1_000_000,
            )
        )
    else:
        out.append(
            Target(
                "async, auditd stopped",
                "worst kensa async calling-thread time <= 1 ms with auditd stopped",
                "not measured",
                None,
            )
        )
    for name, limit in (("file_content", 1.0), ("trivial", 3.0)):
        w = _workload(run, name)
        base = w.variant(tx.BASELINE) if w else None
        direct = w.added_direct_percent(tx.ASYNC) if w else None
        goal = f"kensa async adds <= {limit:g}% to a {name} transaction"
        if w is None or base is None or base.per_txn is None or direct is None:
            out.append(Target(f"{name} transaction", goal, "not measured", None))
            continue
        wall, again = w.added_percent(tx.ASYNC), w.added_percent(tx.BASELINE_AGAIN)
        if wall is None or again is None:
            out.append(Target(f"{name} transaction", goal, "not measured", None))
            continue
        measured = (
            f"{direct:+.2f}% direct ({fmt_ns(w.added_direct_ns(tx.ASYNC))} of emitter calls on a "
            f"{fmt_ns(base.per_txn.p50_ns)} median transaction); wall clock {wall:+.1f}%, "
            f"whose no-emitter A/A noise is {again:+.1f}%"
        )
        # The emitter's own calls must fit, and the wall clock must not say
        # otherwise by more than its own noise.
        met = direct <= limit and wall <= limit + abs(again)
        out.append(
            Target(f"{name} transaction", goal + " (direct, and wall clock within its A/A noise)", measured, met)
        )
    b = run.transactions.batch if run.transactions else None
    if b:
        ratio = b.journal_s / b.floor_2x_s
        measured = f"{ratio:.2f}x the 2x floor ({b.journal_s * 1e3:.0f} ms vs {b.floor_2x_s * 1e3:.0f} ms for {2 * b.transactions} fsyncs; {b.journal_s / b.floor_1x_s:.2f}x the 1x floor)"
        out.append(
            Target(
                "journaled batch",
                f"a journaled batch of {b.transactions} within 1.5x of the fsync floor (2 fsyncs per transaction)",
                measured,
                ratio <= 1.5,
            )
        )
    else:
        out.append(Target("journaled batch", "a journaled batch within 1.5x of the fsync floor", "not measured", None))
    return out


def skipped(run: Run) -> List[str]:
    """Everything this run did not measure, and why."""
    out = []
    for s in run.scenarios:
        if s.why_not:
            out.append(f"emission, {s.name}: {s.why_not}")
            continue
        out += [f"emission, {s.name}, {r.name}: {r.why_not}" for r in s.rows if r.why_not]
    if run.throughput is None:
        out.append("throughput: not run")
    elif run.throughput.why_not:
        out.append(f"throughput: {run.throughput.why_not}")
    t = run.transactions
    if t is None:
        out.append("transactions: not run")
    elif t.why_not:
        out.append(f"transactions: {t.why_not}")
    else:
        for w in t.workloads:
            if w.why_not:
                out.append(f"transactions, {w.name}: {w.why_not}")
            out += [f"transactions, {w.name}, {v.name}: {v.why_not}" for v in w.variants if v.why_not]
        if t.batch_why_not:
            out.append(f"batch: {t.batch_why_not}")
    return out


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> List[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return [line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows]


def _emission_lines(run: Run) -> List[str]:
    lines = ["EMISSION PER RECORD, CALLING THREAD (the same record body for every row)"]
    for s in run.scenarios:
        lines.append("")
        lines.append(f"scenario {s.name}: {s.description}")
        if s.why_not:
            lines.append(f"  not measured: {s.why_not}")
            continue
        a = s.row(em.ASYNC)
        rows = []
        for r in s.rows:
            x = r.summary
            if x is None:
                rows.append([r.name, "-", "-", "-", "-", "-", "-", f"skipped: {r.why_not}"])
                continue
            ratio = f"{x.p50_ns / a.p50_ns:.1f}x" if a and a.p50_ns else "-"
            note = r.note + (f" ({r.why_not})" if r.why_not else "")
            rows.append(
                [r.name, str(x.n), fmt_ns(x.p50_ns), fmt_ns(x.p99_ns), fmt_ns(x.p999_ns), fmt_ns(x.max_ns), ratio, note]
            )
        lines += ["  " + line for line in _table(["row", "n", "p50", "p99", "p99.9", "max", "p50/async", "note"], rows)]
        for name, st in s.emitters.items():
            lines.append(
                f"  {name}: emitted {st['emitted']}, sent {st['sent']}, dropped {st['dropped']}, failed {st['failed']}, "
                f"gaps {st['gaps']}, stalls {st['stalls']}, worst send {st['worst_send_seconds'] * 1e3:.2f} ms"
            )
    return lines


def _throughput_lines(t: Throughput) -> List[str]:
    lines = ["", "SENDER THROUGHPUT (auditd healthy)"]
    if t.why_not:
        return lines + [f"  not measured: {t.why_not}"]
    rows = [
        [
            f"kensa {s.mode}" + (" (sender thread)" if s.mode == "async" else " (calling thread)"),
            str(s.records),
            f"{s.seconds:.3f} s",
            str(s.sent),
            str(s.dropped),
            f"{s.per_second:,.0f}",
            "-" if s.kernel_lost is None else str(s.kernel_lost),
        ]
        for s in t.sustained
    ]
    lines += [
        "  " + line
        for line in _table(["emit N, flush", "records", "time", "sent", "dropped", "records/s", "kernel lost"], rows)
    ]
    lines.append("")
    rows = [
        [
            f"{p.rate:,}/s",
            f"{p.offered_per_second:,.0f}/s",
            str(p.offered),
            str(p.sent),
            str(p.dropped),
            f"{p.drop_percent:.1f}%",
            str(p.gaps),
            "-" if p.kernel_lost is None else str(p.kernel_lost),
        ]
        for p in t.paced
    ]
    lines += [
        "  " + line
        for line in _table(
            ["paced, default ring", "achieved", "offered", "sent", "dropped", "drop%", "gaps", "kernel lost"], rows
        )
    ]
    lines.append(
        f"  default ring capacity {t.capacity:,} bytes; 'kernel lost' is the rise of auditctl -s lost during the run"
    )
    return lines


def _transaction_lines(t: tx.Transactions) -> List[str]:
    lines = ["", "PER TRANSACTION AND PER PHASE (Engine.run, emitters alternating transaction by transaction, medians)"]
    if t.why_not:
        return lines + [f"  not measured: {t.why_not}"]
    for w in t.workloads:
        lines.append("")
        lines.append(f"workload {w.name}: {w.description}")
        if w.why_not:
            lines.append(f"  not measured: {w.why_not}")
            continue
        base = w.variant(tx.BASELINE)
        phases = list(base.per_phase) if base else []
        rows = []
        for v in w.variants:
            if v.per_txn is None:
                rows.append([v.name, "-", "-", "-", "-", "-", "-"] + ["-"] * len(phases) + [f"skipped: {v.why_not}"])
                continue
            added = w.added_percent(v.name)
            direct = w.added_direct_percent(v.name)
            delta = v.per_txn.p50_ns - base.per_txn.p50_ns if base and base.per_txn else 0
            cells = [
                v.name,
                str(v.per_txn.n),
                fmt_ns(v.per_txn.p50_ns),
                fmt_ns(v.per_txn.p99_ns),
                fmt_ns(delta),
                f"{added:+.1f}%" if added is not None else "-",
                f"{direct:+.2f}%" if direct is not None else "-",
            ]
            for p in phases:
                mine, theirs = v.per_phase.get(p), base.per_phase.get(p) if base else None
                cells.append(fmt_ns(mine.p50_ns - theirs.p50_ns) if mine and theirs else "-")
            cells.append(", ".join(f"{k} {n}" for k, n in v.statuses.items()))
            rows.append(cells)
        lines += [
            "  " + line
            for line in _table(
                ["emitter", "n", "txn p50", "txn p99", "wall +", "wall +%", "direct +%"]
                + [f"+{p}" for p in phases]
                + ["statuses"],
                rows,
            )
        ]
    lines += [
        "  wall +: median Engine.run time minus the no-emitter median; its noise shows in the 'again' row",
        "  +call: median time of that call inside the engine (transaction() once, then each boundary's emit),",
        "         minus the no-emitter median; direct +% is their sum over the no-emitter median transaction",
    ]
    return lines


def _batch_lines(t: tx.Transactions) -> List[str]:
    lines = ["", "BATCH (Engine.run_many, trivial handler) AGAINST THE FSYNC FLOOR"]
    b = t.batch
    if b is None:
        return lines + [f"  not measured: {t.batch_why_not or t.why_not}"]
    rows = [
        [
            label,
            f"{seconds * 1e3:.1f} ms",
            f"{seconds / b.transactions * 1e6:.1f} us",
            f"{b.transactions / seconds:,.0f}" if txns else "-",
            f"{seconds / b.floor_2x_s:.2f}x",
        ]
        for label, seconds, txns in (
            ("no journal", b.no_journal_s, True),
            ("SQLite journal", b.journal_s, True),
            (f"floor: {b.transactions} fsyncs (1x)", b.floor_1x_s, False),
            (f"floor: {2 * b.transactions} fsyncs (2x)", b.floor_2x_s, False),
        )
    ]
    headers = [f"{b.transactions} transactions, emitter {b.emitter}", "time", "per txn", "txn/s", "vs 2x floor"]
    lines += ["  " + line for line in _table(headers, rows)]
    lines.append(f"  median of {b.reps} repetitions; statuses: " + ", ".join(f"{k} {n}" for k, n in b.statuses.items()))
    return lines


def render(run: Run, goals: Sequence[Target]) -> str:
    m = run.machine
    lines = [
        f"kensa benchmarks ({run.sizes} run, {run.seconds:.0f} s): Python {m.get('python')}, kernel {m.get('kernel')}, "
        f"{m.get('cpus')} CPUs, load {', '.join(f'{x:.2f}' for x in m.get('loadavg_at_start', ()))}, "
        f"root {m.get('root')}, auditd {'running' if m.get('auditd_running') else 'not found'}, "
        f"audit backlog_limit {m.get('audit_backlog_limit', '?')}",
        f"kensa at commit {m.get('source', {}).get('commit', '?')}"
        + (
            f", with uncommitted changes in {', '.join(m['source']['uncommitted'])}"
            if m.get("source", {}).get("uncommitted")
            else ""
        ),
        "Ratios in the same run are the verdict; absolute times are context.",
        "",
    ]
    lines += _emission_lines(run)
    if run.throughput is not None:
        lines += _throughput_lines(run.throughput)
    if run.transactions is not None:
        lines += _transaction_lines(run.transactions)
        lines += _batch_lines(run.transactions)
    lines += ["", "TARGETS"]
    width = max(len(g.name) for g in goals)
    for g in goals:
        lines.append(f"  {g.verdict:7s} {g.name.ljust(width)}  {g.goal}")
        lines.append(f"  {'':7s} {''.ljust(width)}  measured: {g.measured}")
    gaps = skipped(run)
    if gaps:
        lines += ["", "NOT MEASURED"] + [f"  {g}" for g in gaps]
    return "\n".join(lines) + "\n"


def _transaction_costs(t: tx.Transactions) -> Dict[str, Dict[str, Any]]:
    """What each emitter added, per workload: the numbers behind the targets."""
    out: Dict[str, Dict[str, Any]] = {}
    for w in t.workloads:
        base = w.variant(tx.BASELINE)
        if base is None or base.per_txn is None:
            continue
        out[w.name] = {}
        for v in w.variants:
            if v.name == tx.BASELINE or v.per_txn is None:
                continue
            out[w.name][v.name] = {
                "wall_added_ns": v.per_txn.p50_ns - base.per_txn.p50_ns,
                "wall_added_percent": w.added_percent(v.name),
                "direct_added_ns": w.added_direct_ns(v.name),
                "direct_added_percent": w.added_direct_percent(v.name),
                "per_call_added_ns": {
                    call: s.p50_ns - base.per_phase[call].p50_ns
                    for call, s in v.per_phase.items()
                    if call in base.per_phase
                },
            }
    return out


def to_json(run: Run, goals: Sequence[Target]) -> str:
    data = {
        "sizes": run.sizes,
        "seconds": run.seconds,
        "machine": run.machine,
        "emission": [dataclasses.asdict(s) for s in run.scenarios],
        "throughput": dataclasses.asdict(run.throughput) if run.throughput else None,
        "transactions": dataclasses.asdict(run.transactions) if run.transactions else None,
        "transaction_costs": _transaction_costs(run.transactions) if run.transactions else None,
        "targets": [dict(dataclasses.asdict(g), verdict=g.verdict) for g in goals],
        "not_measured": skipped(run),
    }
    return json.dumps(data, indent=2, sort_keys=False) + "\n"


def chart(run: Run, path: str) -> Optional[str]:
    """Write the PNG chart; returns why not when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install matplotlib): no chart written"
    fig, axes = plt.subplots(2, 2, figsize=(15, 10))
    ax = axes[0][0]
    scen = [s for s in run.scenarios if not s.why_not]
    names = [r.name for r in scen[0].rows] if scen else []
    height = 0.8 / max(1, len(scen))
    for i, s in enumerate(scen):
        found = [s.row(n) for n in names]
        p99 = [x.p99_ns / 1e3 if x else 0.0 for x in found]
        p50 = [x.p50_ns / 1e3 if x else 0.0 for x in found]
        ys = [y + i * height for y in range(len(names))]
        ax.barh(ys, p99, height, alpha=0.35, color=f"C{i}")
        ax.barh(ys, p50, height, color=f"C{i}", label=s.name)
    ax.set_yticks([y + 0.4 - height / 2 for y in range(len(names))], names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("us per record, calling thread (solid p50, light p99)")
    ax.set_title("Emission per record")
    ax.legend(fontsize=8)
    ax = axes[0][1]
    if run.throughput and run.throughput.paced:
        paced = run.throughput.paced
        ax.plot([p.offered_per_second for p in paced], [p.drop_percent for p in paced], "o-")
        for p in paced:
            ax.annotate(f"{p.drop_percent:.1f}%", (p.offered_per_second, p.drop_percent), fontsize=8)
        for sus in run.throughput.sustained:
            ax.axvline(
                sus.per_second,
                ls="--",
                color="C1" if sus.mode == "async" else "C2",
                label=f"kensa {sus.mode} sustained {sus.per_second:,.0f}/s",
            )
        ax.legend(fontsize=8)
    ax.set_xlabel("offered records/s")
    ax.set_ylabel("dropped %")
    ax.set_title("Sender throughput and drops (default ring)")
    ax = axes[1][0]
    if run.transactions:
        labels: List[str] = []
        wall: List[float] = []
        direct: List[float] = []
        for w in run.transactions.workloads:
            for v in w.variants:
                added = w.added_percent(v.name) if v.name != tx.BASELINE else None
                if added is not None:
                    labels.append(f"{w.name}: {v.name}")
                    wall.append(added)
                    direct.append(w.added_direct_percent(v.name) or 0.0)
        ys = list(range(len(labels)))
        ax.barh([y - 0.2 for y in ys], wall, 0.4, color="C0", label="wall clock")
        ax.barh([y + 0.2 for y in ys], direct, 0.4, color="C1", label="direct (emitter calls)")
        ax.set_yticks(ys, labels, fontsize=8)
        ax.axvline(0, color="black", lw=0.5)
        ax.invert_yaxis()
        ax.legend(fontsize=8)
    ax.set_xlabel("% added to the median transaction vs no emitter")
    ax.set_title("Emission cost per transaction")
    ax = axes[1][1]
    b = run.transactions.batch if run.transactions else None
    if b:
        labels = ["no journal", "SQLite journal", f"{b.transactions} fsyncs", f"{2 * b.transactions} fsyncs"]
        ax.bar(
            labels,
            [b.no_journal_s * 1e3, b.journal_s * 1e3, b.floor_1x_s * 1e3, b.floor_2x_s * 1e3],
            color=["C0", "C1", "C7", "C7"],
        )
        ax.axhline(1.5 * b.floor_2x_s * 1e3, ls="--", color="C3", label="target: 1.5x the 2x floor")
        ax.legend(fontsize=8)
    ax.set_ylabel("ms")
    ax.set_title("Batch of transactions vs the fsync floor")
    fig.suptitle(f"kensa benchmarks ({run.sizes} run)")
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return None
