"""Checks of the mandatory access control: ``selinux_state`` and ``apparmor_state``.

SELinux: on a live host the kernel's state (/sys/fs/selinux/enforce; no selinuxfs
means disabled); on an image root the state it boots with (``SELINUX=`` of
/etc/selinux/config; no file means disabled). AppArmor is a running kernel's
state (/sys/module/apparmor, the profiles in securityfs): not assessable on an image.
"""

from __future__ import annotations

from typing import Any, Mapping

from kensa.checks.method import CheckMethod, holds_if, live_only
from kensa.errors import ParamError
from kensa.facts.config import decode, get_value
from kensa.facts.params import Field, Schema
from kensa.hosts.protocol import ReadableHost
from kensa.model import Finding

SELINUX_CONFIG = "/etc/selinux/config"
_SELINUX_STATES = ("enforcing", "permissive", "disabled")


def _selinux_state_field(value: Any) -> str:
    if not isinstance(value, str) or value.lower() not in _SELINUX_STATES:
        raise ParamError(f"must be Enforcing, Permissive or Disabled, got {value!r}")
    return value.lower()


def _selinux(host: ReadableHost, fields: Mapping[str, Any]) -> Finding:
    want = fields["state"]
    if host.is_live:
        flag = host.read_bytes("/sys/fs/selinux/enforce")
        got = "disabled" if flag is None else ("enforcing" if flag.strip() == b"1" else "permissive")
        where = "the running kernel" + (" (no selinuxfs at /sys/fs/selinux)" if flag is None else "")
    else:
        data = host.read_bytes(SELINUX_CONFIG)
        got = "disabled" if data is None else (get_value(decode(data), "SELINUX", "=") or "disabled").lower()
        where = host.where(SELINUX_CONFIG) + (" (no such file)" if data is None else "")
    return holds_if(got == want, f"SELinux is {got} in {where}, expected {want}")


def _apparmor_state_field(value: Any) -> str:
    if value not in ("enforcing", "loaded"):
        raise ParamError(f"must be 'enforcing' or 'loaded', got {value!r}")
    return str(value)


def _apparmor(host: ReadableHost, fields: Mapping[str, Any]) -> Finding:
    live_only(host, "whether AppArmor is loaded")
    want = fields["state"] or "enforcing"
    enabled = host.read_bytes("/sys/module/apparmor/parameters/enabled")
    if enabled is None or enabled.strip() != b"Y":
        return holds_if(False, "AppArmor is not loaded in the running kernel")
    if want == "loaded":
        return holds_if(True, "AppArmor is loaded")
    profiles = host.read_bytes("/sys/kernel/security/apparmor/profiles") or b""
    enforced = [line for line in profiles.decode("utf-8", "replace").splitlines() if line.endswith("(enforce)")]
    return holds_if(bool(enforced), f"AppArmor is loaded with {len(enforced)} profile(s) in enforce mode")


METHODS = (
    CheckMethod(Schema("selinux_state", {"state": Field(_selinux_state_field, required=True)}), _selinux),
    CheckMethod(Schema("apparmor_state", {"state": Field(_apparmor_state_field)}), _apparmor),
)
