"""Many reads of a remote host in a few round trips: :func:`gathered`.

Planning reads a host with code that asks one thing at a time: the capability
probes and the os-release are about 130 ``info``/``read_bytes`` calls, each a
round trip to a remote agent (CPU in the controller, ssh, sshd and the agent,
per call). :func:`gathered` runs such read-only code against the host in a
few round trips without changing what it computes:

1. It runs the code against a view whose every read not yet known is
   recorded and answered "absent" (``None``, or no entries). Those answers
   are guesses: what the code returns then is thrown away.
2. It fetches every recorded read in one ``batch`` request
   (:meth:`kensa.hosts.remote.RemoteHost.read_many`), and runs the code again,
   now with those reads answered as the host answered them. Reads that only
   the real answers lead to (a binary in a directory that exists, the process
   a pid file names) are recorded and fetched in the next round.
3. At the end the code runs once more, with every read it makes answered as
   the host answered it: the known ones from the batches, any other by its
   own request. That run's result is the result, exactly what the code would
   return reading the host directly.

A read whose request raised (a refused path, a symlink) raises the same error
again each time the code makes it. Commands (``run``) are never guessed: code
that runs one stops the guessing, and the last run sends it as usual. A lost
connection or a timeout raises at once. A host that cannot batch (a local
host, where a read costs no round trip) just runs the code.
"""

from __future__ import annotations

import subprocess
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, TypeVar

from kensa.errors import RemoteHostError
from kensa.hosts.protocol import ReadableHost
from kensa.model import FileInfo

__all__ = ["MAX_ROUNDS", "gathered", "prefetched"]

T = TypeVar("T")

#: Batches one call of :func:`gathered` sends at most before the last run.
MAX_ROUNDS = 4

_Key = Tuple[str, Tuple[Any, ...], Tuple[Tuple[str, Any], ...]]
# What a guessed read answers: nothing there.
_ABSENT: Mapping[str, Any] = {"info": None, "read_file": None, "read_bytes": None, "list_dir": None, "leftover_temps": []}


class _Unguessable(BaseException):
    """Raised through the code being guessed at when it asks what cannot be guessed (a command,
    an id); a BaseException so that the code's own ``except`` clauses let it through."""


class _Reads:
    """A read-only view of ``host``: reads answered from ``known``; any other one is recorded in
    ``missed`` and guessed absent (``guess``) or sent to the host (not ``guess``)."""

    def __init__(self, host: Any, known: Dict[_Key, Tuple[Any, Optional[BaseException]]], guess: bool) -> None:
        self._host = host
        self._known = known
        self._guess = guess
        self.missed: Dict[_Key, None] = {}

    @property
    def root(self) -> str:
        return str(self._host.root)

    @property
    def run_root(self) -> str:
        return str(self._host.run_root)

    @property
    def is_live(self) -> bool:
        return bool(self._host.is_live)

    @property
    def identity(self) -> str:
        return str(self._host.identity)

    @property
    def max_file_bytes(self) -> int:
        return int(self._host.max_file_bytes)

    def where(self, path: str) -> str:
        return str(self._host.where(path))

    def _read(self, op: str, *args: Any, **kwargs: Any) -> Any:
        key: _Key = (op, args, tuple(sorted(kwargs.items())))
        if key in self._known:
            value, error = self._known[key]
            if error is not None:
                raise error
            return value
        if not self._guess:
            return getattr(self._host, op)(*args, **kwargs)
        self.missed[key] = None
        if op not in _ABSENT:
            raise _Unguessable(op)
        return _ABSENT[op]

    def info(self, path: str, *, content: bool = False) -> Optional[FileInfo]:
        return self._read("info", path, content=content)  # type: ignore[no-any-return]

    def read_file(self, path: str) -> Optional[FileInfo]:
        return self._read("read_file", path)  # type: ignore[no-any-return]

    def read_bytes(self, path: str) -> Optional[bytes]:
        return self._read("read_bytes", path)  # type: ignore[no-any-return]

    def list_dir(self, path: str) -> Optional[List[str]]:
        found = self._read("list_dir", path)
        return None if found is None else list(found)

    def leftover_temps(self, path: str) -> List[str]:
        return list(self._read("leftover_temps", path))

    def lookup_id(self, database: str, name: str) -> int:
        return int(self._read("lookup_id", database, name))

    def run(self, argv: Sequence[str], timeout: float, *, stdin_file: Optional[str] = None) -> "subprocess.CompletedProcess[str]":
        if self._guess:
            raise _Unguessable("run")
        if stdin_file is None:
            return self._host.run(argv, timeout)  # type: ignore[no-any-return]
        return self._host.run(argv, timeout, stdin_file=stdin_file)  # type: ignore[no-any-return]

    def overlay(self, planned: Mapping[str, Optional[FileInfo]]) -> ReadableHost:
        if self._guess:
            raise _Unguessable("overlay")
        return self._host.overlay(planned)  # type: ignore[no-any-return]


def gathered(host: ReadableHost, read: Callable[[ReadableHost], T], *, rounds: int = MAX_ROUNDS) -> T:
    """``read(host)``, with the reads it makes of a remote host fetched in at most ``rounds``
    batches (see the module docstring). ``read`` must only read the host."""
    return read(prefetched(host, [read], rounds=rounds))


def prefetched(host: ReadableHost, reads: Sequence[Callable[[ReadableHost], Any]], *,
               rounds: int = MAX_ROUNDS) -> ReadableHost:
    """A read-only view of ``host`` that already holds what each of ``reads`` will read: steps 1
    and 2 of the module docstring for all of them at once (each stops guessing on its own), in at
    most ``rounds`` batches. Code run against the view gets the host's answers, any read not
    fetched by its own request; ``reads`` themselves are not run for real here, so one the caller
    ends up not needing costs a batched read and nothing more. A host that cannot batch is
    returned as it is. ``reads`` must only read the host."""
    # Looked up on the class: a view over a remote host (PlannedView) passes other names on to the
    # host, and its reads must go through the view.
    if getattr(type(host), "read_many", None) is None:
        return host
    read_many: Callable[[Sequence[Any]], List[Tuple[Any, Optional[BaseException]]]] = getattr(host, "read_many")
    known: Dict[_Key, Tuple[Any, Optional[BaseException]]] = {}
    guessing = list(reads)
    for _ in range(rounds):
        wanted: Dict[_Key, None] = {}
        still = []
        for read in guessing:
            view = _Reads(host, known, guess=True)
            stopped = False
            try:
                read(view)
            except RemoteHostError:
                raise  # an answer the host gave said the connection is gone
            except _Unguessable:
                stopped = True
            except Exception:  # noqa: BLE001 - code fed guesses may fail anywhere; only the last run counts
                pass
            wanted.update((key, None) for key in view.missed if key[0] in _ABSENT or key[0] == "lookup_id")
            if view.missed and not stopped:
                still.append(read)
        if wanted:
            keys = list(wanted)
            answers = read_many([(op, args, dict(kwargs)) for op, args, kwargs in keys])
            known.update(zip(keys, answers))
        guessing = still
        if not guessing:
            break
    return _Reads(host, known, guess=False)
