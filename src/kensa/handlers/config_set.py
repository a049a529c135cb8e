"""config_set: a ``key value`` setting in an sshd_config-style file.

How the file is read (first occurrence wins, ``Match`` blocks are conditional) is
:mod:`kensa.facts.config`; this module writes the setting and undoes only its own line.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from kensa.errors import ParamError
from kensa.facts.config import Finder, config_key, decode, encode, find_key, get_value, holds, line_value, separator
from kensa.facts.params import PATH, Field, Schema, scalar_line

from kensa.model import PreState, StepResult
from kensa.handlers.filestate import OneFileStep, Revert, capture_file, post_state
from kensa.hosts.protocol import Host, ReadableHost

__all__ = ["DEFAULT_SEPARATOR", "SCHEMA", "ConfigSet", "Finder", "decode", "encode", "get_value", "revert_key", "set_value"]


DEFAULT_SEPARATOR = "="
"""What goes between key and value when a step names no separator (Kensa's default; its
rules for whitespace-separated files such as sshd_config say ``separator: " "``)."""


def _value_after_separator(values: Dict[str, Any]) -> None:
    sep = values["separator"] or DEFAULT_SEPARATOR
    if values["value"].strip().startswith(sep.strip() or "="):
        # "Key =x" reads back as x: such a value could never verify.
        raise ParamError("", field="value", problem=f"{values['value']!r} must not start with the separator {sep!r}")


SCHEMA = Schema(
    "config_set",
    {
        "path": PATH,
        "key": Field(config_key, required=True),
        "value": Field(scalar_line, required=True),
        "separator": Field(separator),
    },
    check=_value_after_separator,
)


def set_value(
    text: str, key: str, value: str, separator: str = " ", comments: Sequence[str] = ("#",), find: Finder = find_key,
) -> str:
    """``text`` with the global ``key`` set to ``value``: the first active line is
    replaced, or a line is inserted before the first ``Match`` block, or appended.
    ``find`` says where the key is and where a new line goes (another one: an INI section)."""
    lines: List[str] = text.splitlines(keepends=True)
    wanted = f"{key}{separator}{value}"
    index, end = find(lines, key, comments)
    if index is not None:
        old = lines[index]
        lines[index] = wanted + old[len(old.rstrip("\r\n")):]
    else:
        if end == len(lines) and lines and not lines[-1].endswith("\n"):
            lines[-1] += "\n"
        lines.insert(end, wanted + "\n")
    return "".join(lines)


def revert_key(
    before: str, key: str, value: str, separator: str = " ", comments: Sequence[str] = ("#",), find: Finder = find_key,
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
        if index is None or line_value(lines[index], key, separator) != value.strip():
            return None
        if old is None:
            del lines[index]
        else:
            line = lines[index]
            lines[index] = old + line[len(line.rstrip("\r\n")):]
        return encode("".join(lines))

    return revert


class ConfigSet(OneFileStep):
    """Set one key in a config file, creating the file (0644) when it does not exist."""

    name = "config_set"
    capturable = True

    schema = SCHEMA

    def _desired(self, params: Mapping[str, Any]) -> Tuple[str, str, str, str]:
        read = SCHEMA.read(params)
        return read["path"], read["key"], read["value"], read["separator"] or DEFAULT_SEPARATOR

    def validate(self, host: ReadableHost, params: Mapping[str, Any]) -> bool:
        path, key, value, sep = self._desired(params)
        return holds(host, path, key, value, sep)

    def capture(self, host: ReadableHost, params: Mapping[str, Any]) -> PreState:
        state = capture_file(host, self._desired(params)[0])
        post = post_state(state, self.written(PreState(self.name, params, state)))
        return PreState(self.name, params, {**state, "post": post})

    def apply(self, host: Host, params: Mapping[str, Any], pre: Optional[PreState]) -> StepResult:
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
