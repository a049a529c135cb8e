"""Checks of files: existence, attributes, content.

A file that is missing makes a check of its attributes or content not compliant,
saying so; an unreadable one (a symlink kensa does not follow, a path escaping the
root, a file above the size cap) is a fault with the host's own message.
"""

from __future__ import annotations

from typing import Any, List, Mapping

from kensa.checks.method import CheckMethod, holds_if, not_compliant
from kensa.checks.patterns import extended_regex, search
from kensa.facts.config import glob_files
from kensa.facts.files import resolve_account
from kensa.facts.params import OWNERSHIP, PATH, Field, Schema, text
from kensa.hosts.protocol import ReadableHost
from kensa.model import FileInfo, Finding

_PATH_ONLY = {"path": PATH}
_CONTENT = {"path": PATH, "pattern": Field(extended_regex, required=True)}


def _differences(host: ReadableHost, path: str, found: FileInfo, fields: Mapping[str, Any], uid: Any, gid: Any) -> List[str]:
    wrong = []
    if fields["mode"] is not None and found.mode != fields["mode"]:
        wrong.append(f"mode is {found.mode:04o}, expected {fields['mode']:04o}")
    if uid is not None and found.uid != uid:
        wrong.append(f"owner is uid {found.uid}, expected {fields['owner']} (uid {uid})")
    if gid is not None and found.gid != gid:
        wrong.append(f"group is gid {found.gid}, expected {fields['group']} (gid {gid})")
    return [f"{host.where(path)}: {', '.join(wrong)}"] if wrong else []


def _permission(host: ReadableHost, fields: Mapping[str, Any]) -> Finding:
    uid = resolve_account(host, "owner", fields["owner"])
    gid = resolve_account(host, "group", fields["group"])
    pattern = fields["path"]
    paths = glob_files(host, pattern) if any(c in pattern for c in "*?[") else [pattern]
    if not paths:
        return holds_if(True, f"no file matches {host.where(pattern)}")
    wrong: List[str] = []
    for path in paths:
        found = host.info(path)
        if found is None:
            return not_compliant(f"{host.where(path)}: no such file")
        wrong += _differences(host, path, found, fields, uid, gid)
    if wrong:
        return not_compliant("; ".join(wrong))
    return holds_if(True, f"{len(paths)} file(s) matching {host.where(pattern)} have the expected attributes"
                    if len(paths) > 1 else f"{host.where(paths[0])}: attributes as expected")


def _exists(host: ReadableHost, fields: Mapping[str, Any]) -> Finding:
    found = host.info(fields["path"])
    where = host.where(fields["path"])
    return holds_if(found is not None, f"{where}: exists ({found.kind})" if found else f"{where}: no such file")


def _absent(host: ReadableHost, fields: Mapping[str, Any]) -> Finding:
    return holds_if(not _exists(host, fields).holds, _exists(host, fields).detail)


def _matches(host: ReadableHost, fields: Mapping[str, Any], want: bool) -> Finding:
    where = host.where(fields["path"])
    data = host.read_bytes(fields["path"])
    if data is None:
        return holds_if(not want, f"{where}: no such file")
    found = search(fields["pattern"], data)
    said = "a line matches" if found else "no line matches"
    return holds_if(found == want, f"{where}: {said} {fields['pattern']!r}")


def _content(host: ReadableHost, fields: Mapping[str, Any]) -> Finding:
    where = host.where(fields["path"])
    data = host.read_bytes(fields["path"])
    if data is None:
        return not_compliant(f"{where}: no such file")
    wanted = fields["expected_content"].encode("utf-8", "surrogateescape")
    return holds_if(wanted in data, f"{where}: {'holds' if wanted in data else 'does not hold'} the expected content")


_PERMISSION_SCHEMA = {"path": PATH, **OWNERSHIP}

METHODS = (
    CheckMethod(Schema("file_permission", _PERMISSION_SCHEMA, at_least_one_of=("mode", "owner", "group")), _permission),
    CheckMethod(Schema("file_permissions", _PERMISSION_SCHEMA, at_least_one_of=("mode", "owner", "group")), _permission),
    CheckMethod(Schema("file_exists", _PATH_ONLY), _exists),
    CheckMethod(Schema("file_absent", _PATH_ONLY), _absent),
    CheckMethod(Schema("file_not_exists", _PATH_ONLY), _absent),
    CheckMethod(Schema("file_content_match", _CONTENT), lambda host, fields: _matches(host, fields, True)),
    CheckMethod(Schema("file_content_no_match", _CONTENT), lambda host, fields: _matches(host, fields, False)),
    CheckMethod(Schema("file_content", {"path": PATH, "expected_content": Field(text, required=True)}), _content),
)
