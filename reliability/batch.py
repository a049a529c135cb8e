"""One audit-fault batch, run in its own process: ``python -m reliability.batch ROOT JOURNAL COUNT``.

The batch runs the first half of :mod:`reliability.workload`'s mix, prints
``mid`` and waits for a line on stdin (the parent starts its fault), runs the
second half, prints ``ran`` and waits again (the parent ends the fault), then
flushes the emitter and prints one JSON line: the kind and status of every
transaction, the emitter's counters and its status.

With ``--userns`` it first moves into a new user namespace, prints ``map`` and
waits while the parent writes the namespace's uid and gid maps, then execs
itself: capabilities in the namespace survive that exec only because uid 0 is
mapped by then (``unshare -U`` execs before anyone can map it).
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
from dataclasses import asdict
from typing import List

import kensa.audit.emitter
from kensa.engine import Engine
from kensa.hosts.local import resolve_host
from kensa.journal.store import SqliteJournal

from .workload import registry, transactions

FLUSH_SECONDS = 30.0
CLONE_NEWUSER = 0x10000000


def _handshake(word: str) -> None:
    print(word, flush=True)
    if not sys.stdin.readline():
        raise SystemExit(f"batch: stdin closed while waiting after {word!r}")


def main(argv: List[str]) -> int:
    args = [a for a in argv if not a.startswith("--")]
    if len(args) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    root, journal_path, count = args[0], args[1], int(args[2])
    if "--userns" in argv:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.unshare(CLONE_NEWUSER) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"unshare(CLONE_NEWUSER): {os.strerror(err)}")
        _handshake("map")
        argv = [a for a in argv if a != "--userns"]
        os.execv(sys.executable, [sys.executable, "-m", "reliability.batch", *argv])
    emitter = kensa.audit.open_emitter()
    journal = SqliteJournal(journal_path)
    engine = Engine(registry(), audit=emitter, journal=journal, hosts=resolve_host)
    work = list(transactions(root, count, tag="fault"))
    half = count // 2
    statuses = [engine.run(txn).status.value for _, txn in work[:half]]
    _handshake("mid")
    statuses += [engine.run(txn).status.value for _, txn in work[half:]]
    _handshake("ran")
    flushed = emitter.flush(FLUSH_SECONDS)
    journal_rows = len(journal.history(host=root))
    journal.close()
    print(
        json.dumps(
            {
                "kinds": [kind for kind, _ in work],
                "statuses": statuses,
                "flushed": flushed,
                "stats": asdict(emitter.stats()),
                "status": str(kensa.audit.status()),
                "audit_errors": engine.audit_errors,
                "journal_rows": journal_rows,
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
