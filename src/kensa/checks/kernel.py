"""Checks of the kernel's settings: sysctl parameters and audit rules."""

from __future__ import annotations

from typing import Any, Mapping

from kensa.checks.method import CheckMethod
from kensa.errors import ParamError
from kensa.facts.auditrules import DEFAULT_PERSIST_FILE, audit_rules, rules_hold
from kensa.facts.params import Field, Schema, as_given, scalar_line
from kensa.facts.sysctl import sysctl_key, sysctl_path
from kensa.hosts.protocol import ReadableHost


def _expected(value: Any) -> str:
    found = scalar_line(value)
    if not found.strip():
        raise ParamError("must not be empty")
    return found


def _sysctl_value(host: ReadableHost, fields: Mapping[str, Any]) -> bool:
    data = host.read_bytes(sysctl_path(fields["key"]))
    # The kernel separates multi-value settings with tabs; rules write spaces.
    return data is not None and data.decode("utf-8", "surrogateescape").split() == fields["expected"].split()


METHODS = (
    CheckMethod(
        Schema("sysctl_value", {"key": Field(sysctl_key, required=True), "expected": Field(_expected, required=True)}),
        _sysctl_value,
    ),
    CheckMethod(
        Schema("audit_rule_exists", {"rule": Field(audit_rules, required=True, written=as_given)}),
        lambda host, fields: rules_hold(host, fields["rule"], DEFAULT_PERSIST_FILE),
    ),
)
