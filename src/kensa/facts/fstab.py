"""/etc/fstab line by line: find a mount point's entry and change its options field in place.

Edits keep every other byte of the file: comments, blank lines, the other fields
and the whitespace between fields (tabs or runs of spaces) are left exactly as
they were, so rendering the lines of an unchanged file gives its bytes back.
"""

from __future__ import annotations

import re
from typing import List, Optional, Sequence, Tuple

from kensa.facts.mounts import unescape

_FIELD = re.compile(r"\S+")


def _normal(point: str) -> str:
    return point.rstrip("/") or "/"


def _fields(line: str) -> List[Tuple[int, int]]:
    """The (start, end) of each whitespace-separated field of an fstab line."""
    return [match.span() for match in _FIELD.finditer(line)]


def entry(lines: Sequence[str], mount_point: str) -> Optional[int]:
    """The index of the line mounting ``mount_point`` (the last such line: the mount that ends
    on top, as mount -a leaves it), None when no active line mounts it."""
    found = None
    wanted = _normal(mount_point)
    for index, line in enumerate(lines):
        spans = _fields(line)
        if len(spans) < 4 or line[spans[0][0]] == "#":
            continue
        start, end = spans[1]
        if _normal(unescape(line[start:end])) == wanted:
            found = index
    return found


def options(line: str) -> List[str]:
    """The options of one fstab entry line, in their order."""
    start, end = _fields(line)[3]
    return line[start:end].split(",")


def with_options(line: str, wanted: Sequence[str]) -> str:
    """``line`` with its options field replaced by ``wanted`` (joined with commas), every other
    byte kept."""
    start, end = _fields(line)[3]
    return line[:start] + ",".join(wanted) + line[end:]


def added(present: Sequence[str], wanted: Sequence[str]) -> List[str]:
    """The options of ``wanted`` that ``present`` lacks, in the order of ``wanted``."""
    return [option for option in dict.fromkeys(wanted) if option not in present]
