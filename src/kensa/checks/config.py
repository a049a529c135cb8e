"""Checks of ``key value`` configuration files (sshd_config style)."""

from __future__ import annotations

from typing import Any, Mapping

from kensa.checks.method import CheckMethod
from kensa.facts.config import config_key, holds
from kensa.facts.params import PATH, Field, Schema, scalar_line
from kensa.hosts.protocol import ReadableHost


def _config_value(host: ReadableHost, fields: Mapping[str, Any]) -> bool:
    return holds(host, fields["path"], fields["key"], fields["expected"])


CONFIG_VALUE = CheckMethod(
    Schema(
        "config_value",
        {"path": PATH, "key": Field(config_key, required=True), "expected": Field(scalar_line, required=True)},
    ),
    _config_value,
)
"""The global setting of ``key`` in ``path`` is ``expected`` (what config_set sets)."""

METHODS = (CONFIG_VALUE,)
