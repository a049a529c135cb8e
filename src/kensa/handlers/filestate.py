"""Capture a file's exact pre-state and restore it, verified by reading it back.

The captured state is a plain dict (str keys; bool, int, str, bytes and a dict of
xattr name -> bytes), so a journal can store it and a fresh process can restore
from it after a crash.
"""

from __future__ import annotations

import errno
import hashlib
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from kensa.errors import HostAccessError, KensaError
from kensa.hosts.local import DEFAULT_FILE_MODE, FileInfo, FileKind
from kensa.model import Assessment, Drift, PreState, RollbackResult
from kensa.hosts.protocol import Host, ReadableHost


def _describe(path: str, info: Optional[FileInfo], with_content: bool) -> Dict[str, Any]:
    if info is None:
        return {"path": path, "exists": False}
    data: Dict[str, Any] = {
        "path": path,
        "exists": True,
        "kind": info.kind,
        "mode": info.mode,
        "uid": info.uid,
        "gid": info.gid,
        "xattrs": dict(info.xattrs),
        "mtime_ns": info.mtime_ns,
        "ino": info.ino,
        "nlink": info.nlink,
    }
    if with_content:
        data["content"] = info.content
    return data


def capture_file(host: ReadableHost, path: str) -> Dict[str, Any]:
    """Existence, bytes, mode, owner, group and xattrs of the regular file at ``path``.

    An absent file whose directory does not exist either is refused here, before anything
    changes: a step writes files, not the directories above them (:mod:`kensa.handlers.dirstate`
    creates a drop-in directory where a mechanism says so, and reads through
    :func:`kensa.facts.files.if_any`)."""
    found = host.read_file(path)
    if found is None:
        _require_directory(host, path)
    return _describe(path, found, True)


def _require_directory(host: ReadableHost, path: str) -> None:
    parts = [part for part in path.split("/") if part][:-1]
    if not parts or host.info("/" + "/".join(parts)) is not None:
        return
    for depth in range(1, len(parts) + 1):
        if host.info("/" + "/".join(parts[:depth])) is None:
            raise HostAccessError(errno.ENOENT, f"path {host.where(path)}: directory {parts[depth - 1]!r} "
                                                "does not exist; create it first")


def capture_meta(host: ReadableHost, path: str) -> Dict[str, Any]:
    """Mode, owner, group and xattrs of the file or directory at ``path`` (not its bytes)."""
    return _describe(path, host.info(path), False)


def differences(expected: Mapping[str, Any], actual: Mapping[str, Any]) -> List[str]:
    """What differs between two captured states, as readable phrases."""
    if expected.get("exists") != actual.get("exists"):
        return [f"{expected['path']} should {'exist' if expected.get('exists') else 'be absent'} but does not"]
    found = []
    for key in ("kind", "content", "mode", "uid", "gid", "xattrs"):
        if key in expected and expected.get(key) != actual.get(key):
            shown = "differs" if key in ("content", "xattrs") else f"is {actual.get(key)!r}, expected {expected.get(key)!r}"
            found.append(f"{expected['path']}: {key} {shown}")
    return found


def restore_file(host: Host, pre: Mapping[str, Any]) -> List[str]:
    """Put back a state from :func:`capture_file`; return what still differs (empty: exact)."""
    path = str(pre["path"])
    if not _read_back(host, pre, with_content=True):
        return []  # already as captured (apply failed before changing it): write nothing
    problems = []
    try:
        if pre["exists"]:
            mtime = pre.get("mtime_ns")
            host.write_file(
                path, bytes(pre["content"]), mode=int(pre["mode"]), uid=int(pre["uid"]), gid=int(pre["gid"]),
                xattrs=dict(pre["xattrs"]), mtime_ns=int(mtime) if mtime else None,
            )
        else:
            host.remove_file(path)
    except (KensaError, OSError) as exc:
        problems.append(f"restoring {path} failed: {exc}")
    return problems + _read_back(host, pre, with_content=True)


def restore_meta(host: Host, pre: Mapping[str, Any]) -> List[str]:
    """Put back a state from :func:`capture_meta`; return what still differs."""
    path = str(pre["path"])
    if not _read_back(host, pre, with_content=False):
        return []  # already as captured (apply failed before changing it): write nothing
    problems = []
    try:
        host.set_meta(path, mode=int(pre["mode"]), uid=int(pre["uid"]), gid=int(pre["gid"]), xattrs=dict(pre["xattrs"]))
    except (KensaError, OSError) as exc:
        problems.append(f"restoring {path} failed: {exc}")
    return problems + _read_back(host, pre, with_content=False)


def _read_back(host: ReadableHost, pre: Mapping[str, Any], with_content: bool) -> List[str]:
    path = str(pre["path"])
    try:
        now = _describe(path, host.info(path, content=with_content), with_content)
    except (KensaError, OSError) as exc:
        return [f"reading {path} back failed: {exc}"]
    return differences(pre, now)


def rollback_result(mechanism: str, problems: List[str], notes: Sequence[str] = ()) -> RollbackResult:
    """A verified rollback when nothing differs; otherwise an honest partial restore."""
    if problems:
        return RollbackResult(mechanism, ok=False, detail="; ".join(problems))
    return RollbackResult(mechanism, ok=True, detail="; ".join(["restored and verified by read-back", *notes]))


def rollback_files(mechanism: str, host: Host, files: Sequence[Mapping[str, Any]]) -> RollbackResult:
    """Every captured file of ``files`` restored exactly, verified by read-back, as one result."""
    problems: List[str] = []
    for state in files:
        problems += restore_file(host, state)
    return rollback_result(mechanism, problems, fidelity_notes(host, files))


def fidelity_notes(host: ReadableHost, files: Sequence[Mapping[str, Any]]) -> List[str]:
    """What a restore by rename cannot give back: the file's inode, and its other hard links."""
    notes = []
    for pre in files:
        if not pre.get("exists") or not pre.get("ino"):
            continue
        path = str(pre["path"])
        try:
            now = host.info(path)
        except (KensaError, OSError):
            continue  # the read-back that verified the restore already said what is wrong
        if now is None or now.ino == pre["ino"]:
            continue
        note = f"{path} was put back by an atomic rename, so it is a new inode"
        if int(pre.get("nlink", 1)) > 1:
            note += f"; it had {pre['nlink']} hard links, and its other names no longer share it"
        notes.append(note)
    return notes


# --- restoring without clobbering -------------------------------------------------
#
# A capturable step journals, next to its pre-state, the state it is about to
# write (``post``: existence, SHA-256 of the bytes, mode, owner, group). A rollback
# by id or a recovery compares what is there now with both, and restores only what
# provably belongs to kensa; see :class:`kensa.model.Drift`.

#: current bytes -> the same bytes with only the step's change undone; None when
#: the step's change is no longer intact (so only an operator can tell what to keep).
Revert = Callable[[bytes], Optional[bytes]]

_META = ("mode", "uid", "gid")
_CLEARED_BY_CHOWN = "security.capability"


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def post_state(
    pre: Mapping[str, Any], content: Optional[bytes], *,
    mode: Optional[int] = None, uid: Optional[int] = None, gid: Optional[int] = None,
) -> Dict[str, Any]:
    """The state a step leaves when it writes ``content`` over the file captured in ``pre``
    (``content`` None: it removes the file); unset attributes stay as captured, and a new
    file gets what :meth:`LocalHost.write_file` gives one."""
    if content is None:
        return {"exists": False}
    if pre.get("exists"):
        base = {key: int(pre[key]) for key in _META}
    else:
        base = {"mode": DEFAULT_FILE_MODE, "uid": os.geteuid(), "gid": os.getegid()}
    for key, value in (("mode", mode), ("uid", uid), ("gid", gid)):
        if value is not None:
            base[key] = value
    post: Dict[str, Any] = {"exists": True, "sha256": digest(content), **base}
    if pre.get("exists"):
        # A rewrite keeps the file's xattrs; a new file gets what the kernel gives it.
        post["xattrs"] = dict(pre["xattrs"])
    return post


def meta_post_state(pre: Mapping[str, Any], mode: Optional[int], uid: Optional[int], gid: Optional[int]) -> Dict[str, Any]:
    """The attributes a metadata-only step leaves on the file captured in ``pre``."""
    wanted = {"mode": mode, "uid": uid, "gid": gid}
    return {"exists": True, **{key: int(pre[key]) if wanted[key] is None else wanted[key] for key in _META}}


@dataclass(frozen=True)
class FilePlan:
    """What restoring one file means, decided before anything is written."""

    path: str
    drift: Drift
    details: Tuple[str, ...] = ()
    content: Optional[bytes] = None  # OUTSIDE: the bytes with only the step's change undone
    remove: bool = False  # OUTSIDE: the step created the file and nothing else is left in it
    meta: Mapping[str, int] = field(default_factory=dict)  # OUTSIDE: attributes the step set, to put back
    wrote_nothing: bool = False  # the step had nothing to change here, so nothing here is kensa's
    xattrs: Optional[Mapping[str, bytes]] = None  # OUTSIDE: the exact xattrs to set (those a chown cleared put back)


def _post_differences(path: str, post: Mapping[str, Any], now: Optional[FileInfo], with_content: bool) -> List[str]:
    if bool(post.get("exists")) != (now is not None):
        return [f"{path} {'was removed' if now is None else 'was created again'} since kensa changed it"]
    if now is None:
        return []
    found = []
    if with_content and "sha256" in post and digest(now.content or b"") != post["sha256"]:
        found.append(f"{path}: content differs from what kensa wrote")
    for key in _META:
        if key in post and getattr(now, key) != post[key]:
            found.append(f"{path}: {key} is {_shown(key, getattr(now, key))}, kensa set {_shown(key, post[key])}")
    if "xattrs" in post and dict(now.xattrs) != dict(post["xattrs"]):
        found.append(f"{path}: extended attributes differ from what kensa left")
    return found


def _shown(key: str, value: int) -> str:
    return f"{value:04o}" if key == "mode" else str(value)


def _wrote_nothing(pre: Mapping[str, Any], post: Mapping[str, Any]) -> bool:
    if not pre.get("exists") or not post.get("exists"):
        return not pre.get("exists") and not post.get("exists")
    if "sha256" in post and ("content" not in pre or digest(bytes(pre["content"])) != post["sha256"]):
        return False
    return all(post.get(key) == pre.get(key) for key in _META)


def assess_file(
    host: ReadableHost, pre: Mapping[str, Any], post: Optional[Mapping[str, Any]], revert: Optional[Revert],
    *, with_content: bool = True,
) -> FilePlan:
    """Compare the file now with its pre-state and with the state the step wrote.

    ``revert`` undoes the step's change in the current bytes (None: the step's
    footprint is the whole content). ``with_content`` False: a metadata-only step,
    whose footprint is the attributes it changed.
    """
    path = str(pre["path"])
    if post is None:
        return FilePlan(path, Drift.CONFLICT, (
            f"{path}: journaled without the state kensa wrote (by an older kensa), so kensa cannot tell "
            "whether it was edited since",
        ))
    if _wrote_nothing(pre, post):
        return FilePlan(path, Drift.AT_PRE, wrote_nothing=True)
    now = host.info(path, content=with_content)
    if not differences(pre, _describe(path, now, with_content)):
        return FilePlan(path, Drift.AT_PRE)
    changed = _post_differences(path, post, now, with_content)
    if not changed:
        return FilePlan(path, Drift.AT_POST)
    if now is None or not post.get("exists"):
        return FilePlan(path, Drift.CONFLICT, tuple(changed))
    conflicts: List[str] = []
    content: Optional[bytes] = None
    if with_content:
        if revert is None:
            if now.content is not None and digest(now.content) == post.get("sha256"):
                content = bytes(pre["content"]) if pre.get("exists") else b""
        else:
            content = revert(now.content or b"")
        if content is None:
            conflicts.append(f"{path}: the part kensa wrote was changed since")
    meta: Dict[str, int] = {}
    if pre.get("exists"):
        for key in _META:
            if post[key] == pre[key]:
                continue  # not the step's: whatever it is now stays
            if getattr(now, key) != post[key]:
                conflicts.append(f"{path}: {key} is {_shown(key, getattr(now, key))}, kensa set {_shown(key, post[key])}")
            else:
                meta[key] = int(pre[key])
    if conflicts:
        return FilePlan(path, Drift.CONFLICT, tuple(conflicts))
    kept = tuple(f"kept a later change: {phrase}" for phrase in changed)
    remove = with_content and not pre.get("exists") and content == b""
    xattrs: Optional[Dict[str, bytes]] = None
    if ("uid" in meta or "gid" in meta) and _CLEARED_BY_CHOWN in pre.get("xattrs", {}):
        # The step's chown made the kernel drop the file's capabilities; putting the
        # owner back does not bring them back, so they are set again.
        xattrs = {**dict(now.xattrs), _CLEARED_BY_CHOWN: bytes(pre["xattrs"][_CLEARED_BY_CHOWN])}
    return FilePlan(path, Drift.OUTSIDE, kept, content, remove, meta, xattrs=xattrs)


def restore_planned(host: Host, pre: Mapping[str, Any], plan: FilePlan, force: bool = False) -> List[str]:
    """Carry out ``plan`` (from :func:`assess_file`); return what still differs (empty: done)."""
    with_content = "content" in pre or not pre.get("exists")
    if plan.wrote_nothing:
        return []
    if plan.drift is Drift.AT_PRE:
        return _read_back(host, pre, with_content=with_content)
    if plan.drift is Drift.CONFLICT and not force:
        return [f"withheld: {'; '.join(plan.details)}"]
    if plan.drift is not Drift.OUTSIDE:
        return restore_file(host, pre) if with_content else restore_meta(host, pre)
    path = str(pre["path"])
    try:
        if plan.remove:
            host.remove_file(path)
        elif with_content and plan.content is not None:
            host.write_file(path, plan.content, mode=plan.meta.get("mode"), uid=plan.meta.get("uid"), gid=plan.meta.get("gid"),
                            xattrs=plan.xattrs)
        elif plan.meta:
            host.set_meta(path, mode=plan.meta.get("mode"), uid=plan.meta.get("uid"), gid=plan.meta.get("gid"),
                          xattrs=plan.xattrs)
        now = host.info(path, content=with_content)
    except (KensaError, OSError) as exc:
        return [f"reverting kensa's change of {path} failed: {exc}"]
    if plan.remove:
        return [] if now is None else [f"{path} still exists after removing it"]
    if now is None:
        return [f"{path} is missing after reverting kensa's change"]
    problems = [f"{path}: {key} reads back as {getattr(now, key)}" for key, value in plan.meta.items() if getattr(now, key) != value]
    if plan.xattrs is not None and dict(now.xattrs) != dict(plan.xattrs):
        problems.append(f"{path}: extended attributes do not read back as set")
    if with_content and now.content != plan.content:
        problems.append(f"{path}: content does not read back as written")
    return problems


@dataclass(frozen=True)
class StatePlan:
    """What restoring a piece of state that is not a file (a runtime value, the kernel's rules) means."""

    drift: Drift
    details: Tuple[str, ...] = ()


def combine(plans: Sequence[Any]) -> Assessment:
    """One step's assessment from the plans of everything it wrote (each has ``drift`` and ``details``)."""
    drifts = {plan.drift for plan in plans}
    if Drift.CONFLICT in drifts:
        drift = Drift.CONFLICT
    elif Drift.OUTSIDE in drifts:
        drift = Drift.OUTSIDE
    elif drifts <= {Drift.AT_PRE}:
        drift = Drift.AT_PRE
    else:
        drift = Drift.AT_POST
    return Assessment(drift, tuple(line for plan in plans for line in plan.details), tuple(plans))


def restored(
    mechanism: str, problems: List[str], assessment: Assessment, force: bool, notes: Sequence[str] = ()
) -> RollbackResult:
    """The result of restoring a step as ``assessment`` planned, saying plainly what was kept or overwritten."""
    if problems:
        return RollbackResult(mechanism, ok=False, detail="; ".join(problems))
    if assessment.drift is Drift.AT_PRE:
        return RollbackResult(mechanism, ok=True, detail="already in its pre-state: nothing to restore")
    if assessment.drift is Drift.CONFLICT and force:
        detail = "; ".join(["restored the pre-state by force, overwriting: " + "; ".join(assessment.details), *notes])
        return RollbackResult(mechanism, ok=True, detail=detail)
    if assessment.drift is Drift.OUTSIDE:
        kept = tuple(line for line in assessment.details)
        detail = "reverted only kensa's change, verified by read-back; " + "; ".join(kept)
        return RollbackResult(mechanism, ok=True, detail=detail, kept=kept)
    return RollbackResult(mechanism, ok=True, detail="; ".join(["restored and verified by read-back", *notes]))


def assess_files(host: ReadableHost, files: Sequence[Tuple[Mapping[str, Any], Optional[Revert]]], post_key: str = "post") -> Assessment:
    """:func:`combine` of :func:`assess_file` over (captured file with its ``post``, revert) pairs."""
    return combine([assess_file(host, pre, pre.get(post_key), revert) for pre, revert in files])


def restore_files(host: Host, files: Sequence[Mapping[str, Any]], assessment: Assessment, force: bool) -> List[str]:
    """Carry out the plans of :func:`assess_files` for the same captured files, in order."""
    problems: List[str] = []
    for pre, plan in zip(files, assessment.plan):
        problems += restore_planned(host, pre, plan, force)
    return problems


# --- capturing and assessing through planned views ---------------------------------
#
# Capture of step N must see what steps 1..N-1 of the same transaction will write,
# and assessing step N-1 for a rollback must see what restoring step N will leave;
# the engine and recovery pass these through LocalHost.overlay.

Planned = Dict[str, Optional[FileInfo]]


def planned_file(pre: Mapping[str, Any], content: Optional[bytes]) -> Planned:
    """What the file captured in ``pre`` will be once the step writes ``content`` (None: removes it)."""
    post = pre["post"]
    if not post.get("exists") or content is None:
        return {str(pre["path"]): None}
    xattrs = dict(post.get("xattrs", pre.get("xattrs") or {}))
    return {str(pre["path"]): FileInfo("file", int(post["mode"]), int(post["uid"]), int(post["gid"]), xattrs, content)}


def planned_meta(host: ReadableHost, pre: Mapping[str, Any]) -> Planned:
    """What the file or directory captured in ``pre`` will be once a metadata-only step sets its attributes."""
    path, post = str(pre["path"]), pre["post"]
    now = host.info(path, content=True)
    if now is None:
        return {path: None}
    return {path: FileInfo(now.kind, int(post["mode"]), int(post["uid"]), int(post["gid"]), dict(now.xattrs), now.content)}


def settled_files(host: ReadableHost, files: Sequence[Mapping[str, Any]], assessment: Assessment, force: bool) -> Planned:
    """What the captured ``files`` will be once :func:`restore_planned` carried out ``assessment``."""
    plans = [plan for plan in assessment.plan if isinstance(plan, FilePlan)]
    found: Planned = {}
    for pre, plan in zip(files, plans):
        path = str(pre["path"])
        if plan.wrote_nothing or (plan.drift is Drift.CONFLICT and not force):
            continue  # left as it is
        now = host.info(path, content=True)
        if plan.drift is Drift.OUTSIDE:
            if plan.remove or now is None:
                found[path] = None
                continue
            meta = {key: plan.meta.get(key, getattr(now, key)) for key in _META}
            content = plan.content if plan.content is not None else now.content
            found[path] = FileInfo(now.kind, meta["mode"], meta["uid"], meta["gid"], dict(now.xattrs), content)
        elif not pre.get("exists"):
            found[path] = None
        else:
            content = bytes(pre["content"]) if "content" in pre else (None if now is None else now.content)
            kind: FileKind = "dir" if pre.get("kind") == "dir" else "file"
            found[path] = FileInfo(kind, int(pre["mode"]), int(pre["uid"]), int(pre["gid"]), dict(pre["xattrs"]), content)
    return found


class OneFileStep:
    """The restore side of a step whose pre-state is one captured file (with its ``post``).

    A handler says what it writes (:meth:`written`) and how to undo only its own
    change in bytes changed since (:meth:`revert`; None: it owns the whole
    content); rollback, assessment and the planned views follow from those.
    """

    name: str
    #: validate and capture only read the files the step names (so a remote host's agent may run them ahead).
    quick_reads = True

    def written(self, pre: PreState) -> Optional[bytes]:
        """The bytes the step writes over the file captured in ``pre`` (None: it removes the file)."""
        raise NotImplementedError

    def revert(self, pre: PreState) -> Optional[Revert]:
        return None

    def rollback(self, host: Host, pre: PreState) -> RollbackResult:
        return rollback_result(self.name, restore_file(host, pre.data), fidelity_notes(host, [pre.data]))

    def planned(self, host: ReadableHost, pre: PreState) -> Planned:
        return planned_file(pre.data, self.written(pre))

    def settled(self, host: ReadableHost, pre: PreState, assessment: Assessment, force: bool = False) -> Planned:
        return settled_files(host, [pre.data], assessment, force)

    def assess(self, host: ReadableHost, pre: PreState) -> Assessment:
        return assess_files(host, [(pre.data, self.revert(pre))])

    def restore(self, host: Host, pre: PreState, assessment: Assessment, force: bool = False) -> RollbackResult:
        problems = restore_files(host, [pre.data], assessment, force)
        return restored(self.name, problems, assessment, force, fidelity_notes(host, [pre.data]))


class FileAndStateStep:
    """The restore side of a step that writes one captured file (``pre.data[file_key]``, with its
    ``post``) and one piece of running state (a kernel value, a mount's flags).

    Its ``assess`` plans ``(file plan, state plan)``; the handler says how to put the state
    back (:meth:`_restore_state`); restore, rollback and the settled view follow from those.
    """

    name: str
    #: validate and capture only read the files the step names (so a remote host's agent may run them ahead).
    quick_reads = True
    file_key: str

    def _restore_state(self, host: Host, pre: PreState) -> List[str]:
        """Put the running state back as captured; what still differs (empty: done)."""
        raise NotImplementedError

    def settled(self, host: ReadableHost, pre: PreState, assessment: Assessment, force: bool = False) -> Planned:
        return settled_files(host, [pre.data[self.file_key]], assessment, force)

    def restore(self, host: Host, pre: PreState, assessment: Assessment, force: bool = False) -> RollbackResult:
        file_plan, state_plan = assessment.plan
        problems = restore_planned(host, pre.data[self.file_key], file_plan, force)
        if state_plan.drift is Drift.CONFLICT and not force:
            problems.append(f"withheld: {'; '.join(state_plan.details)}")
        elif state_plan.drift is not Drift.AT_PRE:
            problems += self._restore_state(host, pre)
        return restored(self.name, problems, assessment, force, fidelity_notes(host, [pre.data[self.file_key]]))

    def rollback(self, host: Host, pre: PreState) -> RollbackResult:
        problems = restore_file(host, pre.data[self.file_key])
        problems += self._restore_state(host, pre)
        return rollback_result(self.name, problems, fidelity_notes(host, [pre.data[self.file_key]]))
