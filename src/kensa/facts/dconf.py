"""dconf's system keyfiles: ``/etc/dconf/db/<db>.d/<file>`` and its ``locks/<file>``.

A keyfile is GLib's key file format: ``[schema/path]`` sections of ``key=value`` lines,
each value in GVariant text format (``uint32 900``, ``'lock-screen'``, ``true``); ``#``
lines are comments. A lock file lists ``/schema/path/key`` lines, one key each, that
users may not override. ``dconf update`` compiles every ``<db>.d`` directory into the
binary database ``/etc/dconf/db/<db>`` that sessions read.
"""

from __future__ import annotations

import re
from typing import Any, List, Optional, Tuple

from kensa.errors import ParamError
from kensa.facts.params import line, line_matching

DB_ROOT = "/etc/dconf/db"

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,254}")
_SCHEMA = re.compile(r"[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*")
_KEY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,254}")

#: GVariant's type keywords: ``value_type: uint32`` with ``value: '900'`` is written ``uint32 900``.
VALUE_TYPES = (
    "boolean", "byte", "int16", "uint16", "int32", "uint32", "int64", "uint64", "handle", "double",
    "string", "objectpath", "signature",
)


def name_component(value: Any) -> str:
    """A ``db`` or ``file`` name: one path component of letters, digits, '_', '.', '+', '-'
    (not starting with '.', so never '..' or a hidden file dconf skips)."""
    found = line(value)
    if not _NAME.fullmatch(found) or ".." in found:
        raise ParamError(f"{found[:80]!r} must be one file name of letters, digits, '_', '.', '+' or '-' (no '/', no leading '.')")
    return found


def schema_path(value: Any) -> str:
    """A dconf directory such as ``org/gnome/desktop/session`` (no leading or trailing '/')."""
    found = line(value)
    if not _SCHEMA.fullmatch(found) or ".." in found.split("/") or len(found) > 1024:
        raise ParamError(f"{found[:80]!r} is not a dconf path such as 'org/gnome/desktop/session'")
    return found


def dconf_key(value: Any) -> str:
    """A key name such as ``idle-delay``: letters, digits, '_', '.', '-'."""
    return line_matching(value, _KEY, "a dconf key name such as 'idle-delay'")


def gvariant_value(value: Any) -> str:
    """The value in GVariant text, one line (``'lock-screen'`` with its quotes, ``true``, ``900``)."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ParamError(f"must be GVariant text as a string (quote it in YAML), got {value!r}")
    found = line(str(value)).strip()
    if not found:
        raise ParamError("must not be blank (an empty string is written '' in GVariant text)")
    return found


def value_type(value: Any) -> str:
    """One of GVariant's type keywords (:data:`VALUE_TYPES`)."""
    found = line(value)
    if found not in VALUE_TYPES:
        raise ParamError(f"{found[:80]!r} is not a GVariant type keyword (one of {', '.join(VALUE_TYPES)})")
    return found


def keyfile_text(value: str, kind: Optional[str]) -> str:
    """What follows ``key=`` in the keyfile: the value, typed when ``kind`` is given."""
    return f"{kind} {value}" if kind else value


def keyfile_path(db: str, file: str) -> str:
    return f"{DB_ROOT}/{db}.d/{file}"


def lock_path(db: str, file: str) -> str:
    return f"{DB_ROOT}/{db}.d/locks/{file}"


def lock_line(schema: str, key: str) -> str:
    return f"/{schema}/{key}"


def _section_of(text: str) -> Optional[str]:
    stripped = text.strip()
    if stripped.startswith("[") and stripped.endswith("]"):
        return stripped[1:-1].strip()
    return None


def find_entry(lines: List[str], section: str, key: str) -> Tuple[Optional[int], Optional[int], Optional[int]]:
    """(index of the ``[section]`` header, index of the ``key=`` line in it, index where the
    section ends); Nones where absent. The first matching section and key count."""
    header: Optional[int] = None
    for index, text in enumerate(lines):
        name = _section_of(text)
        if name is not None:
            if header is not None:
                return header, None, index
            if name == section:
                header = index
            continue
        if header is not None and not text.lstrip().startswith("#") and "=" in text:
            if text.split("=", 1)[0].strip() == key:
                return header, index, None
    return header, None, None if header is None else len(lines)


def entry_value(text: str, section: str, key: str) -> Optional[str]:
    """The value text of ``key`` in ``[section]``, stripped; None when it is not set."""
    lines = text.splitlines()
    _, index, _ = find_entry(lines, section, key)
    return None if index is None else lines[index].split("=", 1)[1].strip()


def has_lock(text: str, wanted: str) -> bool:
    return any(found.strip() == wanted for found in text.splitlines())
