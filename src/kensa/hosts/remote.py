"""Remote targets on the controller: the agent's client, :class:`RemoteHost`, and transports.

:func:`connect` starts kensa's agent on a target through a
:class:`~kensa.hosts.protocol.Transport`, sends it the payload
(:mod:`kensa.hosts.payload`), checks the hash it loaded and names the root it
is confined to. The :class:`RemoteHost` it returns meets
:class:`~kensa.hosts.protocol.Host`: each read or write is one round trip,
and :meth:`RemoteHost.handlers` gives the engine handlers that run each step
phase on the target in one round trip (:class:`RemoteHandler`).

Faults name the host: a dead agent or closed pipe is
:class:`~kensa.errors.HostConnectionLost`; an operation slower than the
operation timeout is :class:`~kensa.errors.RemoteTimeoutError`, and the agent
is killed (its state is unknown); a frame above the size bound, a frame that
is not the protocol, or an agent that cannot start (no Python 3, a payload
hash mismatch) is :class:`~kensa.errors.AgentError`. An error the agent
raises crosses as its kensa error class (its message prefixed with the host),
any other as :class:`~kensa.errors.AgentError`. After any of the first three
the connection is closed; :class:`RemoteHosts` opens a new one for the next
transaction on that host.

:class:`SubprocessTransport` starts the agent as a local process behind an
argv prefix: nothing (this machine), ``sudo -n``, ``runuser -u USER --``,
``docker exec -i CONTAINER``, ``chroot DIR`` ...
"""

from __future__ import annotations

import atexit
import collections
import os
import posixpath
import select
import subprocess
import threading
import time
import weakref
from typing import IO, Any, Callable, Counter, Dict, List, Mapping, NoReturn, Optional, Sequence, Tuple, cast
from urllib.parse import urlsplit

from kensa import errors
from kensa.errors import AgentError, HostConnectionLost, HostSelectionError, KensaError, RemoteHostError, RemoteTimeoutError
from kensa.hosts.agent.wire import HEADER, PROTOCOL, READY, FrameError, decode_value, encode_value, frame, frame_length, parse, split_error
from kensa.hosts.local import DEFAULT_MAX_FILE_BYTES, canonical_host_key, resolve_host
from kensa.hosts.overlay import FileReaders, PlannedView
from kensa.hosts.payload import NO_PYTHON_MESSAGE, PYTHONS, Payload, agent_command, build_payload
from kensa.hosts.protocol import Host, ReadableHost, Transport
from kensa.model import Assessment, FileInfo, PreState, RemoteTarget, RollbackResult, StepResult
from kensa.support.afterfork import reset_in_child

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_MAX_FRAME_BYTES",
    "DEFAULT_OPERATION_TIMEOUT",
    "AgentConnection",
    "RemoteHandler",
    "RemoteHandlers",
    "RemoteHost",
    "RemoteHosts",
    "RestorableRemoteHandler",
    "SubprocessTransport",
    "connect",
    "parse_remote_key",
]

#: Seconds to wait for the agent to start and answer ``hello``.
DEFAULT_CONNECT_TIMEOUT = 30.0
#: Seconds one request may take (a step's phase, a command a check runs ...).
DEFAULT_OPERATION_TIMEOUT = 300.0
#: Largest answer the controller reads: room for a phase's files at the default file cap, base64-encoded.
DEFAULT_MAX_FRAME_BYTES = 4 * DEFAULT_MAX_FILE_BYTES + (1 << 20)

_STDERR_KEPT = 4096


class SubprocessTransport:
    """Runs the agent as a process of this machine, behind an argv ``prefix``.

    ``SubprocessTransport()`` runs it directly; ``SubprocessTransport(["sudo",
    "-n"])`` through sudo; ``["docker", "exec", "-i", "box"]`` in a container.
    ``env`` replaces the environment (None: this process's). ``name`` is how
    messages and the host's identity name the target. It meets
    :class:`~kensa.hosts.protocol.Transport`.
    """

    def __init__(self, prefix: Sequence[str] = (), *, name: str = "local", env: Optional[Mapping[str, str]] = None) -> None:
        self.prefix = list(prefix)
        self.env = None if env is None else dict(env)
        self._name = name
        self._procs: "weakref.WeakSet[subprocess.Popen[bytes]]" = weakref.WeakSet()

    @property
    def name(self) -> str:
        return self._name

    def spawn(self, argv: Sequence[str], ready: bytes, timeout: float) -> "subprocess.Popen[bytes]":
        """Start ``prefix + argv`` with piped stdin, stdout and stderr; return once it wrote ``ready``."""
        try:
            proc = subprocess.Popen(
                self.prefix + list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                env=self.env, start_new_session=True,
            )
        except OSError as exc:
            raise AgentError(f"cannot start the agent on {self.name}: {exc}", self.name) from exc
        self._procs.add(proc)
        tail = _StderrTail(proc)
        try:
            line = _read_line(cast(IO[bytes], proc.stdout), len(ready), time.monotonic() + timeout)
        except TimeoutError:
            _kill(proc)
            raise RemoteTimeoutError(
                f"the agent on {self.name} did not start within {timeout:g} s{tail.said()}", self.name) from None
        if line != ready:
            status = _kill(proc)
            tail.join()
            raise AgentError(
                f"the agent on {self.name} did not start (exit status {status}, it wrote {line!r:.80}){tail.said()}",
                self.name,
            )
        setattr(proc, "kensa_stderr", tail)
        return proc

    def close(self) -> None:
        for proc in list(self._procs):
            _kill(proc)


class _StderrTail:
    """Drains a process's stderr on a thread, keeping its last few KiB for messages."""

    def __init__(self, proc: "subprocess.Popen[bytes]") -> None:
        self._data = b""
        self._thread = threading.Thread(target=self._drain, args=(proc.stderr,), daemon=True, name="kensa-agent-stderr")
        self._thread.start()

    def _drain(self, stream: Optional[IO[bytes]]) -> None:
        if stream is None:
            return
        for chunk in iter(lambda: stream.read1(_STDERR_KEPT) if hasattr(stream, "read1") else b"", b""):
            self._data = (self._data + chunk)[-_STDERR_KEPT:]

    def join(self, timeout: float = 2.0) -> None:
        self._thread.join(timeout)

    def said(self) -> str:
        text = self._data.decode("utf-8", "replace").strip()
        return f": {text}" if text else ""


def _kill(proc: "subprocess.Popen[bytes]") -> Optional[int]:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, 9)
        except OSError:
            proc.kill()
    try:
        return proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        return None


def _read_line(stream: IO[bytes], limit: int, deadline: float) -> bytes:
    """Bytes of ``stream`` up to a newline (at most ``limit`` of them), read one at a time so
    that nothing after the line is consumed; TimeoutError at ``deadline``."""
    fd = stream.fileno()
    line = b""
    while len(line) < limit and not line.endswith(b"\n"):
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            raise TimeoutError
        byte = os.read(fd, 1)
        if not byte:
            break
        line += byte
    return line


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
        self._lock = threading.Lock()
        assert proc.stdin is not None and proc.stdout is not None
        self._out = proc.stdin.fileno()
        self._in = proc.stdout.fileno()
        os.set_blocking(self._out, False)

    @property
    def name(self) -> str:
        return self.transport.name

    @property
    def alive(self) -> bool:
        return not self.closed and self.proc.poll() is None

    def close(self) -> None:
        """End the agent (closing its stdin ends its loop) and the transport's connection."""
        if self.closed:
            return
        self.closed = True
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            _kill(self.proc)
        self.transport.close()

    def send_raw(self, data: bytes, timeout: float) -> None:
        """Write ``data`` whole before ``timeout`` seconds pass (the payload, then frames)."""
        self._write(data, time.monotonic() + timeout, "sending the payload")

    def request(self, op: str, **fields: Any) -> Any:
        """Send one request and return its decoded ``ok`` value, or raise its error (see the module docstring)."""
        if self.observer is not None:
            self.observer(op, fields.get("mechanism"))
        with self._lock:
            if self.closed:
                raise HostConnectionLost(f"the connection to {self.name} is closed; reconnect", self.name)
            self.counts[op] += 1
            deadline = time.monotonic() + self.operation_timeout
            self._write(frame(dict(fields, op=op)), deadline, op)
            answer = self._read(deadline, op)
        if "error" in answer:
            raise self._error(answer["error"])
        if "ok" not in answer:
            self._broken(f"answered {op} with neither ok nor error")
        try:
            return decode_value(answer["ok"])
        except FrameError as exc:
            self._broken(f"answered {op} with a value that is not the protocol: {exc}")

    def _write(self, data: bytes, deadline: float, what: str) -> None:
        view = memoryview(data)
        while view:
            _, ready, _ = select.select([], [self._out], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                self._timed_out(what)
            try:
                view = view[os.write(self._out, view):]
            except BlockingIOError:
                continue
            except OSError as exc:
                self._lost(what, exc)

    def _read_exactly(self, size: int, deadline: float, what: str) -> bytes:
        chunks: List[bytes] = []
        while size:
            ready, _, _ = select.select([self._in], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                self._timed_out(what)
            try:
                chunk = os.read(self._in, min(size, 1 << 20))
            except OSError as exc:
                self._lost(what, exc)
            if not chunk:
                self._lost(what, None)
            chunks.append(chunk)
            size -= len(chunk)
        return b"".join(chunks)

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
        return cast(_StderrTail, tail).said()

    def _timed_out(self, what: str) -> NoReturn:
        _kill(self.proc)
        self.close()
        raise RemoteTimeoutError(
            f"{what} on {self.name} took longer than the operation timeout of {self.operation_timeout:g} s; "
            "the agent was stopped, so the state of the host is unknown", self.name)

    def _lost(self, what: str, exc: Optional[OSError]) -> NoReturn:
        status = self.proc.poll()
        if status is None:
            _kill(self.proc)
            status = self.proc.poll()
        said = self._stderr()
        self.close()
        cause = f" ({exc.strerror})" if exc is not None and exc.strerror else ""
        raise HostConnectionLost(
            f"the connection to {self.name} was lost during {what}{cause}; the agent ended with status {status}{said}",
            self.name)

    def _broken(self, message: str) -> NoReturn:
        _kill(self.proc)
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
            try:
                setattr(found, key, value)
            except AttributeError:
                continue
        return found


def _where(root: str, path: str) -> str:
    return path if root == "/" else posixpath.join(root, path.lstrip("/"))


class RemoteHost(FileReaders):
    """A target root on a remote machine, driven through its agent; meets :class:`~kensa.hosts.protocol.Host`.

    ``root`` is the host key (``ssh://user@host/root``): what messages, locks
    and audit ``host=`` name. ``target_root`` is the root's path on the target;
    ``is_live`` is true when it is that machine's ``/``. ``identity`` is the
    transport's name and the identity of the root directory on the target.
    ``connection`` is the agent it talks to (its ``counts`` count round trips).
    """

    def __init__(self, connection: AgentConnection, key: str, hello: Mapping[str, Any]) -> None:
        self.connection = connection
        self.root = key
        self.target_root = str(hello["root"])
        self._is_live = bool(hello["is_live"])
        self._identity = f"{connection.name}|{hello['identity']}"
        self.max_file_bytes = int(hello["max_file_bytes"])
        #: What the agent said in answer to ``hello`` (python, pid, payload hash ...).
        self.hello = dict(hello)

    def __repr__(self) -> str:
        return f"RemoteHost({self.root!r})"

    @property
    def is_live(self) -> bool:
        return self._is_live

    @property
    def identity(self) -> str:
        return self._identity

    @property
    def alive(self) -> bool:
        """False once the connection was lost or closed."""
        return self.connection.alive

    def close(self) -> None:
        self.connection.close()

    def where(self, path: str) -> str:
        return f"{self.connection.name}:{_where(self.target_root, path)}"

    def overlay(self, planned: Mapping[str, Optional[FileInfo]]) -> PlannedView:
        return PlannedView(self, planned)

    def handlers(self, registry: Any) -> "RemoteHandlers":
        """The engine's handlers (``registry``: mechanism -> handler) as proxies running on the target."""
        return RemoteHandlers(self, registry)

    def _call(self, op: str, *args: Any, **kwargs: Any) -> Any:
        return self.connection.request(op, args=encode_value(list(args)), kwargs=encode_value(kwargs))

    def info(self, path: str, *, content: bool = False) -> Optional[FileInfo]:
        return cast(Optional[FileInfo], self._call("info", path, content=content))

    def read_file(self, path: str) -> Optional[FileInfo]:
        return cast(Optional[FileInfo], self._call("read_file", path))

    def read_bytes(self, path: str) -> Optional[bytes]:
        return cast(Optional[bytes], self._call("read_bytes", path))

    def leftover_temps(self, path: str) -> List[str]:
        return list(self._call("leftover_temps", path))

    def remove_leftover_temps(self, path: str) -> List[str]:
        return list(self._call("remove_leftover_temps", path))

    def lookup_id(self, database: str, name: str) -> int:
        return int(self._call("lookup_id", database, name))

    def run(self, argv: Sequence[str], timeout: float) -> "subprocess.CompletedProcess[str]":
        done = self._call("run", list(argv), timeout)
        return subprocess.CompletedProcess(done["args"], done["returncode"], done["stdout"], done["stderr"])

    def write_file(self, path: str, data: bytes, *, mode: Optional[int] = None, uid: Optional[int] = None,
                   gid: Optional[int] = None, xattrs: Optional[Mapping[str, bytes]] = None,
                   mtime_ns: Optional[int] = None) -> None:
        self._call("write_file", path, data, mode=mode, uid=uid, gid=gid, xattrs=xattrs, mtime_ns=mtime_ns)

    def write_in_place(self, path: str, data: bytes) -> None:
        self._call("write_in_place", path, data)

    def remove_file(self, path: str) -> None:
        self._call("remove_file", path)

    def set_meta(self, path: str, *, mode: Optional[int] = None, uid: Optional[int] = None, gid: Optional[int] = None,
                 xattrs: Optional[Mapping[str, bytes]] = None, mtime_ns: Optional[int] = None) -> None:
        self._call("set_meta", path, mode=mode, uid=uid, gid=gid, xattrs=xattrs, mtime_ns=mtime_ns)


class RemoteHandlers:
    """``registry`` seen from a remote host: each handler a proxy that runs where the host is."""

    def __init__(self, host: RemoteHost, registry: Any) -> None:
        self.host = host
        self.registry = registry

    def __getitem__(self, mechanism: str) -> "RemoteHandler":
        local = self.registry[mechanism]
        cls = RestorableRemoteHandler if all(
            callable(getattr(local, name, None)) for name in ("assess", "restore", "planned", "settled")
        ) else RemoteHandler
        return cls(self.host, local)


class RemoteHandler:
    """A handler whose every call is one request to the agent, which runs the same
    mechanism there. ``name`` and ``capturable`` are the local handler's."""

    def __init__(self, host: RemoteHost, local: Any) -> None:
        self.host = host
        self.name: str = local.name
        self.capturable: bool = bool(local.capturable)
        self._planned: Dict[int, Tuple[PreState, Any]] = {}

    def __repr__(self) -> str:
        return f"RemoteHandler({self.name!r} on {self.host.root!r})"

    def _planned_of(self, view: Any) -> Any:
        if view is self.host:
            return None
        if isinstance(view, PlannedView) and view.base is self.host:
            return encode_value(view.planned_files)
        raise HostSelectionError(f"{self.name} on {self.host.root} was given another host, {view!r}")

    def _ask(self, op: str, view: Any, **fields: Any) -> Any:
        return self.host.connection.request(op, mechanism=self.name, planned=self._planned_of(view), **fields)

    def capture(self, host: ReadableHost, params: Mapping[str, Any]) -> PreState:
        wanted = isinstance(self, RestorableRemoteHandler)
        found = self._ask("capture", host, params=encode_value(params), with_planned=wanted)
        pre = found["pre"]
        if wanted and found["planned"] is not None:
            # The engine asks planned() of this pre-state next: it came with the capture.
            self._planned[id(pre)] = (pre, found["planned"])
        return cast(PreState, pre)

    def validate(self, host: ReadableHost, params: Mapping[str, Any]) -> bool:
        return bool(self._ask("validate", host, params=encode_value(params)))

    def apply(self, host: Host, params: Mapping[str, Any], pre: Optional[PreState]) -> StepResult:
        return cast(StepResult, self._ask("apply", host, params=encode_value(params), pre=encode_value(pre)))

    def rollback(self, host: Host, pre: PreState) -> RollbackResult:
        return cast(RollbackResult, self._ask("rollback", host, pre=encode_value(pre)))


class RestorableRemoteHandler(RemoteHandler):
    """A :class:`RemoteHandler` of a handler that assesses and restores itself (:class:`kensa.engine.Restorable`)."""

    def assess(self, host: ReadableHost, pre: PreState) -> Assessment:
        return cast(Assessment, self._ask("assess", host, pre=encode_value(pre)))

    def restore(self, host: Host, pre: PreState, assessment: Assessment, force: bool = False) -> RollbackResult:
        found = self._ask("restore", host, pre=encode_value(pre), assessment=encode_value(assessment), force=force)
        return cast(RollbackResult, found)

    def planned(self, host: ReadableHost, pre: PreState) -> Mapping[str, Any]:
        known = self._planned.pop(id(pre), None)
        if known is not None and known[0] is pre:
            return cast(Mapping[str, Any], known[1])
        return cast(Mapping[str, Any], self._ask("planned", host, pre=encode_value(pre)))

    def settled(self, host: ReadableHost, pre: PreState, assessment: Assessment, force: bool = False) -> Mapping[str, Any]:
        found = self._ask("settled", host, pre=encode_value(pre), assessment=encode_value(assessment), force=force)
        return cast(Mapping[str, Any], found)


def connect(
    transport: Transport,
    root: str = "/",
    *,
    key: Optional[str] = None,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    operation_timeout: float = DEFAULT_OPERATION_TIMEOUT,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
    payload: Optional[Payload] = None,
) -> RemoteHost:
    """Start kensa's agent on ``transport``'s target, confined to ``root`` there.

    ``key`` is the host key the RemoteHost is named by (default
    ``"<transport name>:<root>"``). Raises :class:`~kensa.errors.AgentError`
    naming the host when it has no Python 3, refuses the payload, or answers
    with another hash; a transport's own errors (unreachable, login refused)
    pass through; :class:`~kensa.errors.RemoteTimeoutError` when the agent does
    not answer within ``connect_timeout``.
    """
    if not isinstance(root, str) or not root.startswith("/"):
        raise HostSelectionError(f"the target root {root!r} on {transport.name} must be an absolute path")
    payload = build_payload() if payload is None else payload
    expected = build_payload().sha256
    try:
        proc = transport.spawn(agent_command(expected), READY, connect_timeout)
    except RemoteHostError as exc:
        if NO_PYTHON_MESSAGE in str(exc):
            raise AgentError(
                f"host {transport.name} has no Python 3 (tried {', '.join(PYTHONS)}); install python3 there",
                transport.name) from exc
        raise
    connection = AgentConnection(proc, transport, connect_timeout, max_frame_bytes)
    try:
        connection.send_raw(len(payload.blob).to_bytes(4, "big") + payload.blob, connect_timeout)
        try:
            hello = connection.request("hello", root=root, max_file_bytes=max_file_bytes)
        except HostConnectionLost as exc:
            if "payload hash mismatch" in str(exc):
                raise AgentError(f"the agent on {transport.name} refused the payload: {exc}", transport.name) from exc
            raise
        if hello.get("hash") != expected or hello.get("protocol") != PROTOCOL:
            raise AgentError(
                f"the agent on {transport.name} loaded payload {hello.get('hash')!r} (protocol "
                f"{hello.get('protocol')!r}), not {expected} (protocol {PROTOCOL}); refusing it", transport.name)
    except BaseException:
        connection.close()
        raise
    connection.operation_timeout = operation_timeout
    return RemoteHost(connection, key if key is not None else f"{transport.name}:{root}", hello)


def parse_remote_key(key: str) -> RemoteTarget:
    """The :class:`~kensa.model.RemoteTarget` an ``ssh://[user@]host[:port]/root`` key names."""
    parts = urlsplit(key)
    try:
        port = parts.port
    except ValueError as exc:
        raise HostSelectionError(f"host key {key!r}: {exc}") from exc
    if parts.scheme != "ssh" or not parts.hostname or parts.query or parts.fragment or parts.password:
        raise HostSelectionError(f"host key {key!r} is not ssh://[user@]host[:port]/root")
    # normpath keeps a leading "//" (POSIX leaves its meaning open); on Linux it is "/".
    root = "/" + posixpath.normpath(parts.path or "/").lstrip("/")
    return RemoteTarget(host=parts.hostname, user=parts.username, port=port, root=root)


class RemoteHosts:
    """The engine's host resolver for ``ssh://`` keys, and local keys as :func:`resolve_host` does.

    ``transport_for`` makes a transport for a :class:`~kensa.model.RemoteTarget`
    (the ssh engineer's ``SshTransport``; a :class:`SubprocessTransport` in
    tests). One connection per key is kept and reused; one that died is
    replaced at the next resolution (which is how recovery reconnects). All are
    closed by :meth:`close` and at interpreter exit. A forked child never uses
    (or closes) its parent's connections: it opens its own.
    """

    def __init__(self, transport_for: Callable[[RemoteTarget], Transport], *,
                 connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
                 operation_timeout: float = DEFAULT_OPERATION_TIMEOUT,
                 max_file_bytes: int = DEFAULT_MAX_FILE_BYTES) -> None:
        self.transport_for = transport_for
        self.connect_timeout = connect_timeout
        self.operation_timeout = operation_timeout
        self.max_file_bytes = max_file_bytes
        self._hosts: Dict[str, RemoteHost] = {}
        self._guard = threading.Lock()
        self._key_locks: Dict[str, threading.Lock] = collections.defaultdict(threading.Lock)
        atexit.register(_close_at_exit, weakref.ref(self))
        reset_in_child(self)

    def _after_fork_in_child(self) -> None:
        # The parent's agents answer the parent: a child writing to their pipes would
        # interleave frames with it, and closing them would end the parent's agents.
        self._hosts = {}
        self._guard = threading.Lock()
        self._key_locks = collections.defaultdict(threading.Lock)

    def canonical_key(self, key: str) -> str:
        """One spelling per target: the RemoteTarget's key for ``ssh://`` keys, else the local one."""
        if isinstance(key, str) and key.startswith("ssh://"):
            try:
                return parse_remote_key(key).key
            except HostSelectionError:
                return key
        return canonical_host_key(key)

    def __call__(self, key: str) -> Any:
        if not (isinstance(key, str) and key.startswith("ssh://")):
            return resolve_host(key, max_file_bytes=self.max_file_bytes)
        target = parse_remote_key(key)
        with self._guard:
            lock = self._key_locks[target.key]
        with lock:
            host = self._hosts.get(target.key)
            if host is not None and host.alive:
                return host
            if host is not None:
                host.close()
            host = connect(self.transport_for(target), target.root, key=target.key,
                           connect_timeout=self.connect_timeout, operation_timeout=self.operation_timeout,
                           max_file_bytes=self.max_file_bytes)
            self._hosts[target.key] = host
            return host

    def close(self) -> None:
        """Close every connection (their agents end)."""
        with self._guard:
            hosts, self._hosts = list(self._hosts.values()), {}
        for host in hosts:
            host.close()


def _close_at_exit(ref: "weakref.ref[RemoteHosts]") -> None:
    found = ref()
    if found is not None:
        found.close()

