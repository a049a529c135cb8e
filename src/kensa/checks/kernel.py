"""Checks of the kernel: sysctl parameters, audit rules, mounts, modules, the boot
command line.

State of the running kernel (a sysctl, what is mounted, what is loaded) is read only
on a live host. On an image root, ``audit_rule_exists``, ``mount_option``,
``kernel_module_state`` and ``grub_parameter`` judge the configuration the image
would boot with; ``sysctl_value`` reads the image's /proc/sys when it has one
(a tree standing in for the kernel's, never a real procfs) and otherwise what the
image's sysctl files set at boot.
"""

from __future__ import annotations

import re
from typing import Any, List, Mapping, Optional

from kensa.checks.method import CheckMethod, compare, comparator, expectation, holds_if, not_compliant
from kensa.errors import CheckNotAssessable, ParamError
from kensa.facts import boot, modules
from kensa.facts.auditrules import audit_rules, identities, kernel_rules, missing, persisted_rules
from kensa.facts.mounts import FSTAB, fstab, mounted
from kensa.facts.params import Field, Schema, absolute_path, as_given, line, path_as_text, scalar_line
from kensa.facts.sysctl import boot_value, sysctl_key, sysctl_path
from kensa.hosts.protocol import ReadableHost
from kensa.model import Finding


def _expected(value: Any) -> str:
    found = scalar_line(value)
    if not found.strip():
        raise ParamError("must not be empty")
    return found


def _sysctl_value(host: ReadableHost, fields: Mapping[str, Any]) -> Finding:
    key, path = fields["key"], sysctl_path(fields["key"])
    want = " ".join(fields["expected"].split())
    data = host.read_bytes(path)
    if data is not None:
        # The kernel separates multi-value settings with tabs; rules write spaces.
        got, where = " ".join(data.decode("utf-8", "surrogateescape").split()), ""
    elif host.is_live:
        return not_compliant(f"{key}: no such parameter ({path} does not exist)")
    else:
        # An image has no running kernel: judge what its sysctl files set at boot.
        persisted = boot_value(host, key)
        if persisted is None:
            raise CheckNotAssessable(
                f"{key} is not set in the image's sysctl files, and the kernel's default is not in the image"
            )
        got, where = persisted[0], f" at boot ({host.where(persisted[1])})"
    ok, why = compare(got, want, fields["comparator"], fold_case=False)
    detail = f"{key} is {got!r}{where}, expected {expectation(fields['comparator'], want)}"
    return holds_if(ok, f"{detail} ({why})" if why else detail)


_KEY_ONLY = re.compile(r"(?:-k\s+|-F\s+key=)(\S+)")


def _check_rules(value: Any) -> List[str]:
    """The ``rule`` of audit_rule_exists: what :func:`audit_rules` accepts, or lines that are
    only a key (``-k logins``: some rule carries the key logins)."""
    lines = value.splitlines() if isinstance(value, str) else value
    if isinstance(lines, list) and lines and all(isinstance(item, str) and _KEY_ONLY.fullmatch(item.strip()) for item in lines):
        return [item.strip() for item in lines]
    return audit_rules(value)


def _key_only(rule: str) -> Optional[str]:
    match = _KEY_ONLY.fullmatch(rule)
    return match.group(1) if match else None


def _lacking(rules: List[str], present: List[str]) -> List[str]:
    """The rules (or key-only lines) not among the ``present`` rule lines."""
    keys = {key for identity in identities(present) for key in identity[-1]}
    keyed = [rule for rule in rules if _key_only(rule) is not None]
    return [rule for rule in keyed if _key_only(rule) not in keys] + missing([r for r in rules if r not in keyed], present)


def _audit_rule_exists(host: ReadableHost, fields: Mapping[str, Any]) -> Finding:
    rules: List[str] = fields["rule"]
    lines, files = persisted_rules(host)
    absent = _lacking(rules, lines)
    if absent:
        where = ", ".join(host.where(path) for path in files) or "no rules file"
        return not_compliant(f"not in the audit rules files ({where}): {'; '.join(absent)}")
    kernel = kernel_rules(host)
    if kernel is not None:
        unloaded = _lacking(rules, kernel["rules"])
        if unloaded:
            return not_compliant(f"in the rules files but not loaded in the kernel (auditctl -l): {'; '.join(unloaded)}")
        return holds_if(True, f"{len(rules)} rule(s) in the rules files and loaded in the kernel")
    unread = "; the kernel's loaded rules cannot be read here (auditctl -s failed or is missing)" if host.is_live else ""
    return holds_if(True, f"{len(rules)} rule(s) in the rules files ({len(identities(lines))} rules read){unread}")


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


def _grub_parameter(host: ReadableHost, fields: Mapping[str, Any]) -> Finding:
    key, expected = fields["key"], fields["expected"]

    def said(words: List[str]) -> str:
        found = boot.parameter(words, key)
        return {None: "not set", True: "set without a value"}.get(found, repr(found))

    if host.is_live:
        words = boot.running(host)
        if boot.parameter(words, key) != expected:
            return not_compliant(f"/proc/cmdline: {key} is {said(words)}, expected {expected!r}")
    entries = boot.boot_entries(host)
    if entries:
        wrong = [f"{host.where(path)}: {key} is {said(words)}" for path, words in entries if boot.parameter(words, key) != expected]
        if wrong:
            return not_compliant(f"{'; '.join(wrong)}; expected {expected!r}")
        return holds_if(True, f"{key}={expected} in all {len(entries)} boot entries")
    words_or_none = boot.grub_defaults(host)
    if words_or_none is None:
        return not_compliant(f"{host.where(boot.DEFAULT_GRUB)}: no such file, and no boot loader entries")
    detail = f"{host.where(boot.DEFAULT_GRUB)}: {key} is {said(words_or_none)}, expected {expected!r}"
    return holds_if(boot.parameter(words_or_none, key) == expected, detail)


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
    CheckMethod(Schema("audit_rule_exists", {"rule": Field(_check_rules, required=True, written=as_given)}), _audit_rule_exists),
    CheckMethod(
        Schema("mount_option", {
            "mount_point": Field(absolute_path, required=True, written=path_as_text),
            "options": Field(_options, required=True, written=as_given),
        }),
        _mount_option,
    ),
    CheckMethod(
        Schema("kernel_module_state", {"name": Field(modules.kernel_module, required=True), "state": Field(_module_state)}),
        _kernel_module_state,
    ),
    CheckMethod(
        Schema("grub_parameter", {"key": Field(_parameter, required=True), "expected": Field(_expected, required=True)}),
        _grub_parameter,
    ),
)
