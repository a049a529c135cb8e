"""config_append: a file contains a given line (compared without surrounding whitespace)."""

from __future__ import annotations

from typing import Any, Mapping, Optional, Tuple

from ..host import LocalHost
from ..model import PreState, RollbackResult, StepResult
from .config_set import decode, encode
from .filestate import capture_file, restore_file, rollback_result
from .params import ParamError, require_path, require_str


def has_line(text: str, line: str) -> bool:
    wanted = line.strip()
    return any(existing.strip() == wanted for existing in text.splitlines())


def append_line(text: str, line: str) -> str:
    if text and not text.endswith("\n"):
        text += "\n"
    return text + line + "\n"


class ConfigAppend:
    """Append a line when no line of the file already matches it; creates the file (0644)."""

    name = "config_append"
    capturable = True

    def _desired(self, params: Mapping[str, Any]) -> Tuple[str, str]:
        path = require_path(self.name, params)
        line = require_str(self.name, params, "line")
        if "\n" in line or "\r" in line or not line.strip():
            raise ParamError(f"{self.name}: line must be one non-blank line, got {line!r}")
        return path, line

    def validate(self, host: LocalHost, params: Mapping[str, Any]) -> bool:
        path, line = self._desired(params)
        return has_line(decode(host.read_bytes(path)), line)

    def capture(self, host: LocalHost, params: Mapping[str, Any]) -> PreState:
        return PreState(self.name, params, capture_file(host, self._desired(params)[0]))

    def apply(self, host: LocalHost, params: Mapping[str, Any], pre: Optional[PreState]) -> StepResult:
        path, line = self._desired(params)
        text = decode(host.read_bytes(path))
        if has_line(text, line):
            return StepResult(self.name, ok=True, changed=False)
        host.write_file(path, encode(append_line(text, line)))
        return StepResult(self.name, ok=True, changed=True, detail=f"appended a line to {host.where(path)}")

    def rollback(self, host: LocalHost, pre: PreState) -> RollbackResult:
        return rollback_result(self.name, restore_file(host, pre.data))
