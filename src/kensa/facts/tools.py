"""Whether a target has a program, looked up inside its root (never this machine's PATH)."""

from __future__ import annotations

from typing import Optional, Sequence

from kensa.errors import KensaError, NotAvailableError
from kensa.hosts.protocol import ReadableHost

#: Where packages install the programs kensa drives; /bin and /sbin are links to these on
#: merged-/usr systems, and listing a directory never follows a link.
PROGRAM_DIRS: Sequence[str] = ("/usr/bin", "/usr/sbin", "/bin", "/sbin", "/usr/local/bin", "/usr/local/sbin")


def find_program(host: ReadableHost, name: str) -> Optional[str]:
    """The path inside the target's root of the program ``name``, or None when none is installed."""
    for directory in PROGRAM_DIRS:
        try:
            entries = host.list_dir(directory)
        except KensaError:
            continue  # a link (merged /usr) or an unreadable directory: the real one is listed too
        if entries is not None and name in entries:
            return f"{directory}/{name}"
    return None


def require_program(host: ReadableHost, name: str, mechanism: str) -> str:
    """:func:`find_program`, or :class:`NotAvailableError` saying the mechanism is not available."""
    found = find_program(host, name)
    if found is None:
        raise NotAvailableError(
            f"{mechanism}: not available on this host: {name} is not installed on {host.where('/')} "
            f"(looked in {', '.join(PROGRAM_DIRS)}); nothing was changed"
        )
    return found
