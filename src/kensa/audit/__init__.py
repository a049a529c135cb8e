"""Kernel audit records: the friendly emitter API over the C extension ``kensa._audit``.

:mod:`kensa.audit.emitter` formats and queues one USER_* record per phase boundary
and reports the kernel's audit state; :mod:`kensa.audit.reconcile` reads auditd's
log back and names the records it lost; :mod:`kensa.audit.listener` receives
every record the kernel logs; :mod:`kensa.audit.compiled` loads the extension
and reads the C and kernel values from it. The C source lives in ``csrc/``.
"""

from typing import TYPE_CHECKING

from kensa._exports import lazy_exports
from kensa.errors import AuditArgumentError, AuditError, AuditListenerError, KernelStatusError

if TYPE_CHECKING:
    from kensa.audit.emitter import (
        AUDIT_USER,
        MAX_BODY,
        AuditEmitter,
        AuditStatus,
        EmitterStats,
        KernelAuditStatus,
        NoopEmitter,
        PhaseRecorder,
        encode_value,
        format_phase_record,
        kernel_status,
        open_emitter,
        status,
    )
    from kensa.audit.listener import AuditListener, KernelRecord

# Imported on first use: a handler that needs only kensa.audit.compiled's constants
# (and so every command that loads rules) does not load the emitter and the listener.
__getattr__, __dir__ = lazy_exports(__name__, globals(), {
    "kensa.audit.emitter": ["AUDIT_USER", "MAX_BODY", "AuditEmitter", "AuditStatus", "EmitterStats", "KernelAuditStatus",
                            "NoopEmitter", "PhaseRecorder", "encode_value", "format_phase_record", "kernel_status",
                            "open_emitter", "status"],
    "kensa.audit.listener": ["AuditListener", "KernelRecord"],
})

__all__ = [
    "AUDIT_USER",
    "MAX_BODY",
    "AuditArgumentError",
    "AuditEmitter",
    "AuditError",
    "AuditListener",
    "AuditListenerError",
    "AuditStatus",
    "EmitterStats",
    "KernelAuditStatus",
    "KernelRecord",
    "KernelStatusError",
    "NoopEmitter",
    "PhaseRecorder",
    "encode_value",
    "format_phase_record",
    "kernel_status",
    "open_emitter",
    "status",
]
