"""Kernel audit records for kensa's transaction phases.

One record per phase boundary, type AUDIT_USER (1005) by default::

    op=kensa_transaction phase=<phase> seq=<n> txn=<id> rule=<id> host=<target> res=success|failed

``seq`` numbers every record one emitter hands to the kernel (gap records
included) from 1 without holes: a number missing from auditd's log is a record
lost after kensa sent it. ``ausearch -i`` and ``aureport`` leave the field as
it is.

``res`` is the audit dictionary's outcome field, so ``ausearch --success no``
and ``aureport`` understand it. Caller-supplied values (txn, rule, host) are
written as ``"value"`` or, when they hold a quote, an apostrophe, a space, a
control byte or a byte above 0x7E, as uppercase hex: a rule id can never add
or change a field. Values are truncated, never fields, to keep the body under
the kernel's limit.

:func:`open_emitter` never fails for environmental reasons: without the
compiled extension, without CAP_AUDIT_WRITE, outside the initial user
namespace, on a kernel without audit, or with ``KENSA_AUDIT=off`` in the
environment it returns a :class:`NoopEmitter`, and :func:`status` says why.
Emission is best-effort by design (the kernel itself drops records when auditd
stalls): the emitter's counters say what was handed to the kernel, dropped or
refused, and the journal remains the record of truth.

In ``async`` mode (the default) the calling thread copies the record into a
bounded ring and a C sender thread talks to the kernel; a full ring drops the
record, counts it, and the next record that gets through is preceded by an
``op=kensa_audit_gap seq=<n> dropped=N res=failed`` record. ``sync`` mode sends
on the calling thread, so the record is in the kernel before the call returns.

:func:`status` asks the kernel itself (``AUDIT_GET``): whether it logs records
at all (``enabled 0`` discards them), whether an audit daemon receives them,
and its counters. The sender re-reads that state at least every 100 ms while
it sends and counts records it would send while the kernel discards them as
``discarded`` (part of ``dropped``), so ``emitted == sent + dropped + failed``
says what reached the log. At interpreter exit every emitter's queue, also of
emitters already garbage-collected, is flushed within one bounded wait; what
could not be sent in time is reported on stderr.
"""

from __future__ import annotations

import atexit
import errno
import math
import os
import re
import sys
from dataclasses import dataclass
from typing import Any, List, Optional, Tuple, Union

from kensa.audit.compiled import constant, load, reason_names
from kensa.errors import AuditArgumentError, KernelStatusError

__all__ = [
    "AUDIT_USER",
    "MAX_BODY",
    "AuditEmitter",
    "AuditStatus",
    "EmitterStats",
    "KernelAuditStatus",
    "NoopEmitter",
    "PhaseRecorder",
    "encode_value",
    "format_phase_record",
    "kernel_status",
    "open_emitter",
    "status",
]

#: The record type kensa writes by default (the kernel's AUDIT_USER).
AUDIT_USER = constant("AUDIT_USER")
#: Longest body the kernel keeps whole (AUDIT_MESSAGE_TEXT_MAX less its NUL):
#: the C emitter's KENSA_MAX_BODY.
MAX_BODY = constant("KENSA_MAX_BODY")
#: Room for ``seq=<n> `` inside MAX_BODY: the C emitter's KENSA_SEQ_ROOM.
SEQ_ROOM = constant("KENSA_SEQ_ROOM")
DEFAULT_CAPACITY = 1 << 20
#: One deadline for all emitters' queues at interpreter exit.
EXIT_FLUSH_SECONDS = 2.0
#: flush() waits at most this long unless told otherwise.
DEFAULT_FLUSH_SECONDS = 10.0
# Longest wait a caller may ask for, in ms (about 31 years): C clamps there too.
_MAX_WAIT_MS = 10**12

_PHASE_RE = re.compile(r"[a-z][a-z_]{0,31}\Z")
# Room for the longest phase name, so a transaction's values are truncated the
# same way whatever its phase.
_PHASE_ROOM = 32
_SAFE_BYTES = bytes(b for b in range(0x21, 0x7F) if b not in b"\"'")
_OP = b"op=kensa_transaction phase="
_RES_OK = b" res=success"
_RES_FAILED = b" res=failed"
_RES = {True: _RES_OK, False: _RES_FAILED}
_FIXED = len(_OP) + _PHASE_ROOM + SEQ_ROOM + len(b" txn= rule= host=") + len(_RES[False])

Value = Union[str, bytes]

_REASON_TEXT = {
    "on": "the kernel logs audit records and an audit daemon receives them",
    "kernel_disabled": "the kernel discards every audit record (audit enabled 0): start auditd or run auditctl -e 1",
    "no_audit_daemon": (
        "no audit daemon is registered with the kernel (pid 0): records reach only the kernel log "
        "(dmesg), rate-limited; start auditd"
    ),
    "locked": "the kernel logs audit records; its audit configuration is locked (enabled 2) until reboot",
    "kernel_state_unknown": (
        "this process may write audit records, but without CAP_AUDIT_CONTROL it cannot ask the kernel "
        "whether it logs them (AUDIT_GET refused); run as root or grant CAP_AUDIT_CONTROL to know"
    ),
    "no_capability": "the process lacks CAP_AUDIT_WRITE in its effective set",
    "user_namespace": "the process is not in the initial user namespace; the kernel refuses audit records from others",
    "no_kernel_audit": "the kernel has no audit support (NETLINK_AUDIT unavailable)",
    "refused_eperm": "the kernel refused a record with EPERM (no CAP_AUDIT_WRITE)",
    "refused_econnrefused": "the kernel refused a record with ECONNREFUSED (non-initial user namespace)",
    "socket_error": "the audit netlink socket could not be opened",
    "closed": "the emitter was closed",
    "no_memory": "out of memory while setting up the emitter",
    "thread_error": "the sender thread could not be started",
    "no_extension": "the compiled extension kensa._audit could not be imported",
    "disabled": "emission was turned off with KENSA_AUDIT=off",
}


def _errno_text(err: int) -> str:
    if not err:
        return ""
    return f"{errno.errorcode.get(err, str(err))}: {os.strerror(err)}"


def _raw(value: Value) -> bytes:
    if isinstance(value, bytes):
        return value
    return str(value).encode("utf-8", "surrogatepass")


def _needs_encoding(raw: bytes) -> bool:
    return bool(raw.translate(None, _SAFE_BYTES))


def encode_value(value: Value) -> bytes:
    """Encode one untrusted value the way libaudit does, plus ``'``.

    ``"value"`` when every byte is printable ASCII other than ``"`` and ``'``;
    otherwise the bytes as uppercase hex without quotes.
    """
    raw = _raw(value)
    if _needs_encoding(raw):
        return raw.hex().upper().encode("ascii")
    return b'"' + raw + b'"'


def _fit(raws: list[bytes], budget: int) -> list[bytes]:
    """Encode the values, truncating the longest ones so all fit in budget."""
    hexed = [_needs_encoding(r) for r in raws]
    sizes = [2 * len(r) if h else len(r) + 2 for r, h in zip(raws, hexed)]
    if sum(sizes) <= budget:
        return [r.hex().upper().encode("ascii") if h else b'"' + r + b'"' for r, h in zip(raws, hexed)]
    # Fair shares: short values keep all they need, the rest split what is left.
    allot = [0] * len(raws)
    left = budget
    order = sorted(range(len(raws)), key=lambda i: sizes[i])
    for n, i in enumerate(order):
        share = left // (len(order) - n)
        allot[i] = min(sizes[i], share)
        left -= allot[i]
    out = []
    for r, h, a in zip(raws, hexed, allot):
        if h:
            out.append(r[: a // 2].hex().upper().encode("ascii"))
        else:
            out.append(b'"' + r[: max(a - 2, 0)] + b'"')
    return out


_VALUES_BUDGET = MAX_BODY - _FIXED


def _bind_values(txn: Value, rule: Value, host: Value) -> bytes:
    # Fast path for the usual ids (a uuid, a rule id, a host name), once per
    # transaction on the engine's path: printable ASCII without space or quotes
    # is written quoted as it is.
    if type(txn) is str and type(rule) is str and type(host) is str:
        text = f'txn="{txn}" rule="{rule}" host="{host}"'
        values = txn + rule + host
        if (
            values.isascii()
            and values.isprintable()
            and " " not in values
            and '"' not in values
            and "'" not in values
            and len(text) <= _VALUES_BUDGET
        ):
            return text.encode("ascii")
    t, r, h = _fit([_raw(txn), _raw(rule), _raw(host)], _VALUES_BUDGET)
    return b"txn=" + t + b" rule=" + r + b" host=" + h


def _phase_head(phase: str) -> bytes:
    if not isinstance(phase, str) or not _PHASE_RE.match(phase):
        raise AuditArgumentError(f"invalid audit phase {phase!r}: expected lowercase letters and '_', at most 32")
    return _OP + phase.encode("ascii") + b" "


def format_phase_record(
    txn: Value, phase: str, ok: bool, rule: Value = "", host: Value = "", *, seq: Optional[int] = None
) -> bytes:
    """The exact record body kensa sends for one phase boundary (without NUL).

    With ``seq`` it is the body of the record with that sequence number; without,
    the same body less its ``seq=`` field (the C emitter inserts it).
    """
    head = _phase_head(phase)
    if seq is not None:
        if isinstance(seq, bool) or not isinstance(seq, int) or not 1 <= seq < 2**64:
            raise AuditArgumentError(f"seq must be an int from 1 to 2**64-1, got {seq!r}")
        head += b"seq=%d " % seq
    return head + _bind_values(txn, rule, host) + _RES[bool(ok)]


@dataclass(frozen=True)
class KernelAuditStatus:
    """The kernel's ``struct audit_status`` as ``AUDIT_GET`` returned it.

    ``enabled``: 0 the kernel discards records, 1 it logs them, 2 it logs them
    and the configuration is locked. ``pid``: the audit daemon, 0 when none.
    ``failure``: 0 silent, 1 printk, 2 panic when records are lost.
    ``backlog_wait_time`` is in jiffies, as the kernel keeps it.
    """

    enabled: int
    failure: int
    pid: int
    rate_limit: int
    backlog_limit: int
    lost: int
    backlog: int
    backlog_wait_time: int


_KERNEL_FIELDS = ("enabled", "failure", "pid", "rate_limit", "backlog_limit", "lost", "backlog", "backlog_wait_time")


def kernel_status() -> KernelAuditStatus:
    """Ask the kernel for its audit status (``AUDIT_GET``; needs CAP_AUDIT_CONTROL).

    Raises :class:`KernelStatusError` with the errno when the kernel cannot be
    asked: EPERM without the capability, ECONNREFUSED outside the initial user
    namespace, EPROTONOSUPPORT without kernel audit, or no extension at all.
    """
    lib, ffi, missing = load()
    if lib is None:
        raise KernelStatusError(errno.ENOSYS, f"cannot ask the kernel: {_REASON_TEXT['no_extension']} ({missing})")
    out = ffi.new("struct audit_status *")
    err = lib.kensa_kernel_status(out)
    if err:
        raise KernelStatusError(err, f"AUDIT_GET failed: {_errno_text(err)}")
    return KernelAuditStatus(*(int(getattr(out, f)) for f in _KERNEL_FIELDS))


@dataclass(frozen=True)
class AuditStatus:
    """What happens to kensa's audit records here, and exactly why.

    ``state`` is ``"on"`` (the kernel logs them; ``reason`` ``no_audit_daemon``
    when only its own log has them), ``"off"`` (they are not written or the
    kernel discards them) or ``"unknown"`` (they can be written but the kernel
    cannot be asked whether it logs them). ``enabled`` is ``state == "on"``.
    ``writable``: this process can hand records to the kernel at all.
    ``kernel``: the kernel's own figures, when it could be asked.
    """

    enabled: bool
    reason: str
    detail: str
    extension: bool
    libaudit: bool
    state: str = "off"
    writable: bool = False
    kernel: Optional[KernelAuditStatus] = None

    def __str__(self) -> str:
        return f"audit emission {self.state} ({self.reason}): {self.detail}"


@dataclass(frozen=True)
class EmitterStats:
    """Counters of one emitter. Once flushed: emitted == sent + dropped + failed."""

    mode: str
    enabled: bool
    reason: str
    emitted: int
    sent: int
    dropped: int
    failed: int
    gaps: int
    stalls: int
    worst_send_seconds: float
    queued: int
    last_errno: int
    last_error: str
    discarded: int = 0
    seq: int = 0
    kernel_enabled: int = -1


# Record heads by phase, filled on first use; phases are a small closed set.
_heads: dict[str, bytes] = {}


def _head(phase: str) -> bytes:
    head = _heads.get(phase)
    if head is None:
        head = _heads[phase] = _phase_head(phase)
    return head


class PhaseRecorder:
    """Emits one transaction's records; txn, rule and host are encoded once.

    The per-record work on the calling thread is a dict lookup and one C call
    that copies the record into the ring. ``sequences`` lists, in order, each
    emitted phase with the sequence number of its record, or None when the
    emitter did not hand it to the kernel (dropped, refused, emitter off): what
    the journal keeps so ``kensa audit reconcile`` can prove a gap.
    """

    __slots__ = ("_send", "_handle", "_mid", "sequences")

    def __init__(self, emitter: "AuditEmitter", mid: bytes) -> None:
        self._send = emitter._send
        self._handle = emitter._handle
        self._mid = mid
        self.sequences: List[Tuple[str, Optional[int]]] = []

    def emit(self, phase: str, ok: bool) -> None:
        head = _heads.get(phase) or _head(phase)
        seq = self._send(self._handle, head, self._mid, _RES_OK if ok else _RES_FAILED)
        self.sequences.append((phase, seq if seq > 0 else None))


class _NoopRecorder:
    __slots__ = ()
    # Nothing was handed to the kernel, so nothing to reconcile.
    sequences: Tuple[Tuple[str, Optional[int]], ...] = ()

    def emit(self, phase: str, ok: bool) -> None:
        # Same phase-name check as the real recorder, so code tested with
        # emission off cannot fail once it is on.
        _heads.get(phase) or _head(phase)


class NoopEmitter:
    """Stands in for :class:`AuditEmitter` where emission is off; says why."""

    def __init__(self, mode: str, reason: str, detail: str) -> None:
        self.mode = mode
        self.reason = reason
        self.detail = detail

    @property
    def enabled(self) -> bool:
        return False

    def transaction(self, txn: Value, rule: Value, host: Value) -> _NoopRecorder:
        return _NoopRecorder()

    def emit_phase(self, txn: Value, phase: str, ok: bool, rule: Value = "", host: Value = "") -> Optional[int]:
        _head(phase)
        return None

    def stats(self) -> EmitterStats:
        return EmitterStats(self.mode, False, self.reason, 0, 0, 0, 0, 0, 0, 0.0, 0, 0, "")

    def flush(self, timeout: Optional[float] = DEFAULT_FLUSH_SECONDS) -> bool:
        _ms(timeout)
        return True

    def close(self, timeout: Optional[float] = 1.0) -> bool:
        _ms(timeout)
        return True

    def __repr__(self) -> str:
        return f"NoopEmitter(reason={self.reason!r})"


def _ms(timeout: Optional[float]) -> int:
    """A timeout in seconds (None: no limit) as C milliseconds, checked."""
    if timeout is None:
        return -1
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or math.isnan(timeout) or timeout < 0:
        raise AuditArgumentError(f"timeout must be None or a number of seconds >= 0, got {timeout!r}")
    return int(min(timeout * 1000, _MAX_WAIT_MS))


class AuditEmitter:
    """Writes phase records into the kernel audit log through kensa._audit."""

    def __init__(self, handle: Any, lib: Any, ffi: Any, mode: str, msg_type: int) -> None:
        self._handle = handle
        self._lib = lib
        self._ffi = ffi
        self._send = lib.kensa_emit
        self.mode = mode
        self.msg_type = msg_type

    def transaction(self, txn: Value, rule: Value, host: Value) -> PhaseRecorder:
        """A recorder for one transaction: values are encoded here, once."""
        return PhaseRecorder(self, _bind_values(txn, rule, host))

    def emit_phase(self, txn: Value, phase: str, ok: bool, rule: Value = "", host: Value = "") -> Optional[int]:
        """Emit one phase record; its sequence number, or None when it was not handed over.

        Never blocks in async mode; never raises for I/O.
        """
        seq = self._lib.kensa_emit(self._handle, _head(phase), _bind_values(txn, rule, host), _RES[bool(ok)])
        return int(seq) if seq > 0 else None

    @property
    def enabled(self) -> bool:
        return self.stats().enabled

    def stats(self) -> EmitterStats:
        s = self._ffi.new("kensa_stats *")
        self._lib.kensa_get_stats(self._handle, s)
        reason = reason_names().get(s.reason, str(s.reason))
        return EmitterStats(
            mode=self.mode,
            enabled=s.reason == self._lib.KENSA_ON,
            reason=reason,
            emitted=s.emitted,
            sent=s.sent,
            dropped=s.dropped,
            failed=s.failed,
            gaps=s.gaps,
            stalls=s.stalls,
            worst_send_seconds=s.worst_send_ns / 1e9,
            queued=s.queued,
            last_errno=s.last_errno,
            last_error=_errno_text(s.last_errno),
            discarded=s.discarded,
            seq=s.seq,
            kernel_enabled=s.kernel_enabled,
        )

    def flush(self, timeout: Optional[float] = DEFAULT_FLUSH_SECONDS) -> bool:
        """Wait until every queued record was handed to the kernel; False on timeout.

        ``timeout`` is in seconds; None waits as long as it takes.
        """
        return bool(self._lib.kensa_flush(self._handle, _ms(timeout)))

    def close(self, timeout: Optional[float] = 1.0) -> bool:
        """Flush up to ``timeout`` seconds, then stop the sender and close the socket.

        Records still queued then are abandoned (counted as dropped), and so
        are records emitted later. A send the kernel holds (auditd hung) past a
        50 ms grace finishes on its own; nothing else is sent. False when
        records were abandoned.
        """
        return bool(self._lib.kensa_close(self._handle, _ms(timeout)))

    def __repr__(self) -> str:
        return f"AuditEmitter(mode={self.mode!r}, msg_type={self.msg_type})"


Emitter = Union[AuditEmitter, NoopEmitter]

def _check_msg_type(msg_type: int) -> None:
    if isinstance(msg_type, bool) or not isinstance(msg_type, int):
        raise TypeError(f"msg_type must be an int, got {type(msg_type).__name__}")
    first, last = constant("AUDIT_FIRST_USER_MSG"), constant("AUDIT_LAST_USER_MSG")
    first2, last2 = constant("AUDIT_FIRST_USER_MSG2"), constant("AUDIT_LAST_USER_MSG2")
    if not (msg_type == AUDIT_USER or first <= msg_type <= last or first2 <= msg_type <= last2):
        raise AuditArgumentError(
            f"msg_type {msg_type} is not a user audit message type: "
            f"use {AUDIT_USER} (AUDIT_USER) or a value in {first}-{last} or {first2}-{last2}"
        )


def _disabled_by_env() -> bool:
    return os.environ.get("KENSA_AUDIT", "").strip().lower() in ("0", "off", "no", "false")


def status() -> AuditStatus:
    """What happens to audit records written from this process, and why.

    First whether this process can write them at all (extension, capability,
    user namespace, kernel support), then what the kernel does with them, as
    it says itself (``AUDIT_GET``): discards them (``enabled 0``), logs them
    with no audit daemon to receive them (``pid 0``), logs them with its
    configuration locked (``enabled 2``), or logs them. Without
    CAP_AUDIT_CONTROL the kernel cannot be asked: the state is ``unknown``.
    """
    lib, ffi, missing = load()
    if lib is None:
        return AuditStatus(False, "no_extension", f"{_REASON_TEXT['no_extension']} ({missing})", False, False)
    libaudit = bool(lib.kensa_uses_libaudit())
    if _disabled_by_env():
        return AuditStatus(False, "disabled", _REASON_TEXT["disabled"], True, libaudit)
    err = ffi.new("int *")
    reason = reason_names().get(lib.kensa_probe(err), "socket_error")
    if reason != "on":
        detail = _REASON_TEXT[reason] + (f" ({_errno_text(err[0])})" if err[0] else "")
        return AuditStatus(False, reason, detail, True, libaudit)
    try:
        kernel = kernel_status()
    except KernelStatusError as exc:
        detail = _REASON_TEXT["kernel_state_unknown"]
        if exc.errno != errno.EPERM:
            detail = f"this process may write audit records, but the kernel could not be asked whether it logs them ({exc.strerror})"
        return AuditStatus(False, "kernel_state_unknown", detail, True, libaudit, "unknown", True)
    state, reason = "on", "on"
    detail = _REASON_TEXT["on"] + f" (auditd pid {kernel.pid})"
    if kernel.enabled == lib.KENSA_KERNEL_DISABLED:
        state, reason, detail = "off", "kernel_disabled", _REASON_TEXT["kernel_disabled"]
    elif kernel.pid == 0:
        reason = "no_audit_daemon"
        detail = _REASON_TEXT["no_audit_daemon"] + f" (kernel rate_limit {kernel.rate_limit}/s, 0: none; printk limits too)"
    elif kernel.enabled == lib.KENSA_KERNEL_LOCKED:
        reason, detail = "locked", _REASON_TEXT["locked"] + f" (auditd pid {kernel.pid})"
    return AuditStatus(state == "on", reason, detail, True, libaudit, state, True, kernel)


def open_emitter(mode: str = "async", *, msg_type: int = AUDIT_USER, capacity: int = DEFAULT_CAPACITY) -> Emitter:
    """An emitter, or a :class:`NoopEmitter` when this process cannot emit.

    ``mode`` is ``"async"`` (the caller only enqueues) or ``"sync"`` (the caller
    sends). ``capacity`` is the async ring's size in bytes (a record takes its
    length plus 8, rounded up to 8: about 130 bytes for usual ids). Raises only
    for invalid arguments; never for the environment.
    """
    if mode not in ("async", "sync"):
        raise AuditArgumentError(f"mode must be 'async' or 'sync', got {mode!r}")
    _check_msg_type(msg_type)
    if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity <= 0:
        raise AuditArgumentError(f"capacity must be a positive number of bytes, got {capacity!r}")
    st = status()
    # A kernel that discards records now may log them later (auditd starts):
    # the emitter still runs and counts what the kernel discarded.
    if not st.writable:
        return NoopEmitter(mode, st.reason, st.detail)
    lib, ffi, _ = load()
    reason = ffi.new("int *")
    err = ffi.new("int *")
    c_mode = lib.KENSA_MODE_ASYNC if mode == "async" else lib.KENSA_MODE_SYNC
    handle = lib.kensa_emitter_new(c_mode, msg_type, capacity, reason, err)
    if handle == ffi.NULL:
        why = reason_names().get(reason[0], "socket_error")
        detail = _REASON_TEXT[why] + (f" ({_errno_text(err[0])})" if err[0] else "")
        return NoopEmitter(mode, why, detail)
    return AuditEmitter(ffi.gc(handle, lib.kensa_emitter_free), lib, ffi, mode, msg_type)


@atexit.register
def _flush_at_exit() -> None:
    """Give every queued record, also of collected emitters, one bounded chance at exit."""
    module = sys.modules.get("kensa._audit")
    if module is None:
        return  # never loaded: no emitter ever ran here
    lib, ffi = module.lib, module.ffi
    abandoned = ffi.new("uint64_t *")
    if not lib.kensa_flush_all(_ms(EXIT_FLUSH_SECONDS), abandoned):
        sys.stderr.write(
            f"kensa: {abandoned[0]} audit record(s) abandoned at exit: the kernel did not take them "
            f"within {EXIT_FLUSH_SECONDS:g} s (is auditd hung?)\n"
        )
