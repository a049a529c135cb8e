"""file_permissions: a file or directory (or every file a find or a glob selects) has the given mode, owner and/or group.

With ``path`` the step changes that one file. With ``find_paths`` (and ``find_type``,
``find_name``, ``find_args``) or with ``glob`` it changes every file the selection
matches (:mod:`kensa.facts.finding`): the matched set is walked on the target and
every file's attributes are captured before anything changes, at most
:data:`~kensa.facts.finding.MAX_MATCHED` files per step; apply and rollback act on
exactly the captured set. ``mode`` is numeric (``0640``) or symbolic (``go-w``),
a symbolic one giving each file the mode chmod would.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Tuple

from kensa.errors import ParamError, TooManyFilesError
from kensa.facts.files import existing, resolve_account
from kensa.facts.finding import MAX_MATCHED, find_args, find_paths, find_type, name_pattern, selected, selection
from kensa.facts.modes import ModeSpec, mode_for, mode_spec
from kensa.facts.params import OWNERSHIP, Field, Schema, absolute_path, as_given, mode_as_text, path_as_text
from kensa.hosts.local import FileInfo
from kensa.model import Assessment, PreState, RollbackResult, StepResult
from kensa.handlers.filestate import (
    Planned, assess_file, capture_meta, combine, meta_post_state, planned_meta, restore_meta, restore_planned, restored,
    rollback_result, settled_files,
)
from kensa.hosts.protocol import Host, ReadableHost


def _selection_fields(values: Dict[str, Any]) -> None:
    if (values["path"] is None) == (values["find_paths"] is None):
        raise ParamError("", field="path", problem="give either 'path' or 'find_paths', not both or neither")
    if values["glob"] is not None and values["path"] is None:
        raise ParamError("", field="glob", problem="selects in the directory of 'path'; give 'path'")
    for name in ("find_type", "find_name", "find_args"):
        if values[name] is not None and values["find_paths"] is None:
            raise ParamError("", field=name, problem="narrows 'find_paths'; give 'find_paths'")


SCHEMA = Schema(
    "file_permissions",
    {
        "path": Field(absolute_path, written=path_as_text),
        "find_paths": Field(find_paths, written=as_given),
        "find_type": Field(find_type),
        "find_name": Field(name_pattern),
        "find_args": Field(find_args),
        "glob": Field(name_pattern),
        **OWNERSHIP,
        "mode": Field(mode_spec, written=mode_as_text),
    },
    at_least_one_of=("mode", "owner", "group"),
    check=_selection_fields,
)

Wanted = Tuple[Optional[ModeSpec], Optional[int], Optional[int]]


def _target(wanted: Wanted, info: FileInfo) -> Tuple[Optional[int], Optional[int], Optional[int]]:
    """The mode, uid and gid the step gives ``info`` (None: left as it is)."""
    spec, uid, gid = wanted
    return None if spec is None else mode_for(spec, info.mode, info.kind == "dir"), uid, gid


def _holds(wanted: Wanted, info: FileInfo) -> bool:
    mode, uid, gid = _target(wanted, info)
    return (mode is None or info.mode == mode) and (uid is None or info.uid == uid) and (gid is None or info.gid == gid)


class FilePermissions:
    """Change only the attributes asked for; the xattrs are captured too, because a
    chown clears ``security.capability`` and a chmod rewrites a POSIX ACL's mask."""

    name = "file_permissions"
    capturable = True

    schema = SCHEMA

    def _wanted(self, host: ReadableHost, read: Mapping[str, Any]) -> Wanted:
        return read["mode"], resolve_account(host, "owner", read["owner"]), resolve_account(host, "group", read["group"])

    def _files(self, host: ReadableHost, read: Mapping[str, Any]) -> List[Tuple[str, FileInfo]]:
        """The files the step acts on: its ``path`` (which must exist), or what its selection matches."""
        if read["path"] is not None and read["glob"] is None:
            return [(read["path"], existing(host, read["path"], self.name))]
        chosen = selection(dict(read))
        found, count = selected(host, chosen)
        if count > MAX_MATCHED:
            raise TooManyFilesError(
                f"{self.name}: the selection under {', '.join(host.where(start) for start in chosen.starts)} matches "
                f"{count} files, above the cap of {MAX_MATCHED} files one step may change; nothing was changed: narrow "
                "find_paths or find_args"
            )
        return [(entry.path, entry.info) for entry in found]

    def validate(self, host: ReadableHost, params: Mapping[str, Any]) -> bool:
        read = SCHEMA.read(params)
        wanted = self._wanted(host, read)
        return all(_holds(wanted, info) for _, info in self._files(host, read))

    def capture(self, host: ReadableHost, params: Mapping[str, Any]) -> PreState:
        read = SCHEMA.read(params)
        wanted = self._wanted(host, read)
        states = []
        for path, info in self._files(host, read):
            state = capture_meta(host, path)
            states.append({**state, "post": meta_post_state(state, *_target(wanted, info))})
        if read["path"] is not None and read["glob"] is None:
            return PreState(self.name, params, states[0])
        return PreState(self.name, params, {"files": states})

    def _captured(self, pre: PreState) -> List[Mapping[str, Any]]:
        return list(pre.data["files"]) if "files" in pre.data else [pre.data]

    def apply(self, host: Host, params: Mapping[str, Any], pre: Optional[PreState]) -> StepResult:
        read = SCHEMA.read(params)
        wanted = self._wanted(host, read)
        # A selection is acted on as captured: after the change a test such as -perm /022
        # no longer matches, and rollback must cover exactly what apply touched.
        paths = [str(state["path"]) for state in self._captured(pre)] if pre is not None else [p for p, _ in self._files(host, read)]
        changed = 0
        for path in paths:
            found: FileInfo = existing(host, path, self.name)
            mode, uid, gid = _target(wanted, found)
            # Only touch what differs: a needless chown would drop file capabilities.
            mode = None if mode == found.mode else mode
            uid = None if uid == found.uid else uid
            gid = None if gid == found.gid else gid
            if (mode, uid, gid) != (None, None, None):
                host.set_meta(path, mode=mode, uid=uid, gid=gid)
                changed += 1
        if read["path"] is not None and read["glob"] is None:
            return StepResult(self.name, ok=True, changed=bool(changed), detail=f"set attributes of {host.where(paths[0])}" if changed else "")
        return StepResult(self.name, ok=True, changed=bool(changed),
                          detail=f"set attributes of {changed} of the {len(paths)} files selected")

    def rollback(self, host: Host, pre: PreState) -> RollbackResult:
        problems: List[str] = []
        for state in self._captured(pre):
            problems += restore_meta(host, state)
        return rollback_result(self.name, problems)

    def planned(self, host: ReadableHost, pre: PreState) -> Planned:
        found: Planned = {}
        for state in self._captured(pre):
            found.update(planned_meta(host, state))
        return found

    def settled(self, host: ReadableHost, pre: PreState, assessment: Assessment, force: bool = False) -> Planned:
        return settled_files(host, self._captured(pre), assessment, force)

    def assess(self, host: ReadableHost, pre: PreState) -> Assessment:
        return combine([assess_file(host, state, state.get("post"), None, with_content=False) for state in self._captured(pre)])

    def restore(self, host: Host, pre: PreState, assessment: Assessment, force: bool = False) -> RollbackResult:
        problems: List[str] = []
        for state, plan in zip(self._captured(pre), assessment.plan):
            problems += restore_planned(host, state, plan, force)
        return restored(self.name, problems, assessment, force)
