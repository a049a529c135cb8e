"""file_permissions: a file or directory has the given mode, owner and/or group."""

from __future__ import annotations

from typing import Any, Mapping, Optional, Tuple

from kensa.facts.files import attributes_hold, existing, resolve_account
from kensa.facts.params import OWNERSHIP, PATH, Schema
from kensa.hosts.local import FileInfo
from kensa.model import Assessment, PreState, RollbackResult, StepResult
from kensa.handlers.filestate import Planned, planned_meta, settled_files, assess_file, capture_meta, combine, meta_post_state, restore_meta, restore_planned, restored, rollback_result
from kensa.hosts.protocol import Host, ReadableHost

SCHEMA = Schema("file_permissions", {"path": PATH, **OWNERSHIP}, at_least_one_of=("mode", "owner", "group"))


class FilePermissions:
    """Change only the attributes asked for; the xattrs are captured too, because a
    chown clears ``security.capability`` and a chmod rewrites a POSIX ACL's mask."""

    name = "file_permissions"
    capturable = True

    schema = SCHEMA

    def _desired(self, host: ReadableHost, params: Mapping[str, Any]) -> Tuple[str, Optional[int], Optional[int], Optional[int]]:
        read = SCHEMA.read(params)
        uid = resolve_account(host, "owner", read["owner"])
        return read["path"], read["mode"], uid, resolve_account(host, "group", read["group"])

    def _existing(self, host: ReadableHost, path: str) -> FileInfo:
        found: FileInfo = existing(host, path, self.name)
        return found

    def validate(self, host: ReadableHost, params: Mapping[str, Any]) -> bool:
        return attributes_hold(host, *self._desired(host, params), self.name)

    def capture(self, host: ReadableHost, params: Mapping[str, Any]) -> PreState:
        path, mode, uid, gid = self._desired(host, params)
        self._existing(host, path)
        state = capture_meta(host, path)
        return PreState(self.name, params, {**state, "post": meta_post_state(state, mode, uid, gid)})

    def apply(self, host: Host, params: Mapping[str, Any], pre: Optional[PreState]) -> StepResult:
        path, mode, uid, gid = self._desired(host, params)
        found = self._existing(host, path)
        # Only touch what differs: a needless chown would drop file capabilities.
        mode = None if mode == found.mode else mode
        uid = None if uid == found.uid else uid
        gid = None if gid == found.gid else gid
        host.set_meta(path, mode=mode, uid=uid, gid=gid)
        changed = (mode, uid, gid) != (None, None, None)
        return StepResult(self.name, ok=True, changed=changed, detail=f"set attributes of {host.where(path)}" if changed else "")

    def rollback(self, host: Host, pre: PreState) -> RollbackResult:
        return rollback_result(self.name, restore_meta(host, pre.data))

    def planned(self, host: ReadableHost, pre: PreState) -> Planned:
        return planned_meta(host, pre.data)

    def settled(self, host: ReadableHost, pre: PreState, assessment: Assessment, force: bool = False) -> Planned:
        return settled_files(host, [pre.data], assessment, force)

    def assess(self, host: ReadableHost, pre: PreState) -> Assessment:
        return combine([assess_file(host, pre.data, pre.data.get("post"), None, with_content=False)])

    def restore(self, host: Host, pre: PreState, assessment: Assessment, force: bool = False) -> RollbackResult:
        problems = restore_planned(host, pre.data, assessment.plan[0], force)
        return restored(self.name, problems, assessment, force)
