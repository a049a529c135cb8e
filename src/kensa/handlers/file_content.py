"""file_content: a file holds exactly the given content (and optionally mode/owner/group)."""

from __future__ import annotations

from typing import Any, Mapping, Optional

from kensa.errors import ParamError
from kensa.hosts.local import LocalHost
from kensa.model import PreState, StepResult
from kensa.handlers.filestate import OneFileStep, capture_file, post_state
from kensa.handlers.params import optional_id, optional_mode, require_path


class FileContent(OneFileStep):
    """Write a whole file atomically; unset mode/owner/group keep the existing file's."""

    name = "file_content"
    capturable = True

    def _content(self, params: Mapping[str, Any]) -> bytes:
        value = params.get("content")
        if isinstance(value, bytes):
            return value
        if isinstance(value, str):
            return value.encode("utf-8")
        raise ParamError(f"{self.name}: parameter 'content' is required and must be a string, got {value!r}")

    def _desired(self, host: LocalHost, params: Mapping[str, Any]) -> Mapping[str, Any]:
        return {
            "path": require_path(self.name, params),
            "content": self._content(params),
            "mode": optional_mode(self.name, params),
            "uid": optional_id(self.name, params, "owner", host),
            "gid": optional_id(self.name, params, "group", host),
        }

    def _holds(self, host: LocalHost, want: Mapping[str, Any]) -> bool:
        found = host.read_file(want["path"])
        if found is None or found.content != want["content"]:
            return False
        return all(want[key] is None or want[key] == getattr(found, key) for key in ("mode", "uid", "gid"))

    def validate(self, host: LocalHost, params: Mapping[str, Any]) -> bool:
        return self._holds(host, self._desired(host, params))

    def capture(self, host: LocalHost, params: Mapping[str, Any]) -> PreState:
        want = self._desired(host, params)
        state = capture_file(host, want["path"])
        post = post_state(state, want["content"], mode=want["mode"], uid=want["uid"], gid=want["gid"])
        return PreState(self.name, params, {**state, "post": post})

    def apply(self, host: LocalHost, params: Mapping[str, Any], pre: Optional[PreState]) -> StepResult:
        want = self._desired(host, params)
        if self._holds(host, want):
            return StepResult(self.name, ok=True, changed=False)
        host.write_file(want["path"], want["content"], mode=want["mode"], uid=want["uid"], gid=want["gid"])
        return StepResult(self.name, ok=True, changed=True, detail=f"wrote {host.where(want['path'])}")

    def written(self, pre: PreState) -> Optional[bytes]:
        return self._content(pre.params)
