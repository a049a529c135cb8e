"""Checks of configuration files: ``config_value`` and ``sshd_effective_config``."""

from __future__ import annotations

import errno
import posixpath
from typing import Any, List, Mapping, Optional, Tuple

from kensa.checks.method import CheckMethod, compare, comparator, expectation, holds_if, not_compliant
from kensa.errors import CheckNotAssessable, HostAccessError, ParamError
from kensa.facts.config import config_key, decode, matching_files, values_of
from kensa.facts.params import PATH, Field, Schema, absolute_path, line, path_as_text, scalar_line
from kensa.facts.sshd import DEFAULTS, configured, effective, normalise
from kensa.hosts.protocol import ReadableHost
from kensa.model import Finding


def _sources(host: ReadableHost, fields: Mapping[str, Any]) -> Tuple[List[str], str]:
    """The files config_value reads, in the order their values apply, and how to name them."""
    path = fields["path"]
    if fields["scan_pattern"]:
        return matching_files(host, path, "*." + fields["scan_pattern"]), f"{host.where(path)}/*.{fields['scan_pattern']}"
    if fields["dropin_dir"]:
        dropins = matching_files(host, fields["dropin_dir"], "*.conf")
        return [path, *dropins], f"{host.where(path)} and {host.where(fields['dropin_dir'])}/*.conf"
    return [path], host.where(path)


def _config_value(host: ReadableHost, fields: Mapping[str, Any]) -> Finding:
    key, expected, how = fields["key"], fields["expected"], fields["comparator"]
    files, named = _sources(host, fields)
    values: List[Tuple[str, str]] = []
    for path in files:
        data = host.read_bytes(path)
        values += [(path, value) for value in values_of(decode(data), key, fields["delimiter"] or "=")] if data is not None else []
    if not values:
        if not any(host.info(path) is not None for path in files):
            return not_compliant(f"{named}: no such file")
        return not_compliant(f"{named}: {key} is not set, expected {expectation(how, expected)}")
    # A drop-in directory overrides the base file: the last value read wins there.
    path, got = values[-1] if fields["dropin_dir"] else values[0]
    ok, why = compare(got, expected.strip(), how, fold_case=True)
    detail = f"{host.where(path)}: {key} is {got!r}, expected {expectation(how, expected)}"
    return holds_if(ok, f"{detail} ({why})" if why else detail)


def _glob_suffix(value: Any) -> str:
    found = line(value)
    if "/" in found:
        raise ParamError(f"{found!r} is a file name suffix such as 'conf', not a path")
    return found


CONFIG_VALUE = CheckMethod(
    Schema(
        "config_value",
        {
            "path": PATH,
            "key": Field(config_key, required=True),
            "expected": Field(scalar_line, required=True),
            "delimiter": Field(scalar_line),
            "comparator": Field(comparator),
            "dropin_dir": Field(absolute_path, written=path_as_text),
            "scan_pattern": Field(_glob_suffix),
        },
    ),
    _config_value,
)
"""The global value of ``key`` in ``path`` (or its drop-ins) compares to ``expected``."""


def _sshd_key(value: Any) -> str:
    found = config_key(value)
    return found.lower()


def _sshd_effective_config(host: ReadableHost, fields: Mapping[str, Any]) -> Finding:
    key, expected = fields["key"], fields["expected"]
    if host.is_live:
        try:
            settings = effective(host)
        except HostAccessError as exc:
            if exc.errno == errno.ENOENT:
                raise CheckNotAssessable(str(exc)) from None
            raise
        where = "sshd -T"
    else:
        try:
            settings, read = configured(host)
        except HostAccessError as exc:
            if exc.errno == errno.ENOENT:
                return not_compliant(str(exc))
            raise
        where = f"{host.where(read[0])} (with {len(read) - 1} included files)" if len(read) > 1 else host.where(read[0])
        if key not in settings:
            if key not in DEFAULTS:
                raise CheckNotAssessable(
                    f"{key} is not set in {where}, and its built-in default depends on the image's OpenSSH version"
                )
            settings = {key: DEFAULTS[key]}
            where += " (not set: sshd's default)"
    got: Optional[str] = settings.get(key)
    if got is None:
        return not_compliant(f"{where}: {key} is not set, expected {expected!r}")
    ok = normalise(key, got).lower() == normalise(key, expected).lower()
    return holds_if(ok, f"{where}: {key} is {got!r}, expected {expected!r}")


SSHD_EFFECTIVE_CONFIG = CheckMethod(
    Schema("sshd_effective_config", {"key": Field(_sshd_key, required=True), "expected": Field(scalar_line, required=True)}),
    _sshd_effective_config,
)
"""sshd's effective global ``key`` is ``expected`` (``sshd -T``; on an image, kensa's reading)."""

METHODS = (CONFIG_VALUE, SSHD_EFFECTIVE_CONFIG)
