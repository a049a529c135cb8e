"""The end of a remediation run: the ``notify`` service actions its rules queued, each once per host."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, TextIO

from kensa.cli.render import print_table


def notify_rows(engine: Any, host_key: Optional[str] = None) -> List[Dict[str, str]]:
    """Carry out the engine's queued ``notify`` actions (:meth:`Engine.notify_pending`; only
    ``host_key``'s when given); one row each."""
    return [
        {"host": host, "action": f"{o.verb.value} {o.unit}", "status": o.status.value, "detail": o.detail}
        for host, o in engine.notify_pending(host_key)
    ]


def print_notified(rows: Sequence[Dict[str, str]], out: TextIO) -> None:
    """The notified actions as a table after the results (nothing when there were none)."""
    if rows:
        out.write("\n")
        print_table([(r["host"], r["action"], r["status"], r["detail"]) for r in rows], ("HOST", "NOTIFIED", "STATUS", "DETAIL"), out)
