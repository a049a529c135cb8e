"""The system calls confinement needs that Python does not bind: openat2, statx, fstatfs.

They are called through ctypes. Every value here that Python's ``os`` module
does not expose is a kernel ABI value, written once, with the header it comes
from; everything else is read from ``os``.
"""

from __future__ import annotations

import ctypes
import errno
import os

# linux/openat2.h
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
# linux/stat.h
STATX_MNT_ID = 0x1000
STATX_MNT_ID_UNIQUE = 0x4000
# linux/fcntl.h
AT_EMPTY_PATH = 0x1000

#: Filesystems whose files are the running kernel's state (linux/magic.h): under an
#: image root, writing one would change this machine, not the image.
KERNEL_STATE_FS = {
    0x9FA0: "procfs",
    0x62656572: "sysfs",
    0x27E0EB: "cgroupfs",
    0x63677270: "cgroup2fs",
    0x64626720: "debugfs",
    0x74726163: "tracefs",
    0x73636673: "securityfs",
    0x62656570: "configfs",
    0xCAFE4A11: "bpffs",
    0xDE5E81E4: "efivarfs",
}

# openat2 has number 437 on every architecture that uses the unified syscall table
# (asm-generic/unistd.h and the per-arch tables that follow it); elsewhere (alpha,
# unknown machines) callers compare mount ids instead.
_SYS_OPENAT2 = 437 if os.uname().machine in (
    "x86_64", "amd64", "i386", "i686", "aarch64", "arm64", "armv7l", "armv8l", "ppc64le", "ppc64", "s390x", "riscv64",
) else None

#: False (in this process and its children) once the kernel answered ENOSYS, or on a
#: machine whose syscall number is unknown: callers then compare mount ids.
openat2_works = _SYS_OPENAT2 is not None

_libc = ctypes.CDLL(None, use_errno=True)


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


class _Statx(ctypes.Structure):
    # Only the fields read here are named; the kernel fills 256 bytes.
    _fields_ = [("stx_mask", ctypes.c_uint32), ("_head", ctypes.c_uint8 * 140), ("stx_mnt_id", ctypes.c_uint64),
                ("_tail", ctypes.c_uint8 * 104)]


def _oserror(name: str = "") -> OSError:
    code = ctypes.get_errno()
    return OSError(code, os.strerror(code), name) if name else OSError(code, os.strerror(code))


def openat2(dir_fd: int, name: str, flags: int, resolve: int) -> int:
    """openat2(2): open ``name`` under ``dir_fd`` with the given RESOLVE_* rules.

    Raises ``OSError`` with ``errno.ENOSYS`` where the call does not exist and
    sets :data:`openat2_works` to False then.
    """
    global openat2_works
    if _SYS_OPENAT2 is None:
        openat2_works = False
        raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS), name)
    how = _OpenHow(flags, 0, resolve)
    fd = _libc.syscall(ctypes.c_long(_SYS_OPENAT2), ctypes.c_int(dir_fd), ctypes.c_char_p(os.fsencode(name)),
                       ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how)))
    if fd < 0:
        error = _oserror(name)
        if error.errno == errno.ENOSYS:
            openat2_works = False  # kernel before 5.6, or a seccomp filter
        raise error
    return int(fd)


def mount_id(fd: int, unique: bool = False) -> int:
    """The id of the mount ``fd`` lives on (statx; /proc/self/fdinfo when statx lacks it).

    The plain id is what /proc/self/mountinfo lists and may be reused after an
    unmount; ``unique`` asks for the never-reused 64-bit id where the kernel has it.
    """
    statx = getattr(_libc, "statx", None)
    if statx is not None:
        buf = _Statx()
        mask = STATX_MNT_ID_UNIQUE if unique else STATX_MNT_ID
        if statx(ctypes.c_int(fd), ctypes.c_char_p(b""), ctypes.c_int(AT_EMPTY_PATH), ctypes.c_uint(mask),
                 ctypes.byref(buf)) != 0:
            raise _oserror()
        if buf.stx_mask & mask:
            return int(buf.stx_mnt_id)
        if unique:
            return mount_id(fd)
    with open(f"/proc/self/fdinfo/{fd}", encoding="ascii") as info:
        for line in info:
            if line.startswith("mnt_id:"):
                return int(line.split()[1])
    raise OSError(errno.ENOTSUP, "the kernel reports no mount id for a file descriptor")


def fs_type(fd: int) -> int:
    """statfs(2) f_type of the filesystem ``fd`` lives on."""
    buf = (ctypes.c_long * 32)()  # struct statfs is smaller; f_type is its first word
    if _libc.fstatfs(ctypes.c_int(fd), ctypes.byref(buf)) != 0:
        raise _oserror()
    return int(buf[0]) & 0xFFFFFFFF
