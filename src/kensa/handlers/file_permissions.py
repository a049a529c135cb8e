"""file_permissions: a file or directory has the given mode, owner and/or group."""

from __future__ import annotations

import errno
from typing import Any, Mapping, Optional, Tuple

from kensa.errors import HostAccessError, ParamError
from kensa.hosts.local import FileInfo, LocalHost
from kensa.model import Assessment, PreState, RollbackResult, StepResult
from kensa.handlers.filestate import Planned, planned_meta, settled_files, assess_file, capture_meta, combine, meta_post_state, restore_meta, restore_planned, restored, rollback_result
from kensa.handlers.params import optional_id, optional_mode, require_path


class FilePermissions:
    """Change only the attributes asked for; the xattrs are captured too, because a
    chown clears ``security.capability`` and a chmod rewrites a POSIX ACL's mask."""

    name = "file_permissions"
    capturable = True

    def _desired(self, host: LocalHost, params: Mapping[str, Any]) -> Tuple[str, Optional[int], Optional[int], Optional[int]]:
        path = require_path(self.name, params)
        mode = optional_mode(self.name, params)
        uid = optional_id(self.name, params, "owner", host)
        gid = optional_id(self.name, params, "group", host)
        if mode is None and uid is None and gid is None:
            raise ParamError(f"{self.name}: give at least one of 'mode', 'owner', 'group' for {path}")
        return path, mode, uid, gid

    def _existing(self, host: LocalHost, path: str) -> FileInfo:
        found = host.info(path)
        if found is None:
            raise HostAccessError(errno.ENOENT, f"{self.name}: {host.where(path)} does not exist")
        return found

    def validate(self, host: LocalHost, params: Mapping[str, Any]) -> bool:
        path, mode, uid, gid = self._desired(host, params)
        found = self._existing(host, path)
        return (mode is None or found.mode == mode) and (uid is None or found.uid == uid) and (gid is None or found.gid == gid)

    def capture(self, host: LocalHost, params: Mapping[str, Any]) -> PreState:
        path, mode, uid, gid = self._desired(host, params)
        self._existing(host, path)
        state = capture_meta(host, path)
        return PreState(self.name, params, {**state, "post": meta_post_state(state, mode, uid, gid)})

    def apply(self, host: LocalHost, params: Mapping[str, Any], pre: Optional[PreState]) -> StepResult:
        path, mode, uid, gid = self._desired(host, params)
        found = self._existing(host, path)
        # Only touch what differs: a needless chown would drop file capabilities.
        mode = None if mode == found.mode else mode
        uid = None if uid == found.uid else uid
        gid = None if gid == found.gid else gid
        host.set_meta(path, mode=mode, uid=uid, gid=gid)
        changed = (mode, uid, gid) != (None, None, None)
        return StepResult(self.name, ok=True, changed=changed, detail=f"set attributes of {host.where(path)}" if changed else "")

    def rollback(self, host: LocalHost, pre: PreState) -> RollbackResult:
        return rollback_result(self.name, restore_meta(host, pre.data))

    def planned(self, host: LocalHost, pre: PreState) -> Planned:
        return planned_meta(host, pre.data)

    def settled(self, host: LocalHost, pre: PreState, assessment: Assessment, force: bool = False) -> Planned:
        return settled_files(host, [pre.data], assessment, force)

    def assess(self, host: LocalHost, pre: PreState) -> Assessment:
        return combine([assess_file(host, pre.data, pre.data.get("post"), None, with_content=False)])

    def restore(self, host: LocalHost, pre: PreState, assessment: Assessment, force: bool = False) -> RollbackResult:
        problems = restore_planned(host, pre.data, assessment.plan[0], force)
        return restored(self.name, problems, assessment, force)
