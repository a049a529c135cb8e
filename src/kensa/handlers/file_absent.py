"""file_absent: no file exists at the path."""

from __future__ import annotations

from typing import Any, Mapping, Optional

from ..host import LocalHost
from ..model import PreState, RollbackResult, StepResult
from .filestate import capture_file, restore_file, rollback_result
from .params import require_path


class FileAbsent:
    """Remove a regular file; rollback re-creates it with its bytes, owner, mode and xattrs.

    Directories and symlinks at the path are refused rather than removed.
    """

    name = "file_absent"
    capturable = True

    def validate(self, host: LocalHost, params: Mapping[str, Any]) -> bool:
        path = require_path(self.name, params)
        return host.read_file(path) is None

    def capture(self, host: LocalHost, params: Mapping[str, Any]) -> PreState:
        return PreState(self.name, params, capture_file(host, require_path(self.name, params)))

    def apply(self, host: LocalHost, params: Mapping[str, Any], pre: Optional[PreState]) -> StepResult:
        path = require_path(self.name, params)
        existed = host.read_file(path) is not None
        host.remove_file(path)
        return StepResult(self.name, ok=True, changed=existed, detail=f"removed {host.where(path)}" if existed else "")

    def rollback(self, host: LocalHost, pre: PreState) -> RollbackResult:
        return rollback_result(self.name, restore_file(host, pre.data))
