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
from typing import Any, Callable, Counter, Dict, List, NoReturn, Optional, Sequence, Tuple, cast

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

    ``counts`` counts the requests made, by op (``"apply"``, ``"info"`` ...),
    and ``ahead`` those of them the agent had answered ahead (see
    :meth:`request_ahead`: no round trip of their own); ``observer``, when set,
    is called with each request's op and mechanism before it is made. One
    request at a time (a lock serializes threads).
    """

    def __init__(self, proc: "subprocess.Popen[bytes]", transport: Transport, operation_timeout: float,
                 max_frame: int) -> None:
        self.proc = proc
        self.transport = transport
        self.operation_timeout = operation_timeout
        self.max_frame = max_frame
        self.counts: Counter[str] = collections.Counter()
        self.ahead: Counter[str] = collections.Counter()
        self.observer: Optional[Callable[[str, Optional[str]], None]] = None
        self.closed = False
        self._ended = False  # close() ran: the agent's process waited for, the transport closed
        self._lock = threading.Lock()
        assert proc.stdin is not None and proc.stdout is not None
        self._out = proc.stdin.fileno()
        self._in = proc.stdout.fileno()
        self._buffer = bytearray()  # read from the agent, not yet taken as a frame
        # The requests whose answers the agent may send without being asked (request_chain), each with
        # its id, in the order asked: the first one's answer comes next; each later one's only when
        # the answer before it says so.
        self._expected: Optional[List[Tuple[Dict[str, Any], int]]] = None
        # Every request carries an id its answer repeats: an answer whose caller stopped waiting
        # (Ctrl-C) is told from the next request's by it, never taken for it.
        self._last_id = 0
        # Set while the answer of a caller that stopped waiting may still come: a frame above the
        # limit may then be that answer, and is dropped rather than taken for a broken agent.
        self._abandoned = False
        # Bytes still to drop of a frame above the limit whose reading through a caller stopped:
        # they come before any next frame, so they must not be taken for its header.
        self._unread = 0
        # The id of the last answer no caller waits for any more (a stopped caller's, or one answered
        # ahead that no request wanted), with the ids of the answers ahead its request asked after
        # it, in order: read through before the next request is written.
        self._owed: Optional[Tuple[int, Tuple[int, ...]]] = None
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

    def request_ahead(self, op: str, fields: Dict[str, Any], then: str, then_fields: Dict[str, Any]) -> Any:
        """:meth:`request` of ``op``, asking the agent to answer the read ``then`` (with
        ``then_fields``) right after it when its answer is the one that read follows
        (:data:`kensa.hosts.agent.server.AHEAD`). That answer is kept for the next request:
        if it is exactly ``then`` with ``then_fields`` it takes no round trip; any other
        request drops it (the agent has already sent it: it is read and discarded)."""
        return self.request_chain(op, fields, [(then, then_fields)])

    def request_chain(self, op: str, fields: Dict[str, Any], chain: Sequence[Tuple[str, Dict[str, Any]]]) -> Any:
        """:meth:`request_ahead` with several reads (at most :data:`kensa.hosts.agent.server.MAX_AHEAD`),
        each answered ahead only when the answer before it is the one it follows: the next requests,
        if they are exactly those reads in that order, take no round trip; the first that is not
        drops the answers ahead still to come."""
        return self.outcome(op, self._exchange(op, fields, [dict(then_fields, op=then) for then, then_fields in chain]))

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

    def _exchange(self, op: str, fields: Dict[str, Any], expected: Sequence[Dict[str, Any]] = ()) -> Dict[str, Any]:
        if self.observer is not None:
            self.observer(op, fields.get("mechanism"))
        with self._lock:
            if self.closed:
                raise HostConnectionLost(f"the connection to {self.name} is closed; reconnect", self.name)
            self.counts[op] += 1
            deadline = time.monotonic() + self.operation_timeout
            request = dict(fields, op=op)
            writing = False
            sent: Optional[Tuple[int, Tuple[int, ...]]] = None  # the ids whose answers are now on their way
            try:
                ahead, self._expected = self._expected, None
                if ahead is not None and ahead[0][0] == request:
                    # This request was answered ahead: what it would ask ahead now is what the
                    # request that carried it asked after it.
                    self.ahead[op] += 1
                    chain = ahead[1:]
                    sent = (ahead[0][1], tuple(ident for _, ident in chain))
                    answer = self._answer(ahead[0][1], deadline, op)
                else:
                    if ahead is not None:
                        # Answered ahead of a request that did not come: dropped, with any after it.
                        self._owed = (ahead[0][1], tuple(ident for _, ident in ahead[1:]))
                    # Read before this request is written, since the agent reads nothing until it has
                    # written what it answers and either may be more than a pipe holds.
                    self._catch_up(deadline, op)
                    request["id"] = ident = self._next_id()
                    chain = [(dict(then), self._next_id()) for then in expected]
                    nested: Dict[str, Any] = request
                    for then, then_id in chain:
                        nested["next"] = dict(then, id=then_id)
                        nested = nested["next"]
                    writing = True
                    self._write(frame(request), deadline, op)
                    sent = (ident, tuple(then_id for _, then_id in chain))
                    writing = False
                    answer = self._answer(ident, deadline, op)
            except KensaError:
                raise  # the connection's own fault: it closed the connection where it had to
            except BaseException:
                # Ctrl-C or SystemExit: a request written in part cannot be taken back, so the agent
                # is stopped; the answers of one written whole are read through before the next
                # request is written, and dropped by their ids. Stopped before writing (while
                # reading through earlier answers), this request left nothing on its way.
                if writing:
                    stop_process(self.proc)
                    self.close()
                elif sent is not None:
                    self._abandoned = True
                    self._owed = sent
                raise
            if answer.get("next") is not None:
                if not chain or answer["next"] is not True:
                    self._broken(f"answered {op} with next={answer['next']!r}, which was not asked for")
                self._expected = chain
            return answer

    def _next_id(self) -> int:
        self._last_id += 1
        return self._last_id

    def _answer(self, ident: int, deadline: float, what: str) -> Dict[str, Any]:
        """The answer with id ``ident``; answers of earlier requests whose callers stopped waiting
        may come first and are dropped."""
        while True:
            found = self._read(deadline, what, oversize_ok=self._abandoned)
            got = None if found is None else found.get("id")
            # Without an id, an answer is taken in order: right while no caller stopped waiting.
            if found is not None and ((type(got) is int and got == ident) or (got is None and not self._abandoned)):
                # The agent answers in order: every earlier answer has come, none is on its way.
                self._abandoned = False
                return found
            if found is not None and not (isinstance(got, int) and not isinstance(got, bool) and got < ident):
                self._broken(f"answered {what} with id {got!r}, which is no request waiting for an answer")

    def _catch_up(self, deadline: float, what: str) -> None:
        """Read through and drop the answers :attr:`_owed` names (and any before them), whatever
        their size; stopped half way, what is left is still owed."""
        while self._owed is not None:
            ident, later = self._owed
            found = self._read(deadline, what, oversize_ok=True)
            if found is None:
                # Too large to read as a message, so no id: taken for the last one owed. Were it an
                # earlier one, the rest comes after the next request is written and goes by its id.
                self._owed = None
                continue
            got = found.get("id")
            owed = (ident, *later)
            if type(got) is not int or got > owed[-1]:
                self._broken(f"answered {what} with id {got!r}, which is no request waiting for an answer")
            if got in owed:
                # An answer ahead comes only after one that says so; the last owed ends the chain.
                at = owed.index(got)
                more = found.get("next")
                if more is not None and (more is not True or at + 1 == len(owed)):
                    self._broken(f"answered {what} with next={more!r} after a read ahead, which was not asked for")
                self._owed = (owed[at + 1], owed[at + 2:]) if more is True else None

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

    def _fill(self, size: int, deadline: float, what: str) -> bytearray:
        """The read buffer once it holds at least ``size`` bytes; nothing is taken from it, so a
        caller stopped on the way leaves every byte for the next read."""
        # Reads take what the pipe holds (up to _READ_CHUNK), so a frame's header and body
        # usually arrive in one wait and one read.
        buffered = self._buffer
        while len(buffered) < size:
            left = deadline - time.monotonic()
            if left <= 0:
                # A peer that never lets the pipe run dry (answers dropped one after another, an
                # oversize frame read through) would otherwise never make select wait out the deadline.
                self._timed_out(what)
            try:
                ready, _, _ = select.select([self._in], [], [], left)
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
        return buffered

    def _read(self, deadline: float, what: str, oversize_ok: bool = False) -> Optional[Dict[str, Any]]:
        """The next frame as a message, taken from the buffer whole. One above the frame limit is
        a broken agent, unless ``oversize_ok``: it is then read through in pieces and None returned
        (as is the rest of one whose reading through was stopped)."""
        if self._unread:
            self._drop(deadline, what)
            return None
        (length,) = HEADER.unpack(bytes(self._fill(HEADER.size, deadline, what)[:HEADER.size]))
        if length > self.max_frame and oversize_ok:
            del self._buffer[:HEADER.size]
            self._unread = length
            self._drop(deadline, what)
            return None
        try:
            frame_length(bytes(self._buffer[:HEADER.size]), self.max_frame)
        except FrameError as exc:
            self._broken(f"answered {what} with a bad frame: {exc}")
        buffered = self._fill(HEADER.size + length, deadline, what)
        body = bytes(buffered[HEADER.size:HEADER.size + length])
        del buffered[:HEADER.size + length]
        try:
            return parse(body)
        except FrameError as exc:
            self._broken(f"answered {what} with a frame that is not the protocol: {exc}")

    def _drop(self, deadline: float, what: str) -> None:
        """Read through the :attr:`_unread` bytes of an oversize frame, counting them down as they go,
        so a caller stopped half way leaves the count right for the next read."""
        while self._unread:
            piece = min(self._unread, len(self._fill(1, deadline, what)), 1 << 20)
            del self._buffer[:piece]
            self._unread -= piece

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
