"""pam_module_configure: a module runs in a service's PAM stack with a given control and arguments.

The stack is ``/etc/pam.d/<service>`` read by :mod:`kensa.facts.pam`. The step
holds when a rule of ``type`` running ``module`` has exactly ``control`` and
``args``. Otherwise:

- one rule of ``type`` runs ``module``: its control and arguments are rewritten
  in place (its other bytes, and every other line, are kept);
- several do (pam_faillock's ``preauth`` and ``authfail`` lines): the one whose
  first argument is the first of ``args``; when that does not pick exactly one,
  the step is refused naming the lines, since rewriting them all would collapse
  distinct entries of the stack into one;
- none does: a line is inserted after the last rule of ``type`` (after every
  ``[success=N]`` jump target, so no jump changes meaning), or appended when the
  stack has no rule of that type.

A service file that does not exist is refused: libpam would fall back to
``other`` for it, so creating one would change how the service authenticates.
The footprint is the one line rewritten or inserted: a rollback by id keeps
every other line as it is now.
"""

from __future__ import annotations

from typing import Any, List, Mapping, Optional, Tuple

from kensa.errors import ParamError
from kensa.facts.config import decode, encode
from kensa.facts.pam import PamEntry, arguments, control, module, pam_type, parse, parse_entry, render, rules_of, same_control, service, undo_lines
from kensa.facts.params import Field, Schema, as_given
from kensa.handlers.filestate import OneFileStep, Revert, capture_file, post_state
from kensa.hosts.protocol import Host, ReadableHost
from kensa.model import PreState, StepResult

__all__ = ["SCHEMA", "PamModuleConfigure", "configure"]

SCHEMA = Schema(
    "pam_module_configure",
    {
        "service": Field(service, required=True),
        "type": Field(pam_type, required=True),
        "control": Field(control, required=True),
        "module": Field(module, required=True),
        "args": Field(arguments, written=as_given),
    },
)

Change = Tuple[Optional[str], str]


def _holds(entry: PamEntry, wanted_control: str, args: Tuple[str, ...]) -> bool:
    return same_control(entry.control, wanted_control) and entry.args == args


def configure(text: str, where: str, pam_type_: str, control_: str, module_: str, args: Tuple[str, ...]) -> Tuple[str, List[Change]]:
    """``text`` with the rule in place, and the change made as ``(old line or None, new line)``
    (none when it already holds). Raises ParamError when the rule to rewrite is ambiguous."""
    entries = parse(text)
    found = rules_of(entries, module_, pam_type_)
    if any(_holds(entries[index], control_, args) for index in found):
        return text, []
    if len(found) > 1:
        narrowed = [index for index in found if args and entries[index].args[:1] == args[:1]]
        if len(narrowed) != 1:
            lines = ", ".join(str(_line_number(entries, index)) for index in found)
            raise ParamError(
                f"pam_module_configure: {where} has {len(found)} {pam_type_} rules running {module_} (lines {lines}) and "
                f"none is the one to set by its first argument; nothing was changed: edit the stack by hand "
                "or give args whose first argument tells the rule"
            )
        found = narrowed
    if found:
        index = found[0]
        old = entries[index]
        entries[index] = old.with_control(control_).with_args(args)
        return render(entries), [(old.raw, entries[index].raw)]
    new = parse_entry("\t".join([pam_type_, control_, " ".join((module_,) + args)]) + "\n")
    same_type = [index for index, entry in enumerate(entries) if entry.kind == "rule" and entry.type == pam_type_]
    at = same_type[-1] + 1 if same_type else len(entries)
    changes: List[Change] = []
    if at > 0 and not entries[at - 1].raw.endswith("\n"):
        # The line before ends the file without a newline: ending it is part of the change, so
        # that undoing the insertion can take that newline out again.
        ended = parse_entry(entries[at - 1].raw + "\n")
        changes.append((entries[at - 1].raw, ended.raw))
        entries[at - 1] = ended
    entries.insert(at, new)
    return render(entries), changes + [(None, new.raw)]


def _line_number(entries: List[PamEntry], index: int) -> int:
    return 1 + sum(entry.raw.count("\n") for entry in entries[:index])


class PamModuleConfigure(OneFileStep):
    """Put one module rule in a service's stack, keeping the stack's order and every other line."""

    name = "pam_module_configure"
    capturable = True
    schema = SCHEMA

    def _desired(self, params: Mapping[str, Any]) -> Tuple[str, str, str, str, Tuple[str, ...]]:
        read = SCHEMA.read(params)
        return f"/etc/pam.d/{read['service']}", read["type"], read["control"], read["module"], read["args"] or ()

    def _stack(self, host: ReadableHost, path: str) -> bytes:
        data = host.read_bytes(path)
        if data is None:
            raise ParamError(
                f"{self.name}: {host.where(path)} does not exist; kensa does not create a PAM service file "
                "(libpam reads 'other' for a service without one); nothing was changed"
            )
        return data

    def _configured(self, text: str, where: str, params: Mapping[str, Any]) -> Tuple[str, List[Change]]:
        _, kind, wanted, mod, args = self._desired(params)
        return configure(text, where, kind, wanted, mod, args)

    def validate(self, host: ReadableHost, params: Mapping[str, Any]) -> bool:
        path, kind, wanted, mod, args = self._desired(params)
        data = host.read_bytes(path)
        if data is None:
            return False
        entries = parse(decode(data))
        return any(_holds(entries[index], wanted, args) for index in rules_of(entries, mod, kind))

    def capture(self, host: ReadableHost, params: Mapping[str, Any]) -> PreState:
        path = self._desired(params)[0]
        self._configured(decode(self._stack(host, path)), host.where(path), params)  # refuse before anything changes
        state = capture_file(host, path)
        post = post_state(state, self.written(PreState(self.name, params, state)))
        return PreState(self.name, params, {**state, "post": post})

    def apply(self, host: Host, params: Mapping[str, Any], pre: Optional[PreState]) -> StepResult:
        path = self._desired(params)[0]
        old = self._stack(host, path)
        new, changes = self._configured(decode(old), host.where(path), params)
        if not changes:
            return StepResult(self.name, ok=True, changed=False)
        host.write_file(path, encode(new))
        verb = "inserted" if changes[-1][0] is None else "rewrote"
        return StepResult(self.name, ok=True, changed=True, detail=f"{verb} the {self._desired(params)[3]} rule in {host.where(path)}")

    def written(self, pre: PreState) -> Optional[bytes]:
        return encode(self._configured(decode(pre.data.get("content")), str(pre.data["path"]), pre.params)[0])

    def revert(self, pre: PreState) -> Optional[Revert]:
        changes = self._configured(decode(pre.data.get("content")), str(pre.data["path"]), pre.params)[1]

        def revert(now: bytes) -> Optional[bytes]:
            undone = undo_lines(decode(now), changes)
            return None if undone is None else encode(undone)

        return revert
