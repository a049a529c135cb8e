"""The agent's request loop on the target: kensa's handlers, run where the host is.

The bootstrap (:mod:`kensa.hosts.agent.bootstrap`) loads the payload and calls
:func:`serve` with the protocol's two file descriptors and the built-in
handlers, as :class:`IndexedHandlers` of the payload's handler index (it is the
target's wiring, as :mod:`kensa.factory` is the controller's): a handler's
module is imported, and its one instance made, on the first request that
names its mechanism, as a run uses a few of them. The first request must
be ``hello``, naming the target root: the agent then holds one
:class:`kensa.hosts.local.LocalHost` of that root, so every path is confined by
exactly the rules of a local run (symlinks, ``..``, mounts, ``/proc/PID/root``).
Every later request is one call:

- a read or write of the host (``info``, ``read_file``, ``read_bytes``, ``list_dir``,
  ``lookup_id``, ``run``, ``leftover_temps``, ``write_file``, ...), with
  ``args`` and ``kwargs``;
- ``batch``: many of those reads (not the writes, not ``run``) in one round
  trip, each answered as its own request would be;
- one call of a handler (``capture``, ``apply``, ``validate``, ``rollback``)
  or of a restorable handler (``assess``, ``restore``, ``planned``,
  ``settled``), with the mechanism, its params, the pre-state and assessment
  where the call takes them, and ``planned``: files earlier steps will leave,
  which a read-only call sees through an overlay of the host. ``capture``
  with ``with_planned`` also answers what the step will leave, so the engine's
  chained capture costs one round trip per step.

A handler call may carry ``next``: the call of the same mechanism the controller
expects to make right after it. The agent answers it ahead, as a second frame
after the first answer, only for the pairs in :data:`AHEAD` and when the first
answer is the one the pair waits for: a ``capture`` after a ``validate`` that
answered False (the engine captures a step it found not compliant), a
``validate`` after an ``apply`` that succeeded (the engine validates what it
applied). Only reads are answered ahead; the controller uses that answer only
if its next request is exactly the one named, and drops it otherwise.

The answer is ``{"ok": value}`` or ``{"error": ...}`` (:func:`kensa.hosts.agent.wire.encode_error`).
The loop ends when the controller closes the connection.
"""

from __future__ import annotations

import importlib
import json
import os
import select
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from kensa.errors import StepPhaseError, TargetLockError, UnknownMechanismError
from kensa.hosts.agent.wire import HEADER, PROTOCOL, FrameError, decode_value, encode_error, encode_value, frame, frame_length, parse
from kensa.hosts.local import LocalHost
from kensa.hosts.lockfiles import agent_lock_directory, holders, lock_name, open_lock, try_lock
from kensa.model import StepResult

if TYPE_CHECKING:
    import subprocess

__all__ = ["AHEAD", "BATCH_CALLS", "HOST_CALLS", "MAX_AHEAD", "MAX_REQUEST_BYTES", "Agent", "IndexedHandlers", "serve"]

#: The host methods a request may call by name.
HOST_CALLS = frozenset({
    "info", "read_file", "read_bytes", "list_dir", "lookup_id", "run", "leftover_temps",
    "write_file", "write_in_place", "remove_file", "set_meta", "remove_leftover_temps",
})

#: The host methods a ``batch`` request may call: the reads, which change nothing on the target.
BATCH_CALLS = frozenset({"info", "read_file", "read_bytes", "list_dir", "lookup_id", "leftover_temps"})

_READ_ONLY_PHASES = frozenset({"capture", "validate", "assess", "planned", "settled"})
_HANDLER_CALLS = _READ_ONLY_PHASES | {"apply", "rollback", "restore"}

#: (a call, the read it may carry as ``next``): when the first one's answer lets the agent answer the read ahead.
#: A validate after a validate is the next transaction's check, after the last validate of one that holds:
#: it may name another mechanism, whose handler must be marked ``quick_reads``.
AHEAD: Dict[Tuple[str, str], Callable[[Any], bool]] = {
    ("validate", "capture"): lambda holds: holds is False,
    ("apply", "validate"): lambda done: isinstance(done, StepResult) and done.ok and not done.staged,
    ("validate", "validate"): lambda holds: holds is True,
}

#: Most reads one request may ask ahead, each the ``next`` of the one before.
MAX_AHEAD = 3

_INTERNED = 256

#: Largest request the agent reads: a step's params, pre-state and planned files.
MAX_REQUEST_BYTES = 1 << 30

#: Longest one ``lock_target`` request may try for the lock (the controller asks again).
MAX_LOCK_WAIT = 60.0

# Short, so a waiter gets its turn between another process's back-to-back transactions.
_LOCK_POLL_SECONDS = 0.005


def _completed(done: "subprocess.CompletedProcess[str]") -> Dict[str, Any]:
    return {"args": list(done.args), "returncode": done.returncode, "stdout": done.stdout, "stderr": done.stderr}


class IndexedHandlers(Mapping[str, Any]):
    """mechanism -> handler, from an index of mechanism -> (module, class name): the module is
    imported and the handler made on the first lookup of its mechanism, then kept.

    A module that fails to import, or a class whose ``name`` is not its mechanism, is an
    error of that lookup (it propagates): the index is wrong, and nothing is guessed."""

    def __init__(self, index: Mapping[str, Sequence[str]]) -> None:
        self._index: Dict[str, Tuple[str, str]] = {name: (str(where[0]), str(where[1])) for name, where in index.items()}
        self._made: Dict[str, Any] = {}

    def __getitem__(self, mechanism: str) -> Any:
        handler = self._made.get(mechanism)
        if handler is None:
            module, qualname = self._index[mechanism]
            cls = getattr(importlib.import_module(module), qualname)
            if getattr(cls, "name", None) != mechanism:
                raise UnknownMechanismError(f"the handler index names {module}.{qualname} for {mechanism!r}, "
                                            f"whose name is {getattr(cls, 'name', None)!r}")
            handler = self._made[mechanism] = cls()
        return handler

    def __iter__(self) -> Iterator[str]:
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._index)

    def modules(self) -> List[str]:
        """The modules of the indexed package imported so far (the handlers' and what they import)."""
        package = {module.rpartition(".")[0] for module, _ in self._index.values()}
        return sorted(name for name in list(sys.modules) if name.rpartition(".")[0] in package)


class Agent:
    """The state of one connection: the confined host and the handlers."""

    def __init__(self, payload_hash: str, handlers: Mapping[str, Any], supplied: Sequence[str] = (),
                 cache: str = "off") -> None:
        self.payload_hash = payload_hash
        self.supplied = list(supplied)
        self.cache = cache
        self.host: Optional[LocalHost] = None
        self.handlers = handlers
        self._interned: Dict[str, Any] = {}
        self._target_lock: Optional[int] = None  # the descriptor of the target's lock, while held
        self._lock_name: Optional[str] = None  # its file's name: the root's identity reads mountinfo

    def answer(self, request: Mapping[str, Any]) -> Dict[str, Any]:
        """The answer to one request (an error is an answer too)."""
        if request.get("op") == "batch":
            return self._batch(request)
        return self._called(request)[0]

    def _called(self, request: Mapping[str, Any]) -> Tuple[Dict[str, Any], Any]:
        """The answer to one call, and the value it answered (None when it raised)."""
        try:
            found = self._dispatch(request)
            return {"ok": encode_value(found)}, found
        except Exception as exc:
            return {"error": encode_error(exc)}, None

    def answer_ahead(self, request: Mapping[str, Any]) -> Tuple[Dict[str, Any], Optional[Mapping[str, Any]]]:
        """The answer to ``request``, and the ``next`` request it carries when that is to be answered
        ahead (the answer then says ``"next": true``; :meth:`answer_next` answers it). A chain of
        ``next`` requests that is not made of :data:`AHEAD` pairs is an error answered before
        anything runs."""
        if request.get("next") is None:
            return self.answer(request), None
        refused = self._chain_refused(request)
        if refused is not None:
            return {"error": encode_error(FrameError(refused))}, None
        return self.answer_next(request)

    def answer_next(self, request: Mapping[str, Any]) -> Tuple[Dict[str, Any], Optional[Mapping[str, Any]]]:
        """The answer to ``request`` of a chain :meth:`answer_ahead` checked, and its ``next`` when
        the answer is the one that read follows (:data:`AHEAD`)."""
        answer, found = self._called(request)
        ahead = request.get("next")
        if ahead is None or "error" in answer or not AHEAD[(str(request.get("op")), str(ahead.get("op")))](found):
            return answer, None
        answer["next"] = True
        return answer, ahead

    def _chain_refused(self, request: Mapping[str, Any]) -> Optional[str]:
        """Why the chain of ``next`` requests ``request`` carries may not be answered ahead, or None."""
        current, depth = request, 0
        while current.get("next") is not None:
            ahead = current["next"]
            depth += 1
            op = current.get("op")
            nested = ahead.get("op") if isinstance(ahead, dict) else None
            if not isinstance(op, str) or not isinstance(nested, str) or (op, nested) not in AHEAD:
                allowed = " or ".join(f"{read} after {call}" for call, read in AHEAD)
                return f"a {op!r} request cannot carry {nested!r} as next: only {allowed} is answered ahead"
            if depth > MAX_AHEAD:
                return f"a request may ask at most {MAX_AHEAD} reads ahead"
            mechanism = ahead.get("mechanism")
            if (op, nested) != ("validate", "validate") and mechanism != current.get("mechanism"):
                return f"a {op!r} request can carry {nested!r} as next only of the same mechanism"
            # The next rule's check reads another step, whatever its mechanism: only a quick one.
            if (op, nested) == ("validate", "validate"):
                why = self._not_quick(mechanism)
                if why is not None:
                    return why
            current = ahead
        return None

    def _not_quick(self, mechanism: Any) -> Optional[str]:
        """Why ``mechanism``'s reads may not be answered ahead, or None when its handler is quick_reads."""
        not_quick = f"{mechanism!r} is not a mechanism whose reads are answered ahead (quick_reads)"
        if not isinstance(mechanism, str):
            return not_quick
        try:
            handler = self.handlers[mechanism]
        except LookupError:
            return not_quick
        except Exception as exc:  # its module failed to import: say so, the refusal is that request's answer
            return f"{not_quick}: its handler could not be loaded ({type(exc).__name__}: {exc})"
        return None if getattr(handler, "quick_reads", False) is True else not_quick

    def _dispatch(self, request: Mapping[str, Any]) -> Any:
        op = request.get("op")
        if op == "hello":
            return self._hello(request)
        host = self.host
        if host is None:
            raise StepPhaseError(f"the agent was asked {op!r} before hello named its root")
        if op in HOST_CALLS:
            args = decode_value(request.get("args", []))
            kwargs = decode_value(request.get("kwargs", {"d": {}}))
            found = getattr(host, str(op))(*args, **kwargs)
            return _completed(found) if op == "run" else found
        if op in _HANDLER_CALLS:
            return self._handler_call(host, str(op), request)
        if op == "lock_target":
            return self._lock_target(host, request.get("wait"))
        if op == "unlock_target":
            self.unlock_target()
            return None
        raise FrameError(f"unknown request {op!r}")

    def _lock_target(self, host: LocalHost, wait: Any) -> Dict[str, Any]:
        """Try for the target's lock (a kensa run here takes the same for this root) for at most
        ``wait`` seconds; held (until ``unlock_target`` or the agent's end) or who holds it."""
        if self._target_lock is not None:
            raise TargetLockError(f"the agent already holds the lock of {host.root}; it is released first")
        if isinstance(wait, bool) or not isinstance(wait, (int, float)) or not 0 <= wait <= MAX_LOCK_WAIT:
            raise FrameError(f"lock_target needs wait, a number of seconds from 0 to {MAX_LOCK_WAIT:g}, not {wait!r}")
        if self._lock_name is None:
            self._lock_name = lock_name(host.root, host.identity)
        fd, path = open_lock(agent_lock_directory(), self._lock_name, host.root)
        held = False
        try:
            deadline = time.monotonic() + wait
            while not try_lock(fd, host.root, path):
                if time.monotonic() >= deadline:
                    return {"held": False, "path": str(path), "holders": holders(fd)}
                time.sleep(_LOCK_POLL_SECONDS)
            held = True
        finally:
            if not held:
                os.close(fd)
        self._target_lock = fd
        return {"held": True, "path": str(path), "holders": []}

    def unlock_target(self) -> None:
        """Release the target's lock if held; answered once released, so the controller knows it is free."""
        fd, self._target_lock = self._target_lock, None
        if fd is not None:
            os.close(fd)

    def _batch(self, request: Mapping[str, Any]) -> Dict[str, Any]:
        """Many reads in one round trip: ``calls`` (each ``{"op", "args", "kwargs"}`` as a single
        request would be) answered in order, each with exactly the answer its own request gets;
        with ``budget``, the answers of a first part of them that fit it."""
        calls = request.get("calls")
        if not isinstance(calls, list) or not all(isinstance(call, dict) for call in calls):
            return {"error": encode_error(FrameError("a batch request needs calls, a list of requests"))}
        refused = sorted({str(call.get("op")) for call in calls if call.get("op") not in BATCH_CALLS})
        if refused:
            return {"error": encode_error(FrameError(
                f"a batch may hold only reads ({', '.join(sorted(BATCH_CALLS))}), not {', '.join(refused)}"))}
        budget = request.get("budget")
        if isinstance(budget, bool) or not isinstance(budget, int):
            return {"ok": [self.answer(call) for call in calls]}
        # Answers stop before they would pass ``budget`` bytes (the controller's frame limit, less
        # room): each read fits an answer alone, many together need not; the controller asks again
        # for the rest. The first answer always goes, so every batch moves on.
        answers: List[Dict[str, Any]] = []
        used = 0
        for call in calls:
            answer = self.answer(call)
            used += len(json.dumps(answer, separators=(",", ":"))) + 1
            if answers and used > budget:
                break
            answers.append(answer)
        return {"ok": answers}

    def _hello(self, request: Mapping[str, Any]) -> Dict[str, Any]:
        root = request.get("root", "/")
        limit = request.get("max_file_bytes")
        self.host = LocalHost(root) if limit is None else LocalHost(root, max_file_bytes=limit)
        self._lock_name = None
        return {
            "protocol": PROTOCOL,
            "hash": self.payload_hash,
            "python": list(sys.version_info[:3]),
            "supplied": self.supplied,
            "cache": self.cache,
            "executable": sys.executable,
            "pid": os.getpid(),
            "root": self.host.root,
            "is_live": self.host.is_live,
            "identity": self.host.identity,
            "machine_id": _machine_id(),
            "max_file_bytes": self.host.max_file_bytes,
            "mechanisms": sorted(self.handlers),
            "handler_modules": self.handlers.modules() if isinstance(self.handlers, IndexedHandlers) else [],
        }

    def _params(self, encoded: Any) -> Any:
        # One object per distinct params, as in a local run, where the engine passes a
        # step's own params to each phase: command_exec tells its apply's run by them.
        key = json.dumps(encoded, sort_keys=True)
        found = self._interned.pop(key, None)
        if found is None:
            found = decode_value(encoded)
        self._interned[key] = found
        while len(self._interned) > _INTERNED:
            self._interned.pop(next(iter(self._interned)))
        return found

    def _handler_call(self, host: LocalHost, op: str, request: Mapping[str, Any]) -> Any:
        mechanism = request.get("mechanism")
        handler = self.handlers.get(mechanism) if isinstance(mechanism, str) else None
        if handler is None:
            raise UnknownMechanismError(
                f"the agent on {host.root} has no handler for mechanism {mechanism!r}; "
                f"it has: {', '.join(sorted(self.handlers))}"
            )
        method: Optional[Callable[..., Any]] = getattr(handler, op, None)
        if method is None:
            raise StepPhaseError(f"{mechanism}: the handler has no {op}")
        planned = request.get("planned")
        if planned is not None and op not in _READ_ONLY_PHASES:
            raise StepPhaseError(f"{mechanism}: {op} writes the host, so it cannot run through planned files")
        view: Any = host if planned is None else host.overlay(decode_value(planned))
        params = self._params(request.get("params"))
        pre = decode_value(request.get("pre"))
        if op == "capture":
            captured = method(view, params)
            plans: Optional[Callable[..., Any]] = getattr(handler, "planned", None)
            wanted = plans(view, captured) if plans is not None and request.get("with_planned") else None
            return {"pre": captured, "planned": wanted}
        if op == "validate":
            return bool(method(view, params))
        if op == "apply":
            return method(host, params, pre)
        if op == "rollback":
            return method(host, pre)
        if op in ("assess", "planned"):
            return method(view, pre)
        assessment, force = decode_value(request.get("assessment")), bool(request.get("force"))
        return method(host if op == "restore" else view, pre, assessment, force)


def _with_id(answer: Dict[str, Any], request: Mapping[str, Any]) -> Dict[str, Any]:
    """``answer`` carrying its request's ``id``, by which the controller pairs them."""
    if "id" in request:
        answer["id"] = request["id"]
    return answer


def _machine_id() -> Optional[str]:
    """This machine's ``/etc/machine-id`` (the machine's, whatever root the agent is confined
    to), or None when it has none: with the root's identity it names the target across
    connections, so two inventory names of one machine are known to be one."""
    try:
        with open("/etc/machine-id", "rb") as found:
            text = found.read(64).decode("ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text if len(text) == 32 and all(c in "0123456789abcdef" for c in text) else None


def _read_exactly(fd: int, size: int) -> Optional[bytes]:
    chunks = []
    while size:
        chunk = os.read(fd, min(size, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


#: Exit status of an agent whose controller went away while it was answering a request.
ORPHANED = 4


def _watch_controller(read_fd: int, busy: threading.Event) -> None:
    """End the agent at once when the controller's end of the request pipe closes.

    The request loop reads only between requests, and sshd gives a session
    without a terminal no hangup when its client dies: an agent in the middle of
    a phase would go on changing the target after the controller has called the
    transaction interrupted, while ``kensa recover`` may already be restoring
    it. A pipe's read end reports POLLHUP once no writer is left, whether or not
    data is queued, so waiting for it takes nothing from the loop.
    """
    poller = select.poll()
    poller.register(read_fd, select.POLLHUP)  # POLLHUP, POLLERR and POLLNVAL are reported whatever is asked
    while True:
        for _, events in poller.poll():
            if events & (select.POLLHUP | select.POLLERR | select.POLLNVAL):
                os._exit(ORPHANED if busy.is_set() else 0)


def serve(read_fd: int, write_fd: int, payload_hash: str, handlers: Mapping[str, Any], supplied: Sequence[str] = (),
          cache: str = "off") -> int:
    """Answer requests from ``read_fd`` on ``write_fd`` until the controller closes it; the exit status.

    ``handlers`` (mechanism -> handler) is what the bootstrap wires in: the built-in handlers as
    :class:`IndexedHandlers` of the payload's ``kensa.handlers.INDEX``, since this package lies
    below the handlers.
    ``supplied`` is what :func:`kensa.hosts.agent.compat.install` supplied and ``cache`` what the
    bootstrap did with its compiled-payload cache; ``hello`` reports both."""
    agent = Agent(payload_hash, handlers, supplied, cache)
    busy = threading.Event()
    watchdog = threading.Thread(target=_watch_controller, args=(read_fd, busy), name="kensa-agent-watchdog")
    watchdog.daemon = True
    watchdog.start()
    while True:
        header = _read_exactly(read_fd, HEADER.size)
        if header is None:
            return 0
        try:
            body = _read_exactly(read_fd, frame_length(header, MAX_REQUEST_BYTES))
            if body is None:
                return 0
            request = parse(body)
        except FrameError as exc:
            _write_all(write_fd, frame({"error": encode_error(exc)}))
            return 3
        busy.set()
        answer, ahead = agent.answer_ahead(request)
        # The request is answered: what is left is writing that, and a read ahead that changes
        # nothing, so a controller leaving now leaves nothing half done.
        busy.clear()
        asked: Mapping[str, Any] = request
        while ahead is not None:
            _write_all(write_fd, frame(_with_id(answer, asked)))
            asked = ahead
            answer, ahead = agent.answer_next(asked)
        _write_all(write_fd, frame(_with_id(answer, asked)))
