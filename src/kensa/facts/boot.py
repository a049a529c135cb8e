"""The kernel command line a target runs with and boots with.

Running: /proc/cmdline. Boot: where boot loader entries in the Boot Loader
Specification's form exist (/boot/loader/entries/*.conf, RHEL 8 and later,
Fedora), each entry's ``options`` line, with ``$kernelopts`` taken from
/boot/grub2/grubenv as GRUB does; otherwise GRUB_CMDLINE_LINUX and
GRUB_CMDLINE_LINUX_DEFAULT of /etc/default/grub, from which grub-mkconfig writes
every entry.
"""

from __future__ import annotations

import shlex
from typing import Any, List, Optional, Tuple

from kensa.errors import ParamError
from kensa.facts.config import decode
from kensa.hosts.protocol import ReadableHost

DEFAULT_GRUB = "/etc/default/grub"
BLS_ENTRIES = "/boot/loader/entries"
GRUBENV = "/boot/grub2/grubenv"


def parameter(words: List[str], key: str) -> Any:
    """The value the last ``key=`` word gives, True for a bare ``key``, None when absent."""
    found: Any = None
    for word in words:
        name, sep, value = word.partition("=")
        if name == key:
            found = value if sep else True
    return found


def running(host: ReadableHost) -> List[str]:
    """The words of the running kernel's command line."""
    return decode(host.read_bytes("/proc/cmdline")).split()


def grub_defaults(host: ReadableHost) -> Optional[List[str]]:
    """The words of GRUB_CMDLINE_LINUX and GRUB_CMDLINE_LINUX_DEFAULT, None without the file."""
    data = host.read_bytes(DEFAULT_GRUB)
    if data is None:
        return None
    words: List[str] = []
    for text in decode(data).splitlines():
        name, sep, value = text.strip().partition("=")
        if sep and name in ("GRUB_CMDLINE_LINUX", "GRUB_CMDLINE_LINUX_DEFAULT"):
            try:
                words += " ".join(shlex.split(value)).split()
            except ValueError:
                raise ParamError(f"{host.where(DEFAULT_GRUB)}: cannot read {name}: unbalanced quotes") from None
    return words


def _kernelopts(host: ReadableHost) -> List[str]:
    for text in decode(host.read_bytes(GRUBENV)).splitlines():
        if text.startswith("kernelopts="):
            return text[len("kernelopts="):].split()
    return []


def boot_entries(host: ReadableHost) -> List[Tuple[str, List[str]]]:
    """Each boot loader entry (path) and the words of its options, ``$kernelopts`` expanded."""
    entries = []
    for name in host.list_dir(BLS_ENTRIES) or []:
        if not name.endswith(".conf"):
            continue
        path = f"{BLS_ENTRIES}/{name}"
        words: List[str] = []
        for text in decode(host.read_bytes(path)).splitlines():
            if text.split()[:1] == ["options"]:
                for word in text.split()[1:]:
                    words += _kernelopts(host) if word == "$kernelopts" else [word]
        entries.append((path, words))
    return entries
