"""selinux_boolean_set: an SELinux boolean is on or off, now and (``persistent``, the default)
after a reboot, set with ``setsebool [-P] NAME on|off``.

Only a live host where SELinux is enabled (selinuxfs mounted: /sys/fs/selinux/enforce
exists) with getsebool and setsebool installed can take it; anywhere else the step is
not available, said before anything changes. The captured state is the boolean's
current value (``getsebool NAME``); rollback sets that value back with the same
persistence. The persistent value is taken to be the current one: a boolean whose
running value an operator changed without ``-P`` gets its running value persisted by
a persistent rollback.
"""

from __future__ import annotations

import errno
import re
from typing import Any, List, Mapping, Optional, Tuple

from kensa.errors import HostAccessError, KensaError, NotAvailableError, ParamError
from kensa.facts.params import Field, Schema, as_given, boolean, line_matching
from kensa.facts.tools import find_program
from kensa.handlers.filestate import Planned, StatePlan, combine
from kensa.hosts.protocol import Host, ReadableHost
from kensa.model import Assessment, Drift, PreState, RollbackResult, StepResult

SELINUX_ENFORCE = "/sys/fs/selinux/enforce"
TOOL_TIMEOUT = 120.0
_NAME = re.compile(r"[A-Za-z0-9_]{1,128}")


def _name(value: Any) -> str:
    return line_matching(value, _NAME, "an SELinux boolean name (letters, digits and '_')")


def _state(value: Any) -> str:
    # YAML 1.1 reads unquoted on/off as booleans: both spellings mean the same here.
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, str) and value.strip().lower() in ("on", "off", "1", "0", "true", "false"):
        return "on" if value.strip().lower() in ("on", "1", "true") else "off"
    raise ParamError(f"must be on or off, got {value!r}")


SCHEMA = Schema(
    "selinux_boolean_set",
    {
        "name": Field(_name, required=True),
        "value": Field(_state, required=True, written=as_given),
        "persistent": Field(boolean, written=as_given),
    },
)


class SelinuxBooleanSet:
    """Set an SELinux boolean with setsebool; rollback sets its captured value back."""

    name = "selinux_boolean_set"
    capturable = True

    schema = SCHEMA

    def _desired(self, params: Mapping[str, Any]) -> Tuple[str, str, bool]:
        read = SCHEMA.read(params)
        return read["name"], read["value"], read["persistent"] is not False

    def _available(self, host: ReadableHost) -> None:
        if not host.is_live:
            raise NotAvailableError(f"{self.name}: not available on an image root: setsebool changes the running policy")
        folder, _, flag = SELINUX_ENFORCE.rpartition("/")
        if flag not in (host.list_dir(folder) or []):
            raise NotAvailableError(f"{self.name}: not available on this host: SELinux is not enabled "
                                    f"({SELINUX_ENFORCE} does not exist)")
        for tool in ("getsebool", "setsebool"):
            if find_program(host, tool) is None:
                raise NotAvailableError(f"{self.name}: not available on this host: {tool} is not installed")

    def _current(self, host: ReadableHost, name: str) -> str:
        done = host.run(["getsebool", name], TOOL_TIMEOUT)
        words = done.stdout.split()
        # "name --> on", or "name --> on pending: off" while a transaction is pending
        if done.returncode != 0 or len(words) < 3 or words[0] != name or words[2] not in ("on", "off"):
            raise HostAccessError(errno.EIO, f"{self.name}: getsebool {name} answered {done.stdout.strip()[:200]!r} "
                                             f"(exit {done.returncode}): {done.stderr.strip()[:200]}")
        return words[2]

    def _set(self, host: Host, name: str, value: str, persistent: bool) -> None:
        argv = ["setsebool"] + (["-P"] if persistent else []) + [name, value]
        done = host.run(argv, TOOL_TIMEOUT)
        if done.returncode != 0:
            raise HostAccessError(errno.EIO, f"{self.name}: {' '.join(argv)} failed: {done.stderr.strip()[:300]}")

    def validate(self, host: ReadableHost, params: Mapping[str, Any]) -> bool:
        name, value, _ = self._desired(params)
        self._available(host)
        return self._current(host, name) == value

    def capture(self, host: ReadableHost, params: Mapping[str, Any]) -> PreState:
        name, value, persistent = self._desired(params)
        self._available(host)
        return PreState(self.name, params, {"name": name, "before": self._current(host, name), "after": value,
                                            "persistent": persistent})

    def apply(self, host: Host, params: Mapping[str, Any], pre: Optional[PreState]) -> StepResult:
        name, value, persistent = self._desired(params)
        self._available(host)
        if self._current(host, name) == value:
            return StepResult(self.name, ok=True, changed=False, detail=f"{name} is {value} already")
        self._set(host, name, value, persistent)
        return StepResult(self.name, ok=True, changed=True, detail=f"{name} set {value}{' (persistent)' if persistent else ''}")

    def planned(self, host: ReadableHost, pre: PreState) -> Planned:
        return {}  # no file of the target changes through kensa's hands

    def settled(self, host: ReadableHost, pre: PreState, assessment: Assessment, force: bool = False) -> Planned:
        return {}

    def assess(self, host: ReadableHost, pre: PreState) -> Assessment:
        name, before, after = str(pre.data["name"]), str(pre.data["before"]), str(pre.data["after"])
        now = self._current(host, name)
        if now == before:
            return combine([StatePlan(Drift.AT_PRE)])
        if now == after:
            return combine([StatePlan(Drift.AT_POST)])
        return combine([StatePlan(Drift.CONFLICT, (f"{name} is {now} now, kensa set {after}",))])

    def restore(self, host: Host, pre: PreState, assessment: Assessment, force: bool = False) -> RollbackResult:
        if assessment.drift is Drift.AT_PRE:
            return RollbackResult(self.name, ok=True, detail=f"{pre.data['name']} is {pre.data['before']} already")
        if assessment.drift is Drift.CONFLICT and not force:
            return RollbackResult(self.name, ok=False, detail=f"withheld: {'; '.join(assessment.details)}")
        return self.rollback(host, pre)

    def rollback(self, host: Host, pre: PreState) -> RollbackResult:
        name, before, persistent = str(pre.data["name"]), str(pre.data["before"]), bool(pre.data["persistent"])
        problems: List[str] = []
        try:
            if self._current(host, name) != before:
                self._set(host, name, before, persistent)
            now = self._current(host, name)
            if now != before:
                problems.append(f"{name} reads back as {now}, expected {before}")
        except (KensaError, OSError) as exc:
            problems.append(f"restoring {name} to {before} failed: {exc}")
        if problems:
            return RollbackResult(self.name, ok=False, detail="; ".join(problems))
        return RollbackResult(self.name, ok=True, detail=f"{name} is {before} again, verified by getsebool")
