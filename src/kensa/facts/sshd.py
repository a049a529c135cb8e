"""The effective global settings of sshd: ``sshd -T`` on a running host, and kensa's own
reading of the configuration files of an image root.

The image reading follows what ``sshd -T`` (without ``-C``) does with the same files:
keys compare case-insensitively and the first value given wins; ``Include`` is
expanded in place (relative patterns are under /etc/ssh, wildcards in the last
component, matches in lexical order, at most :data:`MAX_INCLUDE_DEPTH` deep); a
``Match all`` block applies, a block with any other criterion does not (there is no
connection to match), and an included file leaves the Match state as it found it.
A key the files do not set takes sshd's built-in default (:data:`DEFAULTS`: the
ones stable across OpenSSH 7.4 to 9.x); for another unset key the image cannot tell.

Values are compared as ``sshd -T`` prints them: :func:`normalise` turns time
spellings into seconds (``2m`` -> ``120``), ``RekeyLimit`` sizes into bytes, and
``without-password`` into its newer name ``prohibit-password``.
"""

from __future__ import annotations

import errno
import posixpath
import re
import shlex
from typing import Dict, List, Optional, Tuple

from kensa.errors import HostAccessError, ParamError
from kensa.facts.config import decode, glob_files
from kensa.hosts.protocol import ReadableHost

SSHD_CONFIG = "/etc/ssh/sshd_config"
MAX_INCLUDE_DEPTH = 16
MAX_FILES = 256
SSHD_TIMEOUT = 30.0

DEFAULTS: Dict[str, str] = {
    "clientalivecountmax": "3",
    "clientaliveinterval": "0",
    "disableforwarding": "no",
    "gssapiauthentication": "no",
    "hostbasedauthentication": "no",
    "ignorerhosts": "yes",
    "ignoreuserknownhosts": "no",
    "kerberosauthentication": "no",
    "logingracetime": "120",
    "loglevel": "INFO",
    "maxauthtries": "6",
    "maxsessions": "10",
    "maxstartups": "10:30:100",
    "permitemptypasswords": "no",
    "permitrootlogin": "prohibit-password",
    "permituserenvironment": "no",
    "printlastlog": "yes",
    "pubkeyauthentication": "yes",
    "strictmodes": "yes",
    "usepam": "no",
    "x11forwarding": "no",
    "x11uselocalhost": "yes",
    "allowagentforwarding": "yes",
    "allowtcpforwarding": "yes",
    "gatewayports": "no",
    "permittunnel": "no",
    "usedns": "no",
}
"""sshd's built-in value of keys whose default has not changed since OpenSSH 7.4."""

_TIME_KEYS = frozenset({"logingracetime", "clientaliveinterval"})
_TIME_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
_TIME = re.compile(r"(\d+)([smhdw]?)", re.IGNORECASE)


def _seconds(text: str) -> Optional[int]:
    parts = _TIME.findall(text)
    if not parts or "".join(n + u for n, u in parts).lower() != text.lower():
        return None
    return sum(int(n) * _TIME_UNITS[u.lower()] for n, u in parts)


def normalise(key: str, value: str) -> str:
    """``value`` of ``key`` as ``sshd -T`` prints it, where kensa knows the conversion."""
    key, value = key.lower(), " ".join(value.split())
    if key in _TIME_KEYS:
        seconds = _seconds(value)
        return value if seconds is None else str(seconds)
    if key == "permitrootlogin" and value.lower() in ("without-password", "prohibit-password"):
        return "prohibit-password"
    if key == "rekeylimit":
        words = value.split()
        size = re.fullmatch(r"(\d+)([kmg]?)", words[0], re.IGNORECASE) if words else None
        if size is not None and (len(words) == 1 or _seconds(words[1]) is not None):
            limit = int(size.group(1)) * _SIZE_UNITS[size.group(2).lower()]
            return f"{limit} {0 if len(words) == 1 else _seconds(words[1])}"
    return value


def _words(line: str) -> Tuple[str, str]:
    """The key and the value of a configuration line ('Key value', 'Key=value')."""
    match = re.match(r"\s*([^\s=]+)\s*(?:=\s*|\s+|$)(.*)", line)
    if match is None:
        return "", ""
    value = match.group(2).strip()
    if len(value) > 1 and value[0] == value[-1] == '"':
        value = value[1:-1]
    return match.group(1).lower(), value


class _Reading:
    """One pass over the files of an image's sshd configuration."""

    def __init__(self, host: ReadableHost) -> None:
        self.host = host
        self.settings: Dict[str, str] = {}
        self.files: List[str] = []

    def read(self, path: str, depth: int, active: bool) -> None:
        if depth > MAX_INCLUDE_DEPTH:
            raise ParamError(f"{self.host.where(path)}: Include nested more than {MAX_INCLUDE_DEPTH} deep")
        if len(self.files) >= MAX_FILES:
            raise ParamError(f"sshd configuration includes more than {MAX_FILES} files (at {self.host.where(path)})")
        data = self.host.read_bytes(path)
        if data is None:
            if depth == 0:
                raise HostAccessError(errno.ENOENT, f"{self.host.where(path)}: no such file")
            return
        self.files.append(path)
        for line in decode(data).splitlines():
            if not line.strip() or line.strip().startswith("#"):
                continue
            key, value = _words(line)
            if key == "match":
                active = value.lower() == "all"
            elif key == "include":
                for pattern in shlex.split(value):
                    full = pattern if pattern.startswith("/") else posixpath.join("/etc/ssh", pattern)
                    for included in glob_files(self.host, full):
                        self.read(included, depth + 1, active)
            elif active and key and key not in self.settings:
                self.settings[key] = value


def configured(host: ReadableHost, path: str = SSHD_CONFIG) -> Tuple[Dict[str, str], List[str]]:
    """The global settings the files of ``host`` give sshd (lower-case key -> value as
    written), and the files read. Raises HostAccessError (ENOENT) when ``path`` is absent."""
    reading = _Reading(host)
    reading.read(path, 0, True)
    return reading.settings, reading.files


def effective(host: ReadableHost) -> Dict[str, str]:
    """What ``sshd -T`` prints on the running ``host`` (lower-case key -> value, the first
    line of a repeated key). Raises HostAccessError (ENOENT) when sshd is not installed."""
    done = None
    for sshd in ("/usr/sbin/sshd", "sshd"):
        try:
            done = host.run([sshd, "-T"], SSHD_TIMEOUT)
            break
        except HostAccessError as exc:
            if exc.errno != errno.ENOENT:
                raise
    if done is None:
        raise HostAccessError(errno.ENOENT, "sshd is not installed (neither /usr/sbin/sshd nor sshd on PATH)")
    if done.returncode != 0:
        raise HostAccessError(errno.EIO, f"sshd -T exited {done.returncode}: {(done.stderr or done.stdout).strip()[:500]}")
    settings: Dict[str, str] = {}
    for line in done.stdout.splitlines():
        key, _, value = line.partition(" ")
        settings.setdefault(key.lower(), value.strip())
    return settings
