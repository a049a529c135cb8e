"""The path resolver under hostile trees: never a path outside the root.

Hypothesis builds a target root holding directories, files with odd names and
symlinks of every kind (absolute and relative, into the root, out of it,
dangling, to themselves, in loops), next to sentinel directories outside the
root, one reachable with ``..`` and one only by absolute path. It then runs
LocalHost's read/info/write/remove/set_meta on paths made of those names,
``..``, ``.`` and empty components. One more test does the same in a private
mount namespace with the sentinels bind-mounted at random places inside the
root (as root only). Each operation must either succeed
touching only what lies inside the root, or refuse with a KensaError; the
sentinels must be byte-for-byte unchanged afterwards, and no read may return
sentinel bytes.

``KENSA_FUZZ_SCALE`` multiplies the example counts (the reliability report
runs this file at a larger size); ``KENSA_FUZZ_REPORT`` names a JSON file to
which the counts of what was tried are written.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import require_audit, require_root
from kensa.hosts.local import LocalHost
from kensa.errors import KensaError

SCALE = int(os.environ.get("KENSA_FUZZ_SCALE", "1"))
FUZZ = settings(
    max_examples=150 * SCALE,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SENTINEL = b"SENTINEL: outside the root\n"
COUNTS: "Counter[str]" = Counter()

NAMES = ["a", "b", "etc", "with space", "caf\u00e9", "\udcff\udc80", "\ud800", "-rf", ".hidden", "x" * 200, "new\nline", "*"]
LINK_KINDS = ["abs_outside", "rel_outside", "abs_outside_file", "rel_outside_file", "abs_inside", "rel_inside",
              "dangling", "self", "loop", "abs_other_sentinel", "root_itself", "dotdot_chain"]


def _fs(name: str) -> bytes:
    return os.fsencode(name)


entries = st.lists(
    st.tuples(
        st.lists(st.sampled_from(NAMES), min_size=1, max_size=3),
        st.sampled_from(["dir", "file", "link"]),
        st.sampled_from(LINK_KINDS),
    ),
    max_size=12,
)
components = st.lists(st.one_of(st.sampled_from(NAMES), st.sampled_from(["..", ".", "", "outside", "secret"])), max_size=6)
OPS = ["info", "read_file", "write_file", "remove_file", "set_meta"]


def operations(plan: List[Tuple[List[str], str, str]]) -> st.SearchStrategy[List[Tuple[str, List[str]]]]:
    """Operations on random paths, and on paths that start with (or are) an entry of the tree."""
    paths = components
    made = [names for names, _, _ in plan]
    if made:
        existing = st.sampled_from(made)
        paths = st.one_of(components, existing, st.tuples(existing, components).map(lambda pair: pair[0] + pair[1]))
    return st.lists(st.tuples(st.sampled_from(OPS), paths), min_size=1, max_size=10)


def _link_target(kind: str, base: Path, root: Path, link: Path) -> str:
    depth = len(link.relative_to(root).parts)  # levels from the link's directory up to base
    up = "../" * depth
    return {
        "abs_outside": str(base / "outside"),
        "rel_outside": up + "outside",
        "abs_outside_file": str(base / "outside" / "secret"),
        "rel_outside_file": up + "outside/secret",
        "abs_inside": str(root / "a"),
        "rel_inside": "a" if depth == 1 else "../" * (depth - 1) + "a",
        "dangling": "does-not-exist",
        "self": link.name,
        "loop": link.name + "-twin",
        "abs_other_sentinel": str(base / "far" / "secret"),
        "root_itself": str(root),
        "dotdot_chain": "../" * (depth + 5),
    }[kind]


def _build(base: Path, plan: List[Tuple[List[str], str, str]]) -> Dict[str, int]:
    """Make the sentinels and the root's entries; returns how many of each kind were made."""
    made: "Counter[str]" = Counter()
    for sentinel in (base / "outside", base / "far"):
        sentinel.mkdir()
        (sentinel / "secret").write_bytes(SENTINEL)
        (sentinel / "secret").chmod(0o640)
        (sentinel / "a").mkdir()
        (sentinel / "a" / "secret").write_bytes(SENTINEL)
    root = base / "root"
    root.mkdir()
    for names, kind, link_kind in plan:
        path = root.joinpath(*names)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if kind == "dir":
                path.mkdir()
            elif kind == "file":
                path.write_bytes(b"inside: " + _fs(str(path.relative_to(root))))
            else:
                os.symlink(_link_target(link_kind, base, root, path), path)
                if link_kind == "loop":
                    os.symlink(path.name, path.with_name(path.name + "-twin"))
                made[f"link:{link_kind}"] += 1
                continue
            made[kind] += 1
        except (OSError, ValueError):
            # A name already taken, a parent that is a file or a link: that tree is just different.
            made["not made"] += 1
    return dict(made)


def _snapshot(top: Path) -> Dict[str, Tuple[int, int, int, Optional[bytes]]]:
    found: Dict[str, Tuple[int, int, int, Optional[bytes]]] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st_ = os.lstat(path)
            data = Path(path).read_bytes() if stat.S_ISREG(st_.st_mode) else None
            found[path] = (st_.st_mode, st_.st_uid, st_.st_gid, data)
    return found


def _lexical_inside(root: Path, path: str) -> Optional[Path]:
    """Where ``path`` lies in the root when every component is a real directory (None: above the root)."""
    parts: List[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                return None
            parts.pop()
        else:
            parts.append(part)
    return root.joinpath(*parts)


def _operate(host: LocalHost, root: Path, op: str, path: str) -> str:
    """Run one operation; returns "ok" or the name of the KensaError it raised."""
    try:
        if op == "info":
            found = host.info(path, content=True)
            assert found is None or found.content is None or SENTINEL not in found.content
        elif op == "read_file":
            found = host.read_file(path)
            assert found is None or found.content is None or SENTINEL not in found.content
        elif op == "write_file":
            host.write_file(path, b"written by the fuzzer\n", mode=0o600)
            target = _lexical_inside(root, path)
            assert target is not None and os.path.realpath(target).startswith(str(root) + os.sep)
            assert not os.path.islink(target) and Path(target).read_bytes() == b"written by the fuzzer\n"
        elif op == "remove_file":
            host.remove_file(path)
        else:
            host.set_meta(path, mode=0o600)
    except KensaError as exc:
        return type(exc).__name__
    return "ok"


@pytest.fixture(scope="module", autouse=True)
def _write_counts() -> Iterator[None]:
    yield
    report = os.environ.get("KENSA_FUZZ_REPORT")
    if report:
        Path(report).write_text(json.dumps(dict(COUNTS), sort_keys=True))


@FUZZ
@given(plan=entries, data=st.data())
def test_operations_stay_inside_the_root(plan: List[Tuple[List[str], str, str]], data: st.DataObject) -> None:
    """read/info/write/remove/set_meta either refuse with a KensaError or touch only files inside the root."""
    ops = data.draw(operations(plan))
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        made = _build(base, plan)
        outside = _snapshot(base / "outside"), _snapshot(base / "far")
        root = base / "root"
        host = LocalHost(str(root))
        COUNTS["trees"] += 1
        COUNTS.update(made)
        for op, parts in ops:
            path = "/" + "/".join(parts)
            outcome = _operate(host, root, op, path)
            COUNTS[f"{op}:{outcome}"] += 1
            COUNTS["operations"] += 1
        assert (_snapshot(base / "outside"), _snapshot(base / "far")) == outside, "a sentinel outside the root changed"


@FUZZ
@given(plan=entries, names=st.lists(st.sampled_from(NAMES + [".."]), min_size=1, max_size=4), link_kind=st.sampled_from(LINK_KINDS))
def test_a_symlink_anywhere_in_the_path_is_refused(plan: List[Tuple[List[str], str, str]], names: List[str], link_kind: str) -> None:
    """A path through a symlink, as a parent or as the final name, is refused by every operation."""
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        _build(base, plan)
        root = base / "root"
        clean = [n for n in names if n != ".."] or ["a"]
        link = root / "via-link"
        os.symlink(_link_target(link_kind, base, root, link), link)
        outside = _snapshot(base / "outside")
        host = LocalHost(str(root))
        for path in ("/via-link", "/via-link/" + "/".join(clean)):
            for op in OPS:
                outcome = _operate(host, root, op, path)
                COUNTS[f"through link:{outcome}"] += 1
                assert outcome != "ok", (op, path, link_kind)
        assert os.path.islink(link)
        assert _snapshot(base / "outside") == outside


def test_the_sentinels_are_reachable_without_the_resolver() -> None:
    """The trees really point outside: following the links with plain open() reaches the sentinels."""
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        _build(base, [(["a"], "link", "rel_outside_file"), (["b"], "link", "abs_outside")])
        assert (base / "root" / "a").read_bytes() == SENTINEL
        assert (base / "root" / "b" / "secret").read_bytes() == SENTINEL
        with pytest.raises(KensaError):
            LocalHost(str(base / "root")).read_file("/a")


@pytest.mark.parametrize("op", OPS)
def test_a_path_that_cannot_be_encoded_is_refused_with_a_kensa_error(op: str) -> None:
    """A path str the file system cannot encode ("/\\ud800") is refused with a KensaError, like one holding NUL."""
    with tempfile.TemporaryDirectory() as tmp:
        host = LocalHost(tmp)
        calls: Dict[str, Callable[[], object]] = {
            "info": lambda: host.info("/\ud800"),
            "read_file": lambda: host.read_file("/\ud800"),
            "write_file": lambda: host.write_file("/\ud800", b"x"),
            "remove_file": lambda: host.remove_file("/\ud800"),
            "set_meta": lambda: host.set_meta("/\ud800", mode=0o600),
        }
        with pytest.raises(KensaError):
            calls[op]()


# Runs inside `unshare -m` (mounts made there never reach the machine's mount table):
# hostile trees as above, plus bind mounts of the sentinels (directories and a file)
# at random places inside the root.
MOUNT_FUZZ = r"""
import ctypes, json, os, sys, tempfile
from collections import Counter
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import test_fuzz_paths as fz
from hypothesis import given, settings, strategies as st
from kensa.hosts.local import LocalHost

libc = ctypes.CDLL(None, use_errno=True)
MS_BIND, MNT_DETACH = 4096, 2
counts = Counter()
sources = ["outside", "far", "outside/secret", "far/a", "outside/a/secret"]
mounts = st.lists(st.tuples(st.lists(st.sampled_from(fz.NAMES[:6]), min_size=1, max_size=3), st.sampled_from(sources)),
                  min_size=1, max_size=3)


def through(root, path, points):
    where = fz._lexical_inside(root, path)
    return where is not None and any(where == p or p in where.parents for p in points)


@settings(max_examples=int(sys.argv[2]), deadline=None, suppress_health_check=list(fz.HealthCheck))
@given(plan=fz.entries, binds=mounts, data=st.data())
def run(plan, binds, data):
    ops = data.draw(fz.operations(plan + [(names, "dir", "") for names, _ in binds]))
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        fz._build(base, plan)
        root = base / "root"
        points = []
        try:
            for names, source in binds:
                dst, src = root.joinpath(*names), base / source
                try:
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    if not os.path.realpath(dst).startswith(str(root) + os.sep) or dst.is_symlink():
                        continue
                    if src.is_dir():
                        dst.mkdir(exist_ok=True)
                    elif not dst.exists():
                        dst.touch()
                except OSError:
                    continue
                if libc.mount(os.fsencode(src), os.fsencode(dst), None, MS_BIND, None) == 0:
                    points.append(Path(os.path.realpath(dst)))
                    counts["bind mounts"] += 1
            before = fz._snapshot(base / "outside"), fz._snapshot(base / "far")
            host = LocalHost(str(root))
            for op, parts in ops:
                path = "/" + "/".join(parts)
                outcome = fz._operate(host, root, op, path)
                crossing = through(root, path, points)
                counts[f"{op}:{'through a mount' if crossing else 'elsewhere'}:{outcome}"] += 1
                assert not (crossing and outcome == "ok"), (op, path, [str(p) for p in points])
            assert (fz._snapshot(base / "outside"), fz._snapshot(base / "far")) == before, "a sentinel changed"
        finally:
            for point in reversed(points):
                if libc.umount2(os.fsencode(point), MNT_DETACH) != 0:
                    raise OSError(ctypes.get_errno(), "umount2", str(point))


run()
print(json.dumps(counts))
"""


def test_bind_mounts_inside_an_image_root_are_never_crossed() -> None:
    """With the sentinels bind-mounted at random places inside the root (directories and a
    file), every operation on a path through a mount point is refused and no sentinel changes."""
    require_root("bind mounts in a private mount namespace")
    if shutil.which("unshare") is None:
        require_audit("unshare (util-linux) is not installed")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    done = subprocess.run(
        ["unshare", "-m", sys.executable, "-c", MOUNT_FUZZ, str(Path(__file__).parent), str(60 * SCALE)],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    counts = json.loads(done.stdout.splitlines()[-1])
    COUNTS.update({f"mounts:{key}": value for key, value in counts.items()})
    assert counts.get("bind mounts", 0) > 0
    assert sum(v for k, v in counts.items() if ":through a mount:" in k) > 0
