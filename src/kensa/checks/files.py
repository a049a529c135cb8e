"""Checks of files: existence, attributes, content."""

from __future__ import annotations

import re
from typing import Any, Mapping

from kensa.checks.method import CheckMethod
from kensa.facts.config import decode
from kensa.facts.files import attributes_hold, resolve_account
from kensa.facts.params import OWNERSHIP, PATH, Field, Schema, regex
from kensa.hosts.protocol import ReadableHost

_PATH_ONLY = {"path": PATH}
_CONTENT = {"path": PATH, "pattern": Field(regex, required=True)}


def _permission(host: ReadableHost, fields: Mapping[str, Any]) -> bool:
    uid = resolve_account(host, "owner", fields["owner"])
    gid = resolve_account(host, "group", fields["group"])
    return attributes_hold(host, fields["path"], fields["mode"], uid, gid, "file_permission")


def _matches(host: ReadableHost, fields: Mapping[str, Any]) -> bool:
    data = host.read_bytes(fields["path"])
    return data is not None and re.search(fields["pattern"], decode(data), re.MULTILINE) is not None


METHODS = (
    CheckMethod(
        Schema("file_permission", {"path": PATH, **OWNERSHIP}, at_least_one_of=("mode", "owner", "group")),
        _permission,
    ),
    CheckMethod(Schema("file_exists", _PATH_ONLY), lambda host, fields: host.info(fields["path"]) is not None),
    CheckMethod(Schema("file_not_exists", _PATH_ONLY), lambda host, fields: host.read_file(fields["path"]) is None),
    CheckMethod(Schema("file_content_match", _CONTENT), _matches),
    CheckMethod(Schema("file_content_no_match", _CONTENT), lambda host, fields: not _matches(host, fields)),
)
