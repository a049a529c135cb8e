"""Kernel modules of a target: which are in the running kernel, which the module
configuration (modprobe.d) disables or blacklists, and which exist to be loaded.

A module's name compares with ``-`` and ``_`` as one (as modprobe does).
"""

from __future__ import annotations

import re
from typing import Any, List, Optional, Set

from kensa.errors import ParamError

from kensa.facts.files import real_dirs
from kensa.facts.params import line as one_line
from kensa.hosts.protocol import ReadableHost

MODPROBE_DIRS = ("/etc/modprobe.d", "/run/modprobe.d", "/usr/local/lib/modprobe.d", "/usr/lib/modprobe.d", "/lib/modprobe.d")
MODULES_DIRS = ("/lib/modules", "/usr/lib/modules")
NO_OP_COMMANDS = frozenset({"/bin/true", "/bin/false", "/usr/bin/true", "/usr/bin/false", "true", "false"})


def kernel_module(value: Any) -> str:
    """A kernel module name: letters, digits, ``_`` and ``-``, not starting with ``-`` (a field reader)."""
    found = one_line(value)
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", found) or found.startswith("-"):
        raise ParamError(f"{found[:80]!r} is not a kernel module name (letters, digits, '_' and '-')")
    return found


def module_name(name: str) -> str:
    return name.replace("-", "_")


def in_running_kernel(host: ReadableHost, name: str) -> Optional[str]:
    """How module ``name`` is in the running kernel ("loaded", "built in"), or None."""
    wanted = module_name(name)
    listing = host.read_bytes("/proc/modules")
    if listing is not None and any(line.split()[:1] == [wanted] for line in listing.decode("utf-8", "replace").splitlines()):
        return "loaded"
    # /sys/module lists built-in modules (with parameters) as well as loaded ones.
    if host.info(f"/sys/module/{wanted}") is not None:
        return "loaded" if listing is not None and host.info(f"/sys/module/{wanted}/initstate") is not None else "built in"
    return None


def modprobe_lines(host: ReadableHost) -> List[List[str]]:
    """The words of every configuration line of the ``*.conf`` files of modprobe.d."""
    lines: List[List[str]] = []
    for directory in real_dirs(host, MODPROBE_DIRS):
        for entry in host.list_dir(directory) or []:
            if not entry.endswith(".conf"):
                continue
            found = host.info(f"{directory}/{entry}", content=True)
            if found is None or found.kind != "file":
                continue
            for line in (found.content or b"").decode("utf-8", "replace").splitlines():
                words = line.split("#", 1)[0].split()
                if words:
                    lines.append(words)
    return lines


def disabled_by(lines: List[List[str]], name: str) -> Optional[str]:
    """The ``install NAME <no-op>`` line that keeps modprobe from loading ``name``, if any."""
    for words in lines:
        if len(words) >= 3 and words[0] == "install" and module_name(words[1]) == module_name(name) and words[2] in NO_OP_COMMANDS:
            return " ".join(words)
    return None


def blacklisted(lines: List[List[str]], name: str) -> bool:
    return any(len(words) == 2 and words[0] == "blacklist" and module_name(words[1]) == module_name(name) for words in lines)


def _kernel_releases(host: ReadableHost) -> Set[str]:
    if host.is_live:
        release = host.read_bytes("/proc/sys/kernel/osrelease")
        return {release.decode().strip()} if release else set()
    return {entry for directory in real_dirs(host, MODULES_DIRS) for entry in host.list_dir(directory) or []}


def available(host: ReadableHost, name: str) -> Optional[str]:
    """The modules.dep or modules.builtin entry that makes ``name`` loadable on the target's
    kernel (the running one on a live host, any installed one on an image), or None."""
    wanted = module_name(name)
    for release in sorted(_kernel_releases(host)):
        for directory in real_dirs(host, MODULES_DIRS):
            for index in ("modules.dep", "modules.builtin"):
                data = host.read_bytes(f"{directory}/{release}/{index}")
                for line in (data or b"").decode("utf-8", "replace").splitlines():
                    path = line.split(":", 1)[0]
                    base = path.rsplit("/", 1)[-1].split(".ko", 1)[0]
                    if module_name(base) == wanted:
                        return f"{directory}/{release}/{index}: {path}"
    return None
