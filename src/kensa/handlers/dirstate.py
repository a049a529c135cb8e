"""Directories a file step creates on the way to its file, and removes again on rollback.

A drop-in directory (``/etc/systemd/journald.conf.d``) or a dconf database directory
is often absent on a fresh host. A step that writes a file there creates the missing
directories first, each directly below one that exists (or that the same step
creates just before it): kensa never builds a deeper chain, since a program whose
configuration tree is that incomplete is not one kensa should guess about. The
confined host refuses a symlink anywhere on the way, or planted where the
directory should be.

The pre-state records each created directory as absent, with the attributes kensa
gives it (``{"path", "mode", "uid", "gid"}``), under ``dirs``. Every rollback (after
a failed validate, by id, in recovery) first restores the files and then removes
those directories, deepest first, each only when empty: one an operator has since
put a file into stays, and the result names it as a kept later change.
"""

from __future__ import annotations

import errno
import os
import posixpath
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from kensa.errors import HostAccessError, KensaError
from kensa.facts.files import if_any
from kensa.handlers.filestate import Planned, StatePlan, capture_file, combine
from kensa.hosts.links import link_host
from kensa.hosts.local import FileInfo
from kensa.hosts.protocol import Host, ReadableHost
from kensa.model import Assessment, Drift, PreState, RollbackResult

DIR_MODE = 0o755
#: RHEL's sudo ships /etc/sudoers.d 0750 (Debian's 0755); the files there grant
#: privilege, so a directory kensa creates takes the stricter of the two.
SUDOERS_DIR_MODE = 0o750

Dir = Dict[str, Any]


def _info(host: ReadableHost, path: str) -> Optional[FileInfo]:
    """What is at ``path``; None also when a directory on the way is missing."""
    return if_any(host.info, path)


def missing_dirs(host: ReadableHost, wanted: Sequence[Tuple[str, int]], mechanism: str) -> List[Dir]:
    """The directories of ``wanted`` ((path, mode), parents first) that are absent, as
    pre-state records; a clear HostAccessError, before anything changes, when one is
    not a directory or its parent neither exists nor is created just before it."""
    missing: List[Dir] = []
    for path, mode in wanted:
        parent = posixpath.dirname(path)
        if not any(made["path"] == parent for made in missing):
            found = _info(host, path)
            if found is not None:
                if found.kind != "dir":
                    raise HostAccessError(errno.ENOTDIR, f"{mechanism}: {host.where(path)} is not a directory; nothing was changed")
                continue
            above = _info(host, parent)
            if above is None or above.kind != "dir":
                raise HostAccessError(
                    errno.ENOENT,
                    f"{mechanism}: {host.where(parent)} does not exist; kensa creates only the directory "
                    f"{host.where(path)} below an existing one, so install what provides it first; nothing was changed",
                )
        missing.append({"path": path, "mode": mode, "uid": os.geteuid(), "gid": os.getegid()})
    return missing


def capture_below(host: ReadableHost, path: str) -> Dict[str, Any]:
    """:func:`capture_file`, with a file whose directory does not exist yet captured as absent."""
    found = if_any(lambda where: capture_file(host, where), path)
    return {"path": path, "exists": False} if found is None else found


def make_dirs(host: Host, dirs: Sequence[Dir]) -> None:
    """Create each directory of ``dirs`` that is still absent (an earlier step may have made it)."""
    for made in dirs:
        if _info(host, str(made["path"])) is None:
            link_host(host).make_dir(str(made["path"]), int(made["mode"]), int(made["uid"]), int(made["gid"]))


def remove_dirs(host: Host, dirs: Sequence[Dir]) -> Tuple[List[str], List[str]]:
    """Remove the created ``dirs``, deepest first, each only when empty: (problems, kept later changes)."""
    problems: List[str] = []
    kept: List[str] = []
    for made in reversed(list(dirs)):
        path = str(made["path"])
        try:
            if _info(host, path) is None:
                continue
            entries = host.list_dir(path) or []
            if entries:
                kept.append(f"kept a later change: {host.where(path)}, which kensa created, holds "
                            f"{', '.join(entries)} put there since, so it stays")
                continue
            link_host(host).remove_dir(path)
        except (KensaError, OSError) as exc:
            problems.append(f"removing the directory {path} kensa created failed: {exc}")
    return problems, kept


class MadeDirs:
    """Mixed in before a file step's restore side (OneFileStep, FilesStep): rollback, assessment,
    restore and the planned view also cover the directories recorded under ``dirs``."""

    name: str

    @staticmethod
    def made_dirs(pre: PreState) -> List[Dir]:
        return list(pre.data.get("dirs") or [])

    def _removed(self, host: Host, pre: PreState, result: RollbackResult) -> RollbackResult:
        dirs = self.made_dirs(pre)
        if not dirs or not result.ok:
            return result  # a file that could not be restored keeps its directory
        problems, kept = remove_dirs(host, dirs)
        if problems:
            return RollbackResult(self.name, ok=False, detail="; ".join([result.detail, *problems]), kept=result.kept)
        return RollbackResult(self.name, ok=True, detail="; ".join([result.detail, *kept]), kept=(*result.kept, *kept))

    def rollback(self, host: Host, pre: PreState) -> RollbackResult:
        return self._removed(host, pre, super().rollback(host, pre))  # type: ignore[misc]

    def restore(self, host: Host, pre: PreState, assessment: Assessment, force: bool = False) -> RollbackResult:
        return self._removed(host, pre, super().restore(host, pre, assessment, force))  # type: ignore[misc]

    def assess(self, host: ReadableHost, pre: PreState) -> Assessment:
        found: Assessment = super().assess(host, pre)  # type: ignore[misc]
        dirs = self.made_dirs(pre)
        if not dirs:
            return found
        # A created directory still there is kensa's to remove (when empty), even when the
        # interruption came before the file was written.
        there = any(_info(host, str(made["path"])) is not None for made in dirs)
        return combine([*found.plan, StatePlan(Drift.AT_POST if there else Drift.AT_PRE)])

    def planned(self, host: ReadableHost, pre: PreState) -> Planned:
        found: Planned = {
            str(made["path"]): FileInfo("dir", int(made["mode"]), int(made["uid"]), int(made["gid"]), {}, None)
            for made in self.made_dirs(pre)
        }
        found.update(super().planned(host, pre))  # type: ignore[misc]
        return found


def dir_data(dirs: Sequence[Dir]) -> Mapping[str, Any]:
    """The pre-state entry for ``dirs`` (nothing when the step creates none)."""
    return {"dirs": list(dirs)} if dirs else {}
