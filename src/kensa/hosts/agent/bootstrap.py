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
:func:`kensa.hosts.agent.server.serve` with the built-in handlers
(:func:`kensa.handlers.default_registry`: this is the target's wiring). Nothing is written to the target's disk.

It must run on Python 3.6: the controller sends it through the same transform
as the payload (annotations become strings) and it imports nothing of kensa.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import types
import zlib
from typing import Any, Dict, List

READY = b"kensa-agent-ready 1\n"

#: Exit status of a refused payload (the shell's "no Python 3" is 97).
BAD_PAYLOAD = 98

_MAX_PAYLOAD = 64 << 20


class PayloadImporter:
    """Loads the modules of the verified payload from memory; refuses other kensa modules."""

    def __init__(self, modules: Dict[str, List[Any]]) -> None:
        self.modules = modules

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
        code = compile(source, f"<kensa-agent>/{module.__name__.replace('.', '/')}.py", "exec", dont_inherit=True)
        exec(code, module.__dict__)


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


def boot(expected: str) -> None:
    """Verify and run the payload; see the module docstring."""
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
    sys.meta_path.insert(0, PayloadImporter(modules))
    for name in [name for name in sys.modules if name == "kensa" or name.startswith("kensa.")]:
        del sys.modules[name]
    compat = __import__("kensa.hosts.agent.compat", fromlist=["install"])
    supplied = compat.install()
    handlers = __import__("kensa.handlers", fromlist=["default_registry"])
    server = __import__("kensa.hosts.agent.server", fromlist=["serve"])
    os._exit(server.serve(read_fd, write_fd, found, handlers.default_registry(), supplied))
