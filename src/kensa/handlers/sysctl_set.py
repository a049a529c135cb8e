"""sysctl_set: a kernel parameter has a value now (under /proc/sys) and after reboot.

The runtime value lives in the target root's /proc/sys file the key names, read
as sysctl(8) reads it (:mod:`kensa.facts.sysctl`: dots or, for components that
contain dots such as VLAN interface names, slashes). The persisted
value is a ``key = value`` line in ``persist_file``, by default
``/etc/sysctl.d/99-kensa_<key>.conf`` inside the root (as Kensa names it: ``_`` sorts
after ``.``, so it is read after, and overrides, a leftover shared ``99-kensa.conf``).
A journaled pre-state names the file it captured, so one of an older default
still restores that file. Values compare with their
whitespace collapsed, as the kernel prints multi-field values tab-separated.

In a sysctl file the last assignment of a key wins (sysctl(8) and
systemd-sysctl apply lines in order), so the persisted value is read from the
last line assigning the key, and apply rewrites that line (keeping how it
spells the key: dots or slashes, systemd's ``-`` prefix), or appends one when
the file has none. Earlier assignments are overridden at boot and left alone.
"""

from __future__ import annotations

from typing import Any, List, Mapping, Optional, Tuple

from kensa.errors import KensaError, ParamError, SysctlKeyError
from kensa.facts.config import decode, encode
from kensa.facts.params import Field, Schema, absolute_path, path_as_text, scalar_line

from kensa.model import Assessment, Drift, PreState, StepResult
from kensa.facts.sysctl import last_assignment, sysctl_key, sysctl_path
from kensa.handlers.filestate import (
    FileAndStateStep,
    StatePlan,
    Planned,
    Revert,
    assess_file,
    capture_file,
    combine,
    planned_file,
    post_state,
)
from kensa.hosts.protocol import Host, ReadableHost


def _normal(value: str) -> str:
    return " ".join(value.split())


def _value(value: Any) -> str:
    """The value with its whitespace collapsed, as the kernel's tab-separated output compares."""
    found = _normal(scalar_line(value))
    if not found:
        raise ParamError("must not be empty")
    return found


SCHEMA = Schema(
    "sysctl_set",
    {
        "key": Field(sysctl_key, required=True),
        "value": Field(_value, required=True),
        "persist_file": Field(absolute_path, written=path_as_text),
    },
)


def _persisted_value(text: str, key: str) -> Optional[str]:
    """The value ``key`` gets at boot from the sysctl file ``text`` (its last assignment), or None."""
    last = last_assignment(text.splitlines(), key)
    return None if last is None else last[2]


def _persist_value(text: str, key: str, value: str) -> str:
    """``text`` with the last assignment of ``key`` set to ``value``, or one appended."""
    lines = text.splitlines(keepends=True)
    last = last_assignment(lines, key)
    if last is None:
        if lines and not lines[-1].endswith("\n"):
            lines[-1] += "\n"
        lines.append(f"{key} = {value}\n")
    else:
        index, spelt, _ = last
        old = lines[index]
        lines[index] = f"{spelt} = {value}" + old[len(old.rstrip("\r\n")):]
    return "".join(lines)


def _revert_persist(before: str, key: str, value: str) -> Revert:
    """Undo only a :func:`_persist_value` made over ``before``: the key's last assignment goes
    back to its old line (or goes, when there was none); None when it no longer holds ``value``."""
    old_lines = before.splitlines(keepends=True)
    old = last_assignment(old_lines, key)
    old_line = None if old is None else old_lines[old[0]].rstrip("\r\n")

    def revert(now: bytes) -> Optional[bytes]:
        lines = decode(now).splitlines(keepends=True)
        last = last_assignment(lines, key)
        if last is None or _normal(last[2]) != value:
            return None
        index = last[0]
        if old_line is None:
            del lines[index]
        else:
            lines[index] = old_line + lines[index][len(lines[index].rstrip("\r\n")):]
        return encode("".join(lines))

    return revert


class SysctlSet(FileAndStateStep):
    """Write the runtime value and persist it; rollback restores both."""

    name = "sysctl_set"
    capturable = True
    file_key = "persist"

    schema = SCHEMA

    def _desired(self, params: Mapping[str, Any]) -> Tuple[str, str, str, str]:
        read = SCHEMA.read(params)
        key = read["key"]
        persist = read["persist_file"] or f"/etc/sysctl.d/99-kensa_{key.replace('/', '.')}.conf"
        return key, read["value"], sysctl_path(key), persist

    def _runtime(self, host: ReadableHost, key: str, path: str) -> str:
        data = host.read_bytes(path)
        if data is None:
            raise ParamError(f"{self.name}: the kernel has no parameter {key} ({host.where(path)} does not exist)")
        return _normal(data.decode("utf-8", "replace"))

    def validate(self, host: ReadableHost, params: Mapping[str, Any]) -> bool:
        key, value, runtime, persist = self._desired(params)
        persisted = _persisted_value(decode(host.read_bytes(persist)), key)
        return self._runtime(host, key, runtime) == value and persisted is not None and _normal(persisted) == value

    def capture(self, host: ReadableHost, params: Mapping[str, Any]) -> PreState:
        key, value, runtime, persist = self._desired(params)
        state = capture_file(host, persist)
        state["post"] = post_state(state, encode(_persist_value(decode(state.get("content")), key, value)))
        data = {"key": key, "runtime_path": runtime, "runtime": self._runtime(host, key, runtime), "persist": state,
                "post_runtime": value}
        return PreState(self.name, params, data)

    def apply(self, host: Host, params: Mapping[str, Any], pre: Optional[PreState]) -> StepResult:
        key, value, runtime, persist = self._desired(params)
        self._runtime(host, key, runtime)  # an unknown key is refused before anything is written
        old = host.read_bytes(persist)
        new = encode(_persist_value(decode(old), key, value))
        if new != old:
            host.write_file(persist, new)
        host.write_in_place(runtime, (value + "\n").encode())
        return StepResult(self.name, ok=True, changed=True, detail=f"{key} = {value}, persisted in {host.where(persist)}")

    def planned(self, host: ReadableHost, pre: PreState) -> Planned:
        key, value, _, _ = self._desired(pre.params)
        persist = pre.data["persist"]
        return planned_file(persist, encode(_persist_value(decode(persist.get("content")), key, value)))

    def assess(self, host: ReadableHost, pre: PreState) -> Assessment:
        key, value, _, _ = self._desired(pre.params)
        persist = pre.data["persist"]
        revert = _revert_persist(decode(persist.get("content")), key, value)
        plans: List[Any] = [assess_file(host, persist, persist.get("post"), revert)]
        before, written = str(pre.data["runtime"]), pre.data.get("post_runtime")
        now = self._runtime(host, key, str(pre.data["runtime_path"]))
        if now == before:
            plans.append(StatePlan(Drift.AT_PRE))
        elif written is not None and now == written:
            plans.append(StatePlan(Drift.AT_POST))
        else:
            plans.append(StatePlan(Drift.CONFLICT, (f"{key} is {now!r} now, kensa set {written!r}",)))
        return combine(plans)

    def _restore_state(self, host: Host, pre: PreState) -> List[str]:
        key, path, before = str(pre.data["key"]), str(pre.data["runtime_path"]), str(pre.data["runtime"])
        problems: List[str] = []
        try:
            if sysctl_path(key) != path:
                # A pre-state journaled by an older kensa or edited on disk: never write
                # a runtime value anywhere but the file the key names.
                raise SysctlKeyError(f"journaled runtime path {path!r} is not the file key {key!r} names")
            if self._runtime(host, key, path) != before:
                host.write_in_place(path, (before + "\n").encode())
            now = self._runtime(host, key, path)
            if now != before:
                problems.append(f"{key} reads back as {now!r}, expected {before!r}")
        except (KensaError, OSError) as exc:
            problems.append(f"restoring {key} to {before!r} failed: {exc}")
        return problems
