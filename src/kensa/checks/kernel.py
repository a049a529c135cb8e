"""Checks of the kernel: sysctl parameters, audit rules, mounts, modules, the boot
command line.

State of the running kernel (a sysctl, what is mounted, what is loaded) is read only
on a live host. On an image root, ``audit_rule_exists``, ``mount_option``,
``kernel_module_state`` and ``grub_parameter`` judge the configuration the image
would boot with; ``sysctl_value`` reads the image's /proc/sys when it has one
(a tree standing in for the kernel's, never a real procfs) and is not assessable
otherwise.
"""

from __future__ import annotations

import re
import shlex
from typing import Any, Dict, List, Mapping

from kensa.checks.method import CheckMethod, compare, comparator, expectation, holds_if, live_only, not_compliant
from kensa.errors import ParamError
from kensa.facts import modules
from kensa.facts.auditrules import audit_rules, identities, kernel_rules, missing, persisted_rules
from kensa.facts.config import decode
from kensa.facts.mounts import FSTAB, fstab, mounted
from kensa.facts.params import Field, Schema, absolute_path, as_given, line, path_as_text, scalar_line
from kensa.facts.sysctl import sysctl_key, sysctl_path
from kensa.hosts.protocol import ReadableHost
from kensa.model import Finding


def _expected(value: Any) -> str:
    found = scalar_line(value)
    if not found.strip():
        raise ParamError("must not be empty")
    return found


def _sysctl_value(host: ReadableHost, fields: Mapping[str, Any]) -> Finding:
    path = sysctl_path(fields["key"])
    data = host.read_bytes(path)
    if data is None:
        live_only(host, f"sysctl {fields['key']} ({path})")
        return not_compliant(f"{fields['key']}: no such parameter ({path} does not exist)")
    # The kernel separates multi-value settings with tabs; rules write spaces.
    got = " ".join(data.decode("utf-8", "surrogateescape").split())
    want = " ".join(fields["expected"].split())
    ok, why = compare(got, want, fields["comparator"], fold_case=False)
    detail = f"{fields['key']} is {got!r}, expected {expectation(fields['comparator'], want)}"
    return holds_if(ok, f"{detail} ({why})" if why else detail)


def _audit_rule_exists(host: ReadableHost, fields: Mapping[str, Any]) -> Finding:
    rules: List[str] = fields["rule"]
    lines, files = persisted_rules(host)
    absent = missing(rules, lines)
    if absent:
        where = ", ".join(host.where(path) for path in files) or "no rules file"
        return not_compliant(f"not in the audit rules files ({where}): {'; '.join(absent)}")
    kernel = kernel_rules(host)
    if kernel is not None:
        unloaded = missing(rules, kernel["rules"])
        if unloaded:
            return not_compliant(f"in the rules files but not loaded in the kernel (auditctl -l): {'; '.join(unloaded)}")
        return holds_if(True, f"{len(rules)} rule(s) in the rules files and loaded in the kernel")
    return holds_if(True, f"{len(rules)} rule(s) in the rules files ({len(identities(lines))} rules read)")


def _options(value: Any) -> List[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(item, str) for item in items):
        raise ParamError(f"must be a mount option or a list of them, got {value!r}")
    for item in items:
        if not item or "," in item or any(c.isspace() for c in item):
            raise ParamError(f"{item!r} is not one mount option (no commas or spaces)")
    return list(items)


def _mount_option(host: ReadableHost, fields: Mapping[str, Any]) -> Finding:
    point = fields["mount_point"].rstrip("/") or "/"
    if host.is_live:
        table, where = mounted(host), "mounted"
    else:
        found = fstab(host)
        if found is None:
            return not_compliant(f"{host.where(FSTAB)}: no such file")
        table, where = found, f"in {host.where(FSTAB)}"
    if point not in table:
        return not_compliant(f"{point} is not a separate mount ({where})")
    present = {option.split("=", 1)[0] for option in table[point]} | set(table[point])
    lacking = [option for option in fields["options"] if option not in present]
    detail = f"{point} {where} with {','.join(table[point])}"
    return holds_if(not lacking, f"{detail}; missing {', '.join(lacking)}" if lacking else detail)


def _module(value: Any) -> str:
    found = line(value)
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", found):
        raise ParamError(f"{found!r} is not a kernel module name (letters, digits, '_' and '-')")
    return found


def _module_state(value: Any) -> str:
    if value not in ("disabled", "blacklisted"):
        raise ParamError(f"must be 'disabled' or 'blacklisted', got {value!r}")
    return str(value)


def _kernel_module_state(host: ReadableHost, fields: Mapping[str, Any]) -> Finding:
    name, state = fields["name"], fields["state"] or "disabled"
    if host.is_live:
        running = modules.in_running_kernel(host, name)
        if running is not None:
            return not_compliant(f"module {name} is {running} in the running kernel")
    lines = modules.modprobe_lines(host)
    if state == "blacklisted":
        ok = modules.blacklisted(lines, name)
        return holds_if(ok, f"module {name} is {'' if ok else 'not '}blacklisted in modprobe.d")
    rule = modules.disabled_by(lines, name)
    if rule is not None:
        return holds_if(True, f"module {name} cannot be loaded: modprobe.d has '{rule}'")
    source = modules.available(host, name)
    if source is None:
        return holds_if(True, f"module {name} cannot be loaded: the kernel has no such module")
    return not_compliant(f"module {name} can be loaded ({source}) and modprobe.d has no 'install {name} /bin/false'")


def _cmdline_value(words: List[str], key: str) -> Any:
    """The value the last ``key=`` word gives, True for a bare ``key``, None when absent."""
    found: Any = None
    for word in words:
        name, sep, value = word.partition("=")
        if name == key:
            found = value if sep else True
    return found


def _grub_defaults(host: ReadableHost) -> Any:
    """The words of GRUB_CMDLINE_LINUX and GRUB_CMDLINE_LINUX_DEFAULT in /etc/default/grub."""
    data = host.read_bytes("/etc/default/grub")
    if data is None:
        return None
    words: List[str] = []
    for text in decode(data).splitlines():
        name, sep, value = text.strip().partition("=")
        if sep and name in ("GRUB_CMDLINE_LINUX", "GRUB_CMDLINE_LINUX_DEFAULT"):
            try:
                words += " ".join(shlex.split(value)).split()
            except ValueError:
                raise ParamError(f"{host.where('/etc/default/grub')}: cannot read {name}: unbalanced quotes") from None
    return words


def _grub_parameter(host: ReadableHost, fields: Mapping[str, Any]) -> Finding:
    key, expected = fields["key"], fields["expected"]
    shown: Dict[Any, str] = {None: "not set", True: "set without a value"}
    if host.is_live:
        cmdline = (host.read_bytes("/proc/cmdline") or b"").decode("utf-8", "replace").split()
        running = _cmdline_value(cmdline, key)
        if running != expected:
            return not_compliant(f"/proc/cmdline: {key} is {shown.get(running, repr(running))}, expected {expected!r}")
    words = _grub_defaults(host)
    if words is None:
        return not_compliant(f"{host.where('/etc/default/grub')}: no such file")
    persistent = _cmdline_value(words, key)
    detail = f"{host.where('/etc/default/grub')}: {key} is {shown.get(persistent, repr(persistent))}, expected {expected!r}"
    return holds_if(persistent == expected, detail)


def _parameter(value: Any) -> str:
    found = line(value)
    if "=" in found or any(c.isspace() for c in found):
        raise ParamError(f"{found!r} is not a kernel parameter name (no '=' or spaces)")
    return found


METHODS = (
    CheckMethod(
        Schema("sysctl_value", {
            "key": Field(sysctl_key, required=True), "expected": Field(_expected, required=True), "comparator": Field(comparator),
        }),
        _sysctl_value,
    ),
    CheckMethod(Schema("audit_rule_exists", {"rule": Field(audit_rules, required=True, written=as_given)}), _audit_rule_exists),
    CheckMethod(
        Schema("mount_option", {
            "mount_point": Field(absolute_path, required=True, written=path_as_text),
            "options": Field(_options, required=True, written=as_given),
        }),
        _mount_option,
    ),
    CheckMethod(
        Schema("kernel_module_state", {"name": Field(_module, required=True), "state": Field(_module_state)}),
        _kernel_module_state,
    ),
    CheckMethod(
        Schema("grub_parameter", {"key": Field(_parameter, required=True), "expected": Field(_expected, required=True)}),
        _grub_parameter,
    ),
)
