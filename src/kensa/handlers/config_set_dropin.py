"""config_set_dropin: a key set in a drop-in file ``dir/file`` (sshd_config.d, sudoers.d,
systemd's ``*.conf.d``, pwquality.conf.d ...).

The key is set as :mod:`kensa.handlers.config_set` sets it (the first active line is
replaced, or one is added; every other line of the drop-in stays), with ``=`` between
key and value unless ``separator`` says otherwise (Kensa's default). Two rules may
share one drop-in file, each owning its key. ``section`` (``Journal`` or ``[Journal]``)
sets the key inside that INI section, adding the section when the file has none, as
systemd's drop-ins need. ``content`` is the whole file instead: the drop-in then holds
exactly those bytes, which must set ``key`` to ``value`` (Kensa requires both).

A missing drop-in directory is created (mode 0755, or 0750 for ``sudoers.d``), when
its parent exists (:mod:`kensa.handlers.dirstate`); rollback removes it again while
it is empty. Whether the program reads the directory is the rule's ``when`` gate
(such as Kensa's ``sshd_config_d``); systemd's ``*.conf.d`` are read without one. A new file in a directory
named ``sudoers.d`` is created mode 0440, as visudo creates them; other new files get
0644. Rollback puts the file back byte for byte (or removes the one kensa created);
a rollback by id reverts only the key's line when the file was edited elsewhere since.
"""

from __future__ import annotations

import posixpath
import re
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Tuple

from kensa.errors import ParamError
from kensa.facts.config import (
    INI_COMMENTS,
    config_key,
    decode,
    encode,
    find_key,
    get_value,
    section_finder,
    separator,
    with_section,
)
from kensa.facts.files import read_if_any
from kensa.facts.params import Field, Schema, absolute_path, path_as_text, scalar_line, text
from kensa.handlers.config_set import DEFAULT_SEPARATOR, Finder, revert_key, set_value
from kensa.handlers.dirstate import DIR_MODE, SUDOERS_DIR_MODE, MadeDirs, capture_below, dir_data, make_dirs, missing_dirs
from kensa.handlers.filestate import OneFileStep, Revert, post_state
from kensa.hosts.protocol import Host, ReadableHost
from kensa.model import PreState, StepResult

SUDOERS_DIR = "sudoers.d"
SUDOERS_MODE = 0o440
_MAX_NAME = 255
_SECTION = re.compile(r"[^\[\]\r\n\x00-\x1f\x7f]{1,255}")


def dropin_name(value: Any) -> str:
    """A file name inside the drop-in directory: one path component, not '.' or '..'."""
    found = scalar_line(value)
    if not found or "/" in found or found in (".", "..") or len(found.encode()) > _MAX_NAME:
        raise ParamError(f"{found[:80]!r} is not a file name (one path component, no '/', not '.' or '..')")
    return found


def section_name(value: Any) -> str:
    """An INI section name, written ``Journal`` or ``[Journal]``."""
    found = scalar_line(value).strip()
    if found.startswith("[") and found.endswith("]"):
        found = found[1:-1].strip()
    if not _SECTION.fullmatch(found):
        raise ParamError(f"{str(value)[:80]!r} is not a section name such as '[Journal]'")
    return found


class Desired(NamedTuple):
    path: str
    key: str
    value: str
    separator: str
    comments: Tuple[str, ...]
    find: Finder
    section: Optional[str]
    content: Optional[str]


def _desired(values: Mapping[str, Any]) -> Desired:
    section = values["section"]
    return Desired(
        posixpath.join(values["dir"], values["file"]), values["key"], values["value"],
        values["separator"] or DEFAULT_SEPARATOR,
        INI_COMMENTS if section else ("#",),
        section_finder(section) if section else find_key,
        section, values["content"],
    )


def _consistent(values: Dict[str, Any]) -> None:
    want = _desired(values)
    if want.value.strip().startswith(want.separator.strip() or "="):
        raise ParamError("", field="value", problem=f"{want.value!r} must not start with the separator {want.separator!r}")
    if want.content is not None and _found(want, want.content) != want.value.strip():
        where = f" in section [{want.section}]" if want.section else ""
        raise ParamError("", field="content", problem=f"does not set {want.key}{where} to {want.value!r}")


def _found(want: Desired, text_now: str) -> Optional[str]:
    return get_value(text_now, want.key, want.separator, want.comments, want.find)


SCHEMA = Schema(
    "config_set_dropin",
    {
        "dir": Field(absolute_path, required=True, written=path_as_text),
        "file": Field(dropin_name, required=True),
        "key": Field(config_key, required=True),
        "value": Field(scalar_line, required=True),
        "section": Field(section_name),
        "content": Field(text),
        "separator": Field(separator),
    },
    check=_consistent,
)


class ConfigSetDropin(MadeDirs, OneFileStep):
    """Set one key in the drop-in file ``dir/file``, creating the file when it does not exist."""

    name = "config_set_dropin"
    capturable = True
    schema = SCHEMA

    def _want(self, params: Mapping[str, Any]) -> Desired:
        return _desired(SCHEMA.read(params))

    def _dirs(self, host: ReadableHost, want: Desired) -> List[Dict[str, Any]]:
        """The drop-in directory as a record to create, when it is absent."""
        directory = posixpath.dirname(want.path)
        mode = SUDOERS_DIR_MODE if posixpath.basename(directory) == SUDOERS_DIR else DIR_MODE
        return missing_dirs(host, [(directory, mode)], self.name)

    def _text(self, want: Desired, before: Optional[bytes]) -> bytes:
        if want.content is not None:
            return encode(want.content)
        now = decode(before)
        if want.section:
            now = with_section(now, want.section)
        return encode(set_value(now, want.key, want.value, want.separator, want.comments, want.find))

    def _new_mode(self, want: Desired) -> int:
        return SUDOERS_MODE if posixpath.basename(posixpath.dirname(want.path)) == SUDOERS_DIR else 0o644

    def validate(self, host: ReadableHost, params: Mapping[str, Any]) -> bool:
        want = self._want(params)
        data = read_if_any(host, want.path)  # None too when the directory is not there yet
        if want.content is not None:
            return data == encode(want.content)
        return data is not None and _found(want, decode(data)) == want.value.strip()

    def capture(self, host: ReadableHost, params: Mapping[str, Any]) -> PreState:
        want = self._want(params)
        dirs = self._dirs(host, want)
        state = capture_below(host, want.path)
        mode = None if state["exists"] else self._new_mode(want)
        post = post_state(state, self._text(want, state.get("content")), mode=mode)
        return PreState(self.name, params, {**state, "post": post, **dir_data(dirs)})

    def apply(self, host: Host, params: Mapping[str, Any], pre: Optional[PreState]) -> StepResult:
        want = self._want(params)
        make_dirs(host, self._dirs(host, want))
        old = host.read_bytes(want.path)
        new = self._text(want, old)
        if new == old:
            return StepResult(self.name, ok=True, changed=False)
        host.write_file(want.path, new, mode=self._new_mode(want) if old is None else None)
        return StepResult(self.name, ok=True, changed=True, detail=f"set {want.key} in {host.where(want.path)}")

    def written(self, pre: PreState) -> Optional[bytes]:
        return self._text(self._want(pre.params), pre.data.get("content"))

    def revert(self, pre: PreState) -> Optional[Revert]:
        want = self._want(pre.params)
        if want.content is not None:
            return None  # the whole file is the step's
        return revert_key(decode(pre.data.get("content")), want.key, want.value, want.separator, want.comments, want.find)
