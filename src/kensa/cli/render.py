"""What the command prints: tables, JSON views of results, a progress bar, and
text made safe for a terminal."""

from __future__ import annotations

import threading
from typing import Any, Dict, List, Mapping, Sequence, TextIO, Tuple

from kensa.model import RemoteTarget, ServiceOutcome, ServiceStatus, Status, TransactionResult

__all__ = ["Progress", "print_results", "print_table", "printable", "result_detail", "result_dict", "service_line"]


def result_dict(result: TransactionResult) -> Dict[str, Any]:
    """A JSON-ready view of a result: its ids and each part the journal declares (kensa.journal.fields)."""
    from kensa.journal.fields import result_view

    return result_view(result)


def printable(text: object) -> str:
    """``text`` with control and other non-printable characters escaped.

    Rule ids, paths, link targets and command output come from rule files and
    target roots: printed raw, an escape sequence in them could rewrite what
    an operator's terminal shows.
    """
    value = str(text)
    if value.isprintable():
        return value
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in value)


def print_table(rows: Sequence[Sequence[str]], header: Sequence[str], out: TextIO) -> None:
    rows = [[printable(cell) for cell in row] for row in rows]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    # The last column is free text: never pad it.
    widths[-1] = 0
    for row in [header, *rows]:
        out.write("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)).rstrip() + "\n")


def result_detail(result: TransactionResult) -> str:
    if result.error is not None:
        return f"{result.error.phase.value}: {result.error.message}"
    changed = [s.detail for s in result.steps if (s.changed or s.skipped or result.status is Status.MANUAL) and s.detail]
    if result.status is Status.STAGED:
        changed.insert(0, "reboot needed")  # a staged change is written but not in effect yet
    changed += [service_line(s) for s in result.services]
    return "; ".join(changed)


def service_line(outcome: ServiceOutcome) -> str:
    """One service action and what became of it, e.g. ``reload sshd: skipped (no systemd)``."""
    said = f"{outcome.verb.value} {outcome.unit}: {outcome.status.value}"
    return f"{said} ({outcome.detail})" if outcome.status is not ServiceStatus.DONE and outcome.detail else said


class Progress:
    """A one-line progress bar on a terminal; nothing when output is piped."""

    def __init__(self, total: int, stream: TextIO) -> None:
        self.total = total
        self.done = 0
        self.stream = stream
        self.enabled = total > 1 and stream.isatty()
        self._lock = threading.Lock()

    def advance(self, label: str) -> None:
        if not self.enabled:
            return
        with self._lock:
            self.done += 1
            filled = int(30 * self.done / self.total)
            self.stream.write(f"\r[{'#' * filled}{'.' * (30 - filled)}] {self.done}/{self.total} {printable(label)[:40]:<40}")
            self.stream.flush()

    def finish(self) -> None:
        if self.enabled:
            self.stream.write("\r" + " " * 80 + "\r")
            self.stream.flush()


def print_results(results: Sequence[TransactionResult], unsupported: Sequence[Mapping[str, Any]], out: TextIO) -> None:
    """A table of results; a HOST column first when one of them ran on a remote (``ssh://``) host."""
    rows: List[Tuple[str, ...]] = [(r.rule, r.status.value, "yes" if r.host_unchanged else "no", result_detail(r)) for r in results]
    rows += [(u["rule"], u["status"], "yes", u["detail"]) for u in unsupported]
    header: Sequence[str] = ("RULE", "STATUS", "UNCHANGED", "DETAIL")
    if any(r.host.startswith("ssh://") for r in results):
        hosts = [r.host for r in results] + [str(u.get("host", "")) for u in unsupported]
        rows = [(host, *row) for host, row in zip(hosts, rows)]
        header = ("HOST", *header)
    print_table(rows, header, out)


def print_remote_remediation(targets: Sequence[Tuple[str, RemoteTarget]], rules_of: Dict[str, Sequence[Any]],
                             by_host: Dict[str, List[TransactionResult]], failed: Dict[str, str],
                             unsupported: List[Dict[str, Any]], out: TextIO) -> None:
    """The table of a remote remediation: a row per host and rule (a failed host's rules errored)."""
    rows = []
    for _, target in targets:
        if target.key in failed:
            rows += [(target.key, rule.id, "errored", "yes", failed[target.key]) for rule in rules_of.get(target.key, ())]
            continue
        rows += [(target.key, r.rule, r.status.value, "yes" if r.host_unchanged else "no", result_detail(r))
                 for r in by_host.get(target.key, [])]
        rows += [(target.key, u["rule"], u["status"], "yes", u["detail"]) for u in unsupported if u["host"] == target.key]
    print_table(rows, ("HOST", "RULE", "STATUS", "UNCHANGED", "DETAIL"), out)
