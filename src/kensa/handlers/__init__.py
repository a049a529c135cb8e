"""The remediation mechanisms, one module each, and the registry the engine uses.

Every handler receives a :class:`kensa.host.LocalHost` and never touches a path
outside its root. Capturable handlers record a pre-state made of JSON-like values
and bytes only, so a journal can restore it in a fresh process.
"""

from __future__ import annotations

from typing import Dict

from kensa.engine.protocols import Handler
from kensa.handlers.audit_rule_set import AuditRuleSet
from kensa.handlers.command_exec import CommandExec
from kensa.handlers.config_append import ConfigAppend
from kensa.handlers.config_set import ConfigSet
from kensa.handlers.file_absent import FileAbsent
from kensa.handlers.file_content import FileContent
from kensa.handlers.file_permissions import FilePermissions
from kensa.errors import ParamError
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
)


def default_registry() -> Dict[str, Handler]:
    """A fresh mapping of mechanism name -> handler, for every built-in mechanism."""
    return {cls.name: cls() for cls in HANDLERS}


__all__ = [
    "HANDLERS",
    "AuditRuleSet",
    "CommandExec",
    "ConfigAppend",
    "ConfigSet",
    "FileAbsent",
    "FileContent",
    "FilePermissions",
    "ParamError",
    "SysctlSet",
    "default_registry",
]
