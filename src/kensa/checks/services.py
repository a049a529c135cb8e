"""Checks of systemd units: ``service_enabled``, ``service_active``, ``service_state``,
``systemd_target``.

Enabled: ``static`` and ``generated`` units (no [Install] section) count as
enabled; a unit that must not be enabled fails only when it is ``enabled`` or
``enabled-runtime``; a unit without a unit file is neither. Active: only a running
systemd can say; where none runs (an image root, a host not booted with systemd)
the check is not assessable, except that a unit with no unit file cannot be
active anywhere.
"""

from __future__ import annotations

import errno
from typing import Any, List, Mapping, Optional

from kensa.checks.method import CheckMethod, holds_if, not_compliant
from kensa.errors import CheckNotAssessable, HostAccessError
from kensa.facts.params import Field, Schema, as_given, boolean
from kensa.facts.services import (
    ENABLED_STATES,
    EXPLICITLY_ENABLED,
    active_state,
    default_target,
    enabled_state,
    manager_running,
    unit_name,
)
from kensa.hosts.protocol import ReadableHost
from kensa.model import Finding


def _asking(host: ReadableHost, ask: Any, name: str) -> str:
    try:
        return str(ask(host, name))
    except HostAccessError as exc:
        if exc.errno == errno.ENOENT:
            raise CheckNotAssessable(f"systemctl is not installed on the target ({exc})") from None
        raise


def _enabled(host: ReadableHost, name: str, want: bool) -> Optional[str]:
    """Why ``name`` is not as wanted (None when it is), as is-enabled says."""
    state = _asking(host, enabled_state, name)
    if want and state not in ENABLED_STATES:
        return f"{name} is not enabled (is-enabled: {state})"
    if not want and state in EXPLICITLY_ENABLED:
        return f"{name} is enabled (is-enabled: {state}), expected not enabled"
    return None


def _active(host: ReadableHost, name: str, want: bool) -> Optional[str]:
    if not manager_running(host):
        if not want and _asking(host, enabled_state, name) == "not-found":
            return None  # no unit file: nothing of that name can run under systemd
        where = "an image root" if not host.is_live else "a host where systemd is not running (no /run/systemd/system)"
        raise CheckNotAssessable(f"whether {name} is active needs a running systemd; {host.root} is {where}")
    state = _asking(host, active_state, name)
    if want != (state == "active"):
        return f"{name} is {state}, expected {'active' if want else 'not active'}"
    return None


def _service_state(host: ReadableHost, fields: Mapping[str, Any]) -> Finding:
    name, wrong, said = fields["name"], [], []
    if fields["enabled"] is not None:
        wrong.append(_enabled(host, name, fields["enabled"]))
        said.append("enabled" if fields["enabled"] else "not enabled")
    if fields["active"] is not None:
        wrong.append(_active(host, name, fields["active"]))
        said.append("active" if fields["active"] else "not active")
    failures: List[str] = [why for why in wrong if why]
    if failures:
        return not_compliant("; ".join(failures))
    return holds_if(True, f"{name} is {' and '.join(said)}")


def _target(host: ReadableHost, fields: Mapping[str, Any]) -> Finding:
    try:
        got = default_target(host)
    except HostAccessError as exc:
        if exc.errno == errno.ENOENT:
            raise CheckNotAssessable(f"systemctl is not installed on the target ({exc})") from None
        raise
    shown = got or "not set"
    if fields["expected"] is not None and (got or "").lower() != fields["expected"].lower():
        return not_compliant(f"the default target is {shown}, expected {fields['expected']}")
    if fields["not_expected"] is not None and (got or "").lower() == fields["not_expected"].lower():
        return not_compliant(f"the default target is {shown}, which it must not be")
    return holds_if(True, f"the default target is {shown}")


_NAME = {"name": Field(unit_name, required=True)}
_FLAG = Field(boolean, written=as_given)

METHODS = (
    CheckMethod(Schema("service_enabled", _NAME), lambda host, fields: _service_state(host, {**fields, "enabled": True, "active": None})),
    CheckMethod(Schema("service_active", _NAME), lambda host, fields: _service_state(host, {**fields, "enabled": None, "active": True})),
    CheckMethod(
        Schema("service_state", {**_NAME, "enabled": _FLAG, "active": _FLAG}, at_least_one_of=("enabled", "active")),
        _service_state,
    ),
    CheckMethod(
        Schema("systemd_target", {"expected": Field(unit_name), "not_expected": Field(unit_name)},
               at_least_one_of=("expected", "not_expected")),
        _target,
    ),
)
