"""dconf_set: a key of dconf's system database has a value, optionally locked against users.

Writes ``key=value`` into the ``[schema]`` section of ``/etc/dconf/db/<db>.d/<file>``
(other sections and keys of that file are left as they are, so several steps may share
one file) and, with ``lock: true``, the line ``/schema/key`` into
``/etc/dconf/db/<db>.d/locks/<file>``. On a live host it then runs ``dconf update``,
which compiles the keyfiles into the binary database sessions read; on an image root
the binary database is not rebuilt (the result says so) and is built when the image's
dconf next runs ``dconf update``.

A missing ``<db>.d`` or ``locks/`` directory is created (0755) below an existing
``/etc/dconf/db``, and removed again on rollback while empty (:mod:`kensa.handlers.dirstate`).
Rollback puts both files back byte for byte and, on a live host, runs ``dconf update``
again. The binary database is regenerated from the restored keyfiles, not restored from
a copy: that part is best-effort (its bytes and mtime are dconf's).
"""

from __future__ import annotations

import posixpath
from typing import Any, Dict, List, Mapping, Optional, Sequence

from kensa.errors import HostAccessError, StepFailedError
from kensa.facts.config import decode, encode
from kensa.facts.dconf import (
    DB_ROOT, dconf_key, entry_value, find_entry, gvariant_value, has_lock, keyfile_path, keyfile_text, lock_line, lock_path,
    name_component, schema_path, value_type,
)
from kensa.facts.files import read_if_any
from kensa.facts.params import Field, Schema, as_given, boolean
from kensa.facts.tools import require_program
from kensa.handlers.config_append import append_line, revert_append
from kensa.handlers.dirstate import DIR_MODE, Dir, MadeDirs, make_dirs, missing_dirs
from kensa.handlers.filestate import Revert
from kensa.handlers.filesteps import FilesStep
from kensa.handlers.tooling import run_tool
from kensa.hosts.protocol import Host, ReadableHost
from kensa.model import Assessment, PreState, RollbackResult, StepResult

SCHEMA = Schema(
    "dconf_set",
    {
        "schema": Field(schema_path, required=True),
        "key": Field(dconf_key, required=True),
        "value": Field(gvariant_value, required=True),
        "file": Field(name_component, required=True),
        "db": Field(name_component),
        "lock": Field(boolean, written=as_given),
        "value_type": Field(value_type),
    },
)

NOT_REBUILT = "image root: the binary dconf database is not rebuilt (run 'dconf update' in the image)"


def set_entry(text: str, section: str, key: str, value: str) -> str:
    """``text`` with ``key=value`` in ``[section]``: the key's first line there replaced, or a
    line added at the end of the section, or the section appended with it."""
    lines = text.splitlines(keepends=True)
    header, index, end = find_entry(lines, section, key)
    wanted = f"{key}={value}\n"
    if index is not None:
        old = lines[index]
        lines[index] = wanted.rstrip("\n") + old[len(old.rstrip("\r\n")):]
        return "".join(lines)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    if header is None:
        return "".join(lines) + f"[{section}]\n" + wanted
    assert end is not None
    while end > header + 1 and not lines[end - 1].strip():
        end -= 1  # before the blank lines that separate it from the next section
    lines.insert(end, wanted)
    return "".join(lines)


def revert_entry(before: str, section: str, key: str, value: str) -> Revert:
    """Undo only a :func:`set_entry` made over ``before``: the key's line goes back to what it
    was, or goes (with the section header kensa added, once nothing else is in it); every
    other line stays as it is now. None when the key no longer holds kensa's value."""
    old_lines = before.splitlines(keepends=True)
    old_header, old_index, _ = find_entry(old_lines, section, key)
    old = None if old_index is None else old_lines[old_index].rstrip("\r\n")

    def revert(now: bytes) -> Optional[bytes]:
        lines = decode(now).splitlines(keepends=True)
        header, index, _ = find_entry(lines, section, key)
        if index is None or lines[index].split("=", 1)[1].strip() != value:
            return None
        if old is not None:
            lines[index] = old + lines[index][len(lines[index].rstrip("\r\n")):]
            return encode("".join(lines))
        del lines[index]
        if old_header is None and header is not None:
            _, _, end = find_entry(lines, section, "\n")  # no key contains a newline: the section's end
            if end is not None and all(not text.strip() for text in lines[header + 1:end]):
                del lines[header]
        return encode("".join(lines))

    return revert


class DconfSet(MadeDirs, FilesStep):
    """Set (and lock) a system dconf key; ``dconf update`` on a live host."""

    name = "dconf_set"
    capturable = True
    schema = SCHEMA

    def _read(self, params: Mapping[str, Any]) -> Dict[str, Any]:
        read = SCHEMA.read(params)
        read["db"] = read["db"] or "local"
        read["text"] = keyfile_text(read["value"], read["value_type"])
        return read

    def paths(self, params: Mapping[str, Any]) -> List[str]:
        read = self._read(params)
        found = [keyfile_path(read["db"], read["file"])]
        if read["lock"]:
            found.append(lock_path(read["db"], read["file"]))
        return found

    def written(self, params: Mapping[str, Any], files: Sequence[Mapping[str, Any]]) -> List[Optional[bytes]]:
        read = self._read(params)
        keyfile = decode(files[0].get("content"))
        found: List[Optional[bytes]] = [encode(set_entry(keyfile, read["schema"], read["key"], read["text"]))]
        if read["lock"]:
            locks = decode(files[1].get("content"))
            wanted = lock_line(read["schema"], read["key"])
            found.append(encode(locks if has_lock(locks, wanted) else append_line(locks, wanted)))
        return found

    def reverts(self, pre: PreState) -> List[Optional[Revert]]:
        read = self._read(pre.params)
        files = self._files(pre)
        found: List[Optional[Revert]] = [revert_entry(decode(files[0].get("content")), read["schema"], read["key"], read["text"])]
        if read["lock"]:
            found.append(revert_append(lock_line(read["schema"], read["key"])))
        return found

    def _dirs(self, host: ReadableHost, params: Mapping[str, Any]) -> List[Dir]:
        """The keyfile directory (and its ``locks/``) as records to create, where absent."""
        wanted = sorted({posixpath.dirname(path) for path in self.paths(params)})
        return missing_dirs(host, [(directory, DIR_MODE) for directory in wanted], self.name)

    def validate(self, host: ReadableHost, params: Mapping[str, Any]) -> bool:
        read = self._read(params)
        keyfile = decode(read_if_any(host, keyfile_path(read["db"], read["file"])))
        if entry_value(keyfile, read["schema"], read["key"]) != read["text"]:
            return False
        return not read["lock"] or has_lock(decode(read_if_any(host, lock_path(read["db"], read["file"]))),
                                            lock_line(read["schema"], read["key"]))

    def capture(self, host: ReadableHost, params: Mapping[str, Any]) -> PreState:
        dirs = self._dirs(host, params)
        if host.is_live:
            require_program(host, "dconf", self.name)
        return self.capture_files(host, params, dirs)

    def apply(self, host: Host, params: Mapping[str, Any], pre: Optional[PreState]) -> StepResult:
        dirs = self._dirs(host, params)
        if host.is_live:
            require_program(host, "dconf", self.name)
        make_dirs(host, dirs)
        paths = self.paths(params)
        files = [{"content": host.read_bytes(path)} for path in paths]
        changed = []
        for path, old, new in zip(paths, files, self.written(params, files)):
            if new != old["content"] and new is not None:
                host.write_file(path, new)
                changed.append(host.where(path))
        read = self._read(params)
        what = f"{read['schema']}/{read['key']}={read['text']}"
        if not host.is_live:
            return StepResult(self.name, ok=True, changed=bool(changed), detail=f"set {what} in {', '.join(changed) or 'nothing'}; {NOT_REBUILT}")
        update(host, self.name)
        return StepResult(self.name, ok=True, changed=bool(changed), detail=f"set {what} in {', '.join(changed) or 'nothing'}; ran dconf update")

    def rollback(self, host: Host, pre: PreState) -> RollbackResult:
        return self._rebuilt(host, super().rollback(host, pre))

    def restore(self, host: Host, pre: PreState, assessment: Assessment, force: bool = False) -> RollbackResult:
        return self._rebuilt(host, super().restore(host, pre, assessment, force))

    def _rebuilt(self, host: Host, result: RollbackResult) -> RollbackResult:
        """The restore result, with the binary database compiled again from the restored keyfiles."""
        if not result.ok:
            return result
        if not host.is_live:
            return RollbackResult(self.name, ok=True, detail=f"{result.detail}; {NOT_REBUILT}", kept=result.kept)
        try:
            update(host, self.name)
        except (StepFailedError, HostAccessError) as exc:
            return RollbackResult(self.name, ok=False, detail=f"{result.detail}; but the binary database was not rebuilt: {exc}",
                                  kept=result.kept)
        return RollbackResult(self.name, ok=True, detail=f"{result.detail}; ran dconf update (the binary database is "
                              "regenerated, best-effort)", kept=result.kept)


def update(host: Host, mechanism: str) -> None:
    """Run ``dconf update`` over the target's keyfile directories; a failure is a StepFailedError with dconf's words."""
    run_tool(host, ["dconf", "update", DB_ROOT], mechanism)
