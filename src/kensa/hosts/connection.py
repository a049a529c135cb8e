"""The controller's end of one running agent: framed requests and answers over its pipes.

See :mod:`kensa.hosts.agent.wire` for the frames and :mod:`kensa.hosts.remote`
for what the answers and faults mean to a caller.
"""

from __future__ import annotations

import collections
import os
import select
import subprocess
import threading
import time
from typing import Any, Callable, Counter, Dict, List, NoReturn, Optional, Sequence, cast

from kensa import errors
from kensa.errors import AgentError, HostConnectionLost, KensaError, RemoteTimeoutError
from kensa.hosts.agent.wire import HEADER, FrameError, decode_value, frame, frame_length, parse, split_error
from kensa.hosts.processes import StderrTail, stop_process
from kensa.hosts.protocol import Transport

__all__ = ["AgentConnection", "close_together"]

#: Bytes asked of the agent's pipe per read: an answer is rarely larger, a pipe holds 64 KiB.
_READ_CHUNK = 1 << 16


class AgentConnection:
    """One running agent: framed requests and answers over its stdin and stdout.

    ``counts`` counts the requests sent, by op (``"apply"``, ``"info"`` ...);
    ``observer``, when set, is called with each request's op and mechanism
    before it is sent. One request at a time (a lock serializes threads).
    """

    def __init__(self, proc: "subprocess.Popen[bytes]", transport: Transport, operation_timeout: float,
                 max_frame: int) -> None:
        self.proc = proc
        self.transport = transport
        self.operation_timeout = operation_timeout
        self.max_frame = max_frame
        self.counts: Counter[str] = collections.Counter()
        self.observer: Optional[Callable[[str, Optional[str]], None]] = None
        self.closed = False
        self._ended = False  # close() ran: the agent's process waited for, the transport closed
        self._lock = threading.Lock()
        assert proc.stdin is not None and proc.stdout is not None
        self._out = proc.stdin.fileno()
        self._in = proc.stdout.fileno()
        self._buffer = bytearray()  # read from the agent, not yet taken as a frame
        os.set_blocking(self._out, False)

    @property
    def name(self) -> str:
        return self.transport.name

    @property
    def alive(self) -> bool:
        return not self.closed and self.proc.poll() is None

    def shutdown(self) -> None:
        """Tell the agent to end (its stdin closes, which ends its loop) without waiting for it:
        :meth:`close` then waits. Many connections shut down first end together, not in turn."""
        if self.closed:
            return
        self.closed = True
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass

    def close(self) -> None:
        """End the agent (closing its stdin ends its loop) and the transport's connection."""
        if self._ended:
            return
        self._ended = True
        self.shutdown()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            stop_process(self.proc)
        self.transport.close()

    def send_raw(self, data: bytes, timeout: float) -> None:
        """Write ``data`` whole before ``timeout`` seconds pass (the payload, then frames)."""
        self._write(data, time.monotonic() + timeout, "sending the payload")

    def request(self, op: str, **fields: Any) -> Any:
        """Send one request and return its decoded ``ok`` value, or raise its error (see the module docstring)."""
        return self.outcome(op, self._exchange(op, fields))

    def batch(self, calls: List[Dict[str, Any]]) -> List[Any]:
        """Send many read requests (each ``{"op", "args", "kwargs"}``) in one ``batch`` round trip; their
        answers in order, each still to be read with :meth:`outcome`. Answers that would not fit one
        frame come in more round trips. An answer that is not one per call (or a first part of them)
        stops the agent and raises AgentError."""
        found: List[Any] = []
        while len(found) < len(calls):
            # The agent answers as many as fit one frame (room left for the frame's own bytes);
            # the rest are asked for again.
            rest = calls[len(found):]
            answer = self._exchange("batch", {"calls": rest, "budget": self.max_frame - (1 << 10)})
            if "error" in answer:
                raise self._error(answer["error"])
            part = answer.get("ok")
            if not isinstance(part, list) or not 0 < len(part) <= len(rest):
                self._broken(f"answered a batch of {len(rest)} reads with {type(part).__name__}, not one answer per read")
            found += part
        return found

    def outcome(self, op: str, answer: Any) -> Any:
        """The decoded ``ok`` value of ``answer`` (the answer to an ``op`` request), or raise its error."""
        if not isinstance(answer, dict):
            self._broken(f"answered {op} with {type(answer).__name__}, not an answer")
        if "error" in answer:
            raise self._error(answer["error"])
        if "ok" not in answer:
            self._broken(f"answered {op} with neither ok nor error")
        try:
            return decode_value(answer["ok"])
        except FrameError as exc:
            self._broken(f"answered {op} with a value that is not the protocol: {exc}")

    def _exchange(self, op: str, fields: Dict[str, Any]) -> Dict[str, Any]:
        if self.observer is not None:
            self.observer(op, fields.get("mechanism"))
        with self._lock:
            if self.closed:
                raise HostConnectionLost(f"the connection to {self.name} is closed; reconnect", self.name)
            self.counts[op] += 1
            deadline = time.monotonic() + self.operation_timeout
            self._write(frame(dict(fields, op=op)), deadline, op)
            return self._read(deadline, op)

    def _write(self, data: bytes, deadline: float, what: str) -> None:
        view = memoryview(data)
        while view:
            # Write first: a request fits the pipe's buffer almost always, and every call
            # that waits lets another thread take the interpreter (16 hosts in flight).
            # Only a full pipe waits for room, until the deadline.
            try:
                view = view[os.write(self._out, view):]
                continue
            except BlockingIOError:
                pass
            except OSError as exc:
                self._lost(what, exc)
            try:
                # The descriptor may be closed under a waiting request (close() from another thread).
                _, ready, _ = select.select([], [self._out], [], max(0.0, deadline - time.monotonic()))
            except (OSError, ValueError) as exc:
                self._lost(what, exc if isinstance(exc, OSError) else None)
            if not ready:
                self._timed_out(what)

    def _read_exactly(self, size: int, deadline: float, what: str) -> bytes:
        # Reads take what the pipe holds (up to _READ_CHUNK), so a frame's header and body
        # usually arrive in one wait and one read; bytes past ``size`` stay for the next call.
        buffered = self._buffer
        while len(buffered) < size:
            try:
                ready, _, _ = select.select([self._in], [], [], max(0.0, deadline - time.monotonic()))
            except (OSError, ValueError) as exc:
                self._lost(what, exc if isinstance(exc, OSError) else None)
            if not ready:
                self._timed_out(what)
            try:
                chunk = os.read(self._in, min(max(size - len(buffered), _READ_CHUNK), 1 << 20))
            except OSError as exc:
                self._lost(what, exc)
            if not chunk:
                self._lost(what, None)
            buffered += chunk
        if len(buffered) == size:  # the usual end of a frame: one copy, not two
            found = bytes(buffered)
            buffered.clear()
        else:
            found = bytes(buffered[:size])
            del buffered[:size]
        return found

    def _read(self, deadline: float, what: str) -> Dict[str, Any]:
        header = self._read_exactly(HEADER.size, deadline, what)
        try:
            length = frame_length(header, self.max_frame)
        except FrameError as exc:
            self._broken(f"answered {what} with a bad frame: {exc}")
        try:
            return parse(self._read_exactly(length, deadline, what))
        except FrameError as exc:
            self._broken(f"answered {what} with a frame that is not the protocol: {exc}")

    def _stderr(self) -> str:
        tail = getattr(self.proc, "kensa_stderr", None)
        if tail is None:
            return ""
        tail.join(1.0)
        return cast(StderrTail, tail).said()

    def _timed_out(self, what: str) -> NoReturn:
        stop_process(self.proc)
        self.close()
        raise RemoteTimeoutError(
            f"{what} on {self.name} took longer than the operation timeout of {self.operation_timeout:g} s; "
            "the agent was stopped, so the state of the host is unknown", self.name)

    def _lost(self, what: str, exc: Optional[OSError]) -> NoReturn:
        status = self.proc.poll()
        if status is None:
            stop_process(self.proc)
            status = self.proc.poll()
        said = self._stderr()
        self.close()
        cause = f" ({exc.strerror})" if exc is not None and exc.strerror else ""
        raise HostConnectionLost(
            f"the connection to {self.name} was lost during {what}{cause}; the agent ended with status {status}{said}",
            self.name)

    def broken(self, message: str) -> NoReturn:
        """Stop the agent, close the connection and raise AgentError: it ``message``
        (such as "answered read_bytes with an int")."""
        self._broken(message)

    def _broken(self, message: str) -> NoReturn:
        stop_process(self.proc)
        self.close()
        raise AgentError(f"the agent on {self.name} {message}; the connection was closed", self.name)

    def _error(self, error: Any) -> BaseException:
        try:
            kind, message, args, attrs = split_error(error)
        except FrameError as exc:
            return AgentError(f"the agent on {self.name} sent an error that is not the protocol: {exc}", self.name)
        cls = getattr(errors, kind, None)
        if not (isinstance(cls, type) and issubclass(cls, KensaError)):
            return AgentError(f"{self.name}: the agent raised {kind}: {message}", self.name)
        if isinstance(cls, type) and issubclass(cls, OSError) and len(args) >= 2 and isinstance(args[0], int):
            args = (args[0], f"{self.name}: {args[1]}") + tuple(args[2:])
        elif args and isinstance(args[0], str):
            args = (f"{self.name}: {args[0]}",) + tuple(args[1:])
        else:
            args = (f"{self.name}: {message}",)
        found = cast(BaseException, cls.__new__(cls, *args))
        found.args = args
        for key, value in attrs.items():
            if key.startswith("_") or key == "args":
                continue  # a peer sets an error's public attributes (path, errno ...), nothing else
            try:
                setattr(found, key, value)
            except AttributeError:
                continue
        return found


def close_together(connections: Sequence[AgentConnection], at_once: int = 16) -> None:
    """Close ``connections``: every agent is told to end first, then up to ``at_once`` are closed at a
    time (each waits for its agent, then its transport ends, over ssh its control master), so a fleet's
    connections end together rather than one after another. Where no thread can start (at interpreter
    exit) the calling thread closes them all. Returns once all are closed; the first error of a close
    is raised then."""
    for connection in connections:
        connection.shutdown()
    pending = list(connections)
    errors: List[BaseException] = []
    guard = threading.Lock()

    def close_pending() -> None:
        while True:
            with guard:
                if not pending:
                    return
                connection = pending.pop()
            try:
                connection.close()
            except BaseException as exc:  # noqa: BLE001 - raised by the caller once all are closed
                with guard:
                    errors.append(exc)

    helpers = []
    for _ in range(min(at_once, len(pending)) - 1):
        helper = threading.Thread(target=close_pending, daemon=True, name="kensa-close")
        try:
            helper.start()
        except RuntimeError:  # no new threads at interpreter shutdown: this thread closes the rest
            break
        helpers.append(helper)
    close_pending()
    for helper in helpers:
        helper.join()
    if errors:
        raise errors[0]
