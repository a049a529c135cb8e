"""The controller keeps the built agent payload between runs, in a private file it checks before use."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Tuple

import pytest

from conftest import require_root
from kensa.hosts.payloadcache import KEEP_COPIES

SRC = Path(__file__).resolve().parents[1] / "src"


def payload_in(cache: Path, src: Path = SRC) -> Tuple[str, str]:
    """(origin, sha256) of the payload a fresh process of the kensa in ``src`` gets, caching in ``cache``."""
    origin, sha256, _ = _payload_with_bootstrap(cache, src)
    return origin, sha256


def _payload_with_bootstrap(cache: Path, src: Path = SRC) -> Tuple[str, str, str]:
    """(origin, sha256, SHA-256 of the agent's command line) of a fresh process's payload."""
    code = ("import hashlib; from kensa.hosts.payload import agent_command, build_payload; p = build_payload(); "
            "print(p.origin); print(p.sha256); print(hashlib.sha256(agent_command(p.sha256)[2].encode()).hexdigest())")
    env = dict(os.environ, PYTHONPATH=str(src), XDG_CACHE_HOME=str(cache))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    origin, sha256, command = done.stdout.splitlines()
    return origin, sha256, command


def kept(cache: Path) -> list:
    return sorted(path.name for path in (cache / "kensa").glob("payload-*.bin"))


def test_a_second_run_of_the_same_kensa_reads_the_payload_it_kept(tmp_path: Path) -> None:
    """The first run builds and keeps the payload (one private file); the next reads it and sends
    exactly the bytes a build gives."""
    first, built = payload_in(tmp_path)
    assert first.startswith("built (absent:") and "; kept: " in first
    assert len(kept(tmp_path)) == 1
    assert (tmp_path / "kensa").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "kensa" / kept(tmp_path)[0]).stat().st_mode & 0o777 == 0o600
    second, cached = payload_in(tmp_path)
    assert second.startswith("cached: ") and cached == built


def test_a_changed_source_names_another_payload_and_the_oldest_copies_are_removed(tmp_path: Path) -> None:
    """Editing a target-side module changes the fingerprint: the payload is built again. Older copies
    stay, the newest KEEP_COPIES in all: two kensa installs of one user (two virtual environments, an
    upgrade being tried) each read their own instead of rebuilding it on every other run."""
    copy = tmp_path / "src"
    shutil.copytree(SRC / "kensa", copy / "kensa", ignore=shutil.ignore_patterns("__pycache__"))
    cache = tmp_path / "cache"
    origins, prints, held = [], [], []
    for edit in range(KEEP_COPIES + 1):
        if edit:
            with open(copy / "kensa" / "facts" / "files.py", "a") as handle:
                handle.write(f"\nEDITED = {edit}\n")
        origin, sha256 = payload_in(cache, copy)
        origins.append(origin)
        prints.append(sha256)
        held.append(kept(cache))
    assert all(origin.startswith("built (absent:") for origin in origins)
    assert len(set(prints)) == KEEP_COPIES + 1
    assert [len(names) for names in held] == [1, 2, 3, 3]
    # The oldest is the one removed; the others are all still there.
    assert set(held[0]) - set(held[-1]) and set(held[2]) & set(held[-1]) == set(held[2]) - set(held[0])


def test_two_installs_of_one_user_each_read_their_own_copy(tmp_path: Path) -> None:
    """Two kensa copies run in turn: each reads the payload it kept, the other's being kept too."""
    first, second = tmp_path / "a", tmp_path / "b"
    for copy, mark in ((first, "a"), (second, "b")):
        shutil.copytree(SRC / "kensa", copy / "kensa", ignore=shutil.ignore_patterns("__pycache__"))
        with open(copy / "kensa" / "facts" / "files.py", "a") as handle:
            handle.write(f"\nINSTALL = {mark!r}\n")
    cache = tmp_path / "cache"
    built = [payload_in(cache, first), payload_in(cache, second)]
    again = [payload_in(cache, first), payload_in(cache, second)]
    assert all(origin.startswith("built (") for origin, _ in built)
    assert all(origin.startswith("cached: ") for origin, _ in again)
    assert [sha for _, sha in again] == [sha for _, sha in built]


def test_a_payload_read_counts_as_new_when_older_ones_are_removed(tmp_path: Path) -> None:
    """The copies kept are the last used, not the last written: an install in use keeps its copy
    while newer builds come and go."""
    copies = []
    for mark in "abcd":
        copy = tmp_path / mark
        shutil.copytree(SRC / "kensa", copy / "kensa", ignore=shutil.ignore_patterns("__pycache__"))
        with open(copy / "kensa" / "facts" / "files.py", "a") as handle:
            handle.write(f"\nINSTALL = {mark!r}\n")
        copies.append(copy)
    cache = tmp_path / "cache"
    for copy in copies[:3]:
        payload_in(cache, copy)
    assert payload_in(cache, copies[0])[0].startswith("cached: ")
    payload_in(cache, copies[3])
    assert payload_in(cache, copies[0])[0].startswith("cached: ")
    assert payload_in(cache, copies[1])[0].startswith("built (absent:")


def test_the_kept_payload_holds_the_bootstrap_of_the_agent_command(tmp_path: Path) -> None:
    """The bootstrap, transformed like the modules, is kept with them: a run reading the kept copy
    starts agents with exactly the command line a build gives."""
    first, built, command = _payload_with_bootstrap(tmp_path)
    second, cached, again = _payload_with_bootstrap(tmp_path)
    assert first.startswith("built (") and second.startswith("cached: ")
    assert (cached, again) == (built, command)


def test_an_edit_that_keeps_the_size_and_modification_time_still_names_another_payload(tmp_path: Path) -> None:
    """The fingerprint reads each source's change time, which a write always sets: an edit of the
    same size whose modification time is put back (as ``touch -r`` would) is still seen, in a
    module and in the bootstrap alike."""
    copy = tmp_path / "src"
    shutil.copytree(SRC / "kensa", copy / "kensa", ignore=shutil.ignore_patterns("__pycache__"))
    cache = tmp_path / "cache"
    _, before, command = _payload_with_bootstrap(cache, copy)
    for relative in ("facts/files.py", "hosts/agent/bootstrap.py"):
        path = copy / "kensa" / relative
        st = path.stat()
        data = path.read_bytes()
        at = data.index(b'"""') + 3  # the docstring's first letter, in the other case
        path.write_bytes(data[:at] + data[at:at + 1].swapcase() + data[at + 1:])
        assert path.stat().st_size == st.st_size
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
        origin, after, changed = _payload_with_bootstrap(cache, copy)
        assert origin.startswith("built (absent:"), relative
        assert (after, changed) != (before, command), relative
        before, command = after, changed


def _damage_body(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage, why", [
    (lambda d, f: os.chmod(d, 0o755), "has mode 0755"),
    (lambda d, f: os.chmod(f, 0o644), "has mode 0644"),
    (lambda d, f: _damage_body(f), "fails its hash"),
])
def test_a_cache_that_cannot_be_trusted_is_not_used(tmp_path: Path, damage: object, why: str) -> None:
    """A cache directory or file others may access, or a copy that fails its hash, is refused (the
    payload is code every target runs) and the payload is built; a refused directory is not written."""
    _, built = payload_in(tmp_path)
    directory = tmp_path / "kensa"
    file = directory / kept(tmp_path)[0]
    damage(directory, file)  # type: ignore[operator]
    origin, sha256 = payload_in(tmp_path)
    assert origin.startswith("built (refused: ") and why in origin and sha256 == built
    if "0755" in why:
        assert "not kept" in origin


def test_a_symlinked_or_foreign_cache_directory_is_refused(tmp_path: Path) -> None:
    """The directory is never reached through a symlink, and one owned by another user is refused."""
    require_root("changing a directory's owner needs root")
    real = tmp_path / "real"
    payload_in(real)
    link = tmp_path / "link"
    link.mkdir()
    (link / "kensa").symlink_to(real / "kensa")
    origin, _ = payload_in(link)
    assert origin.startswith("built (off: cannot open") and "not kept" in origin
    os.chown(real / "kensa", 65534, 65534)
    origin, _ = payload_in(real)
    assert origin.startswith("built (refused: ") and "owned by uid 65534" in origin
