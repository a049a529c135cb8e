"""Whether a live target has a command installed, as its own shell finds it."""

from __future__ import annotations

from typing import Optional

from kensa.hosts.protocol import ReadableHost

LOOKUP_TIMEOUT = 30.0

# The tool's name is an argument of the script, never part of it; the system
# directories come first, as a non-login shell's PATH may lack the sbin ones.
_LOOKUP = 'PATH=/usr/sbin:/usr/bin:/sbin:/bin:$PATH command -v -- "$1"'


def find_tool(host: ReadableHost, name: str) -> Optional[str]:
    """Where the live ``host`` runs ``name`` from, None when it has no such command."""
    done = host.run(["sh", "-c", _LOOKUP, "sh", name], LOOKUP_TIMEOUT)
    found = done.stdout.strip()
    return found if done.returncode == 0 and found.startswith("/") else None
