"""pam_module_arg: an argument of a module's rules in PAM stack files is present, absent or set.

``files`` lists the stack files (system-auth and password-auth, say); every rule
running ``module`` in them (of ``type`` when given; comment lines never count)
is one the step is about:

- ``ensure`` (or ``add``): each such rule has the argument ``arg``; a missing one
  is added after its last argument;
- ``set``: ``arg`` is ``name=value``; each such rule has exactly one argument
  named ``name`` (or matching ``arg_regex``, a string) and it is ``arg``; the
  first is rewritten in place, others go, and one is added when there is none;
- ``remove``: no such rule has the argument ``arg`` (or one that ``arg_regex``
  matches whole; ``arg_regex: true`` means ``arg`` itself is that expression).

For ``ensure`` and ``set`` a file that does not exist or runs no such rule is
refused before anything changes (there is nothing to give the argument to);
for ``remove`` it already complies. Every file is captured before any is
written, and each file's footprint is the lines the step rewrote, so a rollback
by id keeps every other line of every file as it is now.
"""

from __future__ import annotations

import re
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from kensa.errors import ParamError
from kensa.facts.config import decode, encode
from kensa.facts.pam import argument, module, pam_type, parse, render, rules_of, undo_lines
from kensa.facts.params import Field, Schema, absolute_path, as_given, path_as_text
from kensa.handlers.filestate import (
    Planned,
    assess_files,
    capture_file,
    fidelity_notes,
    planned_file,
    post_state,
    restore_files,
    restored,
    rollback_files,
    settled_files,
)
from kensa.hosts.protocol import Host, ReadableHost
from kensa.model import Assessment, PreState, RollbackResult, StepResult

__all__ = ["SCHEMA", "PamModuleArg", "edit_args"]

_ACTIONS = {"ensure": "ensure", "add": "ensure", "set": "set", "remove": "remove"}
_MAX_FILES = 64


def _action(value: Any) -> str:
    if value not in _ACTIONS:
        raise ParamError(f"{value!r} is not an action; use ensure (or add), set or remove")
    return _ACTIONS[value]


def _files(value: Any) -> Tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or len(value) > _MAX_FILES:
        raise ParamError(f"must be a list of 1 to {_MAX_FILES} absolute paths, got {value!r}")
    found: List[str] = []
    for item in value:
        path_as_text(item)
        path = absolute_path(item)
        if path in found:
            raise ParamError(f"lists {path!r} twice")
        found.append(path)
    return tuple(found)


def _arg_regex(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    if not isinstance(value, str) or not value or "\n" in value:
        raise ParamError(f"must be true, false or a one-line regular expression, got {value!r}")
    try:
        re.compile(value)
    except (re.error, RecursionError, OverflowError) as exc:
        raise ParamError(f"is not a valid regular expression: {exc}") from None
    return value


def _arg(value: Any) -> str:
    if not isinstance(value, str) or "\n" in value or "\r" in value:
        raise ParamError(f"must be a single-line string, got {value!r}")
    return value


def _consistent(values: Dict[str, Any]) -> None:
    action, arg, regex = values["action"], values["arg"], values["arg_regex"]
    if regex is True:
        if action != "remove":
            raise ParamError("", field="arg_regex", problem="true (arg is an expression) only works with action remove: "
                             "an expression cannot be written into a stack; give the argument in arg and the expression in arg_regex")
        _arg_regex(arg)
        return
    try:
        argument(arg)
    except ParamError as exc:
        raise ParamError("", field="arg", problem=exc.problem) from None
    if action == "set" and "=" not in arg[1:]:
        raise ParamError("", field="arg", problem=f"{arg!r} must be name=value for action set")


SCHEMA = Schema(
    "pam_module_arg",
    {
        "action": Field(_action, required=True),
        "module": Field(module, required=True),
        "arg": Field(_arg, required=True),
        "files": Field(_files, required=True, written=as_given),
        "type": Field(pam_type),
        "arg_regex": Field(_arg_regex, written=as_given),
    },
    check=_consistent,
)


def _matcher(read: Mapping[str, Any]) -> Any:
    """What tells an existing argument the step is about."""
    arg, regex = read["arg"], read["arg_regex"]
    if regex is True:
        return re.compile(arg).fullmatch
    if isinstance(regex, str):
        return re.compile(regex).fullmatch
    if read["action"] == "set":
        name = arg.split("=", 1)[0] + "="
        return lambda value: value.startswith(name)
    return lambda value: value == arg


def _wanted(args: Sequence[str], read: Mapping[str, Any]) -> Tuple[str, ...]:
    matches = _matcher(read)
    action, arg = read["action"], read["arg"]
    if action == "remove":
        return tuple(value for value in args if not matches(value))
    if action == "ensure":
        return tuple(args) if arg in args else tuple(args) + (arg,)
    found = [index for index, value in enumerate(args) if matches(value)]
    if not found:
        return tuple(args) + (arg,)
    return tuple(arg if index == found[0] else value for index, value in enumerate(args) if index not in found[1:])


def edit_args(text: str, read: Mapping[str, Any]) -> Tuple[str, List[Tuple[Optional[str], str]], int]:
    """``text`` with the argument edited on every rule the step is about, the lines changed
    as ``(old, new)``, and how many rules the step is about."""
    entries = parse(text)
    found = rules_of(entries, read["module"], read["type"])
    changes: List[Tuple[Optional[str], str]] = []
    for index in found:
        old = entries[index]
        new = old.with_args(_wanted(old.args, read))
        if new.raw != old.raw:
            entries[index] = new
            changes.append((old.raw, new.raw))
    return render(entries), changes, len(found)


class PamModuleArg:
    """Edit one argument of a module's rules across several stack files, atomically per step."""

    name = "pam_module_arg"
    capturable = True
    schema = SCHEMA

    def _edits(self, host: ReadableHost, read: Mapping[str, Any]) -> List[Tuple[str, Optional[bytes], str, int]]:
        """Per file: its path, current bytes, edited text and how many rules it runs."""
        found = []
        for path in read["files"]:
            data = host.read_bytes(path)
            text, _, rules = edit_args(decode(data), read)
            if read["action"] != "remove" and (data is None or rules == 0):
                kind = f"{read['type']} " if read["type"] else ""
                what = "does not exist" if data is None else f"runs no {kind}rule of {read['module']}"
                raise ParamError(f"{self.name}: {host.where(path)} {what}, so there is nothing to give {read['arg']!r} to; "
                                 "nothing was changed")
            found.append((path, data, text, rules))
        return found

    def validate(self, host: ReadableHost, params: Mapping[str, Any]) -> bool:
        read = SCHEMA.read(params)
        for path in read["files"]:
            data = host.read_bytes(path)
            if data is None:
                if read["action"] != "remove":
                    return False
                continue
            _, changes, rules = edit_args(decode(data), read)
            if changes or (rules == 0 and read["action"] != "remove"):
                return False
        return True

    def capture(self, host: ReadableHost, params: Mapping[str, Any]) -> PreState:
        read = SCHEMA.read(params)
        self._edits(host, read)  # refuse before anything is captured or changed
        files = []
        for path in read["files"]:
            state = capture_file(host, path)
            state["post"] = post_state(state, self._written(state, read))
            files.append(state)
        return PreState(self.name, params, {"files": files})

    def _written(self, state: Mapping[str, Any], read: Mapping[str, Any]) -> Optional[bytes]:
        if not state.get("exists"):
            return None
        return encode(edit_args(decode(state.get("content")), read)[0])

    def apply(self, host: Host, params: Mapping[str, Any], pre: Optional[PreState]) -> StepResult:
        read = SCHEMA.read(params)
        edits = self._edits(host, read)  # every file read and checked before the first write
        changed = [path for path, data, text, _ in edits if data is not None and encode(text) != data]
        for path, data, text, _ in edits:
            if path in changed:
                host.write_file(path, encode(text))
        if not changed:
            return StepResult(self.name, ok=True, changed=False)
        return StepResult(self.name, ok=True, changed=True,
                          detail=f"{read['action']} {read['arg']} on {read['module']} in {', '.join(host.where(p) for p in changed)}")

    def _files(self, pre: PreState) -> List[Mapping[str, Any]]:
        return list(pre.data["files"])

    def _revert(self, state: Mapping[str, Any], read: Mapping[str, Any]) -> Any:
        changes = edit_args(decode(state.get("content")), read)[1] if state.get("exists") else []

        def revert(now: bytes) -> Optional[bytes]:
            undone = undo_lines(decode(now), changes)
            return None if undone is None else encode(undone)

        return revert

    def planned(self, host: ReadableHost, pre: PreState) -> Planned:
        read = SCHEMA.read(pre.params)
        found: Planned = {}
        for state in self._files(pre):
            if state.get("exists"):
                found.update(planned_file(state, self._written(state, read)))
        return found

    def settled(self, host: ReadableHost, pre: PreState, assessment: Assessment, force: bool = False) -> Planned:
        return settled_files(host, self._files(pre), assessment, force)

    def assess(self, host: ReadableHost, pre: PreState) -> Assessment:
        read = SCHEMA.read(pre.params)
        return assess_files(host, [(state, self._revert(state, read)) for state in self._files(pre)])

    def restore(self, host: Host, pre: PreState, assessment: Assessment, force: bool = False) -> RollbackResult:
        files = self._files(pre)
        problems = restore_files(host, files, assessment, force)
        return restored(self.name, problems, assessment, force, fidelity_notes(host, files))

    def rollback(self, host: Host, pre: PreState) -> RollbackResult:
        return rollback_files(self.name, host, self._files(pre))
