"""authselect_feature_enable: a feature of the selected authselect profile is enabled.

``authselect enable-feature FEATURE`` adds the feature to
``/etc/authselect/authselect.conf`` (the profile id on its first line, one enabled
feature a line after it) and regenerates the files authselect owns in
``/etc/authselect/`` (``system-auth``, ``password-auth``, ``nsswitch.conf`` ...), which
``/etc/pam.d/*`` and ``/etc/nsswitch.conf`` link to. The links are not changed by it.

Capture records every regular file of ``/etc/authselect/`` (bytes and metadata) and the
profile and features. Rollback puts those files back byte for byte (and removes a file
there that authselect generated and that was not there before) rather than
running ``authselect select PROFILE FEATURES --force``: the files are exactly the
pre-state, nothing depends on the profile still being installed, and ``select``
would write a backup under ``/var/lib/authselect/backups`` that was not there before.

A rollback by id restores only when authselect's configuration is still what the step
left (the same profile, the captured features plus this one) and ``authselect check``
says no file it generates was edited by hand; otherwise it refuses, naming why.

Needs the tool and a live host: refused before anything changes otherwise ("not
available on this host: authselect is not installed"). A host with no profile selected
is refused too (enable-feature needs one).
"""

from __future__ import annotations

import re
from typing import Any, List, Mapping, Optional, Sequence, Tuple

from kensa.errors import KensaError, ParamError, StepFailedError
from kensa.facts.config import decode
from kensa.facts.files import read_if_any
from kensa.facts.params import Field, Schema, line
from kensa.handlers.filestate import FilePlan, Planned, capture_file, differences, restore_planned, restored, rollback_result
from kensa.handlers.tooling import live_tool, run_tool
from kensa.hosts.protocol import Host, ReadableHost
from kensa.model import Assessment, Drift, PreState, RollbackResult, StepResult

DIRECTORY = "/etc/authselect"
CONFIG = f"{DIRECTORY}/authselect.conf"
TOOL = "authselect"
_FEATURE = re.compile(r"[a-z0-9][a-z0-9_-]{0,127}")


def feature_name(value: Any) -> str:
    """An authselect feature such as ``with-faillock``: lower-case letters, digits, '_' and '-'."""
    found = line(value).strip()
    if not _FEATURE.fullmatch(found):
        raise ParamError(f"{found[:80]!r} is not an authselect feature such as 'with-faillock'")
    return found


SCHEMA = Schema("authselect_feature_enable", {"feature": Field(feature_name, required=True)})


def configuration(data: Optional[bytes]) -> Tuple[Optional[str], List[str]]:
    """(profile id, enabled features) of an ``authselect.conf``; (None, []) when none is selected."""
    lines = [found.strip() for found in decode(data).splitlines() if found.strip() and not found.lstrip().startswith("#")]
    return (lines[0], lines[1:]) if lines else (None, [])


def current(host: ReadableHost) -> Tuple[Optional[str], List[str]]:
    """The target's authselect profile and features; (None, []) when it has no authselect.conf."""
    return configuration(read_if_any(host, CONFIG))


class AuthselectFeatureEnable:
    """``authselect enable-feature FEATURE``; rollback restores authselect's files."""

    name = "authselect_feature_enable"
    capturable = True
    schema = SCHEMA

    def _feature(self, params: Mapping[str, Any]) -> str:
        found: str = SCHEMA.read(params)["feature"]
        return found

    def validate(self, host: ReadableHost, params: Mapping[str, Any]) -> bool:
        profile, features = current(host)
        return profile is not None and self._feature(params) in features

    def _owned(self, host: ReadableHost) -> List[str]:
        """The regular files of /etc/authselect (authselect's own; the links to them live elsewhere)."""
        found = []
        for entry in host.list_dir(DIRECTORY) or []:
            path = f"{DIRECTORY}/{entry}"
            try:
                info = host.info(path)
            except KensaError:
                continue  # a link or special file: not written by enable-feature
            if info is not None and info.kind == "file":
                found.append(path)
        return found

    def capture(self, host: ReadableHost, params: Mapping[str, Any]) -> PreState:
        feature = self._feature(params)
        live_tool(host, TOOL, self.name)
        profile, features = current(host)
        if profile is None:
            raise StepFailedError(f"{self.name}: no authselect profile is selected on {host.where('/')} "
                                  f"({host.where(CONFIG)} names none); select one first; nothing was changed")
        files = [capture_file(host, path) for path in self._owned(host)]
        wanted = features if feature in features else [*features, feature]
        return PreState(self.name, params, {"profile": profile, "features": features, "after": wanted, "files": files})

    def apply(self, host: Host, params: Mapping[str, Any], pre: Optional[PreState]) -> StepResult:
        feature = self._feature(params)
        live_tool(host, TOOL, self.name)
        if self.validate(host, params):
            return StepResult(self.name, ok=True, changed=False, detail=f"{feature} is already enabled")
        run_tool(host, [TOOL, "enable-feature", feature], self.name)
        return StepResult(self.name, ok=True, changed=True, detail=f"enabled authselect feature {feature}")

    def _files(self, pre: PreState) -> List[Mapping[str, Any]]:
        return list(pre.data["files"])

    def _put_back(self, host: Host, pre: PreState, plans: Sequence[FilePlan], force: bool) -> List[str]:
        """Restore every captured file as planned, and remove the files authselect generated that were not there."""
        problems: List[str] = []
        for state, plan in zip(self._files(pre), plans):
            problems += restore_planned(host, state, plan, force)
        captured = {str(state["path"]) for state in self._files(pre)}
        for path in self._owned(host):
            if path not in captured:
                try:
                    host.remove_file(path)
                except (KensaError, OSError) as exc:
                    problems.append(f"removing {path}, which authselect generated, failed: {exc}")
        return problems

    def rollback(self, host: Host, pre: PreState) -> RollbackResult:
        plans = [FilePlan(str(state["path"]), Drift.AT_POST) for state in self._files(pre)]
        return rollback_result(self.name, self._put_back(host, pre, plans, False))

    def planned(self, host: ReadableHost, pre: PreState) -> Planned:
        return {}  # what authselect generates is known only once it ran

    def settled(self, host: ReadableHost, pre: PreState, assessment: Assessment, force: bool = False) -> Planned:
        return {}  # no other mechanism writes authselect's directory

    def assess(self, host: ReadableHost, pre: PreState) -> Assessment:
        files = self._files(pre)
        if all(not differences(state, capture_file(host, str(state["path"]))) for state in files) and \
                len(self._owned(host)) == len(files):
            return Assessment(Drift.AT_PRE, (), [FilePlan(str(state["path"]), Drift.AT_PRE) for state in files])
        profile, features = current(host)
        problems: List[str] = []
        if profile != pre.data["profile"] or sorted(features) != sorted(pre.data["after"]):
            problems.append(f"{CONFIG}: authselect's configuration is {profile} {' '.join(features)} now, kensa left "
                            f"{pre.data['profile']} {' '.join(pre.data['after'])}")
        else:
            done = host.run([TOOL, "check"], 60.0)
            if done.returncode != 0:
                problems.append(f"{DIRECTORY}: authselect check says its files were changed since: "
                                f"{(done.stdout + done.stderr).strip()[-500:]}")
        drift = Drift.CONFLICT if problems else Drift.AT_POST
        return Assessment(drift, tuple(problems), [FilePlan(str(state["path"]), drift) for state in files])

    def restore(self, host: Host, pre: PreState, assessment: Assessment, force: bool = False) -> RollbackResult:
        if assessment.drift is Drift.AT_PRE or (assessment.drift is Drift.CONFLICT and not force):
            problems = [f"withheld: {'; '.join(assessment.details)}"] if assessment.drift is Drift.CONFLICT else []
        else:
            problems = self._put_back(host, pre, [FilePlan(p.path, Drift.AT_POST) for p in assessment.plan], force)
        return restored(self.name, problems, assessment, force)
