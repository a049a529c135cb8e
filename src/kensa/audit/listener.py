"""A listener on the kernel's audit log: every record the kernel logs, auditd or not.

Bound to netlink multicast group ``AUDIT_NLGRP_READLOG`` (needs
CAP_AUDIT_READ), it receives each record as the kernel logged it: the oracle
for "this record reached the kernel, byte for byte", used by ``kensa demo``,
the tests and the reliability report. A thread collects the records until
:meth:`AuditListener.close`; only those passing its filters (record types, a
byte string the record must contain) are kept, so a long run keeps only what
it looks for.

The listener's own losses are never silent: when its receive buffer overflows
the kernel answers ENOBUFS and the records in between are gone; each time is
counted in :attr:`AuditListener.overruns`, and a listener made with
``lossless=True`` raises :class:`~kensa.errors.AuditListenerError` from
:meth:`~AuditListener.matching` (and so from :meth:`~AuditListener.wait_for`)
once it happened, so a count it reports is never short without saying so.

The netlink values come from the compiled extension, which fills them in from
the kernel's headers; without it the listener cannot be opened.
"""

from __future__ import annotations

import errno
import socket
import struct
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Collection, List, Optional

from kensa.audit.compiled import load
from kensa.errors import AuditListenerError

__all__ = ["AuditListener", "KernelRecord"]

#: How long a receive waits before the thread looks whether it should stop.
_POLL_SECONDS = 0.2


@dataclass(frozen=True)
class KernelRecord:
    """One record as the kernel logged it: its type and its whole text."""

    type: int
    text: str  # audit(...): pid=... uid=... msg='<body>'

    @property
    def body(self) -> str:
        """What the sender wrote: the text inside ``msg='...'`` ("" when there is none)."""
        start = self.text.find("msg='")
        if start < 0:
            return ""
        return self.text[start + 5 : self.text.rindex("'")]

    @property
    def pid(self) -> int:
        """The pid of the process that sent the record."""
        return int(self.text.split(" pid=", 1)[1].split()[0])


Predicate = Callable[[KernelRecord], bool]


class AuditListener:
    """Collects the records the kernel logs, from now until :meth:`close`.

    ``types``: keep only records of these types (all when None). ``containing``:
    keep only records whose text holds these bytes. ``receive_buffer``: bytes of
    socket buffer asked for (forced past the system limit where this process may,
    CAP_NET_ADMIN). ``lossless``: raise from :meth:`matching` once the buffer
    overflowed. Raises :class:`AuditListenerError` (an ``OSError``) when the
    log cannot be listened to: no extension, no CAP_AUDIT_READ, no kernel audit.
    """

    def __init__(
        self,
        *,
        types: Optional[Collection[int]] = None,
        containing: Optional[bytes] = None,
        receive_buffer: int = 32 << 20,
        lossless: bool = False,
    ) -> None:
        lib, _, missing = load()
        if lib is None:
            raise AuditListenerError(
                errno.ENOSYS, f"cannot listen to the kernel audit log: the extension kensa._audit is missing ({missing})"
            )
        self._header = int(lib.NLMSG_HDRLEN)
        self._align = int(lib.NLMSG_ALIGNTO)
        try:
            self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, lib.NETLINK_AUDIT)
        except OSError as exc:
            raise AuditListenerError(exc.errno, f"cannot open a NETLINK_AUDIT socket: {exc.strerror}") from exc
        try:
            try:
                self._sock.setsockopt(socket.SOL_SOCKET, lib.SO_RCVBUFFORCE, receive_buffer)
            except PermissionError:
                self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
            self._sock.bind((0, lib.AUDIT_NLGRP_READLOG))
        except OSError as exc:
            self._sock.close()
            raise AuditListenerError(
                exc.errno, f"cannot listen to the kernel audit log (needs CAP_AUDIT_READ): {exc.strerror}"
            ) from exc
        self._sock.settimeout(_POLL_SECONDS)
        self._types = None if types is None else frozenset(types)
        self._containing = containing
        self._lossless = lossless
        self._records: List[KernelRecord] = []
        self._cond = threading.Condition()
        self._stop = False
        #: Times the receive buffer overflowed (ENOBUFS): records this listener lost.
        self.overruns = 0
        #: The last receive error, "" when there was none.
        self.last_error = ""
        self._thread = threading.Thread(target=self._receive, name="kensa-audit-listener", daemon=True)
        self._thread.start()

    @classmethod
    def open(cls, **options: Any) -> "Optional[AuditListener]":
        """A listener made with ``options`` (as the constructor takes them), or None
        where this process may not listen to the audit log."""
        try:
            return cls(**options)
        except AuditListenerError:
            return None

    def _receive(self) -> None:
        while not self._stop:
            try:
                data = self._sock.recv(1 << 16)
            except socket.timeout:
                continue
            except OSError as exc:
                with self._cond:
                    self.overruns += 1
                    self.last_error = f"{errno.errorcode.get(exc.errno or 0, exc.errno)}: {exc.strerror}"
                    self._cond.notify_all()
                continue
            self._keep(data)

    def _keep(self, data: bytes) -> None:
        """Store the messages of one datagram that pass the filters."""
        header, align = self._header, self._align
        while len(data) >= header:
            length, rtype = struct.unpack_from("=IH", data)
            if length < header:
                break  # a malformed length would never advance
            payload = data[header:length]
            if (self._types is None or rtype in self._types) and (
                self._containing is None or self._containing in payload
            ):
                text = payload.rstrip(b"\0").decode("utf-8", "replace")
                with self._cond:
                    self._records.append(KernelRecord(rtype, text))
                    self._cond.notify_all()
            data = data[(length + align - 1) & ~(align - 1) :]

    def matching(self, predicate: Predicate) -> List[KernelRecord]:
        """The records kept so far that satisfy ``predicate``, in arrival order.

        A ``lossless`` listener raises :class:`AuditListenerError` (ENOBUFS)
        instead once its buffer overflowed.
        """
        with self._cond:
            if self._lossless and self.overruns:
                raise AuditListenerError(
                    errno.ENOBUFS,
                    f"the audit listener lost records {self.overruns} time(s) ({self.last_error}): its counts are short",
                )
            return [r for r in self._records if predicate(r)]

    def wait_for(self, predicate: Predicate, count: int, timeout: float = 10.0) -> List[KernelRecord]:
        """Matching records once there are ``count`` of them, or whatever came within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.matching(predicate)
            left = deadline - time.monotonic()
            if len(found) >= count or left <= 0:
                return found
            with self._cond:
                self._cond.wait(min(left, 0.1))

    def settle(self, predicate: Predicate, quiet: float = 1.0, timeout: float = 30.0) -> List[KernelRecord]:
        """Matching records once none more arrived for ``quiet`` seconds (or ``timeout``)."""
        deadline = time.monotonic() + timeout
        last = -1
        while True:
            found = self.matching(predicate)
            if len(found) == last or time.monotonic() > deadline:
                return found
            last = len(found)
            time.sleep(quiet)

    def forget(self) -> None:
        """Drop the records kept so far (not the count of losses)."""
        with self._cond:
            self._records.clear()

    def close(self) -> None:
        """Stop the thread and close the socket; the records stay readable."""
        self._stop = True
        self._thread.join()
        self._sock.close()

    def __enter__(self) -> "AuditListener":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
