"""Reading a step's parameters: required/optional values, modes, owners."""

from __future__ import annotations

from typing import Any, Mapping, Optional

from kensa.hosts.local import LocalHost
from kensa.errors import KensaError, ParamError


def require_str(mechanism: str, params: Mapping[str, Any], key: str) -> str:
    """The non-empty string ``params[key]``."""
    value = params.get(key)
    if not isinstance(value, str) or not value:
        raise ParamError(f"{mechanism}: parameter {key!r} is required and must be a non-empty string, got {value!r}")
    return value


def scalar_text(mechanism: str, params: Mapping[str, Any], key: str, default: Optional[str] = None) -> str:
    """``params[key]`` as text: a string or a number (booleans are refused as ambiguous)."""
    value = params.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ParamError(
            f"{mechanism}: parameter {key!r} must be a string or a number, got {value!r}"
            " (quote YAML yes/no/on/off so they stay strings)"
        )
    text = str(value)
    if "\n" in text or "\r" in text:
        raise ParamError(f"{mechanism}: parameter {key!r} must be a single line, got {text!r}")
    return text


def require_path(mechanism: str, params: Mapping[str, Any], key: str = "path") -> str:
    """An absolute path (inside the target root)."""
    path = require_str(mechanism, params, key)
    if not path.startswith("/") or "\0" in path:
        raise ParamError(f"{mechanism}: parameter {key!r} must be an absolute path, got {path!r}")
    return path


def optional_mode(mechanism: str, params: Mapping[str, Any]) -> Optional[int]:
    """``mode`` as permission bits: an int taken as is, or an octal string ("0644", "644", "0o644").

    A YAML ``0644`` is already the octal int 420; an unquoted ``644`` is the decimal
    int 644, which is a different mode, so rules should quote modes.
    """
    value = params.get("mode")
    if value is None:
        return None
    if isinstance(value, str):
        text = value[2:] if value.lower().startswith("0o") else value
        try:
            mode = int(text, 8)
        except ValueError:
            raise ParamError(f"{mechanism}: mode {value!r} is not an octal number like '0644'") from None
    elif isinstance(value, int) and not isinstance(value, bool):
        mode = value
    else:
        raise ParamError(f"{mechanism}: mode must be an octal string like '0644' or an int, got {value!r}")
    if not 0 <= mode <= 0o7777:
        raise ParamError(f"{mechanism}: mode {value!r} is outside 0..07777")
    return mode


def optional_id(mechanism: str, params: Mapping[str, Any], key: str, host: LocalHost) -> Optional[int]:
    """``owner``/``group`` as a numeric id; names resolve in the target root's /etc/passwd or /etc/group."""
    value = params.get(key)
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and value:
        if value.isdigit():
            return int(value)
        try:
            return host.lookup_id("passwd" if key == "owner" else "group", value)
        except KensaError as exc:
            raise ParamError(f"{mechanism}: {key} {value!r}: {exc}") from exc
    raise ParamError(f"{mechanism}: {key} must be a name or a non-negative numeric id, got {value!r}")
