"""What Kensa's own rule schema defines: its mechanism names, check-method names and
capability names, with the fields each mechanism and check method takes.

kensa implements part of that language. The loader uses this module to tell two
kinds of refusal apart:

* a rule that is valid under Kensa's schema but uses something kensa does not
  carry out (a mechanism kensa has no handler for, a field its handler does not
  read, a value its handler refuses although Kensa accepts it) loads, and is
  reported *unsupported* with the reason;
* a rule that is not valid under Kensa's schema either (a misspelt name, a
  missing required field, a value no Kensa accepts) is *malformed* or, for a
  name, *unknown* with a "did you mean".

The names and fields are those of Kensa's published rule schema (its mechanism
and check-method contracts and its capability probes); the lists are data, kept
here in one place.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import AbstractSet, Any, Callable, Dict, FrozenSet, Mapping, Optional, Tuple

__all__ = [
    "KENSA_CAPABILITIES",
    "KENSA_CHECK_METHODS",
    "KENSA_MECHANISMS",
    "KENSA_REMEDIATION_FIELDS",
    "Contract",
    "kensa_accepts",
]


@dataclass(frozen=True)
class Contract:
    """The fields of one Kensa mechanism or check method.

    ``required`` must all be given; of each ``one_of`` group at least one must
    be given; ``optional`` may be.
    """

    required: FrozenSet[str] = frozenset()
    optional: FrozenSet[str] = frozenset()
    one_of: Tuple[FrozenSet[str], ...] = ()

    @property
    def fields(self) -> FrozenSet[str]:
        """Every field name this contract allows."""
        grouped = frozenset(name for group in self.one_of for name in group)
        return self.required | self.optional | grouped

    def requires(self, name: str, given: AbstractSet[str]) -> bool:
        """Whether Kensa requires ``name`` of an entry that gives the fields ``given``."""
        if name in self.required:
            return True
        groups = [group for group in self.one_of if name in group]
        return bool(groups) and any(not (group & given) for group in groups)


def _c(required: str = "", optional: str = "", *one_of: str) -> Contract:
    return Contract(
        frozenset(required.split()), frozenset(optional.split()), tuple(frozenset(g.split()) for g in one_of)
    )


KENSA_MECHANISMS: Mapping[str, Contract] = {
    "apt_absent": _c("name"),
    "apt_present": _c("name"),
    "audit_rule_set": _c("rule", "persist_file"),
    "authselect_feature_enable": _c("feature"),
    "command_exec": _c("run", "unless"),
    "config_append": _c("path line"),
    "config_set": _c("path key value", "separator"),
    "config_set_dropin": _c("dir file key value", "section content separator"),
    "cron_job": _c("schedule command user", "name file"),
    "crypto_policy_set": _c("policy"),
    "crypto_policy_subpolicy": _c("subpolicy", "unless"),
    "dconf_set": _c("schema key value file", "lock db value_type"),
    "file_absent": _c("path"),
    "file_content": _c("path content", "owner group mode"),
    "file_permissions": _c("", "owner group mode find_type find_args find_name glob unless", "path find_paths"),
    "grub_parameter_remove": _c("key"),
    "grub_parameter_set": _c("key value"),
    "kernel_module_disable": _c("name"),
    "manual": _c("", "note"),
    "mount_option_set": _c("mount_point options"),
    "package_absent": _c("name"),
    "package_present": _c("name"),
    "pam_module_arg": _c("module action arg files", "type arg_regex"),
    "pam_module_configure": _c("service module type control", "args"),
    "selinux_boolean_set": _c("name value", "persistent"),
    "service_disabled": _c("name", "stop"),
    "service_enabled": _c("name", "start"),
    "service_masked": _c("name", "stop"),
    "sysctl_set": _c("key value", "persist_file"),
}
"""Kensa's remediation mechanisms and their fields."""

KENSA_REMEDIATION_FIELDS = frozenset({"reload", "restart", "notify"})
"""Fields Kensa reads from any remediation besides the mechanism's own: a service to
reload or restart after the change, a handler to notify. kensa reads them beside the
mechanism (:mod:`kensa.rules.services`); inside a step's fields they are unsupported."""

KENSA_CHECK_METHODS: Mapping[str, Contract] = {
    "apparmor_state": _c("", "state"),
    "audit_rule_exists": _c("rule"),
    "command": _c("", "expected_output expected_stdout expected_exit not_assessable_exit", "cmd run"),
    "config_value": _c("path key expected", "delimiter scan_pattern comparator dropin_dir"),
    "dpkg_absent": _c("name"),
    "dpkg_installed": _c("name"),
    "file_absent": _c("path"),
    "file_content": _c("path expected_content"),
    "file_content_match": _c("path pattern"),
    "file_exists": _c("path"),
    "file_permission": _c("path", "mode owner group"),
    "file_permissions": _c("path", "mode owner group"),
    "grub_parameter": _c("key expected"),
    "kernel_module_state": _c("name", "state"),
    "mount_option": _c("mount_point options"),
    "package_absent": _c("name"),
    "package_installed": _c("name"),
    "package_state": _c("name", "state"),
    "selinux_state": _c("state"),
    "service_active": _c("name"),
    "service_enabled": _c("name"),
    "service_state": _c("name", "enabled active"),
    "set_compare": _c("observed_command authorized", "alias_separator"),
    "sshd_effective_config": _c("key expected"),
    "sysctl_value": _c("key expected", "comparator"),
    "systemd_target": _c("", "", "expected not_expected"),
}
"""Kensa's check methods and their fields."""

KENSA_CAPABILITIES = frozenset(
    {
        "aide", "apparmor", "apt", "apt_unattended_upgrades", "at", "auditd", "authselect", "chronyd",
        "coredump_systemd", "cron", "crypto_policies", "dconf", "directory_joined", "dnf_automatic", "dpkg",
        "fapolicyd", "fips_mode", "firewalld", "firewalld_nftables", "gdm", "grub_bls", "journald", "nftables",
        "nftables_active", "pam_faillock", "pam_pwquality", "pam_tally2", "rsyslog", "rsyslog_active", "selinux",
        "sshd_config_d", "sssd", "sssd_configured", "subscription_manager", "systemd_dbus", "systemd_resolved",
        "ufw", "ubuntu_advantage", "usbguard",
    }
)
"""Capability names Kensa's ``when`` gates may use."""


# --- values Kensa accepts where kensa's own field reader is narrower ------------------

# Audit lines that make the configuration immutable, size the backlog, or name rules by
# key only: Kensa takes them, kensa's audit handler and check refuse them (they are not
# rules kensa can add, remove and verify one by one). Lines that switch audit off or
# delete rules ("-e 0", "-D") are refused outright, as the handler refuses them.
_AUDIT_CONTROL_LINE = re.compile(
    r"-e\s+[12]|-[bfr]\s+\d+|--backlog_wait_time\s+\d+|--loginuid-immutable|-k\s+\S+|-F\s+key=\S+"
)
# A package name or a shell pattern of names ("xorg-x11-server*"), as Kensa hands it to
# the package manager; kensa's package checks take exact names only.
_PACKAGE_PATTERN = re.compile(r"[A-Za-z0-9+._-]*[*?\[][A-Za-z0-9+._*?\[\]-]*")
_CONFIG_KEY = re.compile(r"[^=#\r\n\x00-\x1f\x7f]+")


def _audit_rule(value: Any, kensa_reads: Callable[[Any], Any]) -> bool:
    lines = value if isinstance(value, list) else str(value).splitlines() if isinstance(value, str) else None
    if not lines:
        return False
    for line in lines:
        if not isinstance(line, str) or not line.strip():
            return False
        if _AUDIT_CONTROL_LINE.fullmatch(line.strip()):
            continue
        try:
            kensa_reads(line.strip())
        except ValueError:
            return False
    return True


def _config_key(value: Any, kensa_reads: Callable[[Any], Any]) -> bool:
    # 'Match' in sshd_config (and its like) opens a conditional block: setting it as a
    # key changes what every later line means, in Kensa as in kensa.
    return (
        isinstance(value, str)
        and bool(_CONFIG_KEY.fullmatch(value.strip()))
        and value.strip().split()[0].lower() != "match"
    )


_WIDER: Dict[Tuple[str, str], Callable[[Any, Callable[[Any], Any]], bool]] = {
    ("audit_rule_set", "rule"): _audit_rule,
    ("audit_rule_exists", "rule"): _audit_rule,
    ("config_set", "key"): _config_key,
    ("config_set_dropin", "key"): _config_key,
    **{
        (method, "name"): lambda value, _: isinstance(value, str) and bool(_PACKAGE_PATTERN.fullmatch(value))
        # Check methods, and the package mechanisms (package_absent is both): Kensa takes a glob.
        for method in ("package_state", "package_installed", "package_absent", "dpkg_installed", "dpkg_absent",
                       "package_present", "apt_present", "apt_absent")
    },
    ("config_value", "key"): _config_key,
}


def kensa_accepts(name: str, field: str, value: Any, kensa_reads: Optional[Callable[[Any], Any]] = None) -> bool:
    """Whether Kensa accepts ``value`` for ``field`` of mechanism or check method ``name``
    where kensa's reader of that field refused it. ``kensa_reads`` is that reader (raising
    ValueError), used for the parts of a value both accept. False for every field where
    the two agree, so that kensa's refusal stands as a malformed rule."""
    wider = _WIDER.get((name, field))
    if wider is None:
        return False
    return wider(value, kensa_reads or (lambda item: item))
