"""file_absent: no file exists at the path."""

from __future__ import annotations

from typing import Any, Mapping, Optional


from kensa.model import PreState, StepResult
from kensa.handlers.filestate import OneFileStep, capture_file, post_state
from kensa.facts.params import PATH, Schema
from kensa.hosts.protocol import Host, ReadableHost

SCHEMA = Schema("file_absent", {"path": PATH})


def _path(params: Mapping[str, Any]) -> str:
    path: str = SCHEMA.read(params)["path"]
    return path


class FileAbsent(OneFileStep):
    """Remove a regular file; rollback re-creates it with its bytes, owner, mode and xattrs.

    Directories and symlinks at the path are refused rather than removed.
    """

    name = "file_absent"
    capturable = True
    schema = SCHEMA

    def validate(self, host: ReadableHost, params: Mapping[str, Any]) -> bool:
        path = _path(params)
        return host.read_file(path) is None

    def capture(self, host: ReadableHost, params: Mapping[str, Any]) -> PreState:
        state = capture_file(host, _path(params))
        return PreState(self.name, params, {**state, "post": post_state(state, None)})

    def apply(self, host: Host, params: Mapping[str, Any], pre: Optional[PreState]) -> StepResult:
        path = _path(params)
        existed = host.read_file(path) is not None
        host.remove_file(path)
        return StepResult(self.name, ok=True, changed=existed, detail=f"removed {host.where(path)}" if existed else "")

    def written(self, pre: PreState) -> Optional[bytes]:
        return None
