"""The restore side of a step that writes several files (a keyfile and its lock, a config and its back-ends).

Its pre-state is ``{"files": [captured file with its "post", ...]}``; the handler says
what it writes over each (:meth:`FilesStep.written`) and how to undo only its own change
in bytes changed since (:meth:`FilesStep.reverts`). Rollback, assessment and the planned
views follow from those, file by file, exactly as :class:`~kensa.handlers.filestate.OneFileStep`
does for one.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence

from kensa.handlers.dirstate import Dir, capture_below, dir_data
from kensa.handlers.filestate import (
    Planned, Revert, assess_files, capture_file, fidelity_notes, planned_file, post_state, restore_files,
    restored, rollback_files, settled_files,
)
from kensa.hosts.protocol import Host, ReadableHost
from kensa.model import Assessment, PreState, RollbackResult


class FilesStep:
    """Capture, roll back, assess and restore the files a step writes."""

    name: str
    #: validate and capture only read the files the step names (so a remote host's agent may run them ahead).
    quick_reads = True

    def paths(self, params: Mapping[str, Any]) -> List[str]:
        """The files the step writes, in the order it writes them."""
        raise NotImplementedError

    def written(self, params: Mapping[str, Any], files: Sequence[Mapping[str, Any]]) -> List[Optional[bytes]]:
        """What the step leaves in each captured file (None: it removes it), given their pre-states."""
        raise NotImplementedError

    def reverts(self, pre: PreState) -> List[Optional[Revert]]:
        """For each file, how to undo only the step's change (None: it owns the whole content)."""
        return [None for _ in self._files(pre)]

    def capture_files(self, host: ReadableHost, params: Mapping[str, Any], dirs: Sequence[Dir] = (), **extra: Any) -> PreState:
        """The pre-state of every file the step writes, each with the state the step leaves it in;
        ``dirs``: the directories it creates first (:mod:`kensa.handlers.dirstate`), its files there absent."""
        capture = capture_below if dirs else capture_file
        files = [capture(host, path) for path in self.paths(params)]
        contents = self.written(params, files)
        data: Dict[str, Any] = {
            "files": [{**state, "post": post_state(state, content)} for state, content in zip(files, contents)],
            **dir_data(dirs),
            **extra,
        }
        return PreState(self.name, params, data)

    @staticmethod
    def _files(pre: PreState) -> List[Mapping[str, Any]]:
        return list(pre.data["files"])

    def rollback(self, host: Host, pre: PreState) -> RollbackResult:
        return rollback_files(self.name, host, self._files(pre))

    def planned(self, host: ReadableHost, pre: PreState) -> Planned:
        found: Planned = {}
        files = self._files(pre)
        for state, content in zip(files, self.written(pre.params, files)):
            found.update(planned_file(state, content))
        return found

    def settled(self, host: ReadableHost, pre: PreState, assessment: Assessment, force: bool = False) -> Planned:
        return settled_files(host, self._files(pre), assessment, force)

    def assess(self, host: ReadableHost, pre: PreState) -> Assessment:
        return assess_files(host, list(zip(self._files(pre), self.reverts(pre))))

    def restore(self, host: Host, pre: PreState, assessment: Assessment, force: bool = False) -> RollbackResult:
        files = self._files(pre)
        problems = restore_files(host, files, assessment, force)
        return restored(self.name, problems, assessment, force, fidelity_notes(host, files))
