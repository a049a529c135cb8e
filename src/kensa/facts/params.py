"""The fields of steps and checks: one declarative schema per mechanism or check method.

A :class:`Schema` names each field with the one function that reads it. The
handler (or check) reads its parameters through its schema at run time, and the
rule loader validates a rule file's fields through the very same schema, so a
rule that loads cannot fail at run time for a field the loader let through.

Field readers take the value and return it typed, or raise :class:`ParamError`
saying what is wrong with it, phrased to follow the field's name ("must be true
or false", "'0o644' is Python's spelling"); the schema puts the owner and the
field name in front.
Values that need the host (an owner name to resolve) are resolved by the handler
after reading.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

from kensa.errors import ParamError

Reader = Callable[[Any], Any]

MAX_PATH = 4096
"""Longest path accepted (PATH_MAX on Linux)."""

_LINE_BREAKS = re.compile(r"[\r\n\x0b\x0c\x1c-\x1e\x85\u2028\u2029]")
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
# chmod's numeric form: octal digits with a value up to 07777 (leading zeros allowed).
# Its operator forms ("+644" adds bits, "-0") and symbolic ones do not set a mode.
_MODE = re.compile(r"0{0,8}[0-7]{1,4}")
# A name as /etc/passwd and /etc/group can hold one (SSSD's "user@domain", "1backup"
# included): no field or list separator, no whitespace or control character.
_NOT_IN_ACCOUNT = re.compile(r"[:,/\s\x00-\x1f\x7f]")


def as_text(value: Any) -> None:
    """How a rule file writes most fields: as a string. YAML reads unquoted ``644``,
    ``0644``, ``no`` or ``1.10`` as numbers and booleans, which changes what the author meant."""
    if not isinstance(value, str):
        hint = ""
        if isinstance(value, (bool, int, float)) or value is None:
            shown = "null" if value is None else type(value).__name__
            hint = f"; quote it (YAML read the unquoted text as {shown} {value!r})"
        raise ParamError(f"expected a string, got {type_name(value)}{hint}")


def as_given(value: Any) -> None:
    """Fields whose YAML type is their meaning (numbers of seconds, true/false, lists)."""


def path_as_text(value: Any) -> None:
    """Paths in rule files are strings without '..' components. At run time a '..' is the
    target host's to confine (it refuses one that climbs out of the root, naming it)."""
    as_text(value)
    if ".." in value.split("/"):
        raise ParamError(f"{_quoted(value)} contains a '..' component; write the path without it")


@dataclass(frozen=True)
class Field:
    """One field: the function that reads its value (the only judge of what the value
    may be), whether it must be given, and ``written``: how a rule file must spell it
    (:func:`as_text` unless said otherwise), checked by the loader before ``read``."""

    read: Reader
    required: bool = False
    written: Callable[[Any], None] = as_text


@dataclass(frozen=True)
class Schema:
    """The fields of one mechanism or check method.

    ``check`` runs on the read values for rules between fields (raising
    ParamError naming the field at fault); ``at_least_one_of`` names fields of
    which one must be given. Fields not listed are not read: the loader reports
    them as unsupported.
    """

    owner: str
    fields: Mapping[str, Field]
    at_least_one_of: Tuple[str, ...] = ()
    check: Optional[Callable[[Dict[str, Any]], None]] = field(default=None, compare=False)

    def read(self, params: Mapping[str, Any]) -> Dict[str, Any]:
        """The typed value of every field given (None for optional ones left out).

        Raises ParamError naming the owner and the field; nothing is changed."""
        values: Dict[str, Any] = {}
        for name, spec in self.fields.items():
            value = params.get(name)
            if value is None:
                if spec.required:
                    raise ParamError(f"{self.owner}: parameter {name!r} is required", field=name, problem="required field is missing")
                values[name] = None
                continue
            try:
                values[name] = spec.read(value)
            except ParamError as exc:
                raise ParamError(f"{self.owner}: {name} {exc.problem}", field=name, problem=exc.problem) from None
        if self.at_least_one_of and all(values.get(name) is None for name in self.at_least_one_of):
            wanted = ", ".join(repr(name) for name in self.at_least_one_of)
            problem = f"give at least one of {wanted}"
            raise ParamError(f"{self.owner}: {problem}", problem=problem)
        if self.check is not None:
            try:
                self.check(values)
            except ParamError as exc:
                raise ParamError(f"{self.owner}: {exc.field} {exc.problem}", field=exc.field, problem=exc.problem) from None
        return values

    def unknown(self, params: Mapping[str, Any]) -> List[str]:
        """Names in ``params`` this schema does not read, sorted."""
        return sorted(name for name in params if name not in self.fields)


# --- field readers -------------------------------------------------------------


def type_name(value: Any) -> str:
    """The YAML-ish name of a value's type, for messages: null, bool, int, str, list, mapping."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, dict):
        return "mapping"
    return type(value).__name__


def _quoted(value: Any) -> str:
    return repr(value[:80]) if isinstance(value, str) else repr(value)


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise ParamError(f"must be a string, got {type_name(value)} {value!r}")
    if "\x00" in value:
        raise ParamError("contains a NUL character")
    return value


def text(value: Any) -> str:
    """Any string (multi-line allowed)."""
    return _string(value)


def non_blank(value: Any) -> str:
    """A string with something other than whitespace in it."""
    found = _string(value)
    if not found.strip():
        raise ParamError("must not be empty")
    return found


def _one_line(found: str) -> str:
    if _LINE_BREAKS.search(found) or _CONTROL_CHARS.search(found):
        raise ParamError("must be a single line without control characters")
    return found


def line(value: Any) -> str:
    """A non-empty single line."""
    found = _string(value)
    if not found:
        raise ParamError("must not be empty")
    return _one_line(found)


def line_matching(value: Any, pattern: "re.Pattern[str]", what: str) -> str:
    """A :func:`line` that ``pattern`` matches whole; otherwise a ParamError saying it is not ``what``."""
    found = line(value)
    if not pattern.fullmatch(found):
        raise ParamError(f"{found[:80]!r} is not {what}")
    return found


def scalar_line(value: Any) -> str:
    """A single line, possibly empty, from a string or a number (a boolean is ambiguous)."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ParamError(
            f"must be a string or a number, got {value!r} (quote YAML yes/no/on/off so they stay strings)"
        )
    return _one_line(_string(str(value)))


def absolute_path(value: Any) -> str:
    """An absolute path, resolved inside the target root by the host."""
    found = line(value)
    if not found.startswith("/") or len(found) > MAX_PATH:
        raise ParamError(f"{_quoted(found)} is not an absolute path (start it with '/')")
    return found


PATH = Field(absolute_path, required=True, written=path_as_text)
"""The ``path`` of a step or check."""


def mode(value: Any) -> int:
    """Permission bits from chmod's numeric form ("0644", "644", "4755"), or an int as is.

    A rule file writes modes quoted: YAML reads an unquoted ``644`` as the decimal
    number 644, which is a different mode.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        if not 0 <= value <= 0o7777:
            raise ParamError(f"{value!r} is outside 0..0o7777")
        return value
    if not isinstance(value, str):
        raise ParamError(f'must be an octal string such as "0644", got {type_name(value)} {value!r}')
    if value[:2].lower() == "0o" and _MODE.fullmatch(value[2:]):
        raise ParamError(f"{_quoted(value)} is Python's spelling; write chmod's: '0{value[2:].lstrip('0') or '0'}'")
    if not _MODE.fullmatch(value):
        raise ParamError(f'{_quoted(value)} is not an octal mode such as "0644" (octal digits, at most 07777)')
    return int(value, 8)


def mode_as_text(value: Any) -> None:
    """Modes in rule files are quoted: YAML reads ``644`` as decimal and ``0644`` as octal."""
    if isinstance(value, int) and not isinstance(value, bool):
        raise ParamError(f'expected a quoted octal string such as "0644", got int {value}; YAML misreads unquoted modes')
    as_text(value)


def account(value: Any) -> Union[int, str]:
    """A user or group: a numeric id (int or digits) or a name, resolved later on the target."""
    if isinstance(value, int) and not isinstance(value, bool):
        if not 0 <= value < 2**32:
            raise ParamError(f"{value!r} is not a numeric id (0 to 4294967295)")
        return value
    found = _string(value)
    # ASCII digits only ("٣" is a digit too); str.isascii needs Python 3.7, and the agent runs this on 3.6.
    if found and all("0" <= char <= "9" for char in found):
        if int(found) >= 2**32:
            raise ParamError(f"{_quoted(found)} is not a numeric id (0 to 4294967295)")
        return int(found)
    if not found or _NOT_IN_ACCOUNT.search(found):
        raise ParamError(
            f"{_quoted(found)} is not a user or group name (no ':', ',', '/', whitespace or control "
            "characters) or numeric id"
        )
    return found


def boolean(value: Any) -> bool:
    """true or false."""
    if not isinstance(value, bool):
        raise ParamError(f"must be true or false, got {value!r}")
    return value


def seconds(value: Any) -> float:
    """A positive number of seconds, at most a day."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 86400:
        raise ParamError(f"must be a number of seconds between 0 and 86400, got {value!r}")
    return float(value)


def regex(value: Any) -> str:
    """A single-line regular expression that compiles."""
    found = line(value)
    try:
        re.compile(found)
    except (re.error, RecursionError, OverflowError) as exc:
        raise ParamError(f"is not a valid regular expression: {exc}") from None
    return found


OWNERSHIP: Mapping[str, Field] = {
    "owner": Field(account),
    "group": Field(account),
    "mode": Field(mode, written=mode_as_text),
}
"""The optional ``owner``, ``group`` and ``mode`` of a file."""


SHELL = "/bin/sh"


def command_line(value: Any) -> List[str]:
    """A command to run on the target. A string runs as ``/bin/sh -c STRING``, as a check's
    command does (Kensa's rules write pipes, ``!`` and ``[ ]`` in them); a list of strings is
    the argument vector itself, run without a shell."""
    if isinstance(value, list):
        if not value or not all(isinstance(item, str) and item for item in value) or any("\x00" in item for item in value):
            raise ParamError(f"must be a non-empty list of non-empty strings, got {value!r}")
        return list(value)
    if not isinstance(value, str) or not value.strip():
        raise ParamError(f"must be a command line or an argument list, got {type_name(value)} {value!r}")
    return [SHELL, "-c", _string(value)]


UNLESS = Field(command_line, written=as_given)
"""A step's ``unless``: a command that, when it exits 0 on the target, says the step is already done."""

STEP_FIELDS: Mapping[str, Field] = {"unless": UNLESS}
"""Fields every remediation step may have besides its mechanism's own; the engine acts on them."""

