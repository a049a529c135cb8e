"""The remediation mechanisms, one module each, and the registry the engine and the rule loader use.

Every handler reaches its target through :class:`kensa.hosts.protocol.Host` and never touches a
path outside its root. Capturable handlers record a pre-state made of JSON-like
values and bytes only, so a journal can restore it in a fresh process. Each
handler module owns its parameter :class:`~kensa.facts.params.Schema` (its
``SCHEMA``, also the handler's ``schema``): the handler reads its parameters
through it and the rule loader validates rule files with it.

:data:`HANDLERS` is the one list of built-in mechanisms; the names the loader
supports and their schemas are derived from it.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, Dict, Mapping

from kensa.errors import ParamError
from kensa.facts.params import Schema
from kensa.handlers.audit_rule_set import AuditRuleSet
from kensa.handlers.command_exec import CommandExec
from kensa.handlers.config_append import ConfigAppend
from kensa.handlers.config_set import ConfigSet
from kensa.handlers.file_absent import FileAbsent
from kensa.handlers.file_content import FileContent
from kensa.handlers.file_permissions import FilePermissions
from kensa.handlers.packages import AptAbsent, AptPresent, PackageAbsent, PackagePresent
from kensa.handlers.sysctl_set import SysctlSet

HANDLERS = (
    FileContent,
    FileAbsent,
    FilePermissions,
    ConfigSet,
    ConfigAppend,
    SysctlSet,
    AuditRuleSet,
    CommandExec,
    AptPresent,
    AptAbsent,
    PackagePresent,
    PackageAbsent,
)

SCHEMAS: Mapping[str, Schema] = MappingProxyType({cls.name: cls.schema for cls in HANDLERS})
"""Mechanism name -> its parameter schema, for every built-in mechanism."""


def default_registry() -> Dict[str, Any]:
    """A fresh mapping of mechanism name -> handler, for every built-in mechanism (each one
    satisfies the engine's ``Handler`` protocol; this package does not import the engine)."""
    return {cls.name: cls() for cls in HANDLERS}


__all__ = [
    "HANDLERS",
    "SCHEMAS",
    "AptAbsent",
    "AptPresent",
    "AuditRuleSet",
    "CommandExec",
    "ConfigAppend",
    "ConfigSet",
    "FileAbsent",
    "FileContent",
    "FilePermissions",
    "PackageAbsent",
    "PackagePresent",
    "ParamError",
    "SysctlSet",
    "default_registry",
]
