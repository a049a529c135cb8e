"""file_absent: no file exists at the path."""

from __future__ import annotations

from typing import Any, Mapping, Optional

from ..host import LocalHost
from ..model import Assessment, PreState, RollbackResult, StepResult
from .filestate import Planned, fidelity_notes, planned_file, settled_files, assess_files, capture_file, post_state, restore_file, restore_files, restored, rollback_result
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
        state = capture_file(host, require_path(self.name, params))
        return PreState(self.name, params, {**state, "post": post_state(state, None)})

    def apply(self, host: LocalHost, params: Mapping[str, Any], pre: Optional[PreState]) -> StepResult:
        path = require_path(self.name, params)
        existed = host.read_file(path) is not None
        host.remove_file(path)
        return StepResult(self.name, ok=True, changed=existed, detail=f"removed {host.where(path)}" if existed else "")

    def rollback(self, host: LocalHost, pre: PreState) -> RollbackResult:
        return rollback_result(self.name, restore_file(host, pre.data), fidelity_notes(host, [pre.data]))

    def planned(self, host: LocalHost, pre: PreState) -> Planned:
        return planned_file(pre.data, None)

    def settled(self, host: LocalHost, pre: PreState, assessment: Assessment, force: bool = False) -> Planned:
        return settled_files(host, [pre.data], assessment, force)

    def assess(self, host: LocalHost, pre: PreState) -> Assessment:
        return assess_files(host, [(pre.data, None)])

    def restore(self, host: LocalHost, pre: PreState, assessment: Assessment, force: bool = False) -> RollbackResult:
        problems = restore_files(host, [pre.data], assessment, force)
        return restored(self.name, problems, assessment, force, fidelity_notes(host, [pre.data]))
