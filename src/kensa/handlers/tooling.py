"""Running the target's own tool for a mechanism (dconf, authselect, update-crypto-policies).

Argument lists only, never a shell; a tool that is not installed is refused before
anything changes (:func:`kensa.facts.tools.require_program`), and a tool that fails
raises :class:`~kensa.errors.StepFailedError` with its own words.
"""

from __future__ import annotations

from typing import Sequence

from kensa.errors import StepFailedError, NotAvailableError
from kensa.facts.tools import require_program
from kensa.hosts.protocol import ReadableHost

#: Seconds one run of a tool may take.
TOOL_TIMEOUT = 120.0


def live_tool(host: ReadableHost, program: str, mechanism: str) -> None:
    """Refuse, before anything changes, a target that is not live or has no ``program``."""
    require_program(host, program, mechanism)
    if not host.is_live:
        raise NotAvailableError(
            f"{mechanism}: not available on an image root ({host.where('/')}): {program} changes the running "
            "system and has no option to act on another root; remediate the host itself; nothing was changed"
        )


def run_tool(host: ReadableHost, argv: Sequence[str], mechanism: str) -> str:
    """Run ``argv`` on the target; its standard output, or StepFailedError naming the command and what it said."""
    done = host.run(list(argv), TOOL_TIMEOUT)
    if done.returncode != 0:
        said = (done.stderr or done.stdout or "").strip()[-2000:]
        raise StepFailedError(f"{mechanism}: {' '.join(argv)} failed (exit {done.returncode}): {said}")
    return str(done.stdout)
