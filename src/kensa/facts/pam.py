"""Reading PAM stacks (``/etc/pam.d/<service>``) line-exactly.

A stack file is a sequence of entries, each one logical line: a rule
``type control module-path args...`` (``-type`` marks a module that may be
missing; a control is a word or a bracketed ``[value=action ...]``; an argument
with spaces is bracketed too), ``@include file``, a comment, a blank line, or
anything else, which is kept as it is. A line ending in ``\\`` continues on the
next one, and ``#`` starts a comment anywhere, as libpam reads it.

:func:`parse` never loses a byte: ``"".join(entry.raw for entry in parse(text)) == text``
for any text. Edits (:meth:`PamEntry.with_args`, :meth:`PamEntry.with_control`)
change only the tokens they are about and keep every other byte of the line, so
an edited stack differs from the original in the edited lines alone.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple

from kensa.errors import ParamError

PAM_TYPES = ("auth", "account", "password", "session")
"""The four management groups of a PAM stack."""

Span = Tuple[int, int]

# Separators between tokens: blanks and backslash-newline continuations.
_BLANK = re.compile(r"(?:[ \t]|\\\r?\n)+")
_CONTROL_WORDS = ("required", "requisite", "sufficient", "optional", "include", "substack")
_ACTIONS = re.compile(r"(?:ignore|bad|die|ok|done|reset|[0-9]+)")
_VALUE = re.compile(r"[a-z_]+")
_SERVICE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+-]*")


@dataclass(frozen=True)
class PamEntry:
    """One logical line of a stack: its exact bytes (``raw``, newline included) and,
    for a rule, the spans of its tokens in ``raw`` (type, control, module, args)."""

    raw: str
    kind: str  # "rule", "include" (@include), "comment", "blank" or "other"
    spans: Tuple[Span, ...] = ()

    def _token(self, index: int) -> str:
        start, end = self.spans[index]
        return self.raw[start:end]

    @property
    def type(self) -> str:
        """The management group, lower-case, without the ``-`` prefix ("" when not a rule)."""
        return self._token(0).lstrip("-").lower() if self.kind == "rule" else ""

    @property
    def control(self) -> str:
        return self._token(1) if self.kind == "rule" else ""

    @property
    def module(self) -> str:
        return self._token(2) if self.kind == "rule" else ""

    @property
    def args(self) -> Tuple[str, ...]:
        return tuple(self._token(index) for index in range(3, len(self.spans))) if self.kind == "rule" else ()

    def uses(self, module: str) -> bool:
        """Whether this rule runs ``module`` (a bare ``pam_x.so`` also names it under any directory)."""
        if self.kind != "rule":
            return False
        return self.module == module or ("/" not in module and posixpath.basename(self.module) == module)

    def with_control(self, control: str) -> "PamEntry":
        """This rule with its control replaced, every other byte kept."""
        start, end = self.spans[1]
        return parse_entry(self.raw[:start] + control + self.raw[end:])

    def with_args(self, args: Sequence[str]) -> "PamEntry":
        """This rule with its arguments replaced by ``args``, every other byte kept: as many
        arguments as before are rewritten in place; otherwise the old ones that stay keep
        their place and the blanks before them, and new ones go after the last one."""
        kept = list(self.args)
        wanted = list(args)
        if wanted == kept:
            return self
        spans = self.spans[3:]
        if len(wanted) == len(kept):
            text, previous = "", 0
            for (start, end), value in zip(spans, wanted):
                text += self.raw[previous:start] + value
                previous = end
            return parse_entry(text + self.raw[previous:])
        text, previous = self.raw[:self.spans[2][1]], self.spans[2][1]
        for (start, end), value in zip(spans, kept):
            if wanted and wanted[0] == value:
                text += self.raw[previous:end]
                wanted.pop(0)
            previous = end
        text += "".join(" " + value for value in wanted)
        return parse_entry(text + self.raw[previous:])


def _comment_start(raw: str) -> int:
    found = raw.find("#")
    return len(raw) if found < 0 else found


def _tokens(text: str, start: int, stop: int) -> Optional[List[Span]]:
    """Spans of the tokens of ``text[start:stop]``; a ``[`` opens a token that runs to its
    ``]`` (``\\]`` escapes one), blanks included. None when a bracket is left open."""
    spans: List[Span] = []
    index = start
    while index < stop:
        blank = _BLANK.match(text, index, stop)
        if blank is not None:
            index = blank.end()
            continue
        if text[index] == "[":
            end = index + 1
            while end < stop and text[end] != "]":
                end += 2 if text[end] == "\\" and end + 1 < stop else 1
            if end >= stop:
                return None
            end += 1
            # "[a b]c" continues the same token up to the next blank.
            while end < stop and not _BLANK.match(text, end, stop):
                end += 1
        else:
            end = index
            while end < stop and not _BLANK.match(text, end, stop) and text[end] not in "\r\n":
                end += 1
            if end == index:  # a bare line break: the end of the line
                break
        spans.append((index, end))
        index = end
    return spans


def parse_entry(raw: str) -> PamEntry:
    """One logical line (its continuations and newline included), classified."""
    body = raw.rstrip("\r\n")
    stripped = body.strip(" \t")
    if not stripped.replace("\\", "").strip():
        return PamEntry(raw, "blank")
    if stripped.startswith("#"):
        return PamEntry(raw, "comment")
    if stripped.startswith("@include"):
        return PamEntry(raw, "include")
    spans = _tokens(raw, 0, min(len(body), _comment_start(raw)))
    if spans is None or len(spans) < 3:
        return PamEntry(raw, "other")
    first = raw[spans[0][0]:spans[0][1]]
    if first.lstrip("-").lower() not in PAM_TYPES or first.count("-") > 1:
        return PamEntry(raw, "other")
    return PamEntry(raw, "rule", tuple(spans))


def logical_lines(text: str) -> List[str]:
    """``text`` cut into logical lines: a physical line ending in ``\\`` joins the next one."""
    found: List[str] = []
    pending = ""
    for physical in text.splitlines(keepends=True):
        pending += physical
        if physical.rstrip("\r\n").endswith("\\") and physical.endswith("\n"):
            continue
        found.append(pending)
        pending = ""
    if pending:
        found.append(pending)
    return found


def parse(text: str) -> List[PamEntry]:
    """Every entry of a stack file, in order; their ``raw`` joined is ``text`` exactly."""
    return [parse_entry(raw) for raw in logical_lines(text)]


def render(entries: Sequence[PamEntry]) -> str:
    return "".join(entry.raw for entry in entries)


def rules_of(entries: Sequence[PamEntry], module: str, pam_type: Optional[str] = None) -> List[int]:
    """Indexes of the rules running ``module`` (of ``pam_type`` when given)."""
    return [
        index for index, entry in enumerate(entries)
        if entry.uses(module) and (pam_type is None or entry.type == pam_type)
    ]


def same_control(a: str, b: str) -> bool:
    """Whether two controls are the same, reading a bracketed one without regard to spacing."""
    return " ".join(a.strip("[]").split()).lower() == " ".join(b.strip("[]").split()).lower() and (
        a.startswith("[") == b.startswith("[")
    )


def undo_lines(text: str, changes: Sequence[Tuple[Optional[str], str]]) -> Optional[str]:
    """``text`` with each ``(old, new)`` change undone: the line that reads ``new`` exactly
    (searched in order, after the previous one) goes back to ``old``, or goes (``old``
    None: it was inserted); every other line stays as it is. None when one of them
    is no longer there as written: that change is not kensa's to undo any more.

    A change that only ended a line (``old`` without a line ending or with a lone carriage
    return, ``new`` the same line ended: done to insert a line after the last) gives it back
    the ending it had when the line is the last one once the insertion is undone; a line
    added after it since keeps it.
    That line is the one right before the inserted line; one whose text was changed since, or
    that no longer comes right before it, is not found and no refusal: it keeps its ending."""
    lines = logical_lines(text)
    cursor = 0
    ended: List[Tuple[int, str]] = []  # (line, the ending it had) of each change that only ended a line
    for position, (old, new) in enumerate(changes):
        only_ended = old is not None and old != new and old.rstrip("\r\n") == new.rstrip("\r\n")
        # A line kensa only ended is the one right before the line it inserted, not a twin above.
        after = changes[position + 1][1].rstrip("\r\n") if only_ended and position + 1 < len(changes) else None
        for index in range(cursor, len(lines)):
            if lines[index].rstrip("\r\n") == new.rstrip("\r\n") and (
                    after is None or (index + 1 < len(lines) and lines[index + 1].rstrip("\r\n") == after)):
                break
        else:
            if only_ended:
                # The operator changed the text of a line kensa only ended: theirs to keep, ending and all.
                continue
            return None
        if old is None:
            del lines[index]
            cursor = index
        else:
            ending = lines[index][len(lines[index].rstrip("\r\n")):]
            lines[index] = old.rstrip("\r\n") + ending
            if only_ended:
                ended.append((index, old[len(old.rstrip("\r\n")):]))
            cursor = index + 1
    if ended and ended[-1][0] == len(lines) - 1:
        lines[-1] = lines[-1].rstrip("\r\n") + ended[-1][1]
    return "".join(lines)


# --- field readers shared by the PAM handlers' schemas --------------------------------


def _plain(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise ParamError(f"must be a string, got {type(value).__name__} {value!r}")
    if re.search(r"[\x00-\x20\x7f#\\\[\]]", value) or not value:
        raise ParamError(f"{value[:80]!r} is not a {what} (one word: no blanks, control characters, '#', '\\\\' or brackets)")
    return value


def service(value: Any) -> str:
    """A PAM service: the name of a file of /etc/pam.d (no '/', not '.' or '..')."""
    if not isinstance(value, str) or not _SERVICE.fullmatch(value) or value in (".", ".."):
        raise ParamError(f"{value!r} is not a PAM service name (a file name of /etc/pam.d: letters, digits, '._+-')")
    return value


def pam_type(value: Any) -> str:
    """One of auth, account, password, session."""
    if value not in PAM_TYPES:
        raise ParamError(f"{value!r} is not a PAM type; use one of {', '.join(PAM_TYPES)}")
    return str(value)


def control(value: Any) -> str:
    """required, requisite, sufficient, optional, include, substack, or ``[value=action ...]``."""
    if not isinstance(value, str):
        raise ParamError(f"must be a string, got {type(value).__name__} {value!r}")
    if value in _CONTROL_WORDS:
        return value
    if value.startswith("[") and value.endswith("]") and "\n" not in value:
        pairs = value[1:-1].split()
        if pairs and all(
            "=" in pair and _VALUE.fullmatch(pair.split("=", 1)[0]) and _ACTIONS.fullmatch(pair.split("=", 1)[1])
            for pair in pairs
        ):
            return value
    raise ParamError(
        f"{value[:80]!r} is not a PAM control: use {', '.join(_CONTROL_WORDS)} or [value=action ...] "
        "(actions: ignore, bad, die, ok, done, reset or a number)"
    )


def module(value: Any) -> str:
    """A module: ``pam_x.so`` or an absolute path to one."""
    found = _plain(value, "PAM module")
    if found.startswith("-") or ".." in found.split("/") or ("/" in found and not found.startswith("/")):
        raise ParamError(f"{found[:80]!r} is not a PAM module (a name such as pam_unix.so or an absolute path)")
    return found


def argument(value: Any) -> str:
    """One module argument, as written in the stack: a word without blanks, '#' or brackets."""
    return _plain(value, "PAM module argument")


def arguments(value: Any) -> Tuple[str, ...]:
    """Module arguments: a string of blank-separated words (or a list of words)."""
    if isinstance(value, list):
        return tuple(argument(item) for item in value)
    if not isinstance(value, str):
        raise ParamError(f"must be a string of arguments, got {type(value).__name__} {value!r}")
    if re.search(r"[\x00-\x08\x0a-\x1f\x7f]", value):
        raise ParamError("must be a single line without control characters")
    return tuple(argument(item) for item in value.split())
