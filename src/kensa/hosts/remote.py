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
``docker exec -i CONTAINER``, ``chroot DIR`` ... (:mod:`kensa.hosts.processes`);
:class:`AgentConnection` is the framed pipe (:mod:`kensa.hosts.connection`).
Both are exported here too.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import functools
import posixpath
import subprocess
import threading
import weakref
from typing import TYPE_CHECKING, Any, Callable, ContextManager, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, cast
from urllib.parse import urlsplit

from kensa.errors import AgentError, HostConnectionLost, HostSelectionError, KensaError, RemoteHostError
from kensa.hosts.agent.wire import PROTOCOL, READY, encode_value
from kensa.hosts.answers import PHASE_ANSWERS, READS, Answer, Read, names, ran
from kensa.hosts.connection import AgentConnection, close_together
from kensa.hosts.local import DEFAULT_MAX_FILE_BYTES, canonical_host_key, check_step_phase, resolve_host
from kensa.hosts.overlay import FileReaders, PlannedView
from kensa.hosts.payload import (NO_PYTHON_MESSAGE, PYTHONS, Payload, agent_command, build_payload,
                                 check_python)
from kensa.hosts.processes import SubprocessTransport
from kensa.hosts.protocol import Host, PhaseOutcome, StepRunner, Transport
from kensa.hosts.remotehandlers import RemoteHandler, RemoteHandlers, RestorableRemoteHandler
from kensa.hosts.remotelock import hold_target_lock
from kensa.model import FileInfo, Phase, PreState, RemoteTarget, Step
from kensa.support.afterfork import reset_in_child

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_MAX_FRAME_BYTES",
    "DEFAULT_OPERATION_TIMEOUT",
    "READS",
    "AgentConnection",
    "Answer",
    "Read",
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


def _where(root: str, path: str) -> str:
    return path if root == "/" else posixpath.join(root, path.lstrip("/"))


class RemoteHost(FileReaders):
    """A target root on a remote machine, driven through its agent; meets :class:`~kensa.hosts.protocol.Host`
    and :class:`~kensa.hosts.protocol.StepRunner`.

    ``root`` is the host key (``ssh://user@host/root``): what messages, locks
    and audit ``host=`` name. ``target_root`` is the root's path on the target;
    ``is_live`` is true when it is that machine's ``/``. ``identity`` is the
    transport's name and the identity of the root directory on the target.
    ``connection`` is the agent it talks to (its ``counts`` count requests, ``ahead`` those answered ahead).
    """

    def __init__(self, connection: AgentConnection, key: str, hello: Mapping[str, Any]) -> None:
        self.connection = connection
        self.root = key
        self.target_root = str(hello["root"])
        self._is_live = bool(hello["is_live"])
        self._identity = f"{connection.name}|{hello['identity']}"
        machine = hello.get("machine_id")
        self._shared_identity = f"machine {machine}|{hello['identity']}" if isinstance(machine, str) and machine else None
        self.max_file_bytes = int(hello["max_file_bytes"])
        #: What the agent said in answer to ``hello`` (python, pid, payload hash ...).
        self.hello = dict(hello)
        self._lock_holder: Optional[int] = None  # the thread holding the target's lock through this host
        self._next_check: Optional[Step] = None  # see expect_check

    def __repr__(self) -> str:
        return f"RemoteHost({self.root!r})"

    @property
    def run_root(self) -> str:
        """The root's path on the target, where :meth:`run` runs."""
        return self.target_root

    @property
    def is_live(self) -> bool:
        return self._is_live

    @property
    def identity(self) -> str:
        return self._identity

    @property
    def shared_identity(self) -> Optional[str]:
        """The target across connections: the machine's id and the root's identity there (None when
        the machine has no ``/etc/machine-id``). Two inventory names of one machine share it;
        :attr:`identity` names the connection's host too, as this controller's lock is taken on it."""
        return self._shared_identity

    @property
    def alive(self) -> bool:
        """False once the connection was lost or closed."""
        return self.connection.alive

    def close(self) -> None:
        self.connection.close()

    def hold_target_lock(self, timeout: Optional[float], deadline: Optional[float] = None) -> ContextManager[None]:
        """Hold the target's own lock, the one kensa runs on that machine take, for a ``with``
        block (:mod:`kensa.hosts.remotelock`); TargetLockTimeout after ``timeout`` s (None: no limit),
        or at ``deadline`` (a ``time.monotonic()``) when given: the controller's lock and this one
        wait within one timeout.

        A hold inside a hold of the same thread (the transactions of a command that holds the
        host for its whole run) sends nothing: the enclosing one keeps the lock and releases it."""
        if self._lock_holder == threading.get_ident():
            return contextlib.nullcontext()
        return self._holding(timeout, deadline)

    @contextlib.contextmanager
    def _holding(self, timeout: Optional[float], deadline: Optional[float]) -> Iterator[None]:
        with hold_target_lock(self.connection, self.root, timeout, deadline):
            self._lock_holder = threading.get_ident()
            try:
                yield
            finally:
                self._lock_holder = None

    def where(self, path: str) -> str:
        return f"{self.connection.name}:{_where(self.target_root, path)}"

    def overlay(self, planned: Mapping[str, Optional[FileInfo]]) -> PlannedView:
        return PlannedView(self, planned)

    def run_phase(
        self,
        handler: str,
        phase: Phase,
        params: Mapping[str, Any],
        pre: Optional[PreState] = None,
        planned: Optional[Mapping[str, Optional[FileInfo]]] = None,
    ) -> PhaseOutcome:
        """One phase of one step on the target, one round trip (:class:`~kensa.hosts.protocol.StepRunner`)."""
        check_step_phase(handler, phase, pre, planned)
        found = self.connection.request(
            phase.value, mechanism=handler, params=encode_value(params), pre=encode_value(pre),
            planned=None if planned is None else encode_value(planned),
        )
        found = self._fitting(phase.value, PHASE_ANSWERS[phase.value], found)
        return cast(PhaseOutcome, found["pre"] if phase is Phase.CAPTURE else found)

    def expect_check(self, step: Optional[Step]) -> None:
        """Say which step the engine checks first in the transaction it runs next on this host, after
        the one now running (None: not known). The apply of the running transaction's step then asks
        its agent for that check and its capture ahead (see :meth:`AgentConnection.request_chain`),
        answered only when that transaction holds after its validate. The engine says it only while
        nothing but its own next requests can come between: see :meth:`kensa.engine.Engine.run`."""
        self._next_check = step

    def take_expected_check(self) -> Optional[Step]:
        """The step :meth:`expect_check` named, once."""
        step, self._next_check = self._next_check, None
        return step

    def handlers(self, registry: Any, ahead: bool = True) -> "RemoteHandlers":
        """The engine's handlers (``registry``: mechanism -> handler) as proxies running on the target;
        with ``ahead`` False none asks a read ahead (:class:`RemoteHandler`: a check captures nothing)."""
        return RemoteHandlers(self, registry, ahead)

    def _call(self, op: str, *args: Any, **kwargs: Any) -> Any:
        return self.connection.request(op, args=encode_value(list(args)), kwargs=encode_value(kwargs))

    def _answer(self, op: str, fits: Callable[[Any], bool], *args: Any, **kwargs: Any) -> Any:
        """``op``'s answer, which must be what the protocol says ``op`` answers: a target that
        answers otherwise (broken or hostile) is an AgentError naming it, not a crash in a check."""
        return self._fitting(op, fits, self._call(op, *args, **kwargs))

    def _fitting(self, op: str, fits: Callable[[Any], bool], found: Any) -> Any:
        if not fits(found):
            self.connection.broken(f"answered {op} with {type(found).__name__}, which is not what {op} answers")
        return found

    def read_many(self, calls: Sequence[Read]) -> List[Answer]:
        """Many reads in one round trip (the ``batch`` request): ``calls`` are (op, args, kwargs) of
        :data:`READS` ops, as the methods of this host take them. Each read is answered as its own
        request would be: ``(value, None)``, or ``(None, error)`` with the error that request would
        raise. A value that is not what its op answers is an AgentError naming the host, as it is for
        one request. A lost connection or a timeout raises, for the whole batch."""
        for op, _, _ in calls:
            if op not in READS:
                raise HostSelectionError(f"{op} is not a read a batch may hold ({', '.join(sorted(READS))})")
        if not calls:
            return []
        answers = self.connection.batch([
            {"op": op, "args": encode_value(list(args)), "kwargs": encode_value(dict(kwargs))} for op, args, kwargs in calls
        ])
        found: List[Answer] = []
        for (op, _, _), answer in zip(calls, answers):
            try:
                value = self.connection.outcome(op, answer)
            except KensaError as exc:
                if not self.connection.alive:
                    raise  # the answer was not the protocol: the connection is closed, for every read
                found.append((None, exc))
                continue
            found.append((self._fitting(op, READS[op], value), None))
        return found

    def info(self, path: str, *, content: bool = False) -> Optional[FileInfo]:
        return cast(Optional[FileInfo], self._answer("info", READS["info"], path, content=content))

    def read_file(self, path: str) -> Optional[FileInfo]:
        return cast(Optional[FileInfo], self._answer("read_file", READS["read_file"], path))

    def read_bytes(self, path: str) -> Optional[bytes]:
        return cast(Optional[bytes], self._answer("read_bytes", READS["read_bytes"], path))

    def list_dir(self, path: str) -> Optional[List[str]]:
        found = self._answer("list_dir", READS["list_dir"], path)
        return None if found is None else list(found)

    def leftover_temps(self, path: str) -> List[str]:
        return list(self._answer("leftover_temps", READS["leftover_temps"], path))

    def remove_leftover_temps(self, path: str) -> List[str]:
        return list(self._answer("remove_leftover_temps", names, path))

    def lookup_id(self, database: str, name: str) -> int:
        return int(self._answer("lookup_id", READS["lookup_id"], database, name))

    def run(self, argv: Sequence[str], timeout: float, *, stdin_file: Optional[str] = None) -> "subprocess.CompletedProcess[str]":
        # The agent opens stdin_file under its root, as its LocalHost opens every file.
        extra = {} if stdin_file is None else {"stdin_file": stdin_file}
        done = self._answer("run", ran, list(argv), timeout, **extra)
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
    agent_cache: bool = True,
    python: Optional[str] = None,
) -> RemoteHost:
    """Start kensa's agent on ``transport``'s target, confined to ``root`` there.

    ``key`` is the host key the RemoteHost is named by (default
    ``"<transport name>:<root>"``). The connection owns ``transport``:
    closing the host closes it, so give each connection a transport of its own. Raises :class:`~kensa.errors.AgentError`
    naming the host when it has no Python 3, refuses the payload, or answers
    with another hash; a transport's own errors (unreachable, login refused)
    pass through; :class:`~kensa.errors.RemoteTimeoutError` when the agent does
    not answer within ``connect_timeout``.

    ``agent_cache``: the agent keeps this payload compiled for the target's Python in one file of
    the login user's, ``~/.cache/kensa/agent-<sha256>-<tag>.bin`` (checked before use; see
    docs/remote.md), and the next agent skips compiling it. False: nothing is written on the target.
    ``hello["cache"]`` says what the agent did with it.

    ``python``: the interpreter to run the agent with, an absolute path on the
    target (checked before anything runs: :class:`~kensa.errors.UsageError`);
    no other is tried, and an :class:`~kensa.errors.AgentError` names it and the
    host when it is missing or older than 3.6. None: the first Python 3.6+ of
    :data:`~kensa.hosts.payload.PYTHONS`.
    """
    if not isinstance(root, str) or not root.startswith("/"):
        raise HostSelectionError(f"the target root {root!r} on {transport.name} must be an absolute path")
    if python is not None:
        check_python(python, transport.name)
    payload = build_payload() if payload is None else payload
    expected = build_payload().sha256
    try:
        proc = transport.spawn(agent_command(expected, cache=agent_cache, python=python), READY, connect_timeout)
    except RemoteHostError as exc:
        if NO_PYTHON_MESSAGE in str(exc) and python is not None:
            raise AgentError(
                f"host {transport.name}: the Python interpreter {python} is not there or is older than 3.6; "
                "install it or give another (--python, kensa_python)", transport.name) from exc
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


# Every transaction asks twice (its canonical key, then its host); a RemoteTarget is frozen.
@functools.lru_cache(maxsize=4096)
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
    (:class:`kensa.hosts.ssh.SshTransport`; a :class:`SubprocessTransport` in
    tests). One connection per key is kept and reused; one that died is
    replaced at the next resolution (which is how recovery reconnects). All are
    closed by :meth:`close` and at interpreter exit. A forked child never uses
    (or closes) its parent's connections: it opens its own. ``agent_cache`` is
    :func:`connect`'s. ``python_for`` names the interpreter of a target
    (:func:`connect`'s ``python``; None, or a function returning None: the search).
    """

    def __init__(self, transport_for: Callable[[RemoteTarget], Transport], *,
                 connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
                 operation_timeout: float = DEFAULT_OPERATION_TIMEOUT,
                 max_file_bytes: int = DEFAULT_MAX_FILE_BYTES, agent_cache: bool = True,
                 python_for: Optional[Callable[[RemoteTarget], Optional[str]]] = None) -> None:
        self.transport_for = transport_for
        self.python_for = python_for
        self.agent_cache = agent_cache
        self.connect_timeout = connect_timeout
        self.operation_timeout = operation_timeout
        self.max_file_bytes = max_file_bytes
        self._hosts: Dict[str, RemoteHost] = {}
        self._guard = threading.Lock()
        self._key_locks: Dict[str, threading.Lock] = collections.defaultdict(threading.Lock)
        # Connections begun by connect_early: key -> (its thread, its transport), and how each that failed failed.
        self._early: Dict[str, Tuple[threading.Thread, Transport]] = {}
        self._early_failures: Dict[str, BaseException] = {}
        atexit.register(_close_at_exit, weakref.ref(self))
        reset_in_child(self)

    def _after_fork_in_child(self) -> None:
        # The parent's agents answer the parent: a child writing to their pipes would
        # interleave frames with it, and closing them would end the parent's agents.
        self._hosts = {}
        self._guard = threading.Lock()
        self._key_locks = collections.defaultdict(threading.Lock)
        self._early = {}
        self._early_failures = {}

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
            early = self._early.get(target.key)
        if early is not None:
            # Begun by connect_early: its outcome is this resolution's, and a host that
            # could not be reached is not tried a second time for it.
            early[0].join()
            with self._guard:
                if self._early.get(target.key) is early:
                    del self._early[target.key]
                failure = self._early_failures.pop(target.key, None)
            if failure is not None:
                raise failure
        with lock:
            host = self._hosts.get(target.key)
            if host is not None and host.alive:
                return host
            return self._connect(target, self.transport_for(target))

    def _connect(self, target: RemoteTarget, transport: Transport) -> RemoteHost:
        """A new connection to ``target`` through ``transport``, kept for its key (the caller holds the key's lock)."""
        old = self._hosts.pop(target.key, None)
        if old is not None:
            old.close()
        python = self.python_for(target) if self.python_for is not None else None
        host = connect(transport, target.root, key=target.key,
                       connect_timeout=self.connect_timeout, operation_timeout=self.operation_timeout,
                       max_file_bytes=self.max_file_bytes, agent_cache=self.agent_cache, python=python)
        self._hosts[target.key] = host
        return host

    def connect_early(self, keys: Sequence[str]) -> None:
        """Begin connecting to the ``ssh://`` ``keys`` now, each in a thread of its own, while the
        caller goes on (loading rules, building its engine): the login and the agent's start run
        in other processes meanwhile. The next resolution of a key waits for its connection and
        gets it, or raises the error that connection ended with (once; later resolutions try anew).

        The transports are made here, in the calling thread (a bad target or option raises here);
        nothing is read or changed on a host beyond what :func:`connect` does. Give only as many
        keys as may be connected at once. :meth:`close` ends what is still connecting.
        """
        if keys:
            # The payload (read from the controller's copy, or built), with the bootstrap on the
            # agent's command line, is made here: in the threads it would share the interpreter with
            # the caller's imports, and each ssh would start later.
            build_payload()
        for key in keys:
            target = parse_remote_key(key)
            with self._guard:
                if target.key in self._early or target.key in self._hosts:
                    continue
            transport = self.transport_for(target)
            thread = threading.Thread(target=self._connect_early, args=(target, transport), daemon=True,
                                      name=f"kensa-connect-{target.host}")
            with self._guard:
                self._early[target.key] = (thread, transport)
            thread.start()

    def _connect_early(self, target: RemoteTarget, transport: Transport) -> None:
        with self._guard:
            lock = self._key_locks[target.key]
        with lock:
            try:
                self._connect(target, transport)
            except BaseException as exc:  # noqa: BLE001 - handed to the resolution that waits for it
                with self._guard:
                    self._early_failures[target.key] = exc

    def release(self, key: str) -> None:
        """Close the connection of ``key`` now, a host the caller is done with: a fleet's command
        keeps as many hosts connected as it has in flight, not every host it has reached. A
        later use of ``key`` connects again."""
        if not (isinstance(key, str) and key.startswith("ssh://")):
            return
        target = parse_remote_key(key)
        with self._guard:
            lock = self._key_locks[target.key]
        with lock:
            host = self._hosts.pop(target.key, None)
        if host is not None:
            host.close()

    def close(self) -> None:
        """Close every connection (their agents end; :func:`~kensa.hosts.connection.close_together`),
        ending those still being made first."""
        with self._guard:
            early, self._early = list(self._early.values()), {}
        for thread, transport in early:
            if thread.is_alive():
                # Ends the login or the agent's start under way (its ssh, its agent), so the thread returns at once.
                transport.close()
        for thread, _ in early:
            thread.join(self.connect_timeout)
        with self._guard:
            hosts, self._hosts = list(self._hosts.values()), {}
            self._early_failures = {}
        close_together([host.connection for host in hosts])


def _close_at_exit(ref: "weakref.ref[RemoteHosts]") -> None:
    found = ref()
    if found is not None:
        found.close()



if TYPE_CHECKING:
    # mypy proves here what the protocols promise: a RemoteHost is a Host and a StepRunner,
    # SubprocessTransport a Transport.
    def _conforms(host: RemoteHost) -> Tuple[Host, StepRunner, Transport]:
        return host, host, SubprocessTransport()
