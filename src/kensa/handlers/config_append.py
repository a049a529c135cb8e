"""config_append: a file contains a given line (compared without surrounding whitespace)."""

from __future__ import annotations

from typing import Any, Mapping, Optional, Tuple

from kensa.errors import ParamError

from kensa.model import PreState, StepResult
from kensa.facts.config import decode, encode
from kensa.facts.params import PATH, Field, Schema, line
from kensa.handlers.filestate import OneFileStep, Revert, capture_file, post_state
from kensa.hosts.protocol import Host, ReadableHost


def _non_blank_line(value: Any) -> str:
    found = line(value)
    if not found.strip():
        raise ParamError(f"must be one non-blank line, got {found!r}")
    return found


SCHEMA = Schema("config_append", {"path": PATH, "line": Field(_non_blank_line, required=True)})


def has_line(text: str, line: str) -> bool:
    wanted = line.strip()
    return any(existing.strip() == wanted for existing in text.splitlines())


def append_line(text: str, line: str) -> str:
    if text and not text.endswith("\n"):
        text += "\n"
    return text + line + "\n"


def revert_append(line: str) -> Revert:
    """Undo only an :func:`append_line`: the last line matching ``line`` goes, the rest stays.
    None when no line matches any more."""
    wanted = line.strip()

    def revert(now: bytes) -> Optional[bytes]:
        lines = decode(now).splitlines(keepends=True)
        for index in range(len(lines) - 1, -1, -1):
            if lines[index].strip() == wanted:
                del lines[index]
                return encode("".join(lines))
        return None

    return revert


class ConfigAppend(OneFileStep):
    """Append a line when no line of the file already matches it; creates the file (0644)."""

    name = "config_append"
    capturable = True

    schema = SCHEMA

    def _desired(self, params: Mapping[str, Any]) -> Tuple[str, str]:
        read = SCHEMA.read(params)
        return read["path"], read["line"]

    def validate(self, host: ReadableHost, params: Mapping[str, Any]) -> bool:
        path, line = self._desired(params)
        return has_line(decode(host.read_bytes(path)), line)

    def capture(self, host: ReadableHost, params: Mapping[str, Any]) -> PreState:
        state = capture_file(host, self._desired(params)[0])
        post = post_state(state, self.written(PreState(self.name, params, state)))
        return PreState(self.name, params, {**state, "post": post})

    def apply(self, host: Host, params: Mapping[str, Any], pre: Optional[PreState]) -> StepResult:
        path, line = self._desired(params)
        text = decode(host.read_bytes(path))
        if has_line(text, line):
            return StepResult(self.name, ok=True, changed=False)
        host.write_file(path, encode(append_line(text, line)))
        return StepResult(self.name, ok=True, changed=True, detail=f"appended a line to {host.where(path)}")

    def written(self, pre: PreState) -> Optional[bytes]:
        text = decode(pre.data.get("content"))
        line = self._desired(pre.params)[1]
        return encode(text if has_line(text, line) else append_line(text, line))

    def revert(self, pre: PreState) -> Optional[Revert]:
        return revert_append(self._desired(pre.params)[1])
