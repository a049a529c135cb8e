"""config_set: a ``key value`` setting in an sshd_config-style file.

Rules of the file format, as sshd reads it: blank lines and ``#`` lines are
ignored; a key is the first word of a line (up to whitespace or ``=``) and compares
case-insensitively; the first occurrence wins; everything from the first ``Match``
line on is conditional, so a key there is not the global setting. ``Include``
directives are not followed.
"""

from __future__ import annotations

import re
from typing import Any, Callable, List, Mapping, Optional, Sequence, Tuple

from kensa.errors import ParamError
from kensa.hosts.local import LocalHost
from kensa.model import PreState, StepResult
from kensa.handlers.filestate import OneFileStep, Revert, capture_file, post_state
from kensa.handlers.params import require_path, require_str, scalar_text

_KEY = re.compile(r"[^\s=#]+")


def _line_key(line: str, comments: Sequence[str]) -> Optional[str]:
    text = line.strip()
    if not text or text.startswith(tuple(comments)):
        return None
    match = _KEY.match(text)
    return match.group(0) if match else None


def _line_value(line: str, key: str, separator: str) -> str:
    rest = line.strip()[len(key):].strip()
    sep = separator.strip() or "="
    if rest.startswith(sep):
        rest = rest[len(sep):].strip()
    return rest


def _find(lines: Sequence[str], key: str, comments: Sequence[str]) -> Tuple[Optional[int], int]:
    """Index of the global line setting ``key`` (or None), and where global lines end."""
    for index, line in enumerate(lines):
        found = _line_key(line, comments)
        if found is None:
            continue
        if found.lower() == "match":
            return None, index
        if found.lower() == key.lower():
            return index, index
    return None, len(lines)


def get_value(text: str, key: str, separator: str = " ", comments: Sequence[str] = ("#",)) -> Optional[str]:
    """The global value of ``key`` in ``text``, or None when it is not set."""
    lines = text.splitlines()
    index, _ = _find(lines, key, comments)
    return None if index is None else _line_value(lines[index], key, separator)


def set_value(text: str, key: str, value: str, separator: str = " ", comments: Sequence[str] = ("#",)) -> str:
    """``text`` with the global ``key`` set to ``value``: the first active line is
    replaced, or a line is inserted before the first ``Match`` block, or appended."""
    lines: List[str] = text.splitlines(keepends=True)
    wanted = f"{key}{separator}{value}"
    index, end = _find(lines, key, comments)
    if index is not None:
        old = lines[index]
        lines[index] = wanted + old[len(old.rstrip("\r\n")):]
    else:
        if end == len(lines) and lines and not lines[-1].endswith("\n"):
            lines[-1] += "\n"
        lines.insert(end, wanted + "\n")
    return "".join(lines)


Finder = Callable[[Sequence[str], str, Sequence[str]], Tuple[Optional[int], int]]


def revert_key(
    before: str, key: str, value: str, separator: str = " ", comments: Sequence[str] = ("#",), find: Finder = _find,
) -> Revert:
    """Undo only a :func:`set_value` of ``key`` made over ``before``: the key's line goes back
    to what it was (or goes, when ``before`` had none), every other line stays as it is now.
    None when the key no longer holds the value kensa set: that change is not kensa's to undo."""
    old_lines = before.splitlines(keepends=True)
    old_index, _ = find(old_lines, key, comments)
    old = None if old_index is None else old_lines[old_index].rstrip("\r\n")

    def revert(now: bytes) -> Optional[bytes]:
        lines = decode(now).splitlines(keepends=True)
        index, _ = find(lines, key, comments)
        if index is None or _line_value(lines[index], key, separator) != value.strip():
            return None
        if old is None:
            del lines[index]
        else:
            line = lines[index]
            lines[index] = old + line[len(line.rstrip("\r\n")):]
        return encode("".join(lines))

    return revert


def decode(data: Optional[bytes]) -> str:
    """File bytes as text that encodes back to the very same bytes."""
    return "" if data is None else data.decode("utf-8", "surrogateescape")


def encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


class ConfigSet(OneFileStep):
    """Set one key in a config file, creating the file (0644) when it does not exist."""

    name = "config_set"
    capturable = True

    def _desired(self, params: Mapping[str, Any]) -> Tuple[str, str, str, str]:
        path = require_path(self.name, params)
        key = require_str(self.name, params, "key")
        if not _KEY.fullmatch(key) or key.lower() == "match":
            raise ParamError(f"{self.name}: key {key!r} must be one word without '=' or '#', and not 'Match'")
        value = scalar_text(self.name, params, "value")
        separator = scalar_text(self.name, params, "separator", " ")
        if not separator:
            raise ParamError(f"{self.name}: separator must not be empty")
        if value.strip().startswith(separator.strip() or "="):
            # "Key =x" reads back as x: such a value could never verify.
            raise ParamError(f"{self.name}: value {value!r} for {key} must not start with the separator")
        return path, key, value, separator

    def validate(self, host: LocalHost, params: Mapping[str, Any]) -> bool:
        path, key, value, separator = self._desired(params)
        return get_value(decode(host.read_bytes(path)), key, separator) == value.strip()

    def capture(self, host: LocalHost, params: Mapping[str, Any]) -> PreState:
        state = capture_file(host, self._desired(params)[0])
        post = post_state(state, self.written(PreState(self.name, params, state)))
        return PreState(self.name, params, {**state, "post": post})

    def apply(self, host: LocalHost, params: Mapping[str, Any], pre: Optional[PreState]) -> StepResult:
        path, key, value, separator = self._desired(params)
        old = host.read_bytes(path)
        new = encode(set_value(decode(old), key, value, separator))
        if new == old:
            return StepResult(self.name, ok=True, changed=False)
        host.write_file(path, new)
        return StepResult(self.name, ok=True, changed=True, detail=f"set {key} in {host.where(path)}")

    def written(self, pre: PreState) -> Optional[bytes]:
        _, key, value, separator = self._desired(pre.params)
        return encode(set_value(decode(pre.data.get("content")), key, value, separator))

    def revert(self, pre: PreState) -> Optional[Revert]:
        _, key, value, separator = self._desired(pre.params)
        return revert_key(decode(pre.data.get("content")), key, value, separator)
