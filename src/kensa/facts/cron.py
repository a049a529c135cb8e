"""Reading system crontabs (``/etc/crontab``, ``/etc/cron.d/*``): entries with a user field.

A line is blank, a ``#`` comment, an environment setting ``NAME=value``, or an
entry: five time fields (minute, hour, day of month, month, day of week) or one
``@keyword``, then the user, then the command (the rest of the line). In the
command an unescaped ``%`` ends the command and starts its standard input, as
cron reads it.

The field readers here are strict on their own, so a schedule that cron would
refuse never reaches a file, whether or not the host has a cron to ask; the
cron_job handler also asks the host's own crontab parser where it has one.
"""

from __future__ import annotations

import re
from typing import Any, List, Optional, Sequence, Tuple

from kensa.errors import ParamError

KEYWORDS = ("@reboot", "@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
# (name, lowest, highest, names that stand for numbers from ``lowest`` on)
_FIELDS: Tuple[Tuple[str, int, int, Sequence[str]], ...] = (
    ("minute", 0, 59, ()),
    ("hour", 0, 23, ()),
    ("day of month", 1, 31, ()),
    ("month", 1, 12, _MONTHS),
    ("day of week", 0, 7, _DAYS),
)
_ENV = re.compile(r"\s*[A-Za-z_][A-Za-z0-9_]*\s*=")
#: What Debian's cron and run-parts accept as the name of a file in /etc/cron.d; others are skipped silently.
CRON_D_NAME = re.compile(r"[A-Za-z0-9_-]+")

Entry = Tuple[Tuple[str, ...], str, str]  # schedule fields, user, command


def _number(text: str, low: int, high: int, names: Sequence[str], where: str) -> int:
    if text.isdigit() and all("0" <= char <= "9" for char in text):
        value = int(text)
    elif text.lower() in names:
        value = names.index(text.lower()) + low
    else:
        raise ParamError(f"{where}: {text!r} is not a number{' or a name' if names else ''}")
    if not low <= value <= high:
        raise ParamError(f"{where}: {value} is outside {low}-{high}")
    return value


def _field(text: str, name: str, low: int, high: int, names: Sequence[str]) -> None:
    where = f"the {name} field {text!r}"
    for part in text.split(","):
        body, _, step = part.partition("/")
        if step and (not step.isdigit() or not 0 < int(step) <= high):
            raise ParamError(f"{where}: step {step!r} is not a number from 1 to {high}")
        if body == "*":
            continue
        first, dash, last = body.partition("-")
        start = _number(first, low, high, names, where)
        if dash:
            end = _number(last, low, high, names, where)
            if end < start:
                raise ParamError(f"{where}: the range {body!r} runs backwards")
        elif step:
            raise ParamError(f"{where}: a step needs '*' or a range before it")


def schedule(value: Any) -> Tuple[str, ...]:
    """Five time fields or one @keyword, as a tuple of fields."""
    if not isinstance(value, str) or re.search(r"[\x00-\x1f\x7f]", value):
        raise ParamError(f"must be a single-line string such as '0 5 * * *' or '@daily', got {value!r}")
    fields = tuple(value.split())
    if len(fields) == 1 and fields[0].startswith("@"):
        if fields[0].lower() not in KEYWORDS:
            raise ParamError(f"{fields[0]!r} is not a cron keyword; use one of {', '.join(KEYWORDS)}")
        return (fields[0].lower(),)
    if len(fields) != 5:
        raise ParamError(f"{value!r} has {len(fields)} fields; a schedule is five (minute hour day month weekday) or one @keyword")
    for text, (name, low, high, names) in zip(fields, _FIELDS):
        _field(text, name, low, high, names)
    return fields


def command(value: Any) -> str:
    """A command for one line: no line break or control character, no unescaped ``%``."""
    if not isinstance(value, str) or not value.strip():
        raise ParamError(f"must be a non-empty string, got {value!r}")
    if re.search(r"[\x00-\x08\x0a-\x1f\x7f\x85\u2028\u2029]", value):
        raise ParamError("must be a single line without control characters")
    if re.search(r"(?<!\\)%", value):
        raise ParamError(f"{value[:80]!r} has an unescaped '%', which cron turns into a line break of the command's "
                         "input; write '\\%' for a literal percent sign")
    return value.strip()


def cron_d_name(value: Any) -> str:
    """The name of a file of /etc/cron.d that cron reads: letters, digits, '_' and '-' only."""
    if not isinstance(value, str) or not CRON_D_NAME.fullmatch(value) or len(value) > 255:
        raise ParamError(f"{value!r} is not a name cron reads in /etc/cron.d (letters, digits, '_' and '-' only; "
                         "cron skips a file with a dot in its name)")
    return value


def entry_of(line: str) -> Optional[Entry]:
    """The entry a line of a system crontab holds, or None (blank, comment, environment, malformed)."""
    text = line.strip()
    if not text or text.startswith("#") or _ENV.match(text):
        return None
    count = 1 if text.startswith("@") else 5
    parts = text.split(None, count + 1)
    if len(parts) < count + 2:
        return None
    fields = tuple(part.lower() if part.startswith("@") else part for part in parts[:count])
    return fields, parts[count], parts[count + 1].strip()


def entries(text: str) -> List[Tuple[int, Entry]]:
    """Each entry of a system crontab with the index of its line."""
    found = []
    for index, line in enumerate(text.splitlines()):
        entry = entry_of(line)
        if entry is not None:
            found.append((index, entry))
    return found
