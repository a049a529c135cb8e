"""Confinement across mount namespaces and mount points, against real mounts.

Each test builds its mounts in a private mount namespace (``unshare -m``), so the
machine's own mount table is never touched: either a long-lived process holds a
namespace that kensa reaches through ``/proc/PID/root``, or a child process runs
kensa inside the namespace and reports what happened as JSON.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest

from conftest import require_audit, require_root
from kensa.errors import PathEscapeError
from kensa.hosts.local import LocalHost, canonical_host_key, resolve_host

REPO = Path(__file__).resolve().parent.parent
RULE = REPO / "examples" / "rules" / "access-control" / "ssh-disable-root-login.yml"
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
HOST_CONFIG = b"PermitRootLogin yes\n# the live host's own file\n"
NS_CONFIG = b"PermitRootLogin yes\n# the namespace's file\n"


def require_unshare() -> None:
    require_root("mount namespaces")
    if shutil.which("unshare") is None:
        require_audit("unshare (util-linux) is not installed")


# Mounts a tmpfs over DIR inside a new mount namespace, fills it with an sshd_config,
# optionally chroots into it, says "ready" and waits to be killed.
HOLDER = r"""
import os, signal, subprocess, sys
top, chroot = sys.argv[1], sys.argv[2] == "chroot"
subprocess.run(["mount", "-t", "tmpfs", "tmpfs", top], check=True)
os.makedirs(os.path.join(top, "etc/ssh"))
with open(os.path.join(top, "etc/ssh/sshd_config"), "wb") as f:
    f.write(%r)
if chroot:
    os.chroot(top)
    os.chdir("/")
print("ready", flush=True)
signal.pause()
""" % NS_CONFIG


@contextmanager
def holder(tmp_path: Path, variant: str) -> Iterator[Dict[str, Any]]:
    """A process in its own mount namespace with a tmpfs over ``top`` (which on the live
    host holds a same-named sshd_config); with "chroot" the process's root is that tmpfs."""
    require_unshare()
    top = tmp_path / "top"
    (top / "etc/ssh").mkdir(parents=True)
    (top / "etc/ssh/sshd_config").write_bytes(HOST_CONFIG)
    proc = subprocess.Popen(
        ["unshare", "-m", sys.executable, "-c", HOLDER, str(top), variant],
        stdout=subprocess.PIPE, text=True, env=ENV,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        root = f"/proc/{proc.pid}/root" + ("" if variant == "chroot" else str(top))
        yield {"pid": proc.pid, "root": root, "host_file": top / "etc/ssh/sshd_config", "top": top}
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture(params=["chroot", "mounted"])
def namespace(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Dict[str, Any]]:
    """Both kinds of namespace holder: a chrooted process, and a tmpfs mounted below its root."""
    with holder(tmp_path, request.param) as found:
        yield found


def test_a_magic_link_root_is_the_namespaces_tree(namespace: Dict[str, Any]) -> None:
    """A root given as /proc/PID/root (or a path below it) is the tree that process sees in its
    own mount namespace: kensa reads and writes the namespace's file, and the live host's file
    at the same path stays byte-identical."""
    host = LocalHost(namespace["root"])
    assert not host.is_live
    assert host.read_bytes("/etc/ssh/sshd_config") == NS_CONFIG
    host.write_file("/etc/ssh/sshd_config", b"PermitRootLogin no\n")
    assert host.read_bytes("/etc/ssh/sshd_config") == b"PermitRootLogin no\n"
    assert namespace["host_file"].read_bytes() == HOST_CONFIG


def test_a_magic_link_root_keeps_its_own_key_and_identity(namespace: Dict[str, Any], tmp_path: Path) -> None:
    """The canonical key of /proc/PID/root of another namespace is neither "localhost" nor the live
    host's path that the link's text names, and its identity differs from both of theirs."""
    key = canonical_host_key(namespace["root"])
    assert key not in ("localhost", "/", str(namespace["top"]))
    assert key.startswith(f"/proc/{namespace['pid']}/root")
    assert canonical_host_key(namespace["root"] + "/") == key
    identity = LocalHost(namespace["root"]).identity
    assert identity not in (LocalHost("/").identity, LocalHost(str(namespace["top"])).identity)
    assert LocalHost(namespace["root"] + "/.").identity == identity
    link = tmp_path / "link"
    link.symlink_to(namespace["root"])
    assert LocalHost(str(link)).identity == identity
    assert canonical_host_key(str(link)) == key


def test_the_namespace_root_itself_is_not_the_live_host(tmp_path: Path) -> None:
    """/proc/PID/root of a process in another mount namespace that did not chroot shares the
    live root's inode but not its mounts: it is not "localhost" and has its own identity."""
    with holder(tmp_path, "mounted") as namespace:
        whole = f"/proc/{namespace['pid']}/root"
        assert canonical_host_key(whole) != "localhost"
        assert not LocalHost(whole).is_live
        assert LocalHost(whole).identity != LocalHost("/").identity


def test_spellings_of_one_tree_are_one_key_and_one_identity(tmp_path: Path) -> None:
    """"/r", "/r/", "/r/." and a symlink to /r are one canonical key and one identity; the live
    root spelled "/proc/self/root" is "localhost"."""
    root = tmp_path / "r"
    root.mkdir()
    (tmp_path / "alias").symlink_to(root)
    spellings = [str(root), str(root) + "/", str(root) + "/.", str(tmp_path / "alias"), str(tmp_path / "alias") + "/"]
    assert {canonical_host_key(s) for s in spellings} == {str(root.resolve())}
    assert len({LocalHost(s).identity for s in spellings}) == 1
    assert LocalHost(str(root)).identity != LocalHost("/").identity
    assert canonical_host_key("/proc/self/root") == "localhost"
    assert LocalHost("/proc/self/root").is_live


def test_cli_remediates_the_namespaces_file(tmp_path: Path) -> None:
    """`kensa remediate --root /proc/PID/root` commits the change in the namespace's file and
    leaves the live host's same-named file byte-identical."""
    with holder(tmp_path, "chroot") as namespace:
        done = subprocess.run(
            [sys.executable, "-m", "kensa", "--journal", str(tmp_path / "j.db"), "--no-audit", "remediate", str(RULE),
             "--root", namespace["root"], "--json"],
            capture_output=True, text=True, env=ENV, timeout=120,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        [result] = json.loads(done.stdout)["results"]
        assert result["status"] == "committed"
        assert result["host"].startswith(f"/proc/{namespace['pid']}/root")
        assert LocalHost(namespace["root"]).read_bytes("/etc/ssh/sshd_config") == NS_CONFIG.replace(b"yes", b"no")
        assert namespace["host_file"].read_bytes() == HOST_CONFIG


# Runs inside `unshare -m`: sets up the mounts named on the command line, then tries
# each operation and prints what happened.
PROBE = r"""
import json, subprocess, sys
import kensa.hosts.local as kh
import kensa.hosts.syscalls as ks
from kensa.errors import KensaError
root, mode, mounts, ops = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])
if mode == "mount-id":
    ks.openat2_works = False
for argv in mounts:
    subprocess.run(argv, check=True)
out = []
for target, op, path in ops:
    host = kh.LocalHost(target)
    call = {
        "read": lambda: host.read_bytes(path),
        "info": lambda: host.info(path),
        "write": lambda: host.write_file(path, b"PermitRootLogin no\n"),
        "in_place": lambda: host.write_in_place(path, b"kensa-test\n"),
        "meta": lambda: host.set_meta(path, mode=0o600),
        "remove": lambda: host.remove_file(path),
    }[op]
    try:
        call()
        out.append({"op": op, "ok": True})
    except KensaError as exc:
        out.append({"op": op, "ok": False, "type": type(exc).__name__, "message": str(exc),
                    "component": getattr(exc, "component", "")})
print(json.dumps(out))
"""


@contextmanager
def kernel_value_kept(knob: Path) -> Iterator[bytes]:
    """The live kernel parameter's value, written back afterwards if anything changed it:
    a regression these tests catch must not leave the machine's kernel changed."""
    before = knob.read_bytes()
    try:
        yield before
    finally:
        if knob.read_bytes() != before:
            knob.write_bytes(before.rstrip(b"\n"))


def probe(root: Path, mode: str, mounts: List[List[str]], ops: List[List[str]]) -> List[Dict[str, Any]]:
    done = subprocess.run(
        ["unshare", "-m", sys.executable, "-c", PROBE, str(root), mode, json.dumps(mounts), json.dumps(ops)],
        capture_output=True, text=True, env=ENV, timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return list(json.loads(done.stdout))


@pytest.fixture
def image(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "etc/ssh").mkdir(parents=True)
    (root / "etc/motd").write_text("image motd\n")
    (root / "proc").mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "sshd_config").write_bytes(HOST_CONFIG)
    (outside / "motd").write_text("outside motd\n")
    return root


WRITES = ["read", "info", "write", "meta", "remove"]


@pytest.mark.parametrize("mode", ["openat2", "mount-id"])
def test_a_bind_mounted_directory_inside_an_image_root_is_not_crossed(image: Path, mode: str) -> None:
    """With a directory from outside bind-mounted at root/etc/ssh, every operation on a file below
    it is refused with a PathEscapeError naming the mount point /etc/ssh (with openat2, and with
    the mount-id comparison used where the kernel lacks it); the outside file stays byte-identical."""
    require_unshare()
    outside = image.parent / "outside"
    ops = [[str(image), op, "/etc/ssh/sshd_config"] for op in WRITES]
    results = probe(image, mode, [["mount", "--bind", str(outside), str(image / "etc/ssh")]], ops)
    for result in results:
        assert not result["ok"] and result["type"] == "PathEscapeError", result
        assert result["component"] == "/etc/ssh" and "/etc/ssh is a mount point" in result["message"], result
    assert (outside / "sshd_config").read_bytes() == HOST_CONFIG
    assert sorted(os.listdir(outside)) == ["motd", "sshd_config"]


@pytest.mark.parametrize("mode", ["openat2", "mount-id"])
def test_a_bind_mounted_file_inside_an_image_root_is_not_crossed(image: Path, mode: str) -> None:
    """A file bind-mounted over root/etc/motd is a mount point too: reading, replacing, chmod and
    removal are refused naming /etc/motd, and the outside file keeps its bytes and mode."""
    require_unshare()
    outside = image.parent / "outside" / "motd"
    os.chmod(outside, 0o644)
    ops = [[str(image), op, "/etc/motd"] for op in WRITES]
    results = probe(image, mode, [["mount", "--bind", str(outside), str(image / "etc/motd")]], ops)
    for result in results:
        assert not result["ok"] and result["type"] == "PathEscapeError", result
        assert result["component"] == "/etc/motd", result
    assert outside.read_text() == "outside motd\n" and (os.stat(outside).st_mode & 0o777) == 0o644


ENGINE_RUN = r"""
import json, subprocess, sys
from kensa.engine import Engine
from kensa.handlers import default_registry
from kensa.hosts.local import resolve_host
from kensa.model import Step, Transaction
root, mount, step = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
subprocess.run(mount, check=True)
result = Engine(default_registry(), hosts=resolve_host).run(Transaction("r", (Step(step[0], step[1]),), host=root))
print(json.dumps({"status": result.status.value, "unchanged": result.host_unchanged,
                  "error": result.error.message if result.error else ""}))
"""


def engine_run_in_namespace(root: Path, mount: List[str], mechanism: str, params: Dict[str, Any]) -> Dict[str, Any]:
    done = subprocess.run(
        ["unshare", "-m", sys.executable, "-c", ENGINE_RUN, str(root), json.dumps(mount), json.dumps([mechanism, params])],
        capture_output=True, text=True, env=ENV, timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return dict(json.loads(done.stdout))


def test_config_set_through_a_bind_mount_errors_and_changes_nothing(image: Path) -> None:
    """The engine running config_set on root/etc/ssh/sshd_config, where root/etc/ssh is a bind
    mount of an outside directory, ends errored with the host unchanged and the mount point
    named; the outside file stays byte-identical."""
    require_unshare()
    outside = image.parent / "outside"
    result = engine_run_in_namespace(
        image, ["mount", "--bind", str(outside), str(image / "etc/ssh")],
        "config_set", {"path": "/etc/ssh/sshd_config", "key": "PermitRootLogin", "value": "no", "separator": " "},
    )
    assert result["status"] == "errored" and result["unchanged"], result
    assert "/etc/ssh is a mount point" in result["error"], result
    assert (outside / "sshd_config").read_bytes() == HOST_CONFIG
    assert sorted(os.listdir(outside)) == ["motd", "sshd_config"]


def test_the_live_host_crosses_its_own_mounts(image: Path) -> None:
    """On the live host ("/") mounts are part of the machine (/boot, /proc, a bind mount), so a
    walk crosses them: the bind-mounted file is read through the live root."""
    require_unshare()
    mounts = [["mount", "--bind", str(image.parent / "outside"), str(image / "etc/ssh")]]
    [result] = probe(image, "openat2", mounts, [["/", "read", str(image / "etc/ssh/sshd_config")]])
    assert result["ok"], result


@pytest.mark.parametrize("mode", ["openat2", "mount-id"])
def test_procfs_mounted_in_an_image_root_never_reaches_the_live_kernel(image: Path, mode: str) -> None:
    """A real procfs mounted at root/proc is another mount: sysctl-style reads and in-place writes
    under it are refused naming /proc, and the live kernel's value is unchanged."""
    require_unshare()
    knob = Path("/proc/sys/kernel/domainname")
    with kernel_value_kept(knob) as before:
        ops = [[str(image), "read", str(knob)], [str(image), "in_place", str(knob)]]
        results = probe(image, mode, [["mount", "-t", "proc", "proc", str(image / "proc")]], ops)
        changed = knob.read_bytes()
    for result in results:
        assert not result["ok"] and result["type"] == "PathEscapeError", result
        assert result["component"] == "/proc" and "mount point" in result["message"], result
    assert changed == before


def test_an_image_root_on_procfs_is_refused() -> None:
    """Even without a mount point to cross, an image root whose files are a real procfs (here
    the root is /proc itself) is refused: its /sys files are the live kernel's."""
    host = LocalHost("/proc")
    with pytest.raises(PathEscapeError) as caught:
        host.read_bytes("/sys/kernel/osrelease")
    assert "real procfs" in str(caught.value) and "/sys/kernel/osrelease" in str(caught.value)
    with kernel_value_kept(Path("/proc/sys/kernel/domainname")):
        with pytest.raises(PathEscapeError):
            host.write_in_place("/sys/kernel/domainname", b"kensa-test\n")


def test_an_image_root_on_sysfs_is_refused() -> None:
    """The same holds for the other filesystems that are kernel state: an image root on sysfs."""
    if not os.path.isdir("/sys/kernel"):
        require_audit("sysfs is not mounted at /sys")
    with pytest.raises(PathEscapeError) as caught:
        LocalHost("/sys").read_bytes("/kernel/profiling")
    assert "real sysfs" in str(caught.value) and "/kernel/profiling" in str(caught.value)


def test_sysctl_set_on_an_image_root_with_procfs_does_not_change_the_kernel(image: Path) -> None:
    """The engine running sysctl_set against an image root whose /proc is a real procfs ends
    errored with the mount point named, and the live kernel parameter keeps its value."""
    require_unshare()
    (image / "etc/sysctl.d").mkdir()
    knob = Path("/proc/sys/kernel/kptr_restrict")
    before = knob.read_bytes()
    value = "2" if before.strip() != b"2" else "1"
    with kernel_value_kept(knob):
        result = engine_run_in_namespace(
            image, ["mount", "-t", "proc", "proc", str(image / "proc")],
            "sysctl_set", {"key": "kernel.kptr_restrict", "value": value, "persist_file": "/etc/sysctl.d/99-k.conf"},
        )
        changed = knob.read_bytes()
    assert result["status"] == "errored" and result["unchanged"], result
    assert "/proc is a mount point" in result["error"], result
    assert changed == before
    assert not (image / "etc/sysctl.d/99-k.conf").exists()


def test_resolve_host_of_a_magic_link_is_not_the_live_host(namespace: Dict[str, Any]) -> None:
    """resolve_host, which the engine uses, pins the namespace's tree for a /proc/PID/root key."""
    host = resolve_host(namespace["root"])
    assert not host.is_live and host.read_bytes("/etc/ssh/sshd_config") == NS_CONFIG
