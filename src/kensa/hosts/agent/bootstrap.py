"""The agent's bootstrap: the only code the target runs before the payload is verified.

The controller runs this module's source with the target's Python (``python3
-c``), followed by a call ``boot("<sha256>")``. :func:`boot` moves the
protocol off file descriptors 0 and 1 (so a stray print or a child process
cannot write into it), writes :data:`READY`, reads the payload (a 4-byte
length and zlib-compressed JSON: module name -> [is_package, source]), and
refuses it, before decompressing or running any of it, unless its SHA-256 is
the one given on the command line. It then installs a meta-path importer that
loads the payload's modules from memory (and refuses every other ``kensa``
module, so a kensa installed on the target is never mixed in), supplies what
an old Python lacks (:mod:`kensa.hosts.agent.compat`), and runs
:func:`kensa.hosts.agent.server.serve` with the built-in handlers (the
payload's handler index, ``kensa.handlers.INDEX``, each handler's module
imported on its first use: this is the target's wiring).

With ``cache`` off nothing is written to the target's disk. With it on, the
payload's modules compiled by this Python are kept in one file,
``~/.cache/kensa/agent-<payload sha256>-<cache tag>.bin``, so that the next
agent of the same kensa and Python skips compiling them (a third of an agent's
start-up CPU). The payload is still sent and verified every time; the cache is
looked up by that verified hash, and used only when its directory is a real
directory of this user with no access for others (0700), the file a regular
file of this user with no access for others, and the SHA-256 in its first
lines matches its body; otherwise it is not used and is replaced (written to
a temporary file, then renamed). Writing a copy removes the oldest other copies
(other kensa versions'), so that at most :data:`KEEP_COPIES` are kept. What
happened is reported in ``hello``.

It must run on Python 3.6: the controller sends it through the same transform
as the payload (annotations become strings) and it imports nothing of kensa.
"""

from __future__ import annotations

import hashlib
import json
import marshal
import os
import stat
import sys
import types
import zlib
from typing import Any, Dict, List, Optional, Tuple

READY = b"kensa-agent-ready 1\n"

#: Exit status of a refused payload (the shell's "no Python 3" is 97).
BAD_PAYLOAD = 98

_MAX_PAYLOAD = 64 << 20

#: First line of a cached compiled payload; the second is the SHA-256 of the rest.
CACHE_MAGIC = b"kensa-agent-cache 1\n"

#: Cached copies kept at most, by modification time (set when one is used): controllers running
#: other kensa versions against this host each find their own instead of compiling it on every
#: other run.
KEEP_COPIES = 3


class PayloadImporter:
    """Loads the modules of the verified payload from memory; refuses other kensa modules."""

    def __init__(self, modules: Dict[str, List[Any]], codes: Optional[Dict[str, Any]] = None) -> None:
        self.modules = modules
        self.codes = codes or {}

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != "kensa" and not name.startswith("kensa."):
            return None
        import importlib.util
        if name not in self.modules:
            raise ImportError(f"{name} is not part of kensa's agent payload", name=name)
        return importlib.util.spec_from_loader(name, self, is_package=bool(self.modules[name][0]))  # type: ignore[arg-type]

    def create_module(self, spec: Any) -> None:
        return None

    def exec_module(self, module: types.ModuleType) -> None:
        is_package, source = self.modules[module.__name__]
        if is_package:
            module.__path__ = []
        code = self.codes.get(module.__name__)
        if code is None:
            code = _compiled(module.__name__, source)
        exec(code, module.__dict__)


def _compiled(name: str, source: str) -> Any:
    return compile(source, f"<kensa-agent>/{name.replace('.', '/')}.py", "exec", dont_inherit=True)


def _private(st: os.stat_result, kind: str, path: str) -> Optional[str]:
    """Why ``st`` may not be trusted as this user's own, or None."""
    if (stat.S_IFDIR if kind == "directory" else stat.S_IFREG) != stat.S_IFMT(st.st_mode):
        return f"{path} is not a {kind}"
    if st.st_uid != os.geteuid():
        return f"{path} is owned by uid {st.st_uid}, not this user ({os.geteuid()})"
    if st.st_mode & 0o077:
        return f"{path} has mode {stat.S_IMODE(st.st_mode):04o}: others may write it (needs no group or other access)"
    return None


def _cache_dir() -> Tuple[Optional[int], str]:
    """(descriptor of the private cache directory, None if refused; what was found)."""
    home = os.path.expanduser("~")
    path = os.path.join(home, ".cache", "kensa")
    if not os.path.isdir(home):
        return None, f"off: the home directory {home} does not exist"
    try:
        for directory in (os.path.join(home, ".cache"), path):
            try:
                os.mkdir(directory, 0o700)
            except FileExistsError:
                pass
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        return None, f"off: cannot open {path}: {exc.strerror}"
    why = _private(os.fstat(fd), "directory", path)
    if why is not None:
        os.close(fd)
        return None, f"refused: {why}"
    return fd, path


def _cached(dfd: int, name: str, modules: Dict[str, List[Any]]) -> Tuple[Optional[Dict[str, Any]], str]:
    """The cached code objects of ``name`` in the directory ``dfd`` if they can be trusted, and why not."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
    except FileNotFoundError:
        return None, "absent"
    except OSError as exc:
        return None, f"unreadable ({exc.strerror})"
    try:
        why = _private(os.fstat(fd), "file", name)
        if why is not None:
            return None, why
        chunks = []
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    head, _, rest = data.partition(b"\n")
    digest, _, body = rest.partition(b"\n")
    if head + b"\n" != CACHE_MAGIC or hashlib.sha256(body).hexdigest().encode() != digest:
        return None, f"{name} fails its hash"
    try:
        codes = marshal.loads(body)
    except (EOFError, ValueError, TypeError):
        return None, f"{name} is not a compiled payload"
    if not isinstance(codes, dict) or sorted(codes) != sorted(modules) or not all(
            isinstance(code, types.CodeType) for code in codes.values()):
        return None, f"{name} holds other modules than the payload"
    return codes, "hit"


def _write_cache(dfd: int, name: str, modules: Dict[str, List[Any]]) -> Dict[str, Any]:
    """Compile every module, write them as ``name`` (temporary file, then rename) and remove all
    but the newest other copies in the directory (:data:`KEEP_COPIES` in all); the code objects."""
    codes = {module: _compiled(module, source) for module, (_, source) in modules.items()}
    body = marshal.dumps(codes)
    temporary = f".{name}.{os.getpid()}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dfd)
    try:
        data = CACHE_MAGIC + hashlib.sha256(body).hexdigest().encode() + b"\n" + body
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(temporary, dir_fd=dfd)
        raise
    os.close(fd)
    os.rename(temporary, name, src_dir_fd=dfd, dst_dir_fd=dfd)
    others = []
    for entry in os.listdir(dfd):
        if entry != name and entry.startswith("agent-") and entry.endswith(".bin"):
            try:
                others.append((os.stat(entry, dir_fd=dfd, follow_symlinks=False).st_mtime_ns, entry))
            except FileNotFoundError:
                pass  # another agent removed it meanwhile
    for _, entry in sorted(others, reverse=True)[KEEP_COPIES - 1:]:
        try:
            os.unlink(entry, dir_fd=dfd)
        except FileNotFoundError:
            pass
    return codes


def _use_cache(expected: str, modules: Dict[str, List[Any]]) -> Tuple[Dict[str, Any], str]:
    """The payload's code objects from the cache, or written to it; and what happened, for ``hello``.
    Caching never stops the agent: any failure is reported and the payload compiles from source."""
    dfd, where = _cache_dir()
    if dfd is None:
        return {}, where
    name = f"agent-{expected}-{sys.implementation.cache_tag}.bin"
    try:
        codes, why = _cached(dfd, name, modules)
        if codes is not None:
            try:
                # Used now: the newest, as far as keeping the newest KEEP_COPIES goes.
                os.utime(name, dir_fd=dfd, follow_symlinks=False)
            except OSError as exc:
                return codes, f"hit: {where}/{name} (its time of use could not be set: {exc.strerror})"
            return codes, f"hit: {where}/{name}"
        codes = _write_cache(dfd, name, modules)
        return codes, f"written: {where}/{name}" if why == "absent" else f"replaced: {why}"
    except (OSError, ValueError) as exc:
        return {}, f"off: {where}: {exc}"
    finally:
        os.close(dfd)


def _read_exactly(fd: int, size: int) -> bytes:
    chunks = []
    while size:
        chunk = os.read(fd, min(size, 1 << 20))
        if not chunk:
            raise EOFError("the controller closed the connection while sending the payload")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _fail(status: int, message: str) -> None:
    sys.stderr.write(f"kensa-agent: {message}\n")
    sys.stderr.flush()
    os._exit(status)


def boot(expected: str, cache: bool = False) -> None:
    """Verify and run the payload (its compiled modules cached when ``cache``); see the module docstring."""
    read_fd, write_fd = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(2, 1)
    os.close(null)
    os.write(write_fd, READY)
    size = int.from_bytes(_read_exactly(read_fd, 4), "big")
    if size > _MAX_PAYLOAD:
        _fail(BAD_PAYLOAD, f"a payload of {size} bytes was announced, above {_MAX_PAYLOAD}")
    payload = _read_exactly(read_fd, size)
    found = hashlib.sha256(payload).hexdigest()
    if found != expected:
        _fail(BAD_PAYLOAD, f"payload hash mismatch: expected sha256 {expected}, received {found}; nothing was run")
    modules = json.loads(zlib.decompress(payload).decode("utf-8"))
    codes, cached = _use_cache(expected, modules) if cache else ({}, "off")
    sys.meta_path.insert(0, PayloadImporter(modules, codes))
    for name in [name for name in sys.modules if name == "kensa" or name.startswith("kensa.")]:
        del sys.modules[name]
    compat = __import__("kensa.hosts.agent.compat", fromlist=["install"])
    supplied = compat.install()
    index = __import__("kensa.handlers", fromlist=["INDEX"]).INDEX
    server = __import__("kensa.hosts.agent.server", fromlist=["serve"])
    os._exit(server.serve(read_fd, write_fd, found, server.IndexedHandlers(index), supplied, cached))
