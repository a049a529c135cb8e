"""Installed packages of a target, from its own package databases.

dpkg: the status database (/var/lib/dpkg/status), read as a file through the host,
so an image root's database is read, not the controller's. rpm: ``rpm -q`` run on
the target, with ``--root`` for an image root (the rpm database is not a text file);
it needs an ``rpm`` binary where the command runs.

For the package handlers: every package dpkg or rpm knows with its state and
version (:func:`dpkg_packages`, :func:`rpm_packages`), what ``apt-get -s`` says an
install or removal would change (:func:`apt_simulation`), and which versions of a
package the configured apt repositories offer (:func:`apt_versions`).
"""

from __future__ import annotations

import errno
import re
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from kensa.errors import HostAccessError, ParamError
from kensa.facts.files import real_dirs
from kensa.facts.params import line
from kensa.hosts.protocol import ReadableHost

DPKG_STATUS = "/var/lib/dpkg/status"
APT_EXTENDED_STATES = "/var/lib/apt/extended_states"
RPM_DB_DIRS = ("/var/lib/rpm", "/usr/lib/sysimage/rpm")
RPM_TIMEOUT = 60.0
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9+._-]*(:[A-Za-z0-9_-]+)?")
# Debian policy 5.6.1: lower case letters, digits, '+', '-', '.', at least two, starting
# alphanumeric; an architecture qualifier as apt and dpkg accept one.
_DEBIAN_NAME = re.compile(r"[a-z0-9][a-z0-9+.-]+(:[a-z0-9-]+)?")
# rpm: no whitespace, no version operator or glob; a leading '-' would read as an option.
_RPM_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+-]*")
# dpkg states in which the package's files are on the system.
INSTALLED_STATES = frozenset({"installed", "triggers-awaited", "triggers-pending"})
#: A package dpkg or rpm knows: its state word and its version.
Known = Tuple[str, str]


def package_name(value: Any) -> str:
    """A package name as dpkg and rpm spell one (a field reader); ``name:arch`` for dpkg."""
    found = line(value)
    if len(found) > 256 or not _NAME.fullmatch(found):
        raise ParamError(f"{found[:80]!r} is not a package name (letters, digits, '+', '.', '_', '-')")
    return found


def debian_package_name(value: Any) -> str:
    """A package name in Debian's grammar (``name`` or ``name:arch``), as apt is given one."""
    found = package_name(value)
    if not _DEBIAN_NAME.fullmatch(found):
        raise ParamError(f"{found[:80]!r} is not a Debian package name (lower case letters, digits, '+', '.', '-')")
    return found


def rpm_package_name(value: Any) -> str:
    """A package name in rpm's grammar, as dnf or yum is given one (no version, no glob)."""
    found = package_name(value)
    if not _RPM_NAME.fullmatch(found):
        raise ParamError(f"{found[:80]!r} is not an rpm package name (letters, digits, '_', '+', '.', '-')")
    return found


def _stanzas(data: bytes) -> Iterator[Dict[str, str]]:
    """The fields of each package stanza of a dpkg status file."""
    for stanza in data.decode("utf-8", "replace").split("\n\n"):
        fields: Dict[str, str] = {}
        for text in stanza.splitlines():
            name, sep, value = text.partition(":")
            if sep and not text[:1].isspace():
                fields[name] = value.strip()
        if "Package" in fields:
            yield fields


def dpkg_status(host: ReadableHost) -> Optional[Dict[str, str]]:
    """Package name (and ``name:arch``) -> its dpkg status word (``installed``,
    ``config-files``, ``half-installed`` ...), or None when the target has no dpkg database."""
    data = host.read_bytes(DPKG_STATUS)
    if data is None:
        return None
    packages: Dict[str, str] = {}
    for fields in _stanzas(data):
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


def dpkg_packages(host: ReadableHost, native: str) -> Optional[Dict[str, Known]]:
    """Every package dpkg knows in a state other than ``not-installed`` -> (state, version),
    or None without a dpkg database. Keys are spelt as apt prints and takes them: the
    bare name for the ``native`` architecture and ``all``, ``name:arch`` for another."""
    data = host.read_bytes(DPKG_STATUS)
    if data is None:
        return None
    packages: Dict[str, Known] = {}
    for fields in _stanzas(data):
        state = (fields.get("Status", "").split()[-1:] or ["unknown"])[0]
        if state == "not-installed":
            continue
        packages[_apt_key(fields, native)] = (state, fields.get("Version", ""))
    return packages


def _apt_key(fields: Dict[str, str], native: str) -> str:
    arch = fields.get("Architecture", "")
    return fields["Package"] if arch in (native, "all", "") else f"{fields['Package']}:{arch}"


def apt_auto_installed(host: ReadableHost, native: str) -> List[str]:
    """The packages apt marks as installed automatically (as dependencies), spelt as in
    :func:`dpkg_packages`: what ``apt-mark showauto`` lists, read from apt's own file."""
    data = host.read_bytes(APT_EXTENDED_STATES)
    if data is None:
        return []
    return sorted(_apt_key(fields, native) for fields in _stanzas(data) if fields.get("Auto-Installed") == "1")


def run_checked(host: ReadableHost, argv: Sequence[str], timeout: float) -> str:
    """The output of ``argv`` run on the target; a non-zero exit is a HostAccessError
    quoting the command's own error output, a missing command one with errno ENOENT."""
    done = host.run(argv, timeout)
    if done.returncode != 0:
        said = " ".join((done.stderr.strip() or done.stdout.strip()).split())[-600:]
        raise HostAccessError(errno.EIO, f"{' '.join(argv)} exited {done.returncode}: {said or 'no output'}")
    return done.stdout


_SIMULATED = re.compile(r"(Inst|Remv|Purg) (\S+) (?:\[([^\]]*)\] )?(?:\((\S+) )?")


def apt_simulation(host: ReadableHost, argv: Sequence[str], timeout: float) -> Dict[str, Optional[str]]:
    """What ``apt-get -s`` with ``argv`` (``["install", "foo"]``) would change: package ->
    its version afterwards, None for one it would remove. Needs no lock; changes nothing."""
    out = run_checked(host, ["apt-get", "-s", "-q", "-o", "APT::Get::Show-User-Simulation-Note=false", *argv], timeout)
    changes: Dict[str, Optional[str]] = {}
    for text in out.splitlines():
        found = _SIMULATED.match(text)
        if found is not None:
            verb, name, _, new = found.groups()
            changes[name] = new if verb == "Inst" else None
    return changes


def apt_versions(host: ReadableHost, name: str, timeout: float) -> List[str]:
    """The versions of ``name`` the configured apt repositories offer (``apt-cache madison``)."""
    out = run_checked(host, ["apt-cache", "madison", name.split(":")[0]], timeout)
    return [parts[1].strip() for parts in (text.split("|") for text in out.splitlines()) if len(parts) >= 3]


def rpm_packages(host: ReadableHost, database: str, timeout: float) -> Dict[str, Known]:
    """Every package installed in the rpm database at ``database`` (``name.arch``) ->
    ("installed", ``epoch:version-release``)."""
    out = run_checked(host, ["rpm", "--dbpath", database, "-qa", "--qf", "%{NAME}.%{ARCH}\\t%{EPOCHNUM}:%{VERSION}-%{RELEASE}\\n"], timeout)
    found: Dict[str, Known] = {}
    for text in out.splitlines():
        key, _, version = text.partition("\t")
        if version:
            found[key] = ("installed", version)
    return found
