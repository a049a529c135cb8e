"""Checks of installed packages: dpkg's status database and rpm's database of the target.

``package_installed``/``package_absent``/``package_state`` ask every package
database the target has (dpkg and rpm; a package is installed when one of them has
it); with none, they are not assessable. ``dpkg_installed``/``dpkg_absent`` ask
dpkg only: a target without a dpkg database has no dpkg package installed.
"""

from __future__ import annotations

import errno
from typing import Any, List, Mapping, Optional

from kensa.checks.method import CheckMethod, holds_if
from kensa.errors import CheckNotAssessable, HostAccessError, ParamError
from kensa.facts.packages import DPKG_STATUS, dpkg_status, has_rpm_database, package_name, rpm_installed
from kensa.facts.params import Field, Schema
from kensa.hosts.protocol import ReadableHost
from kensa.model import Finding


def _dpkg_says(host: ReadableHost, name: str) -> Optional[str]:
    """What dpkg's database says of ``name`` ("installed", "config-files", "not known"),
    or None when the target has no dpkg database."""
    status = dpkg_status(host)
    if status is None:
        return None
    return status.get(name, "not known")


def _installed(host: ReadableHost, name: str) -> Finding:
    """Compliant when ``name`` is installed, saying which database has it."""
    seen: List[str] = []
    dpkg = _dpkg_says(host, name)
    if dpkg is not None:
        if dpkg == "installed":
            return holds_if(True, f"{name} is installed (dpkg)")
        seen.append(f"dpkg: {dpkg}")
    if has_rpm_database(host):
        try:
            version = rpm_installed(host, name)
        except HostAccessError as exc:
            if exc.errno != errno.ENOENT:
                raise
            raise CheckNotAssessable(f"the target has an rpm database but there is no rpm command to read it ({exc})") from None
        if version is not None:
            return holds_if(True, f"{name} is installed (rpm: {version})")
        seen.append("rpm: not installed")
    if not seen:
        raise CheckNotAssessable(f"the target has no package database ({DPKG_STATUS}, or an rpm database)")
    return holds_if(False, f"{name} is not installed ({'; '.join(seen)})")


def _negated(found: Finding) -> Finding:
    return holds_if(not found.holds, found.detail)


def _state(value: Any) -> str:
    if value not in ("present", "absent", "installed", "removed"):
        raise ParamError(f"must be 'present' or 'absent', got {value!r}")
    return "present" if value in ("present", "installed") else "absent"


def _package_state(host: ReadableHost, fields: Mapping[str, Any]) -> Finding:
    found = _installed(host, fields["name"])
    return found if (fields["state"] or "present") == "present" else _negated(found)


def _dpkg_installed(host: ReadableHost, fields: Mapping[str, Any]) -> Finding:
    said = _dpkg_says(host, fields["name"])
    if said is None:
        return holds_if(False, f"{fields['name']} is not installed ({host.where(DPKG_STATUS)} does not exist)")
    return holds_if(said == "installed", f"{fields['name']} is {'installed' if said == 'installed' else 'not installed'} (dpkg: {said})")


_NAME = {"name": Field(package_name, required=True)}

METHODS = (
    CheckMethod(Schema("package_installed", _NAME), lambda host, fields: _installed(host, fields["name"])),
    CheckMethod(Schema("package_absent", _NAME), lambda host, fields: _negated(_installed(host, fields["name"]))),
    CheckMethod(Schema("package_state", {**_NAME, "state": Field(_state)}), _package_state),
    CheckMethod(Schema("dpkg_installed", _NAME), _dpkg_installed),
    CheckMethod(Schema("dpkg_absent", _NAME), lambda host, fields: _negated(_dpkg_installed(host, fields))),
)
