"""file_content: a file holds exactly the given content (and optionally mode/owner/group)."""

from __future__ import annotations

from typing import Any, Mapping, Optional

from kensa.errors import ParamError
from kensa.facts.files import resolve_account
from kensa.facts.params import OWNERSHIP, PATH, Field, Schema

from kensa.model import PreState, StepResult
from kensa.handlers.filestate import OneFileStep, capture_file, post_state
from kensa.hosts.protocol import Host, ReadableHost


def content(value: Any) -> bytes:
    """The whole file: text (written as UTF-8) or bytes."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    raise ParamError(f"must be a string, got {value!r}")


SCHEMA = Schema("file_content", {"path": PATH, "content": Field(content, required=True), **OWNERSHIP})


class FileContent(OneFileStep):
    """Write a whole file atomically; unset mode/owner/group keep the existing file's."""

    name = "file_content"
    capturable = True

    schema = SCHEMA

    def _desired(self, host: ReadableHost, params: Mapping[str, Any]) -> Mapping[str, Any]:
        read = SCHEMA.read(params)
        return {
            "path": read["path"],
            "content": read["content"],
            "mode": read["mode"],
            "uid": resolve_account(host, "owner", read["owner"]),
            "gid": resolve_account(host, "group", read["group"]),
        }

    def _holds(self, host: ReadableHost, want: Mapping[str, Any]) -> bool:
        found = host.read_file(want["path"])
        if found is None or found.content != want["content"]:
            return False
        return all(want[key] is None or want[key] == getattr(found, key) for key in ("mode", "uid", "gid"))

    def validate(self, host: ReadableHost, params: Mapping[str, Any]) -> bool:
        return self._holds(host, self._desired(host, params))

    def capture(self, host: ReadableHost, params: Mapping[str, Any]) -> PreState:
        want = self._desired(host, params)
        state = capture_file(host, want["path"])
        post = post_state(state, want["content"], mode=want["mode"], uid=want["uid"], gid=want["gid"])
        return PreState(self.name, params, {**state, "post": post})

    def apply(self, host: Host, params: Mapping[str, Any], pre: Optional[PreState]) -> StepResult:
        want = self._desired(host, params)
        if self._holds(host, want):
            return StepResult(self.name, ok=True, changed=False)
        host.write_file(want["path"], want["content"], mode=want["mode"], uid=want["uid"], gid=want["gid"])
        return StepResult(self.name, ok=True, changed=True, detail=f"wrote {host.where(want['path'])}")

    def written(self, pre: PreState) -> Optional[bytes]:
        written: bytes = SCHEMA.read(pre.params)["content"]
        return written
