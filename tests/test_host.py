"""LocalHost: confinement to the target root, atomic writes, kept metadata."""

from __future__ import annotations

import errno
import os
import pickle
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Callable, List

import pytest

from conftest import require_root
from kensa.hosts.local import LocalHost, resolve_host
from kensa.errors import HostAccessError, HostSelectionError, KensaError, PathEscapeError


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "root" / "etc").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret").write_text("outside\n")
    return tmp_path / "root"


def test_paths_resolve_inside_the_root(root: Path) -> None:
    """An absolute path names a file under the root, never the same path on the machine."""
    host = LocalHost(str(root))
    host.write_file("/etc/kensa-test", b"data\n")
    assert (root / "etc" / "kensa-test").read_bytes() == b"data\n"
    assert not os.path.exists("/etc/kensa-test")
    assert host.read_bytes("/etc/./x/../kensa-test") == b"data\n"


def test_dotdot_above_the_root_is_refused(root: Path) -> None:
    """A '..' that would climb above the root is refused, naming the path and the component."""
    host = LocalHost(str(root))
    with pytest.raises(PathEscapeError) as caught:
        host.read_bytes("/etc/../../outside/secret")
    assert caught.value.component == ".."
    assert "/etc/../../outside/secret" in str(caught.value)
    assert isinstance(caught.value, KensaError) and isinstance(caught.value, PermissionError)


@pytest.mark.parametrize("target_kind", ["absolute-outside", "relative-outside", "inside"])
def test_a_symlinked_parent_is_refused(root: Path, target_kind: str) -> None:
    """A symlink in a parent component is refused wherever it points, and nothing is written."""
    target = {
        "absolute-outside": str(root.parent / "outside"),
        "relative-outside": "../../outside",
        "inside": "../etc",
    }[target_kind]
    (root / "etc" / "d").symlink_to(target)
    host = LocalHost(str(root))
    with pytest.raises(PathEscapeError) as caught:
        host.write_file("/etc/d/secret", b"owned\n")
    assert caught.value.component == "d"
    assert target in str(caught.value)
    assert (root.parent / "outside" / "secret").read_text() == "outside\n"
    assert sorted(os.listdir(root / "etc")) == ["d"]


def test_a_symlink_as_final_component_is_never_read_or_written_through(root: Path) -> None:
    """Reading, chmod and removal through a final symlink are refused; the link target is untouched."""
    (root / "etc" / "link").symlink_to(root.parent / "outside" / "secret")
    os.chmod(root.parent / "outside" / "secret", 0o644)
    host = LocalHost(str(root))
    calls: List[Callable[[], object]] = [
        lambda: host.read_bytes("/etc/link"),
        lambda: host.set_meta("/etc/link", mode=0o600),
        lambda: host.remove_file("/etc/link"),
        lambda: host.write_in_place("/etc/link", b"x"),
    ]
    for call in calls:
        with pytest.raises(PathEscapeError):
            call()
    assert (root.parent / "outside" / "secret").read_text() == "outside\n"
    assert stat.S_IMODE(os.stat(root.parent / "outside" / "secret").st_mode) == 0o644
    assert (root / "etc" / "link").is_symlink()


def test_write_file_refuses_a_final_symlink(root: Path) -> None:
    """write_file refuses a symlink at the final name: the link and its target stay as they were."""
    (root / "etc" / "link").symlink_to(root.parent / "outside" / "secret")
    with pytest.raises(PathEscapeError) as caught:
        LocalHost(str(root)).write_file("/etc/link", b"new\n")
    assert caught.value.component == "link"
    assert (root.parent / "outside" / "secret").read_text() == "outside\n"
    assert (root / "etc" / "link").is_symlink()
    assert sorted(os.listdir(root / "etc")) == ["link"]


def test_rewrite_keeps_mode_owner_and_xattrs(root: Path) -> None:
    """Rewriting a file keeps its mode, owner, group and xattrs, and leaves no temporary file."""
    path = root / "etc" / "conf"
    path.write_bytes(b"old\n")
    if os.geteuid() == 0:
        os.chown(path, 1234, 2345)
    os.chmod(path, 0o4750)
    os.setxattr(path, "user.kensa", b"label")
    before = os.stat(path)
    LocalHost(str(root)).write_file("/etc/conf", b"new\n")
    after = os.stat(path)
    assert path.read_bytes() == b"new\n"
    assert stat.S_IMODE(after.st_mode) == 0o4750
    assert (after.st_uid, after.st_gid) == (before.st_uid, before.st_gid)
    assert os.getxattr(path, "user.kensa") == b"label"
    assert sorted(os.listdir(root / "etc")) == ["conf"]


def test_write_file_sets_asked_attributes_and_exact_xattrs(root: Path) -> None:
    """Given mode, owner and xattrs replace the old ones exactly (extra xattrs are dropped)."""
    path = root / "etc" / "conf"
    path.write_bytes(b"old\n")
    os.setxattr(path, "user.old", b"1")
    uid = 1234 if os.geteuid() == 0 else os.geteuid()
    LocalHost(str(root)).write_file("/etc/conf", b"x", mode=0o600, uid=uid, gid=os.getegid(), xattrs={"user.new": b"2"})
    st = os.stat(path)
    assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o600, uid)
    assert os.listxattr(path) == ["user.new"]


def test_a_new_file_gets_0644(root: Path) -> None:
    """A file created without a mode gets 0644 whatever the process umask."""
    old = os.umask(0o077)
    try:
        LocalHost(str(root)).write_file("/etc/new", b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(root / "etc" / "new").st_mode) == 0o644


def test_a_missing_parent_is_a_clear_error(root: Path) -> None:
    """Writing under a directory that does not exist fails naming it, and creates nothing."""
    with pytest.raises(HostAccessError) as caught:
        LocalHost(str(root)).write_file("/etc/nope/file", b"x")
    assert "'nope' does not exist" in str(caught.value)
    assert sorted(os.listdir(root / "etc")) == []


def test_info_and_removal_refuse_special_files(root: Path) -> None:
    """A FIFO at the path is refused (and reading it does not hang); removal refuses directories."""
    os.mkfifo(root / "etc" / "fifo")
    (root / "etc" / "dir").mkdir()
    host = LocalHost(str(root))
    with pytest.raises(HostAccessError):
        host.info("/etc/fifo")
    with pytest.raises(HostAccessError):
        host.remove_file("/etc/dir")
    assert (root / "etc" / "dir").is_dir()
    assert host.info("/etc/absent") is None


SPECIAL_FILE_OPS = {
    "info": "host.info(path)",
    "read_bytes": "host.read_bytes(path)",
    "write_in_place": "host.write_in_place(path, b'1\\n')",
    "set_meta": "host.set_meta(path, mode=0o600)",
    "write_file": "host.write_file(path, b'x')",
}
SPECIAL_FILE_SCRIPT = """
import sys
from kensa.hosts.local import LocalHost
from kensa.errors import KensaError
host, path = LocalHost(sys.argv[1]), sys.argv[2]
try:
    {op}
    print("no error")
except KensaError as exc:
    print("KensaError:", exc)
"""


def plant_special_file(where: Path, kind: str) -> None:
    if kind == "fifo":
        os.mkfifo(where)
    else:
        require_root("creating a device node")
        os.mknod(where, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # the numbers of /dev/null


@pytest.mark.parametrize("op", sorted(SPECIAL_FILE_OPS))
@pytest.mark.parametrize("kind", ["fifo", "chardev"])
def test_a_fifo_or_device_node_is_refused_without_hanging(root: Path, kind: str, op: str) -> None:
    """A FIFO (with no reader) or a device node planted at a path is refused with a KensaError
    naming what it is, by every operation; nothing blocks and the node is left as it was."""
    (root / "proc/sys/net").mkdir(parents=True)
    node = root / "proc/sys/net/knob"
    plant_special_file(node, kind)
    before = os.lstat(node)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    try:
        done = subprocess.run(
            [sys.executable, "-c", SPECIAL_FILE_SCRIPT.format(op=SPECIAL_FILE_OPS[op]), str(root), "/proc/sys/net/knob"],
            capture_output=True, text=True, env=env, timeout=60,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"{op} on a {kind} blocked")
    assert done.stdout.startswith("KensaError:"), done.stdout + done.stderr
    expected = "a FIFO" if kind == "fifo" else "a character device"
    assert expected in done.stdout and "/proc/sys/net/knob" in done.stdout
    after = os.lstat(node)
    assert (after.st_mode, after.st_rdev, after.st_ino) == (before.st_mode, before.st_rdev, before.st_ino)


def test_write_in_place_refuses_a_directory_and_truncates_nothing_else(root: Path) -> None:
    """write_in_place writes a regular file from its start, replacing all old bytes, and
    refuses a directory with a HostAccessError."""
    (root / "etc" / "knob").write_text("a longer old value\n")
    host = LocalHost(str(root))
    host.write_in_place("/etc/knob", b"1\n")
    assert (root / "etc" / "knob").read_bytes() == b"1\n"
    with pytest.raises(HostAccessError):
        host.write_in_place("/etc", b"1\n")


def test_a_hard_linked_file_is_not_changed_in_place_under_an_image_root(root: Path) -> None:
    """set_meta and write_in_place act on the inode, which a hard link outside the root shares:
    on an image root they refuse a file with several links; write_file replaces the entry instead."""
    outside = root.parent / "outside" / "secret"
    os.chmod(outside, 0o600)
    os.link(outside, root / "etc" / "linked")
    host = LocalHost(str(root))
    for call in (lambda: host.set_meta("/etc/linked", mode=0o644), lambda: host.write_in_place("/etc/linked", b"x\n")):
        with pytest.raises(HostAccessError) as caught:
            call()
        assert "2 hard links" in str(caught.value) and "/etc/linked" in str(caught.value)
    assert stat.S_IMODE(os.stat(outside).st_mode) == 0o600 and outside.read_text() == "outside\n"
    host.write_file("/etc/linked", b"mine\n")
    assert outside.read_text() == "outside\n" and os.stat(outside).st_nlink == 1
    host.set_meta("/etc/linked", mode=0o644)  # its own inode now
    assert stat.S_IMODE(os.stat(outside).st_mode) == 0o600


def test_a_root_replaced_by_a_file_gives_a_kensa_error(root: Path) -> None:
    """When the root directory is deleted and a file put in its place after the host was made,
    every operation raises a HostAccessError (a KensaError), never a bare OSError."""
    (root / "etc" / "conf").write_text("x\n")
    host = LocalHost(str(root))
    shutil.rmtree(root)
    root.write_text("not a directory\n")
    calls: List[Callable[[], object]] = [
        lambda: host.info("/etc/conf"),
        lambda: host.read_bytes("/etc/conf"),
        lambda: host.write_file("/etc/conf", b"y\n"),
        lambda: host.write_in_place("/etc/conf", b"y\n"),
        lambda: host.set_meta("/etc/conf", mode=0o600),
        lambda: host.remove_file("/etc/conf"),
        lambda: host.write_file("/new", b"y\n"),
    ]
    for call in calls:
        with pytest.raises(HostAccessError):
            call()
    assert root.read_text() == "not a directory\n"


def test_an_ancestor_swapped_for_a_symlink_does_not_redirect_writes(tmp_path: Path) -> None:
    """The root is held open from construction: swapping an ancestor (or the root itself) for a
    symlink afterwards leaves kensa writing in the tree it resolved, never the link's target."""
    (tmp_path / "images" / "img" / "etc").mkdir(parents=True)
    (tmp_path / "elsewhere" / "img" / "etc").mkdir(parents=True)
    host = LocalHost(str(tmp_path / "images" / "img"))
    (tmp_path / "images").rename(tmp_path / "images.old")
    (tmp_path / "images").symlink_to(tmp_path / "elsewhere")
    host.write_file("/etc/motd", b"hello\n")
    assert (tmp_path / "images.old" / "img" / "etc" / "motd").read_bytes() == b"hello\n"
    assert os.listdir(tmp_path / "elsewhere" / "img" / "etc") == []


def test_an_os_error_inside_an_operation_is_a_host_access_error(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An I/O error from any system call of an operation reaches the caller as a HostAccessError
    naming the path, with the errno kept."""
    (root / "etc" / "conf").write_text("x\n")
    host = LocalHost(str(root))

    def failing_listxattr(*args: object) -> List[str]:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "listxattr", failing_listxattr)
    with pytest.raises(HostAccessError) as caught:
        host.info("/etc/conf")
    assert caught.value.errno == errno.EIO and "/etc/conf" in str(caught.value)


def test_a_host_pickles_as_its_root(root: Path) -> None:
    """A LocalHost sent to another process (pickled) resolves its root again there and works."""
    (root / "etc" / "conf").write_text("x\n")
    copy = pickle.loads(pickle.dumps(LocalHost(str(root))))
    assert copy.root == os.path.realpath(root) and copy.read_bytes("/etc/conf") == b"x\n"


def test_lookup_id_reads_the_target_roots_databases(root: Path) -> None:
    """Owner and group names resolve in the root's /etc/passwd and /etc/group, not the machine's."""
    (root / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\nalice:x:1234:1234::/home/alice:/bin/sh\n")
    (root / "etc" / "group").write_text("staff:x:2345:\n")
    host = LocalHost(str(root))
    assert host.lookup_id("passwd", "alice") == 1234
    assert host.lookup_id("group", "staff") == 2345
    with pytest.raises(HostAccessError):
        host.lookup_id("passwd", "staff")


def test_resolve_host_maps_keys_to_roots(root: Path) -> None:
    """'localhost' is "/", an absolute directory is that root, anything else is refused."""
    assert resolve_host("localhost").root == "/"
    assert resolve_host("localhost").is_live
    assert resolve_host(str(root)).root == os.path.realpath(root)
    assert not resolve_host(str(root)).is_live
    for bad in ("server1", "relative/dir", str(root / "missing"), str(root.parent / "outside" / "secret")):
        with pytest.raises(HostSelectionError):
            resolve_host(bad)


def test_run_takes_an_argument_list_without_a_shell(root: Path) -> None:
    """run passes arguments verbatim (no shell expansion) and reports a missing command clearly."""
    host = LocalHost(str(root))
    done = host.run(["echo", "$HOME;", "*"], 10)
    assert done.stdout == "$HOME; *\n"
    with pytest.raises(HostAccessError):
        host.run(["kensa-no-such-command"], 10)


@pytest.mark.parametrize("length", [235, 236, 250, 255])
def test_names_up_to_name_max_are_written_atomically(root: Path, length: int) -> None:
    """write_file works for every name the filesystem allows (up to 255 bytes, multibyte
    characters included): the temporary name always fits NAME_MAX, and none is left behind."""
    for name in ("n" * length, "\u00e9" * (length // 2) + "x" * (length % 2)):
        assert len(os.fsencode(name)) == length
        host = LocalHost(str(root))
        host.write_file(f"/etc/{name}", b"one\n")
        host.write_file(f"/etc/{name}", b"two\n")
        assert (root / "etc" / name).read_bytes() == b"two\n"
        assert os.listdir(root / "etc") == [name]
        os.unlink(root / "etc" / name)


KILLED_WRITE = """
import os, signal, sys
from kensa.hosts.local import LocalHost
host, path = LocalHost(sys.argv[1]), sys.argv[2]
real_fsync = os.fsync
def fsync_then_die(fd):
    real_fsync(fd)
    os.kill(os.getpid(), signal.SIGKILL)
os.fsync = fsync_then_die  # the first fsync is of the temporary file, before the rename
host.write_file(path, b"half-done\\n")
"""


@pytest.mark.parametrize("length", [11, 255])
def test_a_write_killed_before_its_rename_leaves_a_temp_that_kensa_finds_and_removes(root: Path, length: int) -> None:
    """A process SIGKILLed between creating its temporary file and renaming it leaves the temp;
    leftover_temps names exactly that file, remove_leftover_temps removes it and says so, and
    the target keeps its old bytes."""
    name = ("sshd_config" + "x" * 255)[:length]
    (root / "etc" / name).write_bytes(b"old\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    done = subprocess.run([sys.executable, "-c", KILLED_WRITE, str(root), f"/etc/{name}"], env=env, timeout=60)
    assert done.returncode == -9
    [temp] = [entry for entry in os.listdir(root / "etc") if entry != name]
    host = LocalHost(str(root))
    assert host.leftover_temps(f"/etc/{name}") == [f"/etc/{temp}"]
    assert host.remove_leftover_temps(f"/etc/{name}") == [f"/etc/{temp}"]
    assert os.listdir(root / "etc") == [name] and (root / "etc" / name).read_bytes() == b"old\n"
    assert host.leftover_temps(f"/etc/{name}") == [] and host.remove_leftover_temps(f"/etc/{name}") == []


def test_leftover_temps_match_only_kensas_own_names_and_never_follow_symlinks(root: Path) -> None:
    """Only regular files named exactly as kensa names a temp of that file count: other files'
    temps, near-miss names, a directory and a symlink with a matching name (and its target) are
    left alone."""
    etc = root / "etc"
    (etc / "sshd_config").write_text("conf\n")
    mine = ".sshd_config.kensa-0123456789ab"
    (etc / mine).write_text("temp\n")
    keep = [".sshd_config.kensa-0123456789a", ".sshd_config.kensa-0123456789abc", ".sshd_config.kensa-0123456789AB",
            ".other.kensa-0123456789ab", "sshd_config.kensa-0123456789ab", ".sshd_config.kensa-01234567890g"]
    for other in keep:
        (etc / other).write_text("not kensa's\n")
    (etc / ".sshd_config.kensa-aaaaaaaaaaaa").mkdir()
    (etc / ".sshd_config.kensa-bbbbbbbbbbbb").symlink_to(root.parent / "outside" / "secret")
    host = LocalHost(str(root))
    assert host.leftover_temps("/etc/sshd_config") == [f"/etc/{mine}"]
    assert host.remove_leftover_temps("/etc/sshd_config") == [f"/etc/{mine}"]
    assert sorted(os.listdir(etc)) == sorted(keep + ["sshd_config", ".sshd_config.kensa-aaaaaaaaaaaa",
                                                      ".sshd_config.kensa-bbbbbbbbbbbb"])
    assert (root.parent / "outside" / "secret").read_text() == "outside\n"
    with pytest.raises(PathEscapeError):
        host.leftover_temps("/../outside/secret")
    assert host.leftover_temps("/etc/missing-dir/conf") == [] and host.remove_leftover_temps("/etc/missing-dir/conf") == []
    (etc / "plain").write_text("x\n")
    with pytest.raises(HostAccessError):
        host.leftover_temps("/etc/plain/conf")  # a file where a directory should be is not "nothing there"


def test_files_above_the_size_cap_are_refused_before_loading(root: Path) -> None:
    """read_file, read_bytes and info(content=True) refuse a file above max_file_bytes with a
    HostAccessError naming the path, its size and the cap; a file at the cap and metadata-only
    info still work, and nothing is changed."""
    (root / "etc" / "big").write_bytes(b"x" * 1001)
    (root / "etc" / "fits").write_bytes(b"y" * 1000)
    host = LocalHost(str(root), max_file_bytes=1000)
    calls: List[Callable[[], object]] = [
        lambda: host.read_file("/etc/big"), lambda: host.read_bytes("/etc/big"), lambda: host.info("/etc/big", content=True),
    ]
    for call in calls:
        with pytest.raises(HostAccessError) as caught:
            call()
        message = str(caught.value)
        assert caught.value.errno == errno.EFBIG and "/etc/big" in message and "1001 bytes" in message and "1000" in message
    assert host.read_bytes("/etc/fits") == b"y" * 1000
    found = host.info("/etc/big")
    assert found is not None and found.content is None
    assert (root / "etc" / "big").read_bytes() == b"x" * 1001


def test_the_cap_holds_for_files_whose_size_stat_does_not_tell() -> None:
    """A procfs file reports size 0; its bytes still count against the cap while read."""
    status = f"/proc/{os.getpid()}/status"
    host = LocalHost("/", max_file_bytes=16)
    with pytest.raises(HostAccessError) as caught:
        host.read_bytes(status)
    assert "more than 16 bytes" in str(caught.value) and status in str(caught.value)
    assert LocalHost("/").read_bytes(status)


def test_the_default_cap_and_bad_caps(root: Path) -> None:
    """The default cap is 64 MiB and travels with a pickled host; a cap that is not a
    non-negative integer is refused naming it."""
    from kensa.hosts.local import DEFAULT_MAX_FILE_BYTES

    assert DEFAULT_MAX_FILE_BYTES == 64 << 20 and LocalHost(str(root)).max_file_bytes == DEFAULT_MAX_FILE_BYTES
    assert pickle.loads(pickle.dumps(LocalHost(str(root), max_file_bytes=5))).max_file_bytes == 5
    assert resolve_host(str(root), max_file_bytes=7).max_file_bytes == 7
    for bad in (-1, True, "10", 1.5, None):
        with pytest.raises(HostSelectionError) as caught:
            LocalHost(str(root), max_file_bytes=bad)  # type: ignore[arg-type]
        assert "max_file_bytes" in str(caught.value) and repr(bad) in str(caught.value)


PEAK_READ = """
import resource, sys
from kensa.hosts.local import LocalHost
host = LocalHost(sys.argv[1], max_file_bytes=1 << 30)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
data = host.read_bytes("/etc/big")
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(len(data), (after - before) * 1024)
"""


def test_reading_a_large_file_holds_its_bytes_about_once(root: Path) -> None:
    """Loading a 128 MiB file raises the process's peak memory by about its size, not a
    multiple of it (no chunk list joined into a second copy)."""
    size = 128 << 20
    if shutil.disk_usage(root).free < 2 * size:
        pytest.skip("not enough free space for a 128 MiB file")
    with open(root / "etc" / "big", "wb") as out:
        out.truncate(size)  # sparse: the read still materialises every byte
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    done = subprocess.run([sys.executable, "-c", PEAK_READ, str(root)], capture_output=True, text=True, env=env, timeout=120)
    length, grew = map(int, done.stdout.split())
    assert length == size
    assert grew < 1.3 * size, f"peak memory grew by {grew / size:.2f}x the file size"


def test_info_reports_mtime_inode_and_link_count(root: Path) -> None:
    """FileInfo carries the modification time in ns, the inode number and the hard link count,
    for files and directories, so a rollback can restore the time and say what it cannot restore."""
    path = root / "etc" / "conf"
    path.write_text("x\n")
    os.link(path, root / "etc" / "second")
    os.utime(path, ns=(1_000_000_000, 1_234_567_891_234_567_890))
    host = LocalHost(str(root))
    found = host.info("/etc/conf")
    st = os.stat(path)
    assert found is not None and (found.mtime_ns, found.ino, found.nlink) == (1_234_567_891_234_567_890, st.st_ino, 2)
    folder = host.info("/etc")
    assert folder is not None and folder.mtime_ns == os.stat(root / "etc").st_mtime_ns and folder.ino == os.stat(root / "etc").st_ino


def test_write_file_and_set_meta_set_the_modification_time(root: Path) -> None:
    """mtime_ns given to write_file or set_meta becomes the file's (or directory's) modification
    time exactly; write_file without it gives the new bytes a new time, as any write does."""
    path = root / "etc" / "conf"
    path.write_text("old\n")
    os.utime(path, ns=(5, 1_000_000_000_000_000_007))
    host = LocalHost(str(root))
    host.write_file("/etc/conf", b"new\n")
    assert os.stat(path).st_mtime_ns != 1_000_000_000_000_000_007
    host.write_file("/etc/conf", b"restored\n", mtime_ns=1_000_000_000_000_000_007)
    assert path.read_bytes() == b"restored\n" and os.stat(path).st_mtime_ns == 1_000_000_000_000_000_007
    host.write_file("/etc/fresh", b"x", mtime_ns=-3_000_000_001)
    assert os.stat(root / "etc" / "fresh").st_mtime_ns == -3_000_000_001
    host.set_meta("/etc/conf", mode=0o600, mtime_ns=42)
    assert os.stat(path).st_mtime_ns == 42 and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    host.set_meta("/etc", mtime_ns=43)
    assert os.stat(root / "etc").st_mtime_ns == 43


def test_a_bad_mtime_is_refused_before_anything_changes(root: Path) -> None:
    """An mtime_ns that is not an integer nanosecond count in range is refused naming the path;
    the file keeps its bytes, mode and time."""
    path = root / "etc" / "conf"
    path.write_text("old\n")
    os.chmod(path, 0o644)
    os.utime(path, ns=(5, 77))
    host = LocalHost(str(root))
    for bad in (1.5, "77", True, 1 << 63):
        for call in (lambda: host.write_file("/etc/conf", b"new\n", mtime_ns=bad),  # type: ignore[arg-type]
                     lambda: host.set_meta("/etc/conf", mode=0o600, mtime_ns=bad)):  # type: ignore[arg-type]
            with pytest.raises(HostAccessError) as caught:
                call()
            assert "mtime_ns" in str(caught.value) and "/etc/conf" in str(caught.value)
    st = os.stat(path)
    assert path.read_text() == "old\n" and stat.S_IMODE(st.st_mode) == 0o644 and st.st_mtime_ns == 77
    assert os.listdir(root / "etc") == ["conf"]


@pytest.mark.parametrize("path", ["/etc/sysctl.d/99-x.conf", "/nodir/a/b"])
def test_a_read_below_a_directory_that_is_not_there_finds_nothing(root: Path, path: str) -> None:
    """The protocol's reads answer None when nothing exists at the path, also when a directory on
    the way is missing: a check of a file in a drop-in directory the host lacks is then "not
    there", not an error. (A file where a directory should be stays an error, as for leftover temps.)"""
    (root / "etc" / "motd").write_text("hello\n")
    host = LocalHost(str(root))
    with pytest.raises(HostAccessError, match="not a directory"):
        host.info("/etc/motd/inside")
    assert host.info(path) is None
    assert host.info(path, content=True) is None
    assert host.read_file(path) is None
    assert host.read_bytes(path) is None
    assert host.list_dir(path) is None


def test_a_read_through_a_symlinked_directory_is_still_refused(root: Path, tmp_path: Path) -> None:
    """Finding nothing below a missing directory does not soften the confinement: a symlink on
    the way is refused as before."""
    (tmp_path / "elsewhere").mkdir()
    (root / "etc" / "sysctl.d").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(KensaError, match="symlink"):
        LocalHost(str(root)).info("/etc/sysctl.d/99-x.conf")


def test_reads_of_a_removed_root_are_an_error_not_nothing_there(root: Path) -> None:
    """A target root deleted after the host was made is an error for every read, also those that
    find "nothing there" below a missing directory; it never looks like an empty host."""
    host = LocalHost(str(root))
    shutil.rmtree(root)
    for call in (lambda: host.info("/etc/conf"), lambda: host.list_dir("/etc"), lambda: host.leftover_temps("/etc/conf")):
        with pytest.raises(HostAccessError, match="was removed"):
            call()


def test_a_step_writing_below_a_missing_directory_is_refused_at_capture(root: Path) -> None:
    """Reads find nothing below a missing directory, so checks and validates say "not there"; a
    step that would write a file there is refused by its capture, before anything changes."""
    from kensa.handlers import default_registry

    registry, host = default_registry(), LocalHost(str(root))
    assert registry["file_absent"].validate(host, {"path": "/etc/cron.d/leftover"}) is True
    assert registry["file_content"].validate(host, {"path": "/etc/cron.d/job", "content": "x\n"}) is False
    with pytest.raises(HostAccessError, match="directory 'cron.d' does not exist; create it first"):
        registry["file_content"].capture(host, {"path": "/etc/cron.d/job", "content": "x\n"})
    with pytest.raises(HostAccessError, match="'cron.d' does not exist"):
        registry["file_content"].apply(host, {"path": "/etc/cron.d/job", "content": "x\n"}, None)
    with pytest.raises(HostAccessError, match="directory 'a' does not exist"):
        registry["config_set"].capture(host, {"path": "/etc/a/b/c.conf", "key": "k", "value": "v"})
    assert not (root / "etc" / "cron.d").exists()


def test_a_sysctl_check_on_a_host_without_sysctl_d_is_not_compliant_rather_than_an_error(root: Path) -> None:
    """sysctl_set's validate on a root that has the kernel value but no /etc/sysctl.d says the
    step does not hold (the persisted file is missing); it does not fail reading it."""
    from kensa.handlers import default_registry

    (root / "proc" / "sys" / "net" / "ipv4").mkdir(parents=True)
    (root / "proc" / "sys" / "net" / "ipv4" / "ip_forward").write_text("0\n")
    handler = default_registry()["sysctl_set"]
    assert handler.validate(LocalHost(str(root)), {"key": "net.ipv4.ip_forward", "value": "0"}) is False


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_a_command_writing_more_than_the_cap_is_stopped_and_refused(root: Path, stream: str) -> None:
    """host.run holds at most the host's file cap of each output stream: a command that writes more
    is killed and the call is a HostAccessError naming the command and the cap, instead of the agent
    (or the controller) holding all of it."""
    host = LocalHost(str(root), max_file_bytes=4096)
    redirect = "" if stream == "stdout" else " 1>&2"
    script = f"head -c 100000 /dev/zero{redirect}; sleep 30"
    with pytest.raises(HostAccessError, match=f"wrote more than 4096 bytes on {stream}") as caught:
        host.run(["sh", "-c", script], 60)
    assert caught.value.errno == errno.EFBIG and "sh" in str(caught.value)


def test_run_output_is_text_as_before(root: Path) -> None:
    """Under the cap, run answers as subprocess.run did: text with universal newlines, both
    streams, the exit status, and a timeout still a HostAccessError."""
    host = LocalHost(str(root))
    done = host.run(["sh", "-c", "printf 'a\\r\\nb\\n'; printf 'err\\n' >&2; exit 3"], 10)
    assert (done.stdout, done.stderr, done.returncode) == ("a\nb\n", "err\n", 3)
    assert done.args == ["sh", "-c", "printf 'a\\r\\nb\\n'; printf 'err\\n' >&2; exit 3"]
    with pytest.raises(HostAccessError, match="timed out after 0.5 s"):
        host.run(["sleep", "5"], 0.5)


def test_a_write_is_made_durable_with_one_fsync_of_the_file_and_one_of_its_directory(tmp_path: Path) -> None:
    """Traced with strace, write_file syncs the new file once, after its bytes, owner, xattrs,
    mode and mtime are all set (fsync covers data and metadata), and then the directory holding
    the rename: the file is durable before its name points at it."""
    if shutil.which("strace") is None:
        from conftest import require_real

        require_real("strace is not installed")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/app.conf").write_bytes(b"old\n")
    log = tmp_path / "strace.log"
    script = ("import sys\nfrom kensa.hosts.local import LocalHost\n"
              "LocalHost(sys.argv[1]).write_file('/etc/app.conf', b'new\\n', mode=0o640, mtime_ns=10**18)\n")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    subprocess.run(["strace", "-f", "-y", "-qq", "-e", "trace=fsync,fdatasync,rename,renameat,renameat2", "-o", str(log),
                    sys.executable, "-c", script, str(root)], check=True, env=env, timeout=60)
    calls = [line.split(None, 1)[1] for line in log.read_text().splitlines() if "resumed" not in line]
    kinds = [call.split("(", 1)[0] for call in calls]
    assert kinds in (["fsync", "renameat", "fsync"], ["fsync", "renameat2", "fsync"]), calls
    assert ".app.conf.kensa-" in calls[0] and f"<{root}/etc>)" in calls[2], calls
    assert (root / "etc/app.conf").read_bytes() == b"new\n"


def test_a_command_reads_a_file_of_the_root_on_its_standard_input_and_nothing_else(tmp_path: Path) -> None:
    """run(stdin_file=...) gives the command the root's regular file as its standard input; a missing
    file, a directory, a symlink at the path and a file only planned in a view are refused, the
    command not run."""
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/motd").write_text("inside\n")
    (tmp_path / "outside").write_text("outside\n")
    (root / "etc/link").symlink_to(tmp_path / "outside")
    host = LocalHost(str(root))
    assert host.run(["cat", "-"], 30, stdin_file="/etc/motd").stdout == "inside\n"
    assert host.run(["cat", "-"], 30).stdout == ""
    for path, refusal in (("/etc/none", HostAccessError), ("/etc", HostAccessError), ("/etc/link", PathEscapeError)):
        with pytest.raises(refusal, match=path.rsplit("/", 1)[-1]):
            host.run(["touch", str(tmp_path / "ran")], 30, stdin_file=path)
    view = host.overlay({"/etc/motd": None})
    with pytest.raises(HostAccessError, match="only planned"):
        view.run(["touch", str(tmp_path / "ran")], 30, stdin_file="/etc/motd")
    assert not (tmp_path / "ran").exists()
