"""mount_option_set: a mount point's fstab entry carries options (nodev, nosuid, noexec ...),
and on a live host the mounted filesystem does too.

The fstab entry of ``mount_point`` (:mod:`kensa.facts.fstab`: the last active line
mounting it) gets each option it lacks appended to its options field, every other
byte of the file kept. A mount point with no entry is refused before anything
changes: kensa does not invent how a filesystem is mounted. On a live host, when
the mount point is mounted, ``mount --options-source=mtab -o remount,<added>``
adds the options to the running mount; ``mtab`` makes mount merge them with the
mount's current options rather than with fstab's, so nothing else about the
running mount changes. Rollback puts fstab back and remounts with the opposite
of each option it added to the running mount (nodev -> dev); an option without
an opposite is refused up front on a mounted filesystem.
"""

from __future__ import annotations

import errno
import re
from typing import Any, Dict, List, Mapping, Optional, Tuple

from kensa.errors import HostAccessError, KensaError, ParamError
from kensa.facts import fstab
from kensa.facts.config import decode, encode
from kensa.facts.mounts import FSTAB, mounted
from kensa.facts.params import Field, Schema, absolute_path, as_given, path_as_text
from kensa.handlers.filestate import (
    FileAndStateStep,
    Planned,
    Revert,
    StatePlan,
    assess_file,
    capture_file,
    combine,
    planned_file,
    post_state,
)
from kensa.hosts.protocol import Host, ReadableHost
from kensa.model import Assessment, Drift, PreState, StepResult

MOUNT_TIMEOUT = 60.0

#: The per-mount flags a remount can set and clear again: each one's opposite.
OPPOSITE = {
    "nodev": "dev", "dev": "nodev", "nosuid": "suid", "suid": "nosuid", "noexec": "exec", "exec": "noexec",
    "ro": "rw", "rw": "ro", "sync": "async", "async": "sync",
}

_OPTION = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.=:+@%/-]*")
#: Words that change what ``mount -o remount,...`` does rather than naming an option.
_NOT_OPTIONS = {"remount", "bind", "rbind", "move", "defaults"}


def _mount_point(value: Any) -> str:
    found = absolute_path(value)
    if any(c.isspace() for c in found) or "//" in found or ".." in found.split("/"):
        raise ParamError(f"{found!r} is not a plain mount point (no spaces, '//' or '..')")
    return found.rstrip("/") or "/"


def _options(value: Any) -> List[str]:
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(item, str) for item in items):
        raise ParamError(f"must be a list of mount options, got {value!r}")
    found: List[str] = []
    for item in items:
        for option in item.split(","):
            option = option.strip()
            if not _OPTION.fullmatch(option) or option in _NOT_OPTIONS or option.startswith("make-"):
                raise ParamError(f"{option!r} is not a mount option this mechanism sets")
            found.append(option)
    return list(dict.fromkeys(found))


SCHEMA = Schema(
    "mount_option_set",
    {
        "mount_point": Field(_mount_point, required=True, written=path_as_text),
        "options": Field(_options, required=True, written=as_given),
    },
)


def _with_options(text: str, point: str, wanted: List[str]) -> Tuple[str, List[str]]:
    """``text`` with the options ``point``'s entry lacks appended, and which those were."""
    lines = text.splitlines(keepends=True)
    index = fstab.entry(lines, point)
    if index is None:
        raise ParamError(f"mount_option_set: {point} has no entry in {FSTAB}; add one (kensa does not invent a mount)")
    present = fstab.options(lines[index])
    missing = fstab.added(present, wanted)
    if missing:
        lines[index] = fstab.with_options(lines[index], [*present, *missing])
    return "".join(lines), missing


def _revert(point: str, added: List[str]) -> Revert:
    """Take out of ``point``'s entry exactly the options kensa added, whatever else changed
    since; None when one of them is gone (that is no longer kensa's change to undo)."""

    def revert(now: bytes) -> Optional[bytes]:
        lines = decode(now).splitlines(keepends=True)
        index = fstab.entry(lines, point)
        if index is None:
            return None
        present = fstab.options(lines[index])
        if any(option not in present for option in added):
            return None
        if added:
            kept = [option for option in present if option not in added] or ["defaults"]
            lines[index] = fstab.with_options(lines[index], kept)
        return encode("".join(lines))

    return revert


class MountOptionSet(FileAndStateStep):
    """Add options to a mount point's fstab entry and, on a live host, to the running mount."""

    name = "mount_option_set"
    quick_reads = False  # on a live host its validate runs cat /proc/self/mounts
    capturable = True
    file_key = "fstab"

    schema = SCHEMA

    def _desired(self, params: Mapping[str, Any]) -> Tuple[str, List[str]]:
        read = SCHEMA.read(params)
        return read["mount_point"], read["options"]

    def _live(self, host: ReadableHost, point: str) -> Optional[List[str]]:
        """The running mount's options, None when nothing is mounted there (or not a live host)."""
        if not host.is_live:
            return None
        return mounted(host).get(point)

    def validate(self, host: ReadableHost, params: Mapping[str, Any]) -> bool:
        point, wanted = self._desired(params)
        lines = decode(host.read_bytes(FSTAB)).splitlines()
        index = fstab.entry(lines, point)
        if index is None or fstab.added(fstab.options(lines[index]), wanted):
            return False
        live = self._live(host, point)
        return live is None or not fstab.added(live, wanted)

    def capture(self, host: ReadableHost, params: Mapping[str, Any]) -> PreState:
        point, wanted = self._desired(params)
        state = capture_file(host, FSTAB)
        if not state["exists"]:
            raise ParamError(f"mount_option_set: {host.where(FSTAB)} does not exist")
        text, added = _with_options(decode(state["content"]), point, wanted)
        state["post"] = post_state(state, encode(text))
        data: Dict[str, Any] = {"mount_point": point, "fstab": state, "added": added, "live": None}
        live = self._live(host, point)
        if live is not None:
            remount = fstab.added(live, wanted)
            lacking = [option for option in remount if option not in OPPOSITE]
            if lacking:
                raise ParamError(f"mount_option_set: {point} is mounted, and a remount adding {', '.join(lacking)} "
                                 "could not be undone (no opposite option); set it in fstab on an image instead")
            data["live"] = {"options": live, "added": remount}
        return PreState(self.name, params, data)

    def apply(self, host: Host, params: Mapping[str, Any], pre: Optional[PreState]) -> StepResult:
        point, wanted = self._desired(params)
        old = host.read_bytes(FSTAB)
        if old is None:
            raise ParamError(f"mount_option_set: {host.where(FSTAB)} does not exist")
        text, added = _with_options(decode(old), point, wanted)
        if added:
            host.write_file(FSTAB, encode(text))
        said = f"{','.join(added) or 'nothing'} added to {point} in {host.where(FSTAB)}"
        live = self._live(host, point)
        if live is None:
            where = "" if not host.is_live else f"; {point} is not mounted now, so they take effect when it is mounted"
            return StepResult(self.name, ok=True, changed=bool(added), detail=said + where)
        remount = fstab.added(live, wanted)
        if remount:
            self._remount(host, point, remount)
        return StepResult(self.name, ok=True, changed=bool(added or remount),
                          detail=f"{said}; remounted with {','.join(remount)}" if remount else said)

    def _remount(self, host: Host, point: str, options: List[str]) -> None:
        argv = ["mount", "--options-source=mtab", "-o", "remount," + ",".join(options), point]
        done = host.run(argv, MOUNT_TIMEOUT)
        if done.returncode != 0:
            raise HostAccessError(errno.EIO, f"mount_option_set: {' '.join(argv)} failed: {done.stderr.strip()[:300]}")

    def planned(self, host: ReadableHost, pre: PreState) -> Planned:
        state = pre.data["fstab"]
        point, wanted = self._desired(pre.params)
        return planned_file(state, encode(_with_options(decode(state["content"]), point, wanted)[0]))

    def assess(self, host: ReadableHost, pre: PreState) -> Assessment:
        state = pre.data["fstab"]
        plans: List[Any] = [assess_file(host, state, state.get("post"), _revert(pre.data["mount_point"], list(pre.data["added"])))]
        plans.append(self._assess_live(host, pre))
        return combine(plans)

    def _assess_live(self, host: ReadableHost, pre: PreState) -> StatePlan:
        captured = pre.data.get("live")
        if not captured or not captured["added"]:
            return StatePlan(Drift.AT_PRE)
        point, added = str(pre.data["mount_point"]), list(captured["added"])
        now = self._live(host, point)
        if now is None:
            return StatePlan(Drift.AT_PRE)  # unmounted since: nothing of kensa's remount is left
        present = [option for option in added if option in now]
        if not present:
            return StatePlan(Drift.AT_PRE)
        if len(present) == len(added):
            return StatePlan(Drift.AT_POST)
        return StatePlan(Drift.CONFLICT, (f"{point} is mounted with {','.join(now)} now, kensa added {','.join(added)}",))

    def _restore_state(self, host: Host, pre: PreState) -> List[str]:
        captured = pre.data.get("live")
        if not captured or not captured["added"]:
            return []
        point, added = str(pre.data["mount_point"]), list(captured["added"])
        try:
            now = self._live(host, point)
            if now is None:
                return []
            undo = [OPPOSITE[option] for option in added if option in now]
            if undo:
                self._remount(host, point, undo)
            left = [option for option in added if option in (self._live(host, point) or [])]
        except (KensaError, OSError, KeyError) as exc:
            return [f"remounting {point} without {','.join(added)} failed: {exc}"]
        return [f"{point} is still mounted with {','.join(left)}"] if left else []
