"""Agents started as processes of this machine: :class:`SubprocessTransport`, and stopping them.

:class:`SubprocessTransport` meets :class:`kensa.hosts.protocol.Transport` by
running the agent's command behind an argv prefix (nothing, ``sudo -n``,
``runuser -u USER --``, ``docker exec -i CONTAINER`` ...). :func:`stop_process`
and :class:`StderrTail` serve any transport that hands back a local process
(the OpenSSH client is one too). A transport that attaches a :class:`StderrTail`
to the process it returns, as ``kensa_stderr``, gets the agent's last error
output quoted in the messages of a lost connection.
"""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import threading
import time
import weakref
from typing import IO, Mapping, Optional, Sequence, cast

from kensa.errors import AgentError, RemoteTimeoutError

__all__ = ["STDERR_KEPT", "StderrTail", "SubprocessTransport", "read_line", "stop_process"]

#: How much of a process's last stderr is kept for messages.
STDERR_KEPT = 4096


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
        tail = StderrTail(proc)
        try:
            line = read_line(cast(IO[bytes], proc.stdout), len(ready), time.monotonic() + timeout)
        except TimeoutError:
            stop_process(proc)
            raise RemoteTimeoutError(
                f"the agent on {self.name} did not start within {timeout:g} s{tail.said()}", self.name) from None
        if line != ready:
            status = stop_process(proc)
            tail.join()
            raise AgentError(
                f"the agent on {self.name} did not start (exit status {status}, it wrote {line!r:.80}){tail.said()}",
                self.name,
            )
        setattr(proc, "kensa_stderr", tail)
        return proc

    def close(self) -> None:
        for proc in list(self._procs):
            stop_process(proc)


class StderrTail:
    """Drains a process's stderr on a thread, keeping its last few KiB for messages."""

    def __init__(self, proc: "subprocess.Popen[bytes]") -> None:
        self._data = b""
        self._thread = threading.Thread(target=self._drain, args=(proc.stderr,), daemon=True, name="kensa-agent-stderr")
        self._thread.start()

    def _drain(self, stream: Optional[IO[bytes]]) -> None:
        if stream is None:
            return
        fd = stream.fileno()
        while True:
            try:
                chunk = os.read(fd, STDERR_KEPT)
            except OSError:
                return
            if not chunk:
                return
            self._data = (self._data + chunk)[-STDERR_KEPT:]

    def join(self, timeout: float = 2.0) -> None:
        self._thread.join(timeout)

    def said(self) -> str:
        text = self._data.decode("utf-8", "replace").strip()
        return f": {text}" if text else ""


def stop_process(proc: "subprocess.Popen[bytes]") -> Optional[int]:
    """Stop ``proc`` and what it started (its own session); its exit status, or None."""
    if proc.poll() is None:
        # A prefix such as sudo runs the agent as another user: then only the
        # prefix's own process may be signalled, and ending it ends the pipes.
        try:
            os.killpg(proc.pid, 9)
        except OSError:
            with contextlib.suppress(OSError):
                proc.kill()
    try:
        return proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        return None


def read_line(stream: IO[bytes], limit: int, deadline: float) -> bytes:
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
