"""The ways to write an audit record that kensa is measured against.

Each returns a ready call (function and positional arguments) that writes the
same record body kensa writes, or raises :class:`PeerUnavailable` saying why it
cannot run here.
"""

from __future__ import annotations

import ctypes
import socket
import struct
from dataclasses import dataclass, field
from typing import Any, Callable, List, Tuple

AUDIT_USER = 1005
NETLINK_AUDIT = 9
NLM_F_REQUEST = 0x1


class PeerUnavailable(Exception):
    """A peer cannot run on this machine; the message says why."""


@dataclass
class PeerCall:
    """One ready-to-time call and what to release afterwards."""

    fn: Callable[..., Any]
    args: Tuple[Any, ...]
    closers: List[Callable[[], Any]] = field(default_factory=list)

    def close(self) -> None:
        for closer in self.closers:
            closer()


def stdlib_socket(body: bytes) -> PeerCall:
    """Python's own socket module: one sendto of nlmsghdr + body + NUL."""
    payload = body + b"\0"  # the kernel overwrites the last byte with NUL
    header = struct.pack("=IHHII", 16 + len(payload), AUDIT_USER, NLM_F_REQUEST, 0, 0)
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_AUDIT)
    except OSError as exc:
        raise PeerUnavailable(f"socket(AF_NETLINK, NETLINK_AUDIT) failed: {exc}") from exc
    return PeerCall(sock.sendto, (header + payload, socket.MSG_DONTWAIT, (0, 0)), [sock.close])


def _libaudit() -> Any:
    try:
        lib = ctypes.CDLL("libaudit.so.1", use_errno=True)
    except OSError as exc:
        raise PeerUnavailable(f"libaudit.so.1 could not be loaded ({exc}); install libaudit1") from exc
    lib.audit_open.restype = ctypes.c_int
    lib.audit_open.argtypes = []
    lib.audit_close.argtypes = [ctypes.c_int]
    lib.audit_send.restype = ctypes.c_int
    lib.audit_send.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_uint]
    lib.audit_log_user_message.restype = ctypes.c_int
    lib.audit_log_user_message.argtypes = [
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_int,
    ]
    return lib


def _open(lib: Any) -> int:
    fd = int(lib.audit_open())
    if fd < 0:
        raise PeerUnavailable(f"audit_open failed (errno {ctypes.get_errno()})")
    return fd


def libaudit_send(body: bytes) -> PeerCall:
    """libaudit's ``audit_send``: sends with NLM_F_ACK and waits for the ACK."""
    lib = _libaudit()
    fd = _open(lib)
    payload = body + b"\0"
    buf = ctypes.create_string_buffer(payload, len(payload))
    call = PeerCall(lib.audit_send, (fd, AUDIT_USER, buf, len(payload)), [lambda: lib.audit_close(fd)])
    if lib.audit_send(fd, AUDIT_USER, buf, len(payload)) < 0:
        call.close()
        raise PeerUnavailable(f"audit_send was refused (errno {ctypes.get_errno()}): needs CAP_AUDIT_WRITE")
    return call


def libaudit_log_user_message(message: bytes, hostname: bytes, addr: bytes) -> PeerCall:
    """libaudit's ``audit_log_user_message``; it appends exe, hostname, addr,
    terminal and res fields itself, and resolves ``hostname`` on every call
    when no ``addr`` is given."""
    lib = _libaudit()
    fd = _open(lib)
    args = (fd, AUDIT_USER, message, hostname or None, addr or None, b"?", 1)
    call = PeerCall(lib.audit_log_user_message, args, [lambda: lib.audit_close(fd)])
    if lib.audit_log_user_message(*args) <= 0:
        call.close()
        raise PeerUnavailable(f"audit_log_user_message was refused (errno {ctypes.get_errno()})")
    return call
