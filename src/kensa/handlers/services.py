"""service_enabled, service_disabled, service_masked: a systemd unit's enablement, and its
running state where systemd runs the target.

``systemctl enable``, ``disable`` and ``mask`` change nothing but symlinks (and the
``.wants``/``.requires`` directories holding them) under /etc/systemd/system, on
an image root with ``systemctl --root`` (offline, the same symlinks); on Debian,
for a unit with an /etc/init.d script, systemctl also has update-rc.d change the
SysV links in /etc/rc?.d. So capture records every symlink there (path ->
target, as text) and every directory; the
change itself is systemctl's, and a rollback puts back exactly the captured set:
links it added are removed, links it removed come back with their exact targets
(``systemctl enable`` would pick its own), directories it created go. Regular
files there (drop-ins, local units) are never touched.

The running state needs the running service manager: on a live host where
systemd is PID 1 (/run/systemd/system exists) capture records ``is-active``,
``start`` (service_enabled) and ``stop`` (the others) act on it, and rollback
starts or stops the unit back. Left out, they are true where systemd runs; on an
image root there is nothing running and the result says so; on a live host not
booted with systemd, ``start: true`` is refused before anything changes (nothing
can start it), and nothing runs under systemd to stop.

A rollback by id tells kensa's change from later edits by the unit's footprint:
the links named after the unit (or one its [Install] ``Also=`` names) or
pointing at it. When the unit is still as the step left it and only other links
changed, only the footprint goes back; when the unit was changed since (enabled
again, unmasked, a link of it pointed elsewhere), the rollback refuses naming the
links.
"""

from __future__ import annotations

import errno
import posixpath
import re
from typing import Any, Dict, FrozenSet, List, Mapping, Optional, Tuple

from kensa.errors import HostAccessError, KensaError, NotAvailableError, ParamError, PathEscapeError
from kensa.facts.files import real_dirs
from kensa.facts.params import Field, Schema, as_given, boolean
from kensa.facts.services import (
    ENABLED_STATES, EXPLICITLY_ENABLED, UNIT_SUFFIXES, active_state, enabled_state, full_unit_name, manager_running,
    systemctl, unit_name,
)
from kensa.handlers.filestate import StatePlan, combine, restored, rollback_result
from kensa.hosts.links import link_host, link_reader
from kensa.hosts.protocol import Host, ReadableHost
from kensa.model import Assessment, Drift, PreState, RollbackResult, StepResult

UNIT_DIR = "/etc/systemd/system"
#: Where systemctl looks for unit files (the first regular file found is the unit's).
UNIT_PATH = (UNIT_DIR, "/run/systemd/system", "/usr/local/lib/systemd/system", "/usr/lib/systemd/system", "/lib/systemd/system")
#: Where Debian's systemctl has update-rc.d link SysV scripts (a unit with an /etc/init.d script).
SYSV_DIRS = tuple(f"/etc/rc{level}.d" for level in "0123456S")
_PARENTS = ("/etc", "/etc/systemd")
_CHARS = r"[A-Za-z0-9:_.\\-]"
_GRAMMAR = re.compile(rf"(?![.-]){_CHARS}+(@{_CHARS}*)?({'|'.join(re.escape(s) for s in UNIT_SUFFIXES)})")
_TIMEOUT = 120.0

Links = Dict[str, str]
Dirs = Dict[str, List[int]]


def unit(value: Any) -> str:
    """A unit name in systemd's grammar (``[prefix][@instance].suffix``), ``.service`` appended
    when it has no unit suffix, as systemctl does (a field reader)."""
    full = full_unit_name(unit_name(value))
    if len(full) > 255 or not _GRAMMAR.fullmatch(full):
        raise ParamError(f"{full[:80]!r} is not a systemd unit name (letters, digits, ':_.\\-', one '@', a unit suffix)")
    return full


def _schema(name: str, runtime: str) -> Schema:
    return Schema(name, {"name": Field(unit, required=True), runtime: Field(boolean, written=as_given)})


def tree(host: ReadableHost) -> Tuple[Links, Dirs]:
    """Every symlink (path -> target) and directory (path -> [mode, uid, gid]) of /etc/systemd/system
    and of the SysV runlevel directories, with /etc and /etc/systemd.

    A symlink in /etc/systemd/system not named like a unit (a ``.wants`` directory planted as a link)
    is refused: systemctl would write through it, outside what was captured."""
    reader = link_reader(host)
    links: Links = {}
    dirs: Dirs = {}
    for parent in _PARENTS:
        found = host.info(parent)
        if found is not None and found.kind == "dir":
            dirs[parent] = [found.mode, found.uid, found.gid]
    pending = [UNIT_DIR, *SYSV_DIRS]
    while pending:
        top = pending.pop()
        found = host.info(top)
        if found is None:
            continue
        if found.kind != "dir":
            raise HostAccessError(errno.ENOTDIR, f"{host.where(top)} is not a directory")
        dirs[top] = [found.mode, found.uid, found.gid]
        units = top == UNIT_DIR or top.startswith(UNIT_DIR + "/")
        for entry in host.list_dir(top) or []:
            path = f"{top}/{entry}"
            target = reader.read_link(path)
            if target is None:
                below = host.info(path)
                if units and below is not None and below.kind == "dir":
                    pending.append(path)
            elif units and not entry.endswith(UNIT_SUFFIXES):
                raise PathEscapeError(
                    f"{host.where(path)} is a symlink (-> {target}) not named like a unit; systemctl would write "
                    "through it, outside what kensa captures: replace it with a real directory", path, entry,
                )
            else:
                links[path] = target
    return links, dirs


def _also(host: ReadableHost, name: str) -> List[str]:
    """The units the [Install] section of ``name``'s unit file names with ``Also=``."""
    template = re.sub(r"@[^.]*\.", "@.", name, count=1)
    for directory in real_dirs(host, UNIT_PATH):
        for candidate in dict.fromkeys((name, template)):
            try:
                found = host.read_file(f"{directory}/{candidate}")
            except PathEscapeError:
                continue  # a unit linked to another file: systemctl reads that one, under its own name
            if found is not None:
                text = (found.content or b"").decode("utf-8", "replace")
                return [word for line in text.splitlines() if line.strip().startswith("Also=")
                        for word in line.split("=", 1)[1].split()]
    return []


def _ours(path: str, target: str, names: List[str]) -> bool:
    if posixpath.dirname(path) in SYSV_DIRS:
        # S01cron -> ../init.d/cron is cron.service's, as systemd-sysv-install links it.
        return f"{posixpath.basename(target)}.service" in names
    return posixpath.basename(path) in names or posixpath.basename(target) in names


def _systemctls(path: str, target: str, names: List[str]) -> bool:
    """Whether the link ``path`` -> ``target`` is one systemctl makes for ``names``: to a unit file of
    one of them, to /dev/null (a mask), or a SysV runlevel link to its script."""
    if posixpath.dirname(path) in SYSV_DIRS:
        return _ours(path, target, names)
    return target == "/dev/null" or (target.startswith("/") and posixpath.basename(target) in names)


def _split(links: Links, names: List[str]) -> Tuple[Links, Links]:
    mine = {path: target for path, target in links.items() if _ours(path, target, names)}
    return mine, {path: target for path, target in links.items() if path not in mine}


class _ServiceStep:
    """What the three service mechanisms share; each says its systemctl verb and the state it leaves."""

    name = ""
    verb = ""
    runtime = ""  # "start" or "stop"
    states: FrozenSet[str] = frozenset()  # is-enabled answers that are (among) or are not (not among) the step's state
    among = True
    capturable = True
    schema: Schema

    def leaves(self, state: str) -> bool:
        """Whether ``is-enabled``'s answer ``state`` is what this step makes."""
        return (state in self.states) == self.among

    def _read(self, params: Mapping[str, Any]) -> Tuple[str, Optional[bool]]:
        read = self.schema.read(params)
        return read["name"], read[self.runtime]

    def _state(self, host: ReadableHost, name: str) -> str:
        try:
            return enabled_state(host, name)
        except HostAccessError as exc:
            if exc.errno == errno.ENOENT:
                raise NotAvailableError(f"{self.name}: not available on this host: systemctl is not installed") from None
            raise

    def _runtime(self, host: ReadableHost, name: str, asked: Optional[bool]) -> bool:
        """Whether the step acts on the running state; refuses what cannot be done here."""
        if manager_running(host):
            return asked is not False
        if asked and self.runtime == "start" and host.is_live:
            raise NotAvailableError(
                f"{self.name}: not available on this host: systemd is not running (no /run/systemd/system), "
                f"so {name} cannot be started; remove 'start: true' to enable it for the next boot only"
            )
        return False

    def validate(self, host: ReadableHost, params: Mapping[str, Any]) -> bool:
        name, asked = self._read(params)
        if not self.leaves(self._state(host, name)):
            return False
        if not self._runtime(host, name, asked):
            return True
        return (active_state(host, name) == "active") == (self.runtime == "start")

    def capture(self, host: ReadableHost, params: Mapping[str, Any]) -> PreState:
        name, asked = self._read(params)
        acts = self._runtime(host, name, asked)
        state = self._state(host, name)  # a host without systemctl is refused here
        if self.runtime == "start" and state == "not-found":
            raise NotAvailableError(
                f"{self.name}: {name} is not installed on this host (no unit file of that name): install its package first"
            )
        links, dirs = tree(host)
        data = {
            "unit": name, "names": [name, *_also(host, name)], "links": links, "dirs": dirs,
            "active": active_state(host, name) if acts else None, "post_active": self.runtime == "start" if acts else None,
        }
        return PreState(self.name, params, data)

    def apply(self, host: Host, params: Mapping[str, Any], pre: Optional[PreState]) -> StepResult:
        name, asked = self._read(params)
        acts = self._runtime(host, name, asked)
        done = [self._systemctl(host, [self.verb, "--", name])]
        if acts:
            done.append(self._systemctl(host, [self.runtime, "--", name]))
        elif host.is_live:
            past = "started" if self.runtime == "start" else "stopped"
            done.append(f"systemd is not running here: {name} was not {past}, only its links changed")
        else:
            done.append("an image root: only the unit's links changed, nothing runs there")
        return StepResult(self.name, ok=True, changed=True, detail="; ".join(done))

    def _systemctl(self, host: Host, args: List[str]) -> str:
        code, out, err = systemctl(host, args)
        if code != 0:
            raise HostAccessError(errno.EIO, f"{self.name}: systemctl {' '.join(args)} exited {code}: {(err or out)[:500]}")
        return f"systemctl {args[0]} {args[-1]}"

    # -- restoring ---------------------------------------------------------------

    def rollback(self, host: Host, pre: PreState) -> RollbackResult:
        problems = self._put_back(host, pre, pre.data["links"])
        problems += self._restore_runtime(host, pre)
        return rollback_result(self.name, problems)

    def _put_back(self, host: Host, pre: PreState, wanted: Links) -> List[str]:
        """Make the links under /etc/systemd/system ``wanted`` (and the directories the captured ones);
        what still differs, read back (empty: exact)."""
        links = link_host(host)
        problems: List[str] = []
        try:
            now, dirs = tree(host)
            for path in sorted(set(now) - set(wanted)) + sorted(p for p in now if p in wanted and now[p] != wanted[p]):
                links.remove_link(path)
            captured: Dirs = pre.data["dirs"]
            for path in sorted(set(captured) - set(dirs)):
                mode, uid, gid = captured[path]
                links.make_dir(path, mode, uid, gid)
            for path in sorted(wanted):
                if links.read_link(path) is None:
                    links.make_link(path, wanted[path])
            for path in sorted(set(dirs) - set(captured), reverse=True):
                if not host.list_dir(path):
                    links.remove_dir(path)  # one holding later links stays, with them
            after, after_dirs = tree(host)
        except (KensaError, OSError) as exc:
            return [f"restoring the links of {pre.data['unit']} failed: {exc}"]
        for path in sorted(set(after) | set(wanted)):
            if after.get(path) != wanted.get(path):
                problems.append(f"{host.where(path)} is {after.get(path) or 'absent'}, expected {wanted.get(path) or 'absent'}")
        if wanted == pre.data["links"] and after_dirs != captured:
            problems.append(f"directories under {host.where(UNIT_DIR)} differ from the captured ones")
        return problems

    def _restore_runtime(self, host: Host, pre: PreState) -> List[str]:
        before, name = pre.data.get("active"), str(pre.data["unit"])
        if before is None or not manager_running(host):
            return []
        try:
            now = active_state(host, name)
            if (now == "active") != (before == "active"):
                self._systemctl(host, ["start" if before == "active" else "stop", "--", name])
                now = active_state(host, name)
        except (KensaError, OSError) as exc:
            return [f"restoring whether {name} runs failed: {exc}"]
        return [] if (now == "active") == (before == "active") else [f"{name} is {now}, it was {before}"]

    def assess(self, host: ReadableHost, pre: PreState) -> Assessment:
        name, names = str(pre.data["unit"]), list(pre.data["names"])
        mine_pre, rest_pre = _split(pre.data["links"], names)
        now, _ = tree(host)
        mine_now, rest_now = _split(now, names)
        changed = sorted(p for p in set(mine_pre) | set(mine_now) if mine_pre.get(p) != mine_now.get(p))
        shown = ", ".join(host.where(p) for p in changed)
        if not changed:
            plans = [StatePlan(Drift.AT_PRE)]
        elif any(not _systemctls(p, mine_now[p], names) for p in changed if p in mine_now) or not self._still(host, name):
            plans = [StatePlan(Drift.CONFLICT, (f"{name} was changed since kensa left it: {shown}",))]
        elif rest_now != rest_pre:
            later = sorted(p for p in set(rest_now) | set(rest_pre) if rest_now.get(p) != rest_pre.get(p))
            plans = [StatePlan(Drift.OUTSIDE, tuple(f"kept a later change: {host.where(p)}" for p in later))]
        else:
            plans = [StatePlan(Drift.AT_POST)]
        return combine(plans + [self._assess_runtime(host, pre)])

    def _still(self, host: ReadableHost, name: str) -> bool:
        """Whether ``name`` is still as the step leaves it (an is-enabled that cannot answer: no)."""
        try:
            return self.leaves(self._state(host, name))
        except HostAccessError:
            return False

    def _assess_runtime(self, host: ReadableHost, pre: PreState) -> StatePlan:
        before, wrote, name = pre.data.get("active"), pre.data.get("post_active"), str(pre.data["unit"])
        if before is None or not manager_running(host):
            return StatePlan(Drift.AT_PRE)
        running = active_state(host, name) == "active"
        if running == (before == "active"):
            return StatePlan(Drift.AT_PRE)
        if running == wrote:
            return StatePlan(Drift.AT_POST)
        return StatePlan(Drift.CONFLICT, (f"{name} is {'active' if running else 'not active'} now, unlike what kensa left",))

    def restore(self, host: Host, pre: PreState, assessment: Assessment, force: bool = False) -> RollbackResult:
        if not isinstance(assessment.plan, tuple) or len(assessment.plan) != 2:
            # Not this handler's assessment (the step could not be assessed): only force restores.
            if not force:
                return restored(self.name, [f"withheld: {'; '.join(assessment.details)}"], assessment, force)
            forced = self._put_back(host, pre, pre.data["links"]) + self._restore_runtime(host, pre)
            return restored(self.name, forced, assessment, force)
        links_plan, runtime_plan = assessment.plan
        problems: List[str] = []
        if links_plan.drift is Drift.CONFLICT and not force:
            problems.append(f"withheld: {'; '.join(links_plan.details)}")
        elif links_plan.drift is Drift.OUTSIDE:
            names = list(pre.data["names"])
            mine_pre, _ = _split(pre.data["links"], names)
            _, rest_now = _split(tree(host)[0], names)
            problems += self._put_back(host, pre, {**rest_now, **mine_pre})
        elif links_plan.drift is not Drift.AT_PRE:
            problems += self._put_back(host, pre, pre.data["links"])
        if runtime_plan.drift is Drift.CONFLICT and not force:
            problems.append(f"withheld: {'; '.join(runtime_plan.details)}")
        elif runtime_plan.drift is not Drift.AT_PRE:
            problems += self._restore_runtime(host, pre)
        return restored(self.name, problems, assessment, force)

    def planned(self, host: ReadableHost, pre: PreState) -> Dict[str, Any]:
        return {}  # only symlinks change, and planned views hold files

    def settled(self, host: ReadableHost, pre: PreState, assessment: Assessment, force: bool = False) -> Dict[str, Any]:
        return {}


class ServiceEnabled(_ServiceStep):
    """``systemctl enable`` the unit; ``start`` it where systemd runs. Static units count as enabled."""

    name, verb, runtime, states, among = "service_enabled", "enable", "start", ENABLED_STATES, True
    schema = _schema(name, runtime)


class ServiceDisabled(_ServiceStep):
    """``systemctl disable`` the unit; ``stop`` it where systemd runs. A unit without a unit file complies."""

    name, verb, runtime, states, among = "service_disabled", "disable", "stop", EXPLICITLY_ENABLED, False
    schema = _schema(name, runtime)


class ServiceMasked(_ServiceStep):
    """``systemctl mask`` the unit (/etc/systemd/system/NAME -> /dev/null); ``stop`` it where systemd runs."""

    name, verb, runtime, states, among = "service_masked", "mask", "stop", frozenset({"masked"}), True
    schema = _schema(name, runtime)
