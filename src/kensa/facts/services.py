"""systemd units of a target, asked of ``systemctl``.

Whether a unit is enabled is a fact of its unit files: ``systemctl is-enabled``
answers it without a running systemd, and ``systemctl --root`` answers it for an
image root. Whether a unit is active needs the running service manager: a live
host where systemd is PID 1 (it has /run/systemd/system).
"""

from __future__ import annotations

import errno
import re
from typing import Any, List, Optional, Tuple

from kensa.errors import HostAccessError, ParamError
from kensa.facts.params import line
from kensa.hosts.protocol import ReadableHost

SYSTEMCTL_TIMEOUT = 60.0
_UNIT = re.compile(r"[A-Za-z0-9:_.\\@-]{1,255}")
UNIT_SUFFIXES = (".service", ".socket", ".target", ".timer", ".mount", ".path", ".swap", ".slice", ".scope", ".device", ".automount")

ENABLED_STATES = frozenset({"enabled", "enabled-runtime", "static", "generated"})
"""is-enabled answers that satisfy "enabled": static and generated units have no
[Install] section to enable and start by design. ``indirect`` (the unit itself is
not enabled) and ``alias`` (says nothing of the unit it names) do not."""

EXPLICITLY_ENABLED = frozenset({"enabled", "enabled-runtime"})
"""is-enabled answers that an operator (or a package) enabled the unit."""


def unit_name(value: Any) -> str:
    """A unit name as systemctl takes it; ``sshd`` means ``sshd.service`` (a field reader)."""
    found = line(value)
    if not _UNIT.fullmatch(found) or found.startswith("-"):
        raise ParamError(f"{found[:80]!r} is not a systemd unit name")
    return found


def full_unit_name(name: str) -> str:
    """The unit ``name`` names, as systemctl reads it: ``.service`` appended when it has no unit suffix."""
    return name if name.endswith(UNIT_SUFFIXES) else f"{name}.service"


def systemctl(host: ReadableHost, args: List[str]) -> Tuple[int, str, str]:
    """Run systemctl on the target (``--root`` on an image): exit status, stdout, stderr.

    Raises HostAccessError (ENOENT) when systemctl is not installed."""
    argv = ["systemctl"] + ([] if host.is_live else [f"--root={host.run_root}"]) + args
    done = host.run(argv, SYSTEMCTL_TIMEOUT)
    return done.returncode, done.stdout.strip(), done.stderr.strip()


def enabled_state(host: ReadableHost, name: str) -> str:
    """``systemctl is-enabled``'s answer for ``name`` ("not-found" for a unit that has no file)."""
    _, out, err = systemctl(host, ["is-enabled", "--", full_unit_name(name)])
    if out:
        return out.splitlines()[0]
    if "No such file" in err or "not found" in err.lower():
        return "not-found"
    raise HostAccessError(errno.EIO, f"systemctl is-enabled {full_unit_name(name)} answered nothing: {err[:300]}")


def manager_running(host: ReadableHost) -> bool:
    """Whether systemd runs the target (the live host booted with systemd as PID 1)."""
    found = host.info("/run/systemd/system") if host.is_live else None
    return found is not None and found.kind == "dir"


def active_state(host: ReadableHost, name: str) -> str:
    """``systemctl is-active``'s answer for ``name`` (active, inactive, failed ...)."""
    _, out, err = systemctl(host, ["is-active", "--", full_unit_name(name)])
    if not out:
        raise HostAccessError(errno.EIO, f"systemctl is-active {full_unit_name(name)} answered nothing: {err[:300]}")
    return out.splitlines()[0]


def default_target(host: ReadableHost) -> Optional[str]:
    """``systemctl get-default``: the target the host boots into, or None when none is set."""
    code, out, err = systemctl(host, ["get-default"])
    if code != 0 or not out:
        if "No such file" in err or "not set" in err.lower():
            return None
        raise HostAccessError(errno.EIO, f"systemctl get-default exited {code}: {err[:300]}")
    return out.splitlines()[0]
