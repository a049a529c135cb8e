"""The local target: a confined filesystem tree of this machine, the live host ("/") or an image root.

:class:`LocalHost` resolves every path with :class:`kensa.hosts.confine.ConfinedRoot`
(see there: the root is pinned once, symlinks and ``..`` above the root are refused,
and under an image root no mount is crossed and no kernel filesystem is touched).
Every ``OSError`` of a file operation reaches the caller as a :class:`HostAccessError`.

Size cap: reads that load a file's bytes (``read_file``, ``read_bytes``,
``info(content=True)``) refuse a file larger than ``max_file_bytes``
(:data:`DEFAULT_MAX_FILE_BYTES`, 64 MiB, unless the caller passes another value to
:class:`LocalHost` or :func:`resolve_host`) with a :class:`HostAccessError`
(``errno.EFBIG``) naming the path, its size and the cap. Capture reads before
apply, so such a file is refused before anything changes. Bytes are read in one
allocation of the file's size, never in chunks joined into a second copy.

Writes are atomic: a temporary file in the same directory (created through the
directory fd with ``O_EXCL|O_NOFOLLOW``), written, given its owner, extended
attributes and mode, fsynced once (bytes and metadata), renamed over the target,
and the directory fsynced.
Rewriting an existing file keeps its mode, owner, group and extended attributes
(including ``security.selinux``) unless the caller sets them. Because the rename
replaces the directory entry, a file with several hard links is detached from the
others. The temporary name (``.NAME.kensa-`` and 12 hex digits; a long NAME is cut
and given a hash of itself) always fits NAME_MAX, and
:meth:`LocalHost.remove_leftover_temps` removes the ones a killed write left.

Changing a file in place (``set_meta``, ``write_in_place``) acts on its inode,
which every hard link to it shares, and a link may live outside the root. So on
an image root (not the live host "/") a regular file with more than one link is
refused there, naming the link count. On the live host every link is on the
machine being remediated anyway, and /proc/sys files have one link.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence, Tuple

if TYPE_CHECKING:
    import subprocess

from kensa.errors import HostAccessError, HostSelectionError, KensaError, StepPhaseError, UnknownMechanismError
from kensa.hosts.confine import ConfinedRoot
from kensa.hosts.fdio import read_capped, read_xattrs, set_exact_xattrs, set_mtime, write_all
from kensa.hosts.links import SymlinkOps
from kensa.hosts.overlay import FileReaders, PlannedView
from kensa.hosts.protocol import STEP_PHASES, Host, PhaseHandler, PhaseOutcome, ReadableHost, StepRunner
from kensa.model import FileInfo, FileKind, Phase, PreState

__all__ = [
    "DEFAULT_FILE_MODE",
    "DEFAULT_MAX_FILE_BYTES",
    "FileInfo",
    "FileKind",
    "LocalHost",
    "LocalStepRunner",
    "PlannedView",
    "canonical_host_key",
    "check_step_phase",
    "resolve_host",
]

#: Mode of a file kensa creates when the caller gives none (the usual /etc default).
DEFAULT_FILE_MODE = 0o644

#: Largest file (bytes) a LocalHost loads by default: 64 MiB. Configuration files
#: are far smaller; a larger one is refused before anything changes rather than
#: held in memory (and journaled) whole.
DEFAULT_MAX_FILE_BYTES = 64 << 20

# O_NONBLOCK keeps an open of a FIFO planted at the path from hanging; O_NOCTTY keeps
# a terminal device from becoming this process's controlling terminal.
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
# No O_TRUNC: the file type is checked on the open fd before anything is truncated.
_WRITE_IN_PLACE_FLAGS = os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC

# A temporary file is ".NAME.kensa-" plus 12 random hex digits. A name too long for
# that within NAME_MAX (255 bytes on every Linux filesystem kensa targets) is cut to
# 218 bytes and followed by 16 hex digits of its SHA-256, so each file's temps have a
# pattern of their own that no other file's temps can match.
_NAME_MAX = 255
_TEMP_TAG = ".kensa-"
_TEMP_RANDOM_HEX = 12
_TEMP_HASH_HEX = 16


def _temp_prefix(name: str) -> str:
    """What every temporary name kensa makes for the file ``name`` starts with."""
    raw = os.fsencode(name)
    if 1 + len(raw) + len(_TEMP_TAG) + _TEMP_RANDOM_HEX <= _NAME_MAX:
        return f".{name}{_TEMP_TAG}"
    keep = _NAME_MAX - (1 + len(_TEMP_TAG) + _TEMP_HASH_HEX + 1 + _TEMP_RANDOM_HEX)
    digest = hashlib.sha256(raw).hexdigest()[:_TEMP_HASH_HEX]
    return f".{os.fsdecode(raw[:keep])}{_TEMP_TAG}{digest}-"


def _is_temp_of(entry: str, name: str) -> bool:
    prefix = _temp_prefix(name)
    tail = entry[len(prefix):]
    return (entry.startswith(prefix) and len(tail) == _TEMP_RANDOM_HEX
            and all(c in "0123456789abcdef" for c in tail))


class LocalHost(FileReaders, SymlinkOps):
    """File, sysctl and command access to a local tree, confined to ``root``.

    It meets :class:`kensa.hosts.protocol.Host`; ``read_file`` and ``read_bytes``
    come from :class:`~kensa.hosts.overlay.FileReaders`, symlinks and directories
    from :class:`~kensa.hosts.links.SymlinkOps`.
    """

    def __init__(self, root: str = "/", *, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES) -> None:
        if not isinstance(root, str) or not os.path.isabs(root):
            raise HostSelectionError(f"target root {root!r} must be an absolute path")
        if isinstance(max_file_bytes, bool) or not isinstance(max_file_bytes, int) or max_file_bytes < 0:
            raise HostSelectionError(f"max_file_bytes {max_file_bytes!r} must be a whole number of bytes, 0 or more")
        #: Largest file whose bytes this host loads (read_file, read_bytes, info(content=True)).
        self.max_file_bytes = max_file_bytes
        self._tree = ConfinedRoot(root)
        #: The root's name, for messages, keys and audit ``host=``; it never opens anything.
        self.root = self._tree.name

    def __repr__(self) -> str:
        return f"LocalHost(root={self.root!r})"

    def __reduce__(self) -> Tuple[Any, Tuple[str, int]]:
        # A descriptor means nothing in another process: resolve the root again there.
        return (_rebuild, (self.root, self.max_file_bytes))

    @property
    def run_root(self) -> str:
        """This root's path: commands run on this machine."""
        return self.root

    @property
    def is_live(self) -> bool:
        """True when the target is this machine itself (the root directory of this
        process's mount namespace, however spelled): kernel state applies."""
        return self._tree.is_live

    @property
    def identity(self) -> str:
        """A stable name of the pinned target directory (see :attr:`ConfinedRoot.identity`):
        two LocalHosts with equal identities change the same files."""
        return self._tree.identity

    def where(self, path: str) -> str:
        """``path`` as the operator should read it in a message."""
        return self._tree.where(path)

    def overlay(self, planned: Mapping[str, Optional[FileInfo]]) -> "PlannedView":
        """A read-only view of this host in which the files of ``planned`` (path ->
        what will be there, None for absent) already look as given; see :class:`PlannedView`."""
        return PlannedView(self, planned)

    # -- reading -----------------------------------------------------------------

    def info(self, path: str, *, content: bool = False) -> Optional[FileInfo]:
        """What exists at ``path`` (None when nothing does); bytes too when ``content``.

        Refuses a symlink and anything that is neither a regular file nor a directory, at
        ``path`` or on the way to it, and a file where a directory should be; a missing
        directory on the way means nothing is there.
        """
        with self._tree.parent_if_any(path) as found:
            if found is None:
                return None
            dir_fd, name = found
            fd = self._tree.open_final(path, dir_fd, name, _READ_FLAGS)
            if fd is None:
                return None
            try:
                st = os.fstat(fd)
                kind: FileKind
                kind = "file" if stat.S_ISREG(st.st_mode) else "dir"  # _open_final refused the rest
                data = self._load(path, fd, st.st_size) if content and kind == "file" else None
                return FileInfo(
                    kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, read_xattrs(fd), data,
                    mtime_ns=st.st_mtime_ns, ino=st.st_ino, nlink=st.st_nlink,
                )
            finally:
                os.close(fd)

    def list_dir(self, path: str) -> Optional[List[str]]:
        """The names of the entries of the directory at ``path``, sorted (None when
        nothing is there); a file there is refused with ENOTDIR. Entries are listed,
        never followed: reading one goes through :meth:`info` and its refusals. ``/`` lists the root."""
        if not self._tree.components(path):
            return self._tree.listing(path, self._tree.open_root())
        with self._tree.parent_if_any(path) as found:
            if found is None:
                return None
            dir_fd, name = found
            fd = self._tree.open_final(path, dir_fd, name, _READ_FLAGS | os.O_DIRECTORY)
            return None if fd is None else self._tree.listing(path, fd)

    def _load(self, path: str, fd: int, size: int) -> bytes:
        cap = self.max_file_bytes
        data = None if size > cap else read_capped(fd, size, cap)
        if data is None:
            shown = f"{size} bytes" if size > cap else f"more than {cap} bytes (it grew, or its size is not stated)"
            raise HostAccessError(
                errno.EFBIG,
                f"{self.where(path)} is {shown}, above the cap of {cap} bytes on files kensa loads; refusing to read "
                "it, nothing was changed: raise the cap (LocalHost max_file_bytes) if this file is meant to be managed",
            )
        return data

    # -- writing -----------------------------------------------------------------

    def write_file(
        self,
        path: str,
        data: bytes,
        *,
        mode: Optional[int] = None,
        uid: Optional[int] = None,
        gid: Optional[int] = None,
        xattrs: Optional[Mapping[str, bytes]] = None,
        mtime_ns: Optional[int] = None,
    ) -> None:
        """Atomically replace (or create) the regular file at ``path`` with ``data``.

        Unset ``mode``/``uid``/``gid``/``xattrs`` keep those of the file being
        replaced; for a new file they default to 0644, this process's ids, and
        whatever the kernel gives a new file (e.g. the SELinux default context).
        Given ``xattrs`` become the file's exact set. ``mtime_ns`` sets the
        modification time (a restore passes the captured one); unset, the new
        bytes get the time of this write.
        """
        self._tree.check_mtime(path, mtime_ns)
        with self._tree.parent(path) as (dir_fd, name):
            old_fd = self._tree.open_final(path, dir_fd, name, _READ_FLAGS)
            old: Optional[os.stat_result] = None
            old_xattrs: Optional[Dict[str, bytes]] = None
            if old_fd is not None:
                try:
                    old = os.fstat(old_fd)
                    if not stat.S_ISREG(old.st_mode):
                        raise HostAccessError(
                            errno.EISDIR, f"{self.where(path)} exists and is not a regular file; refusing to replace it"
                        )
                    old_xattrs = read_xattrs(old_fd)
                finally:
                    os.close(old_fd)
            if mode is None:
                mode = stat.S_IMODE(old.st_mode) if old else DEFAULT_FILE_MODE
            if uid is None:
                uid = old.st_uid if old else os.geteuid()
            if gid is None:
                gid = old.st_gid if old else os.getegid()
            if xattrs is None:
                xattrs = old_xattrs
            self._replace(path, dir_fd, name, data, mode, uid, gid, xattrs, mtime_ns)

    def _replace(
        self,
        path: str,
        dir_fd: int,
        name: str,
        data: bytes,
        mode: int,
        uid: int,
        gid: int,
        xattrs: Optional[Mapping[str, bytes]],
        mtime_ns: Optional[int],
    ) -> None:
        tmp = _temp_prefix(name) + os.urandom(_TEMP_RANDOM_HEX // 2).hex()
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(tmp, flags, 0o600, dir_fd=dir_fd)
        except OSError as exc:
            raise HostAccessError(exc.errno, f"cannot create a temporary file next to {self.where(path)}: {exc.strerror}") from exc
        renamed = False
        try:
            try:
                write_all(fd, data)
                # chown clears set-id bits and security.capability, so it comes first;
                # an ACL xattr rewrites group bits, so the mode comes last.
                os.fchown(fd, uid, gid)
                if xattrs is not None:
                    set_exact_xattrs(fd, xattrs)
                os.fchmod(fd, mode)
                if mtime_ns is not None:
                    set_mtime(fd, mtime_ns)  # after the last write of the bytes
                os.fsync(fd)  # the bytes and the metadata, in one: durable before the rename names them
            finally:
                os.close(fd)
            # A symlink planted at the final name after the check is replaced, never written through.
            os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            renamed = True
            os.fsync(dir_fd)
        except OSError as exc:
            raise HostAccessError(exc.errno, f"cannot write {self.where(path)}: {exc.strerror}") from exc
        finally:
            if not renamed:
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=dir_fd)

    def write_in_place(self, path: str, data: bytes) -> None:
        """Overwrite an existing regular file's bytes in place (for /proc/sys, where rename
        cannot work; its files are regular files). Anything else is refused before a byte
        of it is truncated."""
        with self._tree.parent(path) as (dir_fd, name):
            fd = self._tree.open_final(path, dir_fd, name, _WRITE_IN_PLACE_FLAGS)
            if fd is None:
                raise HostAccessError(errno.ENOENT, f"{self.where(path)} does not exist")
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    raise HostAccessError(errno.EISDIR, f"{self.where(path)} is a directory, not a file; refusing to write it")
                self._tree.refuse_shared_inode(path, st)
                os.ftruncate(fd, 0)
                write_all(fd, data)
            except KensaError:
                raise
            except OSError as exc:
                raise HostAccessError(exc.errno, f"cannot write {data!r} to {self.where(path)}: {exc.strerror}") from exc
            finally:
                os.close(fd)

    def remove_file(self, path: str) -> None:
        """Unlink the regular file at ``path`` (refusing symlinks and directories)."""
        with self._tree.parent(path) as (dir_fd, name):
            try:
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                return
            if stat.S_ISLNK(st.st_mode):
                raise self._tree.symlink_refusal(path, dir_fd, name)
            if not stat.S_ISREG(st.st_mode):
                raise HostAccessError(errno.EISDIR, f"{self.where(path)} is not a regular file; refusing to remove it")
            fd = self._tree.open_final(path, dir_fd, name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)  # refuses a mount point
            if fd is None:
                return
            os.close(fd)
            try:
                os.unlink(name, dir_fd=dir_fd)
                os.fsync(dir_fd)
            except OSError as exc:
                raise HostAccessError(exc.errno, f"cannot remove {self.where(path)}: {exc.strerror}") from exc

    def leftover_temps(self, path: str) -> List[str]:
        """Temporary files kensa's own writes of ``path`` left in its directory.

        A write killed between creating its temporary file and renaming it (SIGKILL,
        power loss) leaves ``.NAME.kensa-XXXXXXXXXXXX`` behind. Only regular files
        whose names match exactly what :meth:`write_file` makes for this ``path``
        are listed (paths inside the root, sorted); symlinks, directories and other
        files' temps are not, and nothing is followed. A directory that does not
        exist holds none.
        """
        with self._tree.parent_if_any(path) as found:
            if found is None:
                return []
            dir_fd, name = found
            return [self._tree.sibling(path, entry) for entry in self._temps_in(dir_fd, name)]

    def remove_leftover_temps(self, path: str) -> List[str]:
        """Remove what :meth:`leftover_temps` lists for ``path``; return what was removed."""
        removed = []
        with self._tree.parent_if_any(path) as found:
            if found is None:
                return []
            dir_fd, name = found
            for entry in self._temps_in(dir_fd, name):
                try:
                    st = os.stat(entry, dir_fd=dir_fd, follow_symlinks=False)
                    if not stat.S_ISREG(st.st_mode):
                        continue  # swapped since the listing: not kensa's
                    os.unlink(entry, dir_fd=dir_fd)
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    raise HostAccessError(
                        exc.errno, f"cannot remove kensa's leftover {self.where(self._tree.sibling(path, entry))}: {exc.strerror}"
                    ) from exc
                removed.append(self._tree.sibling(path, entry))
            if removed:
                os.fsync(dir_fd)
        return removed

    def _temps_in(self, dir_fd: int, name: str) -> List[str]:
        found = []
        # os.listdir, not os.scandir: scandir takes a directory fd only from Python 3.7.
        for entry in os.listdir(dir_fd):
            if not _is_temp_of(entry, name):
                continue
            try:
                st = os.stat(entry, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISREG(st.st_mode):
                found.append(entry)
        return sorted(found)

    def set_meta(
        self,
        path: str,
        *,
        mode: Optional[int] = None,
        uid: Optional[int] = None,
        gid: Optional[int] = None,
        xattrs: Optional[Mapping[str, bytes]] = None,
        mtime_ns: Optional[int] = None,
    ) -> None:
        """Set owner, group, exact xattrs, mode and modification time (ns) of the file
        or directory at ``path``; what is None is left as it is."""
        self._tree.check_mtime(path, mtime_ns)
        with self._tree.parent(path) as (dir_fd, name):
            fd = self._tree.open_final(path, dir_fd, name, _READ_FLAGS)
            if fd is None:
                raise HostAccessError(errno.ENOENT, f"{self.where(path)} does not exist")
            try:
                before = os.fstat(fd)
                self._tree.refuse_shared_inode(path, before)
                if uid is not None or gid is not None:
                    os.fchown(fd, -1 if uid is None else uid, -1 if gid is None else gid)
                    if mode is None:
                        # chown dropped any set-id bits the caller did not ask to change.
                        mode = stat.S_IMODE(before.st_mode)
                if xattrs is not None:
                    set_exact_xattrs(fd, xattrs)
                if mode is not None:
                    os.fchmod(fd, mode)
                if mtime_ns is not None:
                    set_mtime(fd, mtime_ns)
            except KensaError:
                raise
            except OSError as exc:
                raise HostAccessError(exc.errno, f"cannot change {self.where(path)}: {exc.strerror}") from exc
            finally:
                os.close(fd)

    # -- names and commands --------------------------------------------------

    def lookup_id(self, database: str, name: str) -> int:
        """Numeric id of ``name`` in the target root's /etc/passwd or /etc/group."""
        if database not in ("passwd", "group"):
            raise ValueError(f"unknown id database {database!r}")
        path = f"/etc/{database}"
        data = self.read_bytes(path)
        if data is None:
            raise HostAccessError(errno.ENOENT, f"cannot resolve {name!r}: {self.where(path)} does not exist")
        for line in data.decode("utf-8", "replace").splitlines():
            fields = line.split(":")
            if len(fields) >= 3 and fields[0] == name and fields[2].isdigit():
                return int(fields[2])
        raise HostAccessError(errno.ENOENT, f"{name!r} is not listed in {self.where(path)}; use a name it lists or a numeric id")

    def run(self, argv: Sequence[str], timeout: float, *, stdin_file: Optional[str] = None) -> "subprocess.CompletedProcess[str]":
        """Run a command on this machine (argument list, no shell, stdin closed), capturing its
        output up to :attr:`max_file_bytes` per stream (:func:`kensa.hosts.commands.run_command`).

        With ``stdin_file``, the command's standard input is the regular file at that path of
        the root, opened as every read here is (no symlink followed, nothing outside the root):
        a command that reads the file as ``-`` reads exactly that file, and no name of it is
        resolved again, so a directory swapped for a link after the open changes nothing."""
        # Imported here: an agent that runs no command does not load subprocess and selectors at its start.
        from kensa.hosts.commands import run_command

        if stdin_file is None:
            return run_command(argv, timeout, self.max_file_bytes)
        with self._tree.parent(stdin_file) as (dir_fd, name):
            fd = self._tree.open_final(stdin_file, dir_fd, name, _READ_FLAGS)
        if fd is None:
            raise HostAccessError(errno.ENOENT, f"{self.where(stdin_file)} does not exist; {argv[0]!r} was not run")
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise HostAccessError(errno.EISDIR, f"{self.where(stdin_file)} is not a regular file; {argv[0]!r} was not run")
            os.set_blocking(fd, True)  # opened O_NONBLOCK against a FIFO; the command reads it plainly
            return run_command(argv, timeout, self.max_file_bytes, stdin=fd)
        finally:
            os.close(fd)


def _rebuild(root: str, max_file_bytes: int) -> LocalHost:
    return LocalHost(root, max_file_bytes=max_file_bytes)


def resolve_host(key: str, *, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES) -> LocalHost:
    """The local target a transaction's ``host`` key names.

    ``"localhost"`` is this machine (root "/"); an absolute path is a tree to
    remediate in place (an image or container root), which must be a directory.
    """
    if key == "localhost":
        return LocalHost("/", max_file_bytes=max_file_bytes)
    if isinstance(key, str) and key.startswith("/"):
        return LocalHost(key, max_file_bytes=max_file_bytes)
    raise HostSelectionError(f"host {key!r} is neither 'localhost' nor an absolute path to a target root")


def canonical_host_key(key: str) -> str:
    """One spelling per target: ``"localhost"`` for this machine's root, else the
    root's real path (:attr:`LocalHost.root`).

    ``"/srv/r"``, ``"/srv/r/"``, ``"/srv/./r"`` and a symlink to it name one
    tree; the engine locks, journals and audits it under the key returned
    here, so runs on it serialize and recovery sees every change to it. A root
    reached through a magic link (``/proc/PID/root`` of another mount namespace)
    keeps that link in its key, never collapsing to "localhost". Keys that name
    no directory are returned as given (resolving them is the error).
    """
    if isinstance(key, str) and key.startswith("/"):
        try:
            host = LocalHost(key)
        except HostSelectionError:
            return key
        return "localhost" if host.is_live else host.root
    return key


# The engine canonicalizes host keys with the resolver's own function.
resolve_host.canonical_key = canonical_host_key  # type: ignore[attr-defined]


def check_step_phase(
    handler: str, phase: Phase, pre: Optional[PreState], planned: Optional[Mapping[str, Optional[FileInfo]]]
) -> None:
    """Refuse, with :class:`StepPhaseError`, what no step runner runs: a phase that is not a
    step phase, planned files given to a phase that writes, a rollback without its pre-state."""
    if phase not in STEP_PHASES:
        raise StepPhaseError(
            f"{handler}: {phase!r} is not a step phase; run one of {', '.join(sorted(p.value for p in STEP_PHASES))}"
        )
    if planned is not None and phase in (Phase.APPLY, Phase.ROLLBACK):
        raise StepPhaseError(f"{handler}: {phase.value} writes the host, so it cannot run through planned files")
    if phase is Phase.ROLLBACK and pre is None:
        raise StepPhaseError(f"{handler}: rollback needs the pre-state its capture recorded; none was given")


class LocalStepRunner:
    """Runs a step's phases in this process, with the handler and ``host`` given.

    The :class:`kensa.hosts.protocol.StepRunner` of a local target: each call is
    the handler's own method, so a phase behaves exactly as when the engine calls
    the handler itself. ``handlers`` maps mechanism names to handlers (the
    engine's registry).
    """

    def __init__(self, host: Host, handlers: Mapping[str, PhaseHandler]) -> None:
        self.host = host
        self._handlers = dict(handlers)

    def run_phase(
        self,
        handler: str,
        phase: Phase,
        params: Mapping[str, Any],
        pre: Optional[PreState] = None,
        planned: Optional[Mapping[str, Optional[FileInfo]]] = None,
    ) -> PhaseOutcome:
        """Run ``phase`` of ``handler``'s step here; see :meth:`StepRunner.run_phase`.

        Raises :class:`UnknownMechanismError` for a handler not in the registry and
        :class:`StepPhaseError` for a phase that is not a step phase, a rollback
        without its pre-state, or ``planned`` given to a phase that writes; the
        host is untouched then.
        """
        found = self._handlers.get(handler)
        if found is None:
            raise UnknownMechanismError(
                f"no handler for mechanism {handler!r} on {self.host!r}; known: {', '.join(sorted(self._handlers)) or 'none'}"
            )
        check_step_phase(handler, phase, pre, planned)
        view = self.host if planned is None else self.host.overlay(planned)
        if phase is Phase.CAPTURE:
            return found.capture(view, params)
        if phase is Phase.VALIDATE:
            return bool(found.validate(view, params))
        if phase is Phase.APPLY:
            return found.apply(self.host, params, pre)
        assert pre is not None  # check_step_phase refused a rollback without it
        return found.rollback(self.host, pre)


if TYPE_CHECKING:
    # mypy proves here what the protocols promise: LocalHost is a Host, its
    # overlay only a ReadableHost, and LocalStepRunner a StepRunner.
    _host: Host = LocalHost("/")
    _view: ReadableHost = _host.overlay({})
    _runner: StepRunner = LocalStepRunner(_host, {})
