"""Reading a file's attributes on a target: its mode, owner and group, and account names."""

from __future__ import annotations

import errno
from typing import Any, Callable, List, Optional, Sequence, TypeVar, Union

from kensa.errors import HostAccessError, KensaError, ParamError, PathEscapeError
from kensa.hosts.protocol import ReadableHost

T = TypeVar("T")


def resolve_account(host: ReadableHost, field: str, value: Union[int, str, None]) -> Optional[int]:
    """The numeric id of an ``owner`` (in the target's /etc/passwd) or ``group`` (/etc/group)
    read by :func:`kensa.facts.params.account`; None when not given."""
    if value is None or isinstance(value, int):
        return value
    try:
        return int(host.lookup_id("passwd" if field == "owner" else "group", value))
    except KensaError as exc:
        raise ParamError(f"{field} {value!r}: {exc}", field=field, problem=str(exc)) from exc


def existing(host: ReadableHost, path: str, owner: str) -> Any:
    """The FileInfo of ``path``, which must exist."""
    found = host.info(path)
    if found is None:
        raise HostAccessError(errno.ENOENT, f"{owner}: {host.where(path)} does not exist")
    return found


def attributes_hold(host: ReadableHost, path: str, mode: Optional[int], uid: Optional[int], gid: Optional[int], owner: str) -> bool:
    """Whether ``path`` exists with the attributes asked for (None: any)."""
    found = existing(host, path, owner)
    return (mode is None or found.mode == mode) and (uid is None or found.uid == uid) and (gid is None or found.gid == gid)


def real_dirs(host: ReadableHost, candidates: Sequence[str]) -> List[str]:
    """Those of ``candidates`` that are directories on ``host``. One reached through a
    symlink (``/lib`` -> ``usr/lib`` on a merged-/usr system) is left out: kensa never
    follows links, and its target is among the candidates under its real name."""
    found = []
    for path in candidates:
        try:
            info = host.info(path)
        except PathEscapeError:
            continue
        except HostAccessError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                continue  # a directory on the way is missing (an image root without /run)
            raise
        if info is not None and info.kind == "dir":
            found.append(path)
    return found


def if_any(read: Callable[[str], T], path: str) -> Optional[T]:
    """``read(path)``; None when ``path``, or a directory on the way to it, does not exist."""
    try:
        return read(path)
    except HostAccessError as exc:
        if exc.errno == errno.ENOENT:
            return None
        raise


def read_if_any(host: ReadableHost, path: str) -> Optional[bytes]:
    """The bytes of ``path``; None when it, or a directory on the way to it, does not exist."""
    return if_any(host.read_bytes, path)
