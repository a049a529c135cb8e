"""The compiled extension ``kensa._audit``, and the C and kernel values it carries.

Every number the C emitter and the kernel define is read from the extension's
cdef (``csrc/kensa_audit.h`` and ``csrc/kernel_cdef.h``), never typed again
here: why emission is off (``enum kensa_reason``), the body limits, the user
record types and the netlink values a listener needs, the last ones filled in
by the compiler from the kernel's headers.

Without the extension (a pure-Python install) kensa writes no record, but
:func:`kensa.audit.format_phase_record` still formats one; the few values it
needs then come from :data:`WITHOUT_EXTENSION`, which a test compares with the
compiled module, so the two cannot drift apart unnoticed.
"""

from __future__ import annotations

import threading
from types import MappingProxyType
from typing import Any, Mapping, Optional, Tuple

from kensa.errors import AuditError

__all__ = ["WITHOUT_EXTENSION", "constant", "load", "reason_names"]

#: What a pure-Python install uses for the values the formatter needs; each is
#: the compiled module's value of the same name (a test checks).
WITHOUT_EXTENSION: Mapping[str, int] = {
    "AUDIT_USER": 1005,
    "AUDIT_FIRST_USER_MSG": 1100,
    "AUDIT_LAST_USER_MSG": 1199,
    "AUDIT_FIRST_USER_MSG2": 2100,
    "AUDIT_LAST_USER_MSG2": 2999,
    "KENSA_MAX_BODY": 8559,
    "KENSA_SEQ_ROOM": 25,
}

# Every name read from the module: one built from older C sources lacks some, and is
# then treated as missing (with the reason) rather than failing at first use.
_NEEDED = (*WITHOUT_EXTENSION, "AUDIT_MESSAGE_TEXT_MAX", "NETLINK_AUDIT", "AUDIT_NLGRP_READLOG", "NLMSG_HDRLEN",
           "NLMSG_ALIGNTO", "SO_RCVBUFFORCE")

_import_lock = threading.Lock()
_REASON_PREFIXES = ("KENSA_OFF_", "KENSA_")


def load() -> Tuple[Any, Any, str]:
    """The compiled module's (lib, ffi), or (None, None, why it is missing)."""
    with _import_lock:
        try:
            from kensa import _audit  # no stubs: typed Any by the package's __getattr__
        except ImportError as exc:
            return None, None, str(exc)
        lacking = [name for name in _NEEDED if not hasattr(_audit.lib, name)]
        if lacking:
            return None, None, (
                f"{_audit.__file__} was built from older C sources (it lacks {', '.join(lacking)}); rebuild it"
            )
        return _audit.lib, _audit.ffi, ""


def constant(name: str) -> int:
    """The integer constant ``name`` of the cdef (a ``#define`` or an enum member).

    Without the extension only the names of :data:`WITHOUT_EXTENSION` have a
    value; any other raises :class:`AuditError` saying the extension is missing.
    """
    lib, _, missing = load()
    if lib is not None:
        return int(getattr(lib, name))
    if name in WITHOUT_EXTENSION:
        return WITHOUT_EXTENSION[name]
    raise AuditError(f"{name} comes from the compiled extension kensa._audit, which could not be imported ({missing})")


_reasons: Optional[Mapping[int, str]] = None


def reason_names() -> Mapping[int, str]:
    """``enum kensa_reason`` as value -> reason name: ``KENSA_ON`` is ``"on"``,
    ``KENSA_OFF_NO_CAPABILITY`` is ``"no_capability"`` (empty without the extension)."""
    global _reasons
    if _reasons is None:
        _, ffi, _ = load()
        if ffi is None:
            return MappingProxyType({})
        names = {}
        for value, member in ffi.typeof("enum kensa_reason").elements.items():
            prefix = next(p for p in _REASON_PREFIXES if member.startswith(p))
            names[int(value)] = member[len(prefix):].lower()
        _reasons = MappingProxyType(names)
    return _reasons
