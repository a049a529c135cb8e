"""kernel_module_disable: modprobe never loads a kernel module, and a live kernel has it unloaded.

The persistent part is ``/etc/modprobe.d/kensa-NAME.conf`` (NAME with ``-`` as
``_``) holding ``install NAME /bin/false`` (an explicit ``modprobe NAME`` runs
/bin/false instead, and fails) and ``blacklist NAME`` (no alias loads it). Apply
adds whichever of the two lines the file lacks and keeps whatever else is in it,
so a rollback by id takes out only those lines and keeps an operator's later
ones. Whether it holds is read from the modprobe.d files and confirmed by the
real ``modprobe --dry-run --verbose`` (on an image root with ``--config`` at the
image's /etc/modprobe.d): it must answer ``install /bin/false`` or ``/bin/true``.

On a live host a loaded module is unloaded (``modprobe -r``) when nothing uses
it; one in use or built into the kernel is refused at capture, before anything
changes. Rollback restores the file byte for byte and loads the module again
(``modprobe NAME``, after the file is back) when it was loaded.
"""

from __future__ import annotations

import errno
from typing import Any, List, Mapping, Optional, Tuple

from kensa.errors import HostAccessError, KensaError, NotAvailableError
from kensa.facts import modules
from kensa.facts.config import decode, encode
from kensa.facts.params import Field, Schema
from kensa.handlers.config_append import append_line, has_line
from kensa.handlers.filestate import (
    OneFileStep, Revert, StatePlan, assess_file, capture_file, combine, fidelity_notes, post_state, restore_file,
    restore_planned, restored, rollback_result,
)
from kensa.hosts.protocol import Host, ReadableHost
from kensa.model import Assessment, Drift, PreState, RollbackResult, StepResult

_TIMEOUT = 60.0
_MODPROBES = ("modprobe", "/usr/sbin/modprobe", "/sbin/modprobe")


SCHEMA = Schema("kernel_module_disable", {"name": Field(modules.kernel_module, required=True)})


def conf_path(name: str) -> str:
    return f"/etc/modprobe.d/kensa-{modules.module_name(name)}.conf"


def _lines(name: str) -> Tuple[str, str]:
    return f"install {name} /bin/false", f"blacklist {name}"


def _with_lines(text: str, name: str) -> str:
    for wanted in _lines(name):
        if not has_line(text, wanted):
            text = append_line(text, wanted)
    return text


def _revert(before: str, name: str) -> Revert:
    """Undo only what :func:`_with_lines` added over ``before``; None when one of those lines is gone."""
    added = [wanted for wanted in _lines(name) if not has_line(before, wanted)]

    def revert(now: bytes) -> Optional[bytes]:
        lines = decode(now).splitlines(keepends=True)
        for wanted in added:
            found = [index for index, text in enumerate(lines) if text.strip() == wanted]
            if not found:
                return None
            del lines[found[-1]]
        return encode("".join(lines))

    return revert


def _modprobe(host: ReadableHost, args: List[str]) -> Tuple[int, str, str]:
    # sbin is often not on the PATH a login over SSH (or a non-root user) gets.
    for command in _MODPROBES:
        try:
            done = host.run([command, *args], _TIMEOUT)
        except HostAccessError as exc:
            if exc.errno == errno.ENOENT:
                continue
            raise
        return done.returncode, done.stdout.strip(), done.stderr.strip()
    raise NotAvailableError("kernel_module_disable: not available on this host: modprobe is not installed (kmod)")


def modprobe_refuses(host: ReadableHost, name: str) -> bool:
    """Whether the real ``modprobe --dry-run`` reads the target's configuration as running a no-op
    instead of loading ``name``."""
    scope = [] if host.is_live else ["--config", f"{host.run_root}/etc/modprobe.d", "--dirname", host.run_root,
                                      "--set-version", "0-kensa"]
    _, out, _ = _modprobe(host, [*scope, "--dry-run", "--verbose", "--", name])
    first = out.splitlines()[0].split() if out else []
    return first[:1] == ["install"] and first[1:2] != [] and first[1] in modules.NO_OP_COMMANDS


def _users(host: ReadableHost, name: str) -> Optional[str]:
    """Who uses the loaded module ``name``, from /proc/modules (None: nothing does)."""
    wanted = modules.module_name(name)
    for entry in decode(host.read_bytes("/proc/modules")).splitlines():
        fields = entry.split()
        if fields[:1] == [wanted] and len(fields) > 3 and fields[2] != "0":
            return f"{fields[2]} users" + (f" ({fields[3].strip(',')})" if fields[3] != "-" else "")
    return None


class KernelModuleDisable(OneFileStep):
    """Keep a module from loading (install NAME /bin/false, blacklist NAME) and unload it on a live host."""

    name = "kernel_module_disable"
    quick_reads = False  # its validate runs modprobe
    capturable = True
    schema = SCHEMA

    def _module(self, params: Mapping[str, Any]) -> str:
        found: str = SCHEMA.read(params)["name"]
        return found

    def validate(self, host: ReadableHost, params: Mapping[str, Any]) -> bool:
        name = self._module(params)
        if host.is_live and modules.in_running_kernel(host, name) is not None:
            return False
        lines = modules.modprobe_lines(host)
        if modules.disabled_by(lines, name) is None or not modules.blacklisted(lines, name):
            return False
        return modprobe_refuses(host, name)

    def capture(self, host: ReadableHost, params: Mapping[str, Any]) -> PreState:
        name = self._module(params)
        _modprobe(host, ["--version"])  # a host without modprobe is refused before anything changes
        running = modules.in_running_kernel(host, name) if host.is_live else None
        if running == "built in":
            raise NotAvailableError(
                f"{self.name}: module {name} is built into the running kernel, so it cannot be unloaded; "
                "only a kernel without it (or the boot parameter module_blacklist=) keeps it out"
            )
        users = _users(host, name) if running == "loaded" else None
        if users is not None:
            raise NotAvailableError(
                f"{self.name}: module {name} is in use ({users}); kensa unloads only a module nothing uses: "
                "stop what uses it first"
            )
        state = capture_file(host, conf_path(name))
        data = {**state, "module": name, "loaded": running == "loaded"}
        data["post"] = post_state(state, self.written(PreState(self.name, params, data)))
        return PreState(self.name, params, data)

    def apply(self, host: Host, params: Mapping[str, Any], pre: Optional[PreState]) -> StepResult:
        name, path = self._module(params), conf_path(self._module(params))
        old = host.read_bytes(path)
        new = encode(_with_lines(decode(old), name))
        done = []
        if new != old:
            host.write_file(path, new)
            done.append(f"wrote {host.where(path)}")
        if host.is_live and modules.in_running_kernel(host, name) == "loaded":
            code, out, err = _modprobe(host, ["--remove", "--", name])
            if code != 0:
                raise HostAccessError(errno.EBUSY, f"{self.name}: modprobe --remove {name} exited {code}: {(err or out)[:500]}")
            done.append(f"unloaded {name}")
        return StepResult(self.name, ok=True, changed=bool(done), detail="; ".join(done))

    def written(self, pre: PreState) -> Optional[bytes]:
        return encode(_with_lines(decode(pre.data.get("content")), self._module(pre.params)))

    def revert(self, pre: PreState) -> Optional[Revert]:
        return _revert(decode(pre.data.get("content")), self._module(pre.params))

    def rollback(self, host: Host, pre: PreState) -> RollbackResult:
        problems = restore_file(host, pre.data) + self._reload(host, pre)
        return rollback_result(self.name, problems, fidelity_notes(host, [pre.data]))

    def _reload(self, host: Host, pre: PreState) -> List[str]:
        name = str(pre.data["module"])
        if not pre.data.get("loaded") or not host.is_live or modules.in_running_kernel(host, name) == "loaded":
            return []
        try:
            code, out, err = _modprobe(host, ["--", name])
        except (KensaError, OSError) as exc:
            return [f"loading {name} again failed: {exc}"]
        if modules.in_running_kernel(host, name) != "loaded":
            return [f"{name} was loaded and could not be loaded again (modprobe exited {code}: {(err or out)[:300]})"]
        return []

    def assess(self, host: ReadableHost, pre: PreState) -> Assessment:
        plans: List[Any] = [assess_file(host, pre.data, pre.data.get("post"), self.revert(pre))]
        name = str(pre.data["module"])
        if pre.data.get("loaded") and host.is_live and modules.in_running_kernel(host, name) != "loaded":
            plans.append(StatePlan(Drift.AT_POST))
        else:
            plans.append(StatePlan(Drift.AT_PRE))
        return combine(plans)

    def restore(self, host: Host, pre: PreState, assessment: Assessment, force: bool = False) -> RollbackResult:
        file_plan, runtime_plan = assessment.plan
        problems = restore_planned(host, pre.data, file_plan, force)
        if runtime_plan.drift is not Drift.AT_PRE and (file_plan.drift is not Drift.CONFLICT or force):
            problems += self._reload(host, pre)
        return restored(self.name, problems, assessment, force, fidelity_notes(host, [pre.data]))
