"""Capability probes: what a target has, for the ``when`` gates of rules.

Every probe only reads the target through its :class:`~kensa.hosts.protocol.ReadableHost`
(so it answers for an image root and for a remote host alike) and never runs a
command: files and directories, a binary in one of the standard ``PATH``
directories, a systemd unit file, a unit enabled by a ``.wants`` link, the dpkg
database. Kensa's own probes run shell commands (``systemctl is-active``,
``getenforce``); where a file answers the same question it is read instead, and
where none does the probe says what it settles for (``*_active``: the unit is
enabled, or its daemon's pid file names a live process on the running host).

:data:`PROBES` is the one registry; :func:`detect_capabilities` runs them all.
"""

from __future__ import annotations

import re
from types import MappingProxyType
from typing import Callable, FrozenSet, Mapping, Optional

from kensa.errors import KensaError, PathEscapeError, RemoteHostError
from kensa.hosts.protocol import ReadableHost

__all__ = ["PROBES", "detect_capabilities"]

Probe = Callable[[ReadableHost], bool]

_BIN_DIRS = ("/usr/bin", "/usr/sbin", "/usr/local/bin", "/usr/local/sbin", "/bin", "/sbin")
_UNIT_DIRS = ("/etc/systemd/system", "/usr/lib/systemd/system", "/lib/systemd/system")
_WANTS = ("multi-user.target.wants", "graphical.target.wants", "sysinit.target.wants", "default.target.wants",
          "sockets.target.wants", "timers.target.wants")


def _present(host: ReadableHost, path: str) -> bool:
    """Whether something is at ``path``; a symlink there counts (the host refuses to follow it)."""
    try:
        return host.info(path) is not None
    except PathEscapeError:
        return True
    except RemoteHostError:
        raise  # a lost connection or timeout says nothing about the target
    except KensaError:
        return False


def _real_dir(host: ReadableHost, path: str) -> bool:
    """A directory that is not itself a symlink (``/bin`` on a merged-/usr system is one)."""
    try:
        found = host.info(path)
    except RemoteHostError:
        raise  # a lost connection or timeout says nothing about the target
    except KensaError:
        return False
    return found is not None and found.kind == "dir"


def _text(host: ReadableHost, path: str) -> Optional[str]:
    try:
        data = host.read_bytes(path)
    except RemoteHostError:
        raise  # a lost connection or timeout says nothing about the target
    except KensaError:
        return None
    return None if data is None else data.decode("utf-8", "replace")


def _binary(*names: str) -> Probe:
    def probe(host: ReadableHost) -> bool:
        dirs = [d for d in _BIN_DIRS if _real_dir(host, d)]
        return any(_present(host, f"{d}/{name}") for d in dirs for name in names)

    return probe


def _file(path: str, non_empty: bool = False) -> Probe:
    def probe(host: ReadableHost) -> bool:
        if not non_empty:
            return _present(host, path)
        text = _text(host, path)
        return bool(text and text.strip())

    return probe


def _dir(path: str) -> Probe:
    return lambda host: _real_dir(host, path)


def _unit(*units: str) -> Probe:
    return lambda host: any(_present(host, f"{d}/{unit}") for d in _UNIT_DIRS for unit in units)


def _enabled(*units: str) -> Probe:
    return lambda host: any(_present(host, f"/etc/systemd/system/{w}/{u}") for w in _WANTS for u in units)


def _daemon(pid_file: str, comm: str, *units: str) -> Probe:
    """Running on the live host (its pid file names a process called ``comm``), or enabled."""

    def probe(host: ReadableHost) -> bool:
        if host.is_live:
            pid = (_text(host, pid_file) or "").strip()
            if pid.isdigit() and (_text(host, f"/proc/{pid}/comm") or "").strip().startswith(comm):
                return True
        return _enabled(*units)(host)

    return probe


def _matches(path: str, pattern: str) -> Probe:
    compiled = re.compile(pattern, re.MULTILINE | re.IGNORECASE)
    return lambda host: compiled.search(_text(host, path) or "") is not None


def _kernel_flag(path: str, on: str) -> Probe:
    return lambda host: host.is_live and (_text(host, path) or "").strip() == on


def _dpkg_installed(package: str) -> Probe:
    entry = re.compile(rf"^Package: {re.escape(package)}\n(?:[^\n]+\n)*?Status: install ok installed$", re.MULTILINE)
    return lambda host: entry.search(_text(host, "/var/lib/dpkg/status") or "") is not None


def _any(*probes: Probe) -> Probe:
    return lambda host: any(probe(host) for probe in probes)


def _all(*probes: Probe) -> Probe:
    return lambda host: all(probe(host) for probe in probes)


def _selinux(host: ReadableHost) -> bool:
    if host.is_live and _present(host, "/sys/fs/selinux/enforce"):
        return (_text(host, "/sys/fs/selinux/enforce") or "").strip() == "1"
    return _matches("/etc/selinux/config", r"^\s*SELINUX\s*=\s*enforcing\s*$")(host)


def _directory_joined(host: ReadableHost) -> bool:
    nsswitch = _text(host, "/etc/nsswitch.conf") or ""
    if re.search(r"^\s*passwd:.*\b(ldap|winbind)\b", nsswitch, re.MULTILINE):
        return True
    if not re.search(r"^\s*passwd:.*\bsss\b", nsswitch, re.MULTILINE):
        return False
    # sss in nsswitch is a default of some distributions: a configured domain is the evidence.
    return _matches("/etc/sssd/sssd.conf", r"^\s*\[domain/")(host)


PROBES: Mapping[str, Probe] = MappingProxyType(
    {
        "aide": _binary("aide"),
        "apparmor": _kernel_flag("/sys/module/apparmor/parameters/enabled", "Y"),
        "apt": _binary("apt-get"),
        "apt_unattended_upgrades": _dpkg_installed("unattended-upgrades"),
        "at": _binary("at"),
        "audit_rules_d": _dir("/etc/audit/rules.d"),
        "auditd": _daemon("/run/auditd.pid", "auditd", "auditd.service"),
        "authselect": _binary("authselect"),
        "chronyd": _unit("chronyd.service", "chrony.service"),
        "coredump_systemd": _unit("systemd-coredump.socket"),
        "cron": _unit("crond.service", "cron.service"),
        "crypto_policies": _binary("update-crypto-policies"),
        "dconf": _binary("dconf"),
        "directory_joined": _directory_joined,
        "dnf_automatic": _unit("dnf-automatic.timer"),
        "dpkg": _binary("dpkg"),
        "fapolicyd": _unit("fapolicyd.service"),
        "fips_mode": _kernel_flag("/proc/sys/crypto/fips_enabled", "1"),
        "firewalld": _unit("firewalld.service"),
        "gdm": _any(_binary("gdm", "gdm3"), _unit("gdm.service", "gdm3.service")),
        "grub_bls": _dir("/boot/loader/entries"),
        "nftables": _binary("nft"),
        "nftables_active": _enabled("nftables.service"),
        "pam_faillock": _file("/etc/security/faillock.conf"),
        "pam_pwquality": _file("/etc/security/pwquality.conf"),
        "rsyslog": _unit("rsyslog.service"),
        "rsyslog_active": _daemon("/run/rsyslogd.pid", "rsyslogd", "rsyslog.service"),
        "selinux": _selinux,
        "sshd_config_d": _all(
            _dir("/etc/ssh/sshd_config.d"), _matches("/etc/ssh/sshd_config", r"^\s*Include\s+/etc/ssh/sshd_config\.d")
        ),
        "sssd": _unit("sssd.service"),
        "sssd_configured": _file("/etc/sssd/sssd.conf", non_empty=True),
        "subscription_manager": _binary("subscription-manager"),
        "sysctl_d": _dir("/etc/sysctl.d"),
        "yama_lsm": _file("/proc/sys/kernel/yama/ptrace_scope"),
        "ubuntu_advantage": _binary("ua", "pro"),
        "ufw": _unit("ufw.service"),
        "usbguard": _unit("usbguard.service"),
    }
)
"""Capability name -> its read-only probe of a target."""


def detect_capabilities(host: ReadableHost) -> FrozenSet[str]:
    """The capabilities :data:`PROBES` find on ``host``; a probe that cannot read counts as absent."""
    found = set()
    for name, probe in PROBES.items():
        try:
            if probe(host):
                found.add(name)
        except RemoteHostError:
            raise  # a lost connection or timeout says nothing about the target
        except KensaError:
            continue  # an unreadable or refused probe path: the capability is absent
    return frozenset(found)
