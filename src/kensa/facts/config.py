"""Reading ``key value`` settings of sshd_config-style files.

Rules of the file format, as sshd reads it: blank lines and ``#`` lines are
ignored; a key is the first word of a line (up to whitespace or ``=``) and compares
case-insensitively; the first occurrence wins; everything from the first ``Match``
line on is conditional, so a key there is not the global setting. ``Include``
directives are not followed.
"""

from __future__ import annotations

import fnmatch
import posixpath
import re
from typing import Any, Callable, List, Optional, Sequence, Tuple

from kensa.errors import ParamError
from kensa.facts.params import scalar_line
from kensa.hosts.protocol import ReadableHost

_KEY = re.compile(r"[^\s=#]+")
_MAX_KEY = 256


def config_key(value: Any) -> str:
    """A key that can be set globally: one word without whitespace, '=' or '#' (a line's
    key ends there), not starting with ';', and not ``Match``, which opens a conditional block."""
    if not isinstance(value, str):
        raise ParamError(f"must be a string, got {type(value).__name__} {value!r}")
    if not _KEY.fullmatch(value) or value.startswith(";") or len(value) > _MAX_KEY:
        raise ParamError(f"{value[:80]!r} is not a configuration key (one word, no '=', '#' or spaces)")
    if value.lower() == "match":
        raise ParamError(
            "'Match' starts a conditional block in sshd_config, it is not a setting and cannot be set as a key; "
            "set keys inside a block with a file_content or config_append step"
        )
    return value


def separator(value: Any) -> str:
    """What goes between a key and its value when kensa writes one (a space by default)."""
    found = scalar_line(value)
    if not found:
        raise ParamError("must not be empty")
    return found


def decode(data: Optional[bytes]) -> str:
    """File bytes as text that encodes back to the very same bytes."""
    return "" if data is None else data.decode("utf-8", "surrogateescape")


def encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def line_key(line: str, comments: Sequence[str]) -> Optional[str]:
    """The key a line sets, or None for a blank or comment line."""
    text = line.strip()
    if not text or text.startswith(tuple(comments)):
        return None
    match = _KEY.match(text)
    return match.group(0) if match else None


def line_value(line: str, key: str, separator: str) -> str:
    """The value a line setting ``key`` gives it."""
    rest = line.strip()[len(key):].strip()
    sep = separator.strip() or "="
    if rest.startswith(sep):
        rest = rest[len(sep):].strip()
    return rest


Finder = Callable[[Sequence[str], str, Sequence[str]], Tuple[Optional[int], int]]
"""Where a key is in a file's lines: (its line or None, where a new line for it goes)."""


def find_key(lines: Sequence[str], key: str, comments: Sequence[str]) -> Tuple[Optional[int], int]:
    """Index of the global line setting ``key`` (or None), and where global lines end."""
    # line_key's reading, inlined: this runs over every line of a file on each check of a key.
    wanted, prefixes, first_word = key.lower(), tuple(comments), _KEY.match
    for index, line in enumerate(lines):
        text = line.lstrip()
        if not text or text.startswith(prefixes):
            continue
        match = first_word(text)
        if match is None:
            continue
        found = match.group(0).lower()
        if found == "match":
            return None, index
        if found == wanted:
            return index, index
    return None, len(lines)


def get_value(
    text: str, key: str, separator: str = " ", comments: Sequence[str] = ("#",), find: Finder = find_key,
) -> Optional[str]:
    """The global value of ``key`` in ``text`` (or where ``find`` looks), or None when it is not set."""
    lines = text.splitlines()
    index, _ = find(lines, key, comments)
    return None if index is None else line_value(lines[index], key, separator)


INI_COMMENTS = ("#", ";")
"""Comment prefixes of INI-style files (systemd units and their drop-ins, dconf keyfiles)."""


def section_header(name: str) -> str:
    return f"[{name}]"


def _section_bounds(lines: Sequence[str], name: str) -> Optional[Tuple[int, int]]:
    """First and past-last line of the body of the first ``[name]`` section, or None."""
    header = section_header(name)
    start = next((i + 1 for i, line in enumerate(lines) if line.strip() == header), None)
    if start is None:
        return None
    end = next((i for i in range(start, len(lines)) if lines[i].strip().startswith("[")), len(lines))
    return start, end


def section_finder(name: str) -> Finder:
    """A :data:`Finder` looking only inside the ``[name]`` section (as systemd reads a key
    of a unit's section): the key's line, or where a new line goes (after the section's
    last non-blank line). A text without the section has no place for the key (None, end)."""

    def find(lines: Sequence[str], key: str, comments: Sequence[str]) -> Tuple[Optional[int], int]:
        bounds = _section_bounds(lines, name)
        if bounds is None:
            return None, len(lines)
        start, end = bounds
        for index in range(start, end):
            found = line_key(lines[index], comments)
            if found is not None and found.lower() == key.lower():
                return index, index
        while end > start and not lines[end - 1].strip():
            end -= 1
        return None, end

    return find


def with_section(text: str, name: str) -> str:
    """``text`` with a ``[name]`` header appended when it has no such section."""
    if _section_bounds(text.splitlines(), name) is not None:
        return text
    if text and not text.endswith("\n"):
        text += "\n"
    return text + ("\n" if text.strip() else "") + section_header(name) + "\n"


def holds(host: ReadableHost, path: str, key: str, value: str, separator: str = " ") -> bool:
    """Whether the file at ``path`` on ``host`` sets ``key`` globally to ``value``."""
    return get_value(decode(host.read_bytes(path)), key, separator) == value.strip()


def values_of(text: str, key: str, delimiter: str = "=") -> List[str]:
    """Every global value ``text`` gives ``key``, in file order (Kensa's config_value
    reading: ``key<delimiter>value`` or ``key:value``; a delimiter of one space means
    ``key`` and its value are separated by whitespace). Comment lines and lines in a
    ``Match`` block are not global."""
    found: List[str] = []
    for line in text.splitlines():
        name = line_key(line, ("#",))
        if name is None:
            continue
        if name.lower() == "match":
            break
        if name.lower() == key.lower():
            found.append(line_value(line, name, delimiter if delimiter.strip() else " "))
    return found


def matching_files(host: ReadableHost, directory: str, pattern: str) -> List[str]:
    """The regular files of ``directory`` whose names match the shell ``pattern``, sorted
    (as a shell expands ``directory/pattern``); none when the directory is absent."""
    names = host.list_dir(directory) or []
    paths = [posixpath.join(directory, name) for name in names if fnmatch.fnmatchcase(name, pattern) and not name.startswith(".")]
    return [path for path in paths if _is_file(host, path)]


def _is_file(host: ReadableHost, path: str) -> bool:
    found = host.info(path)
    return found is not None and found.kind == "file"


def glob_files(host: ReadableHost, pattern: str) -> List[str]:
    """The regular files an absolute shell ``pattern`` names; wildcards only in its last
    component (``/etc/ssh/ssh_host_*_key``), a pattern without any names one path."""
    directory, name = posixpath.split(pattern)
    if any(c in directory for c in "*?["):
        raise ParamError(f"{pattern!r}: wildcards are supported in the last path component only")
    if not any(c in name for c in "*?["):
        return [pattern] if _is_file(host, pattern) else []
    return matching_files(host, directory, name)
