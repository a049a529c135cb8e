"""chmod's mode spellings: numeric (``0640``) and symbolic (``go-w``, ``g-w,o-rwx``, ``+t``).

A symbolic mode changes a file's current mode, so the mode it asks for depends on
the file: :func:`mode_for` gives it for one file's current mode and kind. ``X``
(execute for directories and for files executable by someone) is understood; the
umask is not applied when no ``ugoa`` is given (kensa writes what the rule says,
not what a shell's umask would filter), and ``=`` keeps a directory's set-id
bits, as GNU chmod does.
"""

from __future__ import annotations

import re
import stat
from typing import Any, Union

from kensa.errors import ParamError
from kensa.facts.params import mode as numeric_mode

_CLAUSE = re.compile(r"([ugoa]*)([-+=])([rwxXst]*|[ugo])")
_WHO = {"u": stat.S_IRWXU | stat.S_ISUID, "g": stat.S_IRWXG | stat.S_ISGID, "o": stat.S_IRWXO | stat.S_ISVTX}
_PERMS = {"r": 0o444, "w": 0o222, "x": 0o111, "s": stat.S_ISUID | stat.S_ISGID, "t": stat.S_ISVTX}

ModeSpec = Union[int, str]
"""A numeric mode, or a symbolic mode's text (checked by :func:`mode_spec`)."""


def mode_spec(value: Any) -> ModeSpec:
    """A numeric mode (as :func:`kensa.facts.params.mode` reads it) or a symbolic one such as ``go-w``."""
    if isinstance(value, str) and value and not value[0].isdigit():
        clauses = value.split(",")
        if len(value) > 64 or not all(_CLAUSE.fullmatch(clause) for clause in clauses):
            raise ParamError(f"{value[:80]!r} is neither an octal mode such as '0640' nor a symbolic one such as 'go-w'")
        return value
    found: int = numeric_mode(value)
    return found


def mode_for(spec: ModeSpec, current: int, is_dir: bool) -> int:
    """The permission bits ``spec`` gives a file whose bits are ``current``."""
    if isinstance(spec, int):
        return spec
    result = current
    for clause in spec.split(","):
        matched = _CLAUSE.fullmatch(clause)
        assert matched is not None  # mode_spec checked every clause
        who, op, perms = matched.groups()
        mask = 0
        for letter in who or "a":
            mask |= 0o7777 if letter == "a" else _WHO[letter]
        if perms in ("u", "g", "o"):
            shift = {"u": 6, "g": 3, "o": 0}[perms]
            bits = (result >> shift) & 0o7
            wanted = bits << 6 | bits << 3 | bits
        else:
            wanted = 0
            for letter in perms:
                if letter == "X":
                    if is_dir or current & 0o111:
                        wanted |= 0o111
                else:
                    wanted |= _PERMS[letter]
        wanted &= mask
        if op == "+":
            result |= wanted
        elif op == "-":
            result &= ~wanted
        else:
            cleared = mask & 0o7777
            if is_dir:
                cleared &= ~(stat.S_ISUID | stat.S_ISGID)  # chmod keeps a directory's set-id bits unless told
            result = (result & ~cleared) | wanted
    return result & 0o7777
