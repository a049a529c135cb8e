"""Sysctl parameter names and the /proc/sys file each one names.

A key is spelt as sysctl(8) and systemd-sysctl read it: the first separator
decides. When it is a dot (``net.ipv4.conf.eth0/100.forwarding``), dots separate
components and a slash stands for a dot inside one; when it is a slash
(``net/ipv4/conf/eth0.100/forwarding``) the key is the path below /proc/sys as
written. Both name ``/proc/sys/net/ipv4/conf/eth0.100/forwarding``.

Components are letters, digits, ``_``, ``-`` and (inside a component) ``.``;
empty, ``.`` and ``..`` components are refused, so a key can only name a file
below /proc/sys. The handler, the checks and the rule loader all use
:func:`sysctl_path`, so they accept the same keys and read the same file.
"""

from __future__ import annotations

import posixpath
import re
from typing import Any, Dict, List, Optional, Tuple

from kensa.errors import ParamError, PathEscapeError, SysctlKeyError
from kensa.facts.config import decode
from kensa.facts.files import real_dirs
from kensa.hosts.protocol import ReadableHost

PROC_SYS = "/proc/sys/"
MAX_COMPONENTS = 32
MAX_KEY_LENGTH = 1024

_COMPONENT = re.compile(r"[A-Za-z0-9_.-]+")


def sysctl_path(key: str) -> str:
    """The file under /proc/sys that ``key`` names; raises SysctlKeyError for a bad key."""
    if not isinstance(key, str) or not key or len(key) > MAX_KEY_LENGTH:
        raise SysctlKeyError(
            f"{key!r} is not a sysctl parameter name such as 'net.ipv4.ip_forward' "
            f"(a non-empty string of at most {MAX_KEY_LENGTH} characters)"
        )
    separators = [c for c in key if c in "./"]
    relative = key.translate(str.maketrans("./", "/.")) if separators[:1] == ["."] else key
    parts = relative.split("/")
    for part in parts:
        if part in ("", ".", "..") or not _COMPONENT.fullmatch(part):
            raise SysctlKeyError(
                f"{key!r} is not a sysctl parameter name such as 'net.ipv4.ip_forward': component {part!r} "
                "is empty, '.' or '..', or holds a character other than letters, digits, '_', '-' and '.'"
            )
    if len(parts) > MAX_COMPONENTS:
        raise SysctlKeyError(f"{key!r} has more than {MAX_COMPONENTS} components; no sysctl is that deep")
    path = PROC_SYS + "/".join(parts)
    # Each component is checked above; this states the guarantee the callers rely on.
    if posixpath.normpath(path) != path or not path.startswith(PROC_SYS):
        raise SysctlKeyError(f"sysctl key {key!r} does not name a file below {PROC_SYS}")
    return path


def sysctl_key(value: Any) -> str:
    """A step's or check's ``key``: a string :func:`sysctl_path` accepts (a field reader)."""
    if not isinstance(value, str):
        raise ParamError(f"must be a string, got {type(value).__name__} {value!r}")
    try:
        sysctl_path(value)
    except SysctlKeyError as exc:
        raise ParamError(str(exc)[:300]) from None
    return value


_COMMENTS = ("#", ";")


def last_assignment(lines: List[str], key: str) -> Optional[Tuple[int, str, str]]:
    """(index, key as spelt, value) of the last line of a sysctl file assigning ``key``, or None."""
    wanted = sysctl_path(key)
    found = None
    for index, line in enumerate(lines):
        text = line.strip()
        if not text or text.startswith(_COMMENTS) or "=" not in text:
            continue
        spelt, _, value = text.partition("=")
        name = spelt.strip()
        try:
            # systemd-sysctl: a leading "-" only says "ignore a failure to set it".
            same = sysctl_path(name[1:] if name.startswith("-") else name) == wanted
        except SysctlKeyError:
            continue  # not a key kensa reads; sysctl would complain about it, not us
        if same:
            found = (index, name, value.strip())
    return found


SYSCTL_DIRS = ("/usr/lib/sysctl.d", "/lib/sysctl.d", "/usr/local/lib/sysctl.d", "/run/sysctl.d", "/etc/sysctl.d")
SYSCTL_CONF = "/etc/sysctl.conf"


def boot_value(host: ReadableHost, key: str) -> Optional[Tuple[str, str]]:
    """The value ``key`` gets at boot from the target's sysctl files, and the file that sets it
    last, or None when none does.

    As systemd-sysctl reads them: the ``*.conf`` files of the sysctl.d directories in
    lexical order of their names (a name in /etc hides the same name in /run and the
    lib directories), the last assignment winning, then /etc/sysctl.conf as
    ``sysctl --system`` reads it. An entry that is a symlink is not followed (the
    /etc/sysctl.d/99-sysctl.conf link to ../sysctl.conf is read as that file).
    """
    chosen: Dict[str, str] = {}
    for directory in real_dirs(host, SYSCTL_DIRS):
        for name in host.list_dir(directory) or []:
            if name.endswith(".conf"):
                chosen[name] = f"{directory}/{name}"
    found = None
    for path in [chosen[name] for name in sorted(chosen)] + [SYSCTL_CONF]:
        try:
            data = host.read_bytes(path)
        except PathEscapeError:
            continue
        last = last_assignment(decode(data).splitlines(), key)
        if last is not None:
            found = (" ".join(last[2].split()), path)
    return found
