"""Ending an OpenSSH control master over its control socket, without starting ``ssh -O exit``.

A fleet run ends one control master per host. ``ssh -O exit`` is a whole ssh
process for that (it reads the configuration, then sends one message on the
socket): several milliseconds of CPU per host. The message itself is OpenSSH's
multiplexing protocol (``PROTOCOL.mux`` in OpenSSH's sources), which this
module speaks: each side sends a hello (type, protocol version 4, optional
extensions), the client asks the master's pid (``MUX_C_ALIVE_CHECK``, as ``ssh -O
check`` does), then sends ``MUX_C_TERMINATE`` with a request id and
the master answers ``MUX_S_OK`` (or, as often, exits before its answer is out:
OpenSSH's own client takes the closed connection as done), exactly what
``ssh -O exit`` asks. Every message is a 4-byte big-endian length and that
many bytes, integers big-endian.

:func:`request_exit` says whether the master acknowledged; on any other
outcome (no socket, a refusal, an answer that is not the protocol, a timeout)
it returns False and the caller falls back to ``ssh -O exit``. Once
acknowledged it waits (within the same timeout) until the master process has
exited: ``ssh -O exit`` took long enough to start that the master was gone by
the time it returned, and callers count on a closed transport leaving no process.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from typing import Optional

__all__ = ["request_exit"]

_MSG_HELLO = 0x00000001
_C_ALIVE_CHECK = 0x10000004
_C_TERMINATE = 0x10000005
_S_OK = 0x80000001
_S_ALIVE = 0x80000005
_VERSION = 4
_U32 = struct.Struct(">I")
#: Largest message accepted from the master: a hello with its extensions is far smaller.
_MAX_MESSAGE = 1 << 16


def request_exit(control_path: str, timeout: float = 30.0) -> bool:
    """Ask the control master listening on ``control_path`` to exit; True once it acknowledged."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(control_path)
            sock.sendall(_message(_MSG_HELLO, _VERSION))
            hello = _receive(sock)
            if hello is None or len(hello) < 8 or _U32.unpack_from(hello, 0)[0] != _MSG_HELLO:
                return False
            # The master's pid, as ssh -O check asks it (the socket's peer credentials name the
            # process that made the socket, which is not the master once ControlPersist forked it).
            sock.sendall(_message(_C_ALIVE_CHECK, 1))
            alive = _receive(sock)
            if alive is None or len(alive) < 12 or _U32.unpack_from(alive, 0)[0] != _S_ALIVE \
                    or _U32.unpack_from(alive, 4)[0] != 1:
                return False
            master = _U32.unpack_from(alive, 8)[0]
            request_id = 2
            sock.sendall(_message(_C_TERMINATE, request_id))
            try:
                first = sock.recv(1)
            except (BrokenPipeError, ConnectionResetError):
                first = b""
            if first:
                rest = _exactly(sock, _U32.size - 1)
                answer = None if rest is None else _body(sock, first + rest)
                if answer is None or len(answer) < 8 or _U32.unpack_from(answer, 0)[0] != _S_OK \
                        or _U32.unpack_from(answer, 4)[0] != request_id:
                    return False
            # else: a master that agreed often exits before its answer is out; OpenSSH's
            # own client takes the connection closing here as done, and so does this.
    except OSError:  # no master there, a refused connection, a timeout
        return False
    if 0 < master != os.getpid():
        _await_exit(master, time.monotonic() + timeout)
    return True


def _await_exit(pid: int, deadline: float) -> None:
    """Until ``pid`` has exited (gone, or a zombie nobody reaped yet) or ``deadline`` passed."""
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
                state = handle.read().rpartition(")")[2].split()[:1]
        except OSError:
            return
        if not state or state[0] in ("Z", "X"):
            return
        time.sleep(0.002)


def _message(*words: int) -> bytes:
    body = b"".join(_U32.pack(word) for word in words)
    return _U32.pack(len(body)) + body


def _receive(sock: socket.socket) -> Optional[bytes]:
    """One message's body; None when the peer closed, cut it short or announced too much."""
    header = _exactly(sock, _U32.size)
    return None if header is None else _body(sock, header)


def _body(sock: socket.socket, header: bytes) -> Optional[bytes]:
    (length,) = _U32.unpack(header)
    return None if length > _MAX_MESSAGE else _exactly(sock, length)


def _exactly(sock: socket.socket, size: int) -> Optional[bytes]:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data
