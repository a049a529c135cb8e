"""Capture a file's exact pre-state and restore it, verified by reading it back.

The captured state is a plain dict (str keys; bool, int, str, bytes and a dict of
xattr name -> bytes), so a journal can store it and a fresh process can restore
from it after a crash.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional

from ..host import FileInfo, LocalHost
from ..model import KensaError, RollbackResult


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
    }
    if with_content:
        data["content"] = info.content
    return data


def capture_file(host: LocalHost, path: str) -> Dict[str, Any]:
    """Existence, bytes, mode, owner, group and xattrs of the regular file at ``path``."""
    return _describe(path, host.read_file(path), True)


def capture_meta(host: LocalHost, path: str) -> Dict[str, Any]:
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


def restore_file(host: LocalHost, pre: Mapping[str, Any]) -> List[str]:
    """Put back a state from :func:`capture_file`; return what still differs (empty: exact)."""
    path = str(pre["path"])
    problems = []
    try:
        if pre["exists"]:
            host.write_file(
                path, bytes(pre["content"]), mode=int(pre["mode"]), uid=int(pre["uid"]), gid=int(pre["gid"]),
                xattrs=dict(pre["xattrs"]),
            )
        else:
            host.remove_file(path)
    except (KensaError, OSError) as exc:
        problems.append(f"restoring {path} failed: {exc}")
    return problems + _read_back(host, pre, with_content=True)


def restore_meta(host: LocalHost, pre: Mapping[str, Any]) -> List[str]:
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


def _read_back(host: LocalHost, pre: Mapping[str, Any], with_content: bool) -> List[str]:
    path = str(pre["path"])
    try:
        now = _describe(path, host.info(path, content=with_content), with_content)
    except (KensaError, OSError) as exc:
        return [f"reading {path} back failed: {exc}"]
    return differences(pre, now)


def rollback_result(mechanism: str, problems: List[str]) -> RollbackResult:
    """A verified rollback when nothing differs; otherwise an honest partial restore."""
    if problems:
        return RollbackResult(mechanism, ok=False, detail="; ".join(problems))
    return RollbackResult(mechanism, ok=True, detail="restored and verified by read-back")
