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
from kensa.handlers.authselect_feature import AuthselectFeatureEnable
from kensa.handlers.command_exec import CommandExec
from kensa.handlers.config_append import ConfigAppend
from kensa.handlers.config_set import ConfigSet
from kensa.handlers.config_set_dropin import ConfigSetDropin
from kensa.handlers.cron_job import CronJob
from kensa.handlers.crypto_policy import CryptoPolicySet, CryptoPolicySubpolicy
from kensa.handlers.dconf_set import DconfSet
from kensa.handlers.file_absent import FileAbsent
from kensa.handlers.file_content import FileContent
from kensa.handlers.file_permissions import FilePermissions
from kensa.handlers.grub import GrubParameterRemove, GrubParameterSet
from kensa.handlers.kernel_module import KernelModuleDisable
from kensa.handlers.manual import Manual
from kensa.handlers.mount_option import MountOptionSet
from kensa.handlers.packages import AptAbsent, AptPresent, PackageAbsent, PackagePresent
from kensa.handlers.pam_module_arg import PamModuleArg
from kensa.handlers.pam_module_configure import PamModuleConfigure
from kensa.handlers.selinux_boolean import SelinuxBooleanSet
from kensa.handlers.services import ServiceDisabled, ServiceEnabled, ServiceMasked
from kensa.handlers.sysctl_set import SysctlSet

HANDLERS = (
    FileContent,
    FileAbsent,
    FilePermissions,
    ConfigSet,
    ConfigSetDropin,
    ConfigAppend,
    SysctlSet,
    AuditRuleSet,
    CommandExec,
    MountOptionSet,
    GrubParameterSet,
    GrubParameterRemove,
    SelinuxBooleanSet,
    Manual,
    DconfSet,
    AuthselectFeatureEnable,
    CryptoPolicySet,
    CryptoPolicySubpolicy,
    ServiceEnabled,
    ServiceDisabled,
    ServiceMasked,
    KernelModuleDisable,
    PamModuleConfigure,
    PamModuleArg,
    CronJob,
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
    "AuthselectFeatureEnable",
    "CommandExec",
    "ConfigAppend",
    "ConfigSet",
    "ConfigSetDropin",
    "CryptoPolicySet",
    "CryptoPolicySubpolicy",
    "DconfSet",
    "FileAbsent",
    "FileContent",
    "FilePermissions",
    "GrubParameterRemove",
    "GrubParameterSet",
    "MountOptionSet",
    "Manual",
    "CronJob",
    "FileAbsent",
    "FileContent",
    "FilePermissions",
    "PamModuleArg",
    "PamModuleConfigure",
    "PackageAbsent",
    "PackagePresent",
    "ParamError",
    "SelinuxBooleanSet",
    "KernelModuleDisable",
    "ParamError",
    "ServiceDisabled",
    "ServiceEnabled",
    "ServiceMasked",
    "SysctlSet",
    "default_registry",
]
