"""Installed packages of a target, from its own package databases.

dpkg: the status database (/var/lib/dpkg/status), read as a file through the host,
so an image root's database is read, not the controller's. rpm: ``rpm -q`` run on
the target, with ``--root`` for an image root (the rpm database is not a text file);
it needs an ``rpm`` binary where the command runs.
"""

from __future__ import annotations

import errno
import re
from typing import Any, Dict, Optional

from kensa.errors import HostAccessError, ParamError
from kensa.facts.files import real_dirs
from kensa.facts.params import line
from kensa.hosts.protocol import ReadableHost

DPKG_STATUS = "/var/lib/dpkg/status"
RPM_DB_DIRS = ("/var/lib/rpm", "/usr/lib/sysimage/rpm")
RPM_TIMEOUT = 60.0
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9+._-]*(:[A-Za-z0-9_-]+)?")


def package_name(value: Any) -> str:
    """A package name as dpkg and rpm spell one (a field reader); ``name:arch`` for dpkg."""
    found = line(value)
    if len(found) > 256 or not _NAME.fullmatch(found):
        raise ParamError(f"{found[:80]!r} is not a package name (letters, digits, '+', '.', '_', '-')")
    return found


def dpkg_status(host: ReadableHost) -> Optional[Dict[str, str]]:
    """Package name (and ``name:arch``) -> its dpkg status word (``installed``,
    ``config-files``, ``half-installed`` ...), or None when the target has no dpkg database."""
    data = host.read_bytes(DPKG_STATUS)
    if data is None:
        return None
    packages: Dict[str, str] = {}
    for stanza in data.decode("utf-8", "replace").split("\n\n"):
        fields: Dict[str, str] = {}
        for text in stanza.splitlines():
            name, sep, value = text.partition(":")
            if sep and not text[:1].isspace():
                fields[name] = value.strip()
        if "Package" not in fields:
            continue
        state = fields.get("Status", "").split()[-1:] or ["unknown"]
        for key in (fields["Package"], f"{fields['Package']}:{fields.get('Architecture', '')}"):
            # Several architectures of one package: any installed one counts.
            if packages.get(key) != "installed":
                packages[key] = state[0]
    return packages


def rpm_database(host: ReadableHost) -> Optional[str]:
    """The directory of the target's rpm database (``/var/lib/rpm``, or
    ``/usr/lib/sysimage/rpm`` where the former is a link to it), or None."""
    found = real_dirs(host, RPM_DB_DIRS)
    return found[0] if found else None


def rpm_installed(host: ReadableHost, name: str, database: str) -> Optional[str]:
    """The installed version(s) of ``name`` by ``rpm -q`` in the rpm database at ``database``
    (named explicitly: the rpm doing the reading may default to another path), or None
    when not installed. Raises HostAccessError (ENOENT) when there is no rpm to run."""
    argv = ["rpm", "--dbpath", database, "-q", "--qf", "%{NAME}-%{VERSION}-%{RELEASE}\\n", name]
    if not host.is_live:
        argv[1:1] = ["--root", host.run_root]
    done = host.run(argv, RPM_TIMEOUT)
    if done.returncode == 0:
        return " ".join(done.stdout.split())
    if "is not installed" in done.stdout + done.stderr:
        return None
    raise HostAccessError(errno.EIO, f"rpm -q {name} exited {done.returncode}: {(done.stderr or done.stdout).strip()[:300]}")
