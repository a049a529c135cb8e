"""Select files the way a rule's ``find_paths`` / ``find_type`` / ``find_name`` / ``find_args`` or ``glob`` say.

The walk runs through the confined host (:meth:`list_dir`, :meth:`info`), so it has
the host's rules: a symlink is never followed (it is not matched either: chmod on
one would change what it points to), nothing but regular files and directories is
matched, and under an image root a mount point is never entered. On a live host
``-xdev`` keeps the walk on the filesystem of each start path: it does not enter a
mount point listed in the target's ``/proc/<pid>/mountinfo``. The root directory
itself (``find_paths: ["/"]``) is walked but never selected.

``find_args`` is parsed, never passed to a shell or to find(1). Understood: ``!`` /
``-not``, ``-a`` / ``-and``, ``-o`` / ``-or``, ``(`` ``)`` (written ``\\(`` ``\\)`` too),
``-name``, ``-type f|d``, ``-perm MODE|-MODE|/MODE`` (octal or symbolic),
``-user``, ``-group``, ``-uid``/``-gid N|+N|-N``, ``-nouser``, ``-nogroup`` and the
options ``-xdev``, ``-mount``, ``-maxdepth N``, ``-mindepth N``. Anything else
(``-exec``, ``-delete``, ``-fprint``, ``-newer`` ...) is refused naming it.
"""

from __future__ import annotations

import fnmatch
import os
import posixpath
import shlex
from dataclasses import dataclass
from typing import Any, Callable, Dict, FrozenSet, Iterator, List, Optional, Set, Tuple

from kensa.errors import KensaError, ParamError
from kensa.facts.files import read_if_any
from kensa.facts.modes import mode_for, mode_spec
from kensa.facts.params import absolute_path, line
from kensa.hosts.protocol import ReadableHost
from kensa.model import FileInfo

MAX_MATCHED = 10000
"""Most files one step may select; more is refused before anything changes."""

#: Longest ``find_args`` accepted, in characters.
MAX_FIND_ARGS = 4096


@dataclass(frozen=True)
class Entry:
    """One file the walk met: its path inside the root, depth below its start path, and what it is."""

    path: str
    depth: int
    info: FileInfo


Test = Callable[[Entry, "Accounts"], bool]


class Accounts:
    """The target's ids, looked up once per walk."""

    def __init__(self, host: ReadableHost) -> None:
        self._host = host
        self._known: Dict[str, Optional[FrozenSet[int]]] = {}
        self._ids: Dict[Tuple[str, str], int] = {}

    def id_of(self, database: str, name: str) -> int:
        if name.isdigit():
            return int(name)
        key = (database, name)
        if key not in self._ids:
            self._ids[key] = int(self._host.lookup_id(database, name))
        return self._ids[key]

    def listed(self, database: str) -> FrozenSet[int]:
        """Every id ``/etc/passwd`` or ``/etc/group`` lists (what ``-nouser``/``-nogroup`` compare with)."""
        if database not in self._known:
            data = self._host.read_bytes(f"/etc/{database}") or b""
            found = set()
            for text in data.decode("utf-8", "replace").splitlines():
                fields = text.split(":")
                if len(fields) >= 3 and fields[2].isdigit():
                    found.add(int(fields[2]))
            self._known[database] = frozenset(found)
        known = self._known[database]
        assert known is not None
        return known


@dataclass(frozen=True)
class Selection:
    """What a step selects: start paths, the expression, and find's global options."""

    starts: Tuple[str, ...]
    test: Test
    xdev: bool = False
    mindepth: int = 0
    maxdepth: Optional[int] = None


def _number(token: str, option: str) -> int:
    if not token.isdigit() or len(token) > 9:
        raise ParamError(f"find_args: {option} needs a whole number, got {token!r}")
    return int(token)


def _compare_number(spec: str, option: str) -> Callable[[int], bool]:
    sign, digits = (spec[0], spec[1:]) if spec[:1] in ("+", "-") else ("", spec)
    value = _number(digits, option)
    if sign == "+":
        return lambda found: found > value
    if sign == "-":
        return lambda found: found < value
    return lambda found: found == value


def _perm(spec: str) -> Test:
    how, text = (spec[0], spec[1:]) if spec[:1] in ("-", "/") else ("", spec)
    try:
        bits = mode_for(mode_spec(text), 0, False)
    except ParamError as exc:
        raise ParamError(f"find_args: -perm {spec!r}: {exc}") from None
    if how == "-":
        return lambda entry, _: entry.info.mode & bits == bits
    if how == "/":
        # find: /000 matches every file (no bit is required).
        return lambda entry, _: bits == 0 or entry.info.mode & bits != 0
    return lambda entry, _: entry.info.mode == bits


class _Parser:
    """find(1)'s expression grammar over the tokens of ``find_args``."""

    def __init__(self, tokens: List[str]) -> None:
        self.tokens = tokens
        self.at = 0
        self.xdev = False
        self.mindepth = 0
        self.maxdepth: Optional[int] = None

    def _next(self, wanted: str) -> str:
        if self.at >= len(self.tokens):
            raise ParamError(f"find_args: {wanted} is missing at the end")
        token = self.tokens[self.at]
        self.at += 1
        return token

    def parse(self) -> Test:
        if not self.tokens:
            return lambda entry, accounts: True
        test = self._or()
        if self.at < len(self.tokens):
            raise ParamError(f"find_args: unexpected {self.tokens[self.at]!r}")
        return test

    def _or(self) -> Test:
        left = self._and()
        while self.at < len(self.tokens) and self.tokens[self.at] in ("-o", "-or"):
            self.at += 1
            right = self._and()
            left = (lambda a, b: lambda entry, accounts: a(entry, accounts) or b(entry, accounts))(left, right)
        return left

    def _and(self) -> Test:
        left = self._unary()
        while self.at < len(self.tokens) and self.tokens[self.at] not in ("-o", "-or", ")"):
            if self.tokens[self.at] in ("-a", "-and"):
                self.at += 1
            right = self._unary()
            left = (lambda a, b: lambda entry, accounts: a(entry, accounts) and b(entry, accounts))(left, right)
        return left

    def _unary(self) -> Test:
        token = self._next("a test")
        if token in ("!", "-not"):
            inner = self._unary()
            return lambda entry, accounts: not inner(entry, accounts)
        if token == "(":
            inner = self._or()
            if self._next("')'") != ")":
                raise ParamError("find_args: '(' is not closed by ')'")
            return inner
        return self._primary(token)

    def _primary(self, token: str) -> Test:
        if token in ("-xdev", "-mount"):
            self.xdev = True
            return lambda entry, accounts: True
        if token in ("-maxdepth", "-mindepth"):
            value = _number(self._next(f"the number after {token}"), token)
            if token == "-maxdepth":
                self.maxdepth = value
            else:
                self.mindepth = value
            return lambda entry, accounts: True
        if token == "-name":
            pattern = self._next("the pattern after -name")
            return lambda entry, accounts: fnmatch.fnmatchcase(posixpath.basename(entry.path) or "/", pattern)
        if token == "-type":
            return _type_test(self._next("the type after -type"))
        if token == "-perm":
            return _perm(self._next("the mode after -perm"))
        if token in ("-user", "-group"):
            name = self._next(f"the name after {token}")
            database, attribute = ("passwd", "uid") if token == "-user" else ("group", "gid")
            return lambda entry, accounts: getattr(entry.info, attribute) == accounts.id_of(database, name)
        if token in ("-uid", "-gid"):
            compare = _compare_number(self._next(f"the number after {token}"), token)
            attribute = token[1:]
            return lambda entry, accounts: compare(getattr(entry.info, attribute))
        if token in ("-nouser", "-nogroup"):
            database, attribute = ("passwd", "uid") if token == "-nouser" else ("group", "gid")
            return lambda entry, accounts: getattr(entry.info, attribute) not in accounts.listed(database)
        raise ParamError(
            f"find_args: {token!r} is not a test kensa evaluates (it understands -name, -type, -perm, -user, -group, "
            "-uid, -gid, -nouser, -nogroup, -xdev, -maxdepth, -mindepth, !, -a, -o and parentheses; never an action "
            "such as -exec or -delete)", field="find_args",
        )


def _type_test(kind: str) -> Test:
    if kind not in ("f", "d"):
        raise ParamError(f"find_type must be 'f' (regular files) or 'd' (directories), got {kind!r}", field="find_type")
    wanted = "file" if kind == "f" else "dir"
    return lambda entry, accounts: entry.info.kind == wanted


def find_args(value: Any) -> str:
    """The ``find_args`` field: one line that parses as a find expression kensa evaluates."""
    found = line(value)
    if len(found) > MAX_FIND_ARGS:
        raise ParamError(f"is longer than {MAX_FIND_ARGS} characters")
    _parse_args(found)
    return found


def _parse_args(text: str) -> Tuple[_Parser, Test]:
    try:
        tokens = shlex.split(text)
    except ValueError as exc:
        raise ParamError(f"find_args {text[:80]!r} does not split into words: {exc}") from None
    parser = _Parser(tokens)
    return parser, parser.parse()


def find_paths(value: Any) -> Tuple[str, ...]:
    """The ``find_paths`` field: a non-empty list of absolute paths (at most 64)."""
    if not isinstance(value, list) or not value or len(value) > 64:
        raise ParamError(f"must be a list of 1 to 64 absolute paths, got {value!r}"[:200])
    found = []
    for item in value:
        path = absolute_path(item)
        if ".." in path.split("/"):
            raise ParamError(f"{path!r} contains a '..' component; write the path without it")
        found.append(path)
    return tuple(found)


def find_type(value: Any) -> str:
    found = line(value)
    _type_test(found)
    return found


def name_pattern(value: Any) -> str:
    """A file name pattern (``*.so*``, ``ssh_host_*_key``): no '/'."""
    found = line(value)
    if "/" in found:
        raise ParamError(f"{found[:80]!r} is a file name pattern, it must not contain '/'")
    return found


def selection(read: Dict[str, Any]) -> Selection:
    """What the read fields of a step select: ``find_paths`` with its tests, or ``glob`` in ``path``'s directory."""
    if read.get("glob"):
        path = str(read["path"])
        base = posixpath.basename(path)
        directory = posixpath.dirname(path) if any(char in base for char in "*?[") else path
        pattern = str(read["glob"])
        return Selection((directory or "/",), lambda entry, accounts: fnmatch.fnmatchcase(posixpath.basename(entry.path), pattern),
                         mindepth=1, maxdepth=1)
    parser, test = _parse_args(read.get("find_args") or "")
    tests: List[Test] = [test]
    if read.get("find_type"):
        tests.append(_type_test(str(read["find_type"])))
    if read.get("find_name"):
        pattern = str(read["find_name"])
        tests.append(lambda entry, accounts: fnmatch.fnmatchcase(posixpath.basename(entry.path) or "/", pattern))
    return Selection(tuple(read["find_paths"]), lambda entry, accounts: all(test(entry, accounts) for test in tests),
                     parser.xdev, parser.mindepth, parser.maxdepth)


def _mount_points(host: ReadableHost) -> Set[str]:
    # /proc/self is a symlink, which the host never follows. A step phase runs where the
    # host is (in kensa's agent on a target), so its own pid names the same file; a read
    # from elsewhere (a controller's check) falls back to init's mounts.
    data = read_if_any(host, f"/proc/{os.getpid()}/mountinfo") or read_if_any(host, "/proc/1/mountinfo") or b""
    found = set()
    for text in data.decode("utf-8", "replace").splitlines():
        fields = text.split(" ")
        if len(fields) > 4:
            # mountinfo escapes space, tab, newline and backslash as \ooo
            found.add(fields[4].encode("latin-1", "replace").decode("unicode_escape"))
    return found


def _info(host: ReadableHost, path: str) -> Optional[FileInfo]:
    try:
        return host.info(path)
    except KensaError:
        return None  # a symlink, a device, a mount point under an image root: never matched or entered


def walk(host: ReadableHost, chosen: Selection) -> Iterator[Entry]:
    """Every file ``chosen`` selects, start path by start path, in find's pre-order (entries sorted)."""
    accounts = Accounts(host)
    mounts = _mount_points(host) if chosen.xdev and host.is_live else set()
    seen: Set[str] = set()
    for start in chosen.starts:
        start = posixpath.normpath(start)
        # The root directory itself is the target's, not a file in it: walked, never selected.
        top = FileInfo("dir", 0, 0, 0) if start == "/" else _info(host, start)
        if top is None:
            continue
        stack = [Entry(start, 0, top)]
        while stack:
            entry = stack.pop()
            if entry.path != "/" and entry.depth >= chosen.mindepth and entry.path not in seen and chosen.test(entry, accounts):
                seen.add(entry.path)
                yield entry
            if entry.info.kind != "dir" or (chosen.maxdepth is not None and entry.depth >= chosen.maxdepth):
                continue
            if entry.depth > 0 and entry.path in mounts:
                continue  # -xdev: another filesystem starts here
            try:
                names = host.list_dir(entry.path) or []
            except KensaError:
                continue
            below = []
            for name in names:
                path = posixpath.join(entry.path, name)
                info = _info(host, path)
                if info is not None:
                    below.append(Entry(path, entry.depth + 1, info))
            stack.extend(reversed(below))


def selected(host: ReadableHost, chosen: Selection, cap: int = MAX_MATCHED) -> Tuple[List[Entry], int]:
    """(the first ``cap`` entries, how many the walk selected in all)."""
    found: List[Entry] = []
    count = 0
    for entry in walk(host, chosen):
        count += 1
        if count <= cap:
            found.append(entry)
    return found, count

