"""Ending an OpenSSH control master over its control socket, without starting ``ssh -O exit``.

A fleet run ends one control master per host. ``ssh -O exit`` is a whole ssh
process for that (it reads the configuration, then sends one message on the
socket): about as much CPU as the rest of a host's share of the controller's
ssh work. The message itself is OpenSSH's multiplexing protocol
(``PROTOCOL.mux`` in OpenSSH's sources), which this module speaks: each side
sends a hello (type, protocol version 4, optional extensions), then the client
sends ``MUX_C_TERMINATE`` with a request id and the master answers
``MUX_S_OK`` (or, as often, exits before its answer is out: OpenSSH's own
client takes the closed connection as done), exactly what ``ssh -O exit`` asks. Every message is a
4-byte big-endian length and that many bytes, integers big-endian.

:func:`request_exit` says whether the master acknowledged; on any other
outcome (no socket, a refusal, an answer that is not the protocol, a timeout)
it returns False and the caller falls back to ``ssh -O exit``.
"""

from __future__ import annotations

import socket
import struct
from typing import Optional

__all__ = ["request_exit"]

_MSG_HELLO = 0x00000001
_C_TERMINATE = 0x10000005
_S_OK = 0x80000001
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
            request_id = 1
            sock.sendall(_message(_C_TERMINATE, request_id))
            try:
                first = sock.recv(1)
            except (BrokenPipeError, ConnectionResetError):
                first = b""
            if not first:
                # A master that agreed often exits before its answer is out: OpenSSH's
                # own client takes the connection closing here as done, and so does this.
                return True
            rest = _exactly(sock, _U32.size - 1)
            answer = None if rest is None else _body(sock, first + rest)
    except OSError:  # no master there, a refused connection, a timeout
        return False
    return (answer is not None and len(answer) >= 8
            and _U32.unpack_from(answer, 0)[0] == _S_OK and _U32.unpack_from(answer, 4)[0] == request_id)


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
