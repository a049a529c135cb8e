"""apt_present / apt_absent / package_present / package_absent: a package is installed, or not.

``apt_*`` use apt and dpkg (Debian family). ``package_*`` use the target's own
package manager: apt where the target has a dpkg database, else dnf (yum where
dnf is absent) where it has an rpm database.

Every command runs non-interactively (``DEBIAN_FRONTEND=noninteractive``, dpkg
keeping existing config files, ``-y``) and waits for the package manager's own
lock: apt up to ``lock_timeout`` seconds (``DPkg::Lock::Timeout``), then fails
with apt's message quoted; dnf and yum wait for their lock themselves, within
the command's timeout.

A removal is ``apt-get remove``, not ``purge``: purging loses the package's
config files (an operator's edits among them), which no reinstall could bring
back; removal keeps them, and the rollback's reinstall finds them again.

Capture records every package the database knows with its state and version,
and, from ``apt-get -s``, exactly what the change will install, upgrade or
remove (the step's footprint: its dependencies pulled in, the packages that
depend on a removed one). Rollback puts every package of the footprint, and
any other whose state changed since the capture, back as it was: a package
that was absent is purged (it had no config files before), one that only had
config files left is removed, one that was installed is reinstalled at its
captured version (``NAME=VERSION``) when a configured repository still offers
it, else the rollback fails naming the package and the version. apt's
"automatically installed" marks are restored for reinstalled packages.
Rollback by id reverts only the footprint and keeps what else changed since.

The result is not byte-identical in general: a reinstall unpacks the
repository's files again, and maintainer scripts may do what no capture sees.
Every rollback result says so. dnf and yum: the footprint is the named package
only (dnf's ``clean_requirements_on_remove`` removes the dependencies it pulled
in).

Packages are changed on the live host only. apt has no supported way to
install into another root, and ``dpkg --root`` or ``dnf --installroot`` run the
maintainer scripts chrooted into the image, which needs a complete system
there; what they write is not confined the way kensa's own writes are. On an
image root the mechanisms are not available, said before anything changes.
"""

from __future__ import annotations

import errno
import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Set, Tuple, Union

from kensa.errors import HostAccessError, NotAvailableError, ParamError
from kensa.facts.packages import (
    DPKG_STATUS,
    RPM_DB_DIRS,
    apt_auto_installed,
    INSTALLED_STATES,
    Known,
    apt_simulation,
    apt_versions,
    debian_package_name,
    dpkg_packages,
    dpkg_status,
    rpm_database,
    rpm_installed,
    rpm_package_name,
    rpm_packages,
    run_checked,
)
from kensa.facts.params import Field, Schema, as_given, seconds
from kensa.handlers.filestate import restored, rollback_result
from kensa.hosts.protocol import Host, ReadableHost
from kensa.model import Assessment, Drift, PreState, RollbackResult, StepResult

DEFAULT_LOCK_TIMEOUT = 120.0
COMMAND_TIMEOUT = 1800.0
QUERY_TIMEOUT = 120.0
#: A planned version meaning "some version installed" (dnf: not known before the install).
ANY_VERSION = "*"
BEST_EFFORT = "best-effort: packages are put back by the package manager, not byte for byte"
_APT_ENV = ["env", "DEBIAN_FRONTEND=noninteractive", "APT_LISTCHANGES_FRONTEND=none", "NEEDRESTART_MODE=l"]


def _schema(mechanism: str, reader: Any) -> Schema:
    return Schema(mechanism, {"name": Field(reader, required=True), "lock_timeout": Field(seconds, written=as_given)})


def _installed(known: Optional[Sequence[str]]) -> Optional[str]:
    """The installed version in a (state, version) pair, None when not installed."""
    return known[1] if known is not None and known[0] in INSTALLED_STATES else None


def _quoted(done: Any) -> str:
    """A failed command's own words: its error output, and its last line of output, which is where
    apt says who holds the lock it waited for."""
    said = " ".join(done.stderr.split())[-600:]
    lines = [text for text in done.stdout.splitlines() if text.strip()]
    last = " ".join(lines[-1].split())[-300:] if lines else ""
    if last and last not in said:
        said = f"{said} (its last output: {last})" if said else last
    return said or "no output"


class _Apt:
    """apt-get and dpkg on the target."""

    name = "apt"
    tool = "apt-get"

    def __init__(self, host: ReadableHost, lock_timeout: float) -> None:
        self.lock_timeout = lock_timeout
        self.native = run_checked(host, ["dpkg", "--print-architecture"], QUERY_TIMEOUT).strip()

    def installed(self, host: ReadableHost) -> Dict[str, Known]:
        return dpkg_packages(host, self.native) or {}

    def plan(self, host: ReadableHost, present: bool, name: str) -> Dict[str, Optional[str]]:
        # The very options of the change itself, so the footprint is what it will do.
        argv = ["install", "--no-install-recommends", name] if present else ["remove", name]
        return apt_simulation(host, argv, QUERY_TIMEOUT)

    def auto(self, host: ReadableHost) -> List[str]:
        return apt_auto_installed(host, self.native)

    def _apt_get(self, *argv: str) -> List[str]:
        return _APT_ENV + [
            "apt-get", "-q", "-y", "-o", f"DPkg::Lock::Timeout={math.ceil(self.lock_timeout)}",
            "-o", "Dpkg::Options::=--force-confdef", "-o", "Dpkg::Options::=--force-confold", *argv,
        ]

    def change(self, host: Host, present: bool, name: str) -> Any:
        argv = self._apt_get("install", "--no-install-recommends", name) if present else self._apt_get("remove", name)
        return host.run(argv, self.lock_timeout + COMMAND_TIMEOUT)

    def revert(self, host: Host, purge: List[str], remove: List[str], install: List[Tuple[str, str]], auto: Set[str]) -> List[str]:
        problems: List[str] = []
        for verb, names in (("purge", purge), ("remove", remove)):
            if names:
                done = host.run(self._apt_get(verb, *names), self.lock_timeout + COMMAND_TIMEOUT)
                if done.returncode != 0:
                    problems.append(f"apt-get {verb} {' '.join(names)} exited {done.returncode}: {_quoted(done)}")
        wanted = []
        for key, version in install:
            offered = apt_versions(host, key, QUERY_TIMEOUT)
            if version in offered:
                wanted.append(f"{key}={version}")
            else:
                problems.append(
                    f"{key} {version} cannot be reinstalled: the configured repositories offer "
                    f"{', '.join(offered) if offered else 'no version of it'} (apt-cache madison)"
                )
        if wanted:
            done = host.run(self._apt_get("install", "--no-install-recommends", "--allow-downgrades", *wanted),
                            self.lock_timeout + COMMAND_TIMEOUT)
            if done.returncode != 0:
                problems.append(f"apt-get install {' '.join(wanted)} exited {done.returncode}: {_quoted(done)}")
            marks = sorted(key for key, _ in install if key in auto)
            if marks and done.returncode == 0:
                again = host.run(["apt-mark", "auto", *marks], QUERY_TIMEOUT)
                if again.returncode != 0:
                    problems.append(f"apt-mark auto {' '.join(marks)} exited {again.returncode}: {_quoted(again)}")
        return problems


class _Dnf:
    """dnf (or yum) and rpm on the target. Packages are keyed by name; a version is every
    installed ``epoch:version-release.arch`` of it."""

    name = "dnf"

    def __init__(self, tool: str) -> None:
        self.tool = tool

    def installed(self, host: ReadableHost) -> Dict[str, Known]:
        database = rpm_database(host)
        if database is None:
            raise NotAvailableError(f"{self.tool}: the target has no rpm database ({', '.join(RPM_DB_DIRS)})")
        found: Dict[str, List[str]] = {}
        for key, (_, version) in rpm_packages(host, database, QUERY_TIMEOUT).items():
            name, _, arch = key.rpartition(".")
            found.setdefault(name, []).append(f"{version}.{arch}")
        return {name: ("installed", " ".join(sorted(versions))) for name, versions in found.items()}

    def plan(self, host: ReadableHost, present: bool, name: str) -> Dict[str, Optional[str]]:
        return {name: ANY_VERSION if present else None}

    def auto(self, host: ReadableHost) -> List[str]:
        return []

    def change(self, host: Host, present: bool, name: str) -> Any:
        return host.run([self.tool, "-y", "install" if present else "remove", name], COMMAND_TIMEOUT)

    def revert(self, host: Host, purge: List[str], remove: List[str], install: List[Tuple[str, str]], auto: Set[str]) -> List[str]:
        problems: List[str] = []
        names = purge + remove
        if names:
            done = host.run([self.tool, "-y", "remove", *names], COMMAND_TIMEOUT)
            if done.returncode != 0:
                problems.append(f"{self.tool} remove {' '.join(names)} exited {done.returncode}: {_quoted(done)}")
        for key, versions in install:
            # rpm spells epoch 0 without it; dnf takes name-[epoch:]version-release.arch.
            specs = [f"{key}-{v[2:] if v.startswith('0:') else v}" for v in versions.split()]
            done = host.run([self.tool, "-y", "install", *specs], COMMAND_TIMEOUT)
            if done.returncode != 0:
                problems.append(f"{key} {versions} cannot be reinstalled: {self.tool} install exited {done.returncode}: {_quoted(done)}")
        return problems


Manager = Union[_Apt, _Dnf]


def _probe(host: ReadableHost, tool: str) -> bool:
    """Whether ``tool`` can be run on the target."""
    try:
        host.run([tool, "--version"], QUERY_TIMEOUT)
    except HostAccessError as exc:
        if exc.errno == errno.ENOENT:
            return False
        raise
    return True


class _PackageHandler:
    """Install (``present``) or remove a package; the subclasses name the mechanism."""

    name = ""
    present = True
    rpm_family = False
    capturable = True
    schema: Schema

    def _name(self, params: Mapping[str, Any]) -> Tuple[str, float]:
        read = self.schema.read(params)
        timeout = read["lock_timeout"]
        return read["name"], DEFAULT_LOCK_TIMEOUT if timeout is None else float(timeout)

    def _debian(self, host: ReadableHost) -> bool:
        return host.info(DPKG_STATUS) is not None or not self.rpm_family

    def _manager(self, host: ReadableHost, name: str, lock_timeout: float) -> Manager:
        """The target's package manager; NotAvailableError (nothing changed) when it has none."""
        if not host.is_live:
            raise NotAvailableError(
                f"{self.name}: not available on an image root ({host.root}): apt, dpkg and dnf install "
                "into the running system; the package's scripts would need a complete system in the image"
            )
        if self._debian(host):
            debian_package_name(name)
            for tool in ("dpkg", "apt-get"):
                if not _probe(host, tool):
                    raise NotAvailableError(f"{self.name}: not available on this host: {tool} is not installed")
            return _Apt(host, lock_timeout)
        rpm_package_name(name)
        if rpm_database(host) is None:
            raise NotAvailableError(f"{self.name}: not available on this host: it has neither a dpkg nor an rpm database")
        for tool in ("dnf", "yum"):
            if _probe(host, tool):
                return _Dnf(tool)
        raise NotAvailableError(f"{self.name}: not available on this host: neither apt-get nor dnf or yum is installed")

    def validate(self, host: ReadableHost, params: Mapping[str, Any]) -> bool:
        name, _ = self._name(params)
        if self._debian(host):
            status = dpkg_status(host) or {}
            installed = status.get(name) in INSTALLED_STATES
        else:
            database = rpm_database(host)
            installed = database is not None and rpm_installed(host, name, database) is not None
        return installed == self.present

    def capture(self, host: ReadableHost, params: Mapping[str, Any]) -> PreState:
        name, lock_timeout = self._name(params)
        manager = self._manager(host, name, lock_timeout)
        try:
            plan = manager.plan(host, self.present, name)
        except HostAccessError as exc:
            # apt's own words: an unknown package, a broken dependency; nothing was changed.
            raise ParamError(f"{self.name}: {name} cannot be {'installed' if self.present else 'removed'}: {exc}") from None
        before = {key: list(known) for key, known in manager.installed(host).items()}
        data = {"manager": manager.name, "tool": manager.tool, "before": before,
                "plan": plan, "auto": manager.auto(host)}
        return PreState(self.name, params, data)

    def apply(self, host: Host, params: Mapping[str, Any], pre: Optional[PreState]) -> StepResult:
        name, lock_timeout = self._name(params)
        manager = self._manager(host, name, lock_timeout)
        done = manager.change(host, self.present, name)
        verb = "installed" if self.present else "removed"
        if done.returncode != 0:
            detail = f"{name} could not be {verb}: {manager.name} exited {done.returncode}: {_quoted(done)}"
            return StepResult(self.name, ok=False, changed=True, detail=detail)
        return StepResult(self.name, ok=True, changed=True, detail=f"{name} {verb} with {manager.name}")

    def _restored_manager(self, host: ReadableHost, pre: PreState) -> Manager:
        _, lock_timeout = self._name(pre.params)
        if pre.data["manager"] == "apt":
            return _Apt(host, lock_timeout)
        return _Dnf(str(pre.data["tool"]))

    def _revert(self, host: Host, pre: PreState, keys: Sequence[str]) -> List[str]:
        """Put each package of ``keys`` back in its captured state; the problems, verified by read-back."""
        manager = self._restored_manager(host, pre)
        before: Mapping[str, Any] = pre.data["before"]
        now = manager.installed(host)
        purge: List[str] = []
        remove: List[str] = []
        install: List[Tuple[str, str]] = []
        for key in sorted(keys):
            was, new = _installed(before.get(key)), _installed(now.get(key))
            if was is not None and was != new:
                install.append((key, was))
            elif was is None and new is not None:
                (purge if key not in before else remove).append(key)
        problems = manager.revert(host, purge, remove, install, set(pre.data["auto"]))
        after = manager.installed(host)
        for key in sorted(keys):
            was, new = _installed(before.get(key)), _installed(after.get(key))
            if was != new:
                problems.append(f"package {key} is {new or 'not installed'} after the rollback, captured {was or 'not installed'}")
        return problems

    def _changed(self, host: ReadableHost, pre: PreState) -> Set[str]:
        """Packages whose installed version differs from the capture's."""
        before: Mapping[str, Any] = pre.data["before"]
        now = self._restored_manager(host, pre).installed(host)
        return {key for key in set(before) | set(now) if _installed(before.get(key)) != _installed(now.get(key))}

    def rollback(self, host: Host, pre: PreState) -> RollbackResult:
        problems = self._revert(host, pre, sorted(set(pre.data["plan"]) | self._changed(host, pre)))
        return rollback_result(self.name, problems, [BEST_EFFORT])

    def assess(self, host: ReadableHost, pre: PreState) -> Assessment:
        plan: Mapping[str, Optional[str]] = pre.data["plan"]
        before: Mapping[str, Any] = pre.data["before"]
        now = self._restored_manager(host, pre).installed(host)
        at_pre, conflicts = True, []
        for key, planned in sorted(plan.items()):
            was, new = _installed(before.get(key)), _installed(now.get(key))
            at_post = new == planned or (planned == ANY_VERSION and new is not None)
            at_pre = at_pre and new == was
            if not at_post and new != was:
                conflicts.append(f"package {key} is {new or 'not installed'} now, kensa left it {planned or 'not installed'}")
        if at_pre:
            return Assessment(Drift.AT_PRE, (), sorted(plan))
        if conflicts:
            return Assessment(Drift.CONFLICT, tuple(conflicts), sorted(plan))
        others = sorted(self._changed(host, pre) - set(plan))
        if others:
            return Assessment(Drift.OUTSIDE, (f"kept packages changed since: {', '.join(others[:20])}",), sorted(plan))
        return Assessment(Drift.AT_POST, (), sorted(plan))

    def planned(self, host: ReadableHost, pre: PreState) -> Dict[str, Any]:
        return {}  # no file kensa writes itself: later steps see the host as it is

    def settled(self, host: ReadableHost, pre: PreState, assessment: Assessment, force: bool = False) -> Dict[str, Any]:
        return {}

    def restore(self, host: Host, pre: PreState, assessment: Assessment, force: bool = False) -> RollbackResult:
        if assessment.drift is Drift.AT_PRE:
            return restored(self.name, [], assessment, force)
        if assessment.drift is Drift.CONFLICT and not force:
            return restored(self.name, [f"withheld: {'; '.join(assessment.details)}"], assessment, force)
        return restored(self.name, self._revert(host, pre, list(assessment.plan)), assessment, force, [BEST_EFFORT])


class AptPresent(_PackageHandler):
    """A Debian package is installed (apt-get install)."""

    name = "apt_present"
    schema = _schema(name, debian_package_name)


class AptAbsent(_PackageHandler):
    """A Debian package is not installed (apt-get remove; its config files stay)."""

    name = "apt_absent"
    present = False
    schema = _schema(name, debian_package_name)


class PackagePresent(_PackageHandler):
    """A package is installed, with apt on Debian-family targets, dnf or yum on RHEL-family ones."""

    name = "package_present"
    rpm_family = True
    schema = _schema(name, rpm_package_name)


class PackageAbsent(_PackageHandler):
    """A package is not installed, with apt on Debian-family targets, dnf or yum on RHEL-family ones."""

    name = "package_absent"
    present = False
    rpm_family = True
    schema = _schema(name, rpm_package_name)
