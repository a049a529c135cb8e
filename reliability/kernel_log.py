"""A listener on the kernel audit log: every record the kernel logs, auditd or not.

Bound to netlink multicast group 1 (AUDIT_NLGRP_READLOG, needs
CAP_AUDIT_READ), it is the oracle for "this record reached the kernel, byte
for byte". Its own losses (ENOBUFS on a full receive buffer) are counted, so
a count it reports is never silently short.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from dataclasses import dataclass
from typing import Callable, List, Optional

NETLINK_AUDIT = 9
AUDIT_NLGRP_READLOG = 1
AUDIT_USER = 1005
SO_RCVBUFFORCE = 33


@dataclass(frozen=True)
class LoggedRecord:
    """One record as the kernel logged it."""

    type: int
    text: str  # audit(...): pid=... uid=... msg='<body>'

    @property
    def body(self) -> str:
        start = self.text.find("msg='")
        if start < 0:
            return ""
        return self.text[start + 5 : self.text.rindex("'")]


class KernelLog:
    """Collects kensa's records (those whose text holds ``op=kensa``) from the kernel."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_AUDIT)
        self._sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 64 << 20)
        self._sock.bind((0, AUDIT_NLGRP_READLOG))
        self._sock.settimeout(0.2)
        self._records: List[LoggedRecord] = []
        self._cond = threading.Condition()
        self._stop = False
        self.overruns = 0  # times the receive buffer overflowed: records the listener lost
        self._thread = threading.Thread(target=self._receive, name="kernel-log", daemon=True)
        self._thread.start()

    @classmethod
    def open(cls) -> "Optional[KernelLog]":
        """A listener, or None where this process may not read the audit log."""
        try:
            return cls()
        except OSError:
            return None

    def _receive(self) -> None:
        while not self._stop:
            try:
                data = self._sock.recv(1 << 16)
            except socket.timeout:
                continue
            except OSError:
                with self._cond:
                    self.overruns += 1
                continue
            while len(data) >= 16:
                length, rtype = struct.unpack_from("=IH", data)
                if length < 16:
                    break
                if b"op=kensa" in data[16:length]:
                    text = data[16:length].rstrip(b"\0").decode("utf-8", "replace")
                    with self._cond:
                        self._records.append(LoggedRecord(rtype, text))
                        self._cond.notify_all()
                data = data[(length + 3) & ~3 :]

    def matching(self, predicate: Callable[[LoggedRecord], bool]) -> List[LoggedRecord]:
        with self._cond:
            return [r for r in self._records if predicate(r)]

    def wait_for(self, predicate: Callable[[LoggedRecord], bool], count: int, timeout: float) -> List[LoggedRecord]:
        """Matching records once there are ``count`` of them, or whatever came within ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.matching(predicate)
            left = deadline - time.monotonic()
            if len(found) >= count or left <= 0:
                return found
            with self._cond:
                self._cond.wait(min(left, 0.2))

    def settle(self, predicate: Callable[[LoggedRecord], bool], quiet: float = 1.0, timeout: float = 30.0) -> List[LoggedRecord]:
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
        """Drop what was collected (between scenarios, to keep memory flat)."""
        with self._cond:
            self._records.clear()

    def close(self) -> None:
        self._stop = True
        self._thread.join()
        self._sock.close()
