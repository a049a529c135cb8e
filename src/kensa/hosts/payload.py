"""The agent's payload: kensa's own target-side source, made ready for the target's Python.

:func:`build_payload` starts from every module of the packages the target
runs (:data:`ROOT_PACKAGES`: the handlers, the facts and the agent itself) and
follows their ``kensa`` imports, so a new handler or fact module, and whatever
it imports, is sent without a list to keep. Every module reached must be
target-side code (:data:`TARGET_SIDE`); one that is not (the engine, the
journal, the audit emitter ...) is refused with :class:`~kensa.errors.AgentError`
naming it and the module that imports it. Imports under ``if TYPE_CHECKING:``
never run and are not followed; an import guarded by ``except ImportError``
is followed only when its module is Python source (``kensa._audit``, the
compiled extension, is not sent: the target uses the pure-Python fallbacks).

Each module is transformed for Python 3.6 with :mod:`ast`: ``from __future__
import annotations`` is dropped and every annotation becomes a string constant
(exactly PEP 563's semantics, which dataclass fields rely on), then
``ast.unparse`` writes the source again. Packages on the way that are not sent
whole (``kensa``, ``kensa.hosts``) are sent empty. The modules are JSON,
zlib-compressed; the SHA-256 of those bytes names the payload.

``kensa.handlers`` itself is not sent as it is: its registry imports every
handler module, and a run uses a few. On the target it is the handler index
(made from :data:`kensa.handlers.HANDLERS` when the payload is built):
``INDEX``, mechanism -> (module, class), by which the agent imports a
handler's module on the first request naming its mechanism.

:func:`agent_command` is the POSIX ``sh -c`` command that finds a Python 3
(``python3``, ``/usr/libexec/platform-python``, then ``python3.X`` newest
first), runs the bootstrap with it (``-I``: no ``PYTHON*`` variables or user
site; ``-S``: no site-packages, as the agent imports only the standard library and its
payload; ``-B``: no bytecode files written for the standard library it imports), or exits with status :data:`NO_PYTHON`
and a message listing what it tried. Given an interpreter (``python=``, an
absolute path: :func:`check_python`), it runs exactly that one and tries no other.
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import json
import os
import re
import shlex
import threading
import zlib
from dataclasses import dataclass, replace
from typing import Dict, List, Mapping, Optional, Tuple, cast

from kensa.errors import AgentError, UsageError
from kensa.hosts import payloadcache

__all__ = ["NO_PYTHON", "NO_PYTHON_MESSAGE", "PYTHONS", "ROOT_PACKAGES", "TARGET_SIDE", "Payload", "agent_command",
           "build_payload", "check_python", "for_old_python"]

#: Packages whose every module runs on the target.
ROOT_PACKAGES = ("kensa.handlers", "kensa.facts", "kensa.hosts.agent")

#: What the payload may hold: modules of these names or below them.
TARGET_SIDE = ("kensa.model", "kensa.errors", "kensa.hosts", "kensa.handlers", "kensa.facts", "kensa.audit.compiled",
               "kensa.support.flocks")

# Sent on the command line, not in the payload; and the controller's own side.
_NOT_SENT = frozenset({"kensa.hosts.agent.bootstrap"})

#: The package the target gets as the handler index (see the module docstring).
HANDLER_INDEX = "kensa.handlers"

#: How the agent's Python is started: isolated, without site-packages, writing no bytecode.
PYTHON_FLAGS = ("-I", "-S", "-B")

#: The interpreters the bootstrap command tries, in order.
PYTHONS = ("python3", "/usr/libexec/platform-python") + tuple(f"python3.{minor}" for minor in range(14, 5, -1))

#: Exit status of the bootstrap command when the target has no Python 3.6+.
NO_PYTHON = 97

#: What that command writes on stderr then (the client looks for it in a transport's error).
NO_PYTHON_MESSAGE = "kensa-agent: no Python 3.6 or newer"

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass(frozen=True)
class Payload:
    """The modules sent to the target (name -> (is a package, source)), as sent, and their hash;
    ``origin`` says whether it was built now or read from the controller's cache
    (:mod:`kensa.hosts.payloadcache`), and what became of the cache. ``bootstrap``: the
    bootstrap module's source transformed like the modules (sent on the agent's command line),
    kept with them."""

    modules: Mapping[str, Tuple[bool, str]]
    blob: bytes
    sha256: str
    origin: str = "built"
    bootstrap: str = ""


def _source_file(name: str) -> Optional[Tuple[bool, str]]:
    """(is a package, path) of the Python source of kensa module ``name``, if there is one."""
    parts = name.split(".")[1:]
    base = os.path.join(_PACKAGE_DIR, *parts)
    if os.path.isfile(os.path.join(base, "__init__.py")):
        return True, os.path.join(base, "__init__.py")
    if os.path.isfile(base + ".py"):
        return False, base + ".py"
    return None


def _package_modules(package: str) -> List[str]:
    found = _source_file(package)
    if found is None or not found[0]:
        raise AgentError(f"the agent payload needs the package {package}, which this kensa does not have; reinstall kensa")
    directory = os.path.dirname(found[1])
    names = [package]
    for entry in sorted(os.listdir(directory)):
        if entry.endswith(".py") and entry != "__init__.py":
            names.append(f"{package}.{entry[:-3]}")
        elif os.path.isfile(os.path.join(directory, entry, "__init__.py")):
            names.extend(_package_modules(f"{package}.{entry}"))
    return [name for name in names if name not in _NOT_SENT]


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _guarded(handlers: List[ast.ExceptHandler]) -> bool:
    names = []
    for handler in handlers:
        kinds = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
        names += [kind.id for kind in kinds if isinstance(kind, ast.Name)]
    return bool({"ImportError", "ModuleNotFoundError"} & set(names))


def _imports(tree: ast.AST, module: str, is_package: bool) -> List[Tuple[str, bool]]:
    """(kensa module imported, whether the import is guarded by ``except ImportError``)."""
    found: List[Tuple[str, bool]] = []

    def visit(node: ast.AST, guarded: bool) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child, guarded)
            return
        if isinstance(node, ast.Try):
            inner = guarded or _guarded(node.handlers)
            for child in node.body:
                visit(child, inner)
            after: List[ast.AST] = [*node.handlers, *node.orelse, *node.finalbody]
            for later in after:
                visit(later, guarded)
            return
        if isinstance(node, ast.Import):
            found.extend((alias.name, guarded) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module if is_package else module.rpartition(".")[0]
                for _ in range(node.level - 1):
                    package = package.rpartition(".")[0]
                base = f"{package}.{base}" if base else package
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                submodule = _source_file(candidate) is not None or _is_extension(candidate)
                found.append((candidate if submodule else base, guarded))
        for inner_node in ast.iter_child_nodes(node):
            visit(inner_node, guarded)

    visit(tree, False)
    return [(name, guarded) for name, guarded in found if name == "kensa" or name.startswith("kensa.")]


def _is_extension(name: str) -> bool:
    parts = name.split(".")[1:]
    directory = os.path.join(_PACKAGE_DIR, *parts[:-1])
    return bool(parts) and os.path.isdir(directory) and any(
        entry.startswith(parts[-1] + ".") and entry.endswith(".so") for entry in os.listdir(directory))


def _target_side(name: str) -> bool:
    return any(name == allowed or name.startswith(allowed + ".") for allowed in TARGET_SIDE)


def _as_text(node: Optional[ast.expr]) -> Optional[ast.expr]:
    """An annotation as the string of its source (PEP 563); a string stays as it is."""
    if node is None or (isinstance(node, ast.Constant) and isinstance(node.value, str)):
        return node
    return ast.Constant(ast.unparse(node))


def _for_old_python(tree: ast.Module) -> str:
    tree.body = [
        node for node in tree.body
        if not (isinstance(node, ast.ImportFrom) and node.module == "__future__"
                and not [alias for alias in node.names if alias.name != "annotations"])
    ]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "__future__":
            node.names = [alias for alias in node.names if alias.name != "annotations"]
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            arguments = node.args
            for arg in [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs, arguments.vararg, arguments.kwarg]:
                if arg is not None:
                    arg.annotation = _as_text(arg.annotation)
            node.returns = _as_text(node.returns)
        elif isinstance(node, ast.AnnAssign):
            node.annotation = cast(ast.expr, _as_text(node.annotation))
    return ast.unparse(tree)


# CPython before 3.11.9 and 3.12.3 keeps one AST recursion counter per interpreter: two
# threads in ast.parse at once (connects to several hosts, a finalizer releasing the GIL
# in between) make it raise SystemError. One thread at a time, then.
_AST_LOCK = threading.Lock()


def _parse(source: str, filename: str) -> ast.Module:
    with _AST_LOCK:
        return ast.parse(source, filename)


def for_old_python(source: str, filename: str = "<kensa>") -> str:
    """``source`` with ``from __future__ import annotations`` dropped and every annotation
    a string constant, as ``ast.unparse`` writes it: runs on Python 3.6 as it ran here."""
    return _for_old_python(_parse(source, filename))


def _collect() -> Dict[str, Tuple[bool, ast.Module]]:
    todo = [name for package in ROOT_PACKAGES for name in _package_modules(package)]
    importer: Dict[str, str] = {}
    sources: Dict[str, Tuple[bool, ast.Module]] = {}
    while todo:
        name = todo.pop()
        if name in sources:
            continue
        found = _source_file(name)
        if found is None:
            raise AgentError(f"the agent payload needs {name} (imported by {importer.get(name, 'kensa')}), "
                             "which has no Python source in this kensa; reinstall kensa")
        if not _target_side(name):
            raise AgentError(
                f"{importer.get(name, name)} imports {name}, which is not target-side code; the agent payload "
                f"may hold only {', '.join(TARGET_SIDE)}: move what the target needs into one of them"
            )
        is_package, path = found
        with open(path, encoding="utf-8") as handle:
            tree = _parse(handle.read(), path)
        sources[name] = (is_package, tree)
        for imported, guarded in _imports(tree, name, is_package):
            if guarded and _source_file(imported) is None:
                continue
            if imported != "kensa" and imported not in sources:
                importer.setdefault(imported, name)
                todo.append(imported)
    return sources


# Many hosts connect at once at the start of a fleet run: they must share one build,
# as each build parses every target-side module (as much CPU as the rest of planning).
_BUILD_LOCK = threading.Lock()
_BUILT: Optional[Payload] = None


def _reset_build_lock() -> None:
    global _BUILD_LOCK
    _BUILD_LOCK = threading.Lock()  # a thread of the parent may have held it at fork


os.register_at_fork(after_in_child=_reset_build_lock)


def build_payload() -> Payload:
    """The payload of this kensa, built once per process (by the first thread to ask; the others wait
    for it); see the module docstring."""
    global _BUILT
    with _BUILD_LOCK:
        if _BUILT is None:
            _BUILT = _cached_or_built()
        return _BUILT


def _cached_or_built() -> Payload:
    """The payload kept by an earlier run of this same source and Python, else built and kept."""
    print_ = payloadcache.fingerprint(_PACKAGE_DIR, TARGET_SIDE)
    body, found = payloadcache.load(print_)
    if body is not None:
        parts = _parts(body)
        modules = _modules_of(parts[1]) if parts is not None else None
        if parts is not None and modules is not None:
            return Payload(modules, parts[1], hashlib.sha256(parts[1]).hexdigest(), found, parts[0])
        found = f"refused: {found[len('cached: '):]} holds no payload"
    built = _build()
    kept = payloadcache.store(print_, _body(built.bootstrap, built.blob))
    return replace(built, origin=f"built ({found}); {kept}")


def _body(bootstrap: str, blob: bytes) -> bytes:
    """What the controller's cache keeps of a payload: the bootstrap's length, the bootstrap, the blob."""
    text = bootstrap.encode("utf-8")
    return len(text).to_bytes(4, "big") + text + blob


def _parts(body: bytes) -> Optional[Tuple[str, bytes]]:
    """(bootstrap, blob) of a kept body, or None when it is not one."""
    size = int.from_bytes(body[:4], "big")
    if len(body) < 4 + size:
        return None
    try:
        return body[4:4 + size].decode("utf-8"), body[4 + size:]
    except UnicodeDecodeError:
        return None


def _modules_of(blob: bytes) -> Optional[Dict[str, Tuple[bool, str]]]:
    """The modules of a payload's bytes, or None when they are not a payload's."""
    try:
        found = json.loads(zlib.decompress(blob).decode("utf-8"))
    except (zlib.error, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(found, dict) or not all(
            isinstance(name, str) and isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], bool)
            and isinstance(entry[1], str) for name, entry in found.items()):
        return None
    return {name: (entry[0], entry[1]) for name, entry in found.items()}


def _handler_index(sources: Mapping[str, Tuple[bool, ast.Module]]) -> str:
    """The target's ``kensa.handlers``: ``INDEX``, mechanism -> (module, class) of every built-in handler."""
    # Read from the controller's registry when the payload is built: the one list of mechanisms.
    registry = importlib.import_module(HANDLER_INDEX)
    index: Dict[str, Tuple[str, str]] = {}
    for cls in registry.HANDLERS:
        if cls.__module__ not in sources or not cls.__module__.startswith(HANDLER_INDEX + "."):
            raise AgentError(f"the handler of {cls.name!r} is {cls.__module__}.{cls.__qualname__}, "
                             f"which is not a module of {HANDLER_INDEX} in the agent payload")
        index[cls.name] = (cls.__module__, cls.__qualname__)
    doc = '"""The handler index of the agent payload: mechanism -> (module, class)."""'
    return f"{doc}\nINDEX = {dict(sorted(index.items()))!r}\n"


def _build() -> Payload:
    sources = _collect()
    modules: Dict[str, Tuple[bool, str]] = {}
    for name, (is_package, tree) in sorted(sources.items()):
        modules[name] = (is_package, _handler_index(sources) if name == HANDLER_INDEX else _for_old_python(tree))
        parts = name.split(".")
        for depth in range(1, len(parts)):
            parent = ".".join(parts[:depth])
            if parent not in sources:
                modules.setdefault(parent, (True, ""))
    blob = zlib.compress(json.dumps(modules, sort_keys=True).encode("utf-8"), 9)
    path = os.path.join(_PACKAGE_DIR, "hosts", "agent", "bootstrap.py")
    with open(path, encoding="utf-8") as handle:
        bootstrap = for_old_python(handle.read(), path)
    return Payload(modules, blob, hashlib.sha256(blob).hexdigest(), bootstrap=bootstrap)


def bootstrap_source() -> str:
    """The bootstrap module's source, transformed like the payload (kept with it: :func:`build_payload`)."""
    return build_payload().bootstrap


def _guard() -> str:
    """The agent program's first lines: valid in any Python 3, they hand a Python older than 3.6
    on to the next candidate (``sys.argv``: its index in :data:`PYTHONS`, then the program)."""
    return (
        "import sys\n"
        "if sys.version_info < (3, 6):\n"
        "    import os, shutil\n"
        f"    candidates = {list(PYTHONS)!r}\n"
        "    index, program = int(sys.argv[1]), sys.argv[2]\n"
        "    for later in range(index + 1, len(candidates)):\n"
        "        found = shutil.which(candidates[later])\n"
        "        if found:\n"
        f"            os.execv(found, [found, {', '.join(map(repr, PYTHON_FLAGS))}, '-c', program, str(later), program])\n"
        f"    sys.stderr.write({NO_PYTHON_MESSAGE + ' (tried ' + ' '.join(PYTHONS) + ')'!r} + '\\n')\n"
        f"    sys.exit({NO_PYTHON})\n"
    )


def check_python(python: str, host: str) -> str:
    """``python`` when it can name the interpreter to run on ``host``: an absolute path on one line.

    Raises :class:`~kensa.errors.UsageError` naming the host otherwise. A relative
    name would be looked up on the login's PATH, which is what pinning avoids.
    """
    if not isinstance(python, str) or not python.startswith("/") or re.search(r"[\s\x00-\x1f\x7f]", python):
        raise UsageError(f"Python interpreter {str(python)[:80]!r} for {host}: expected an absolute path "
                         "without whitespace or control characters, such as /usr/bin/python3")
    return python


def agent_command(sha256: str, cache: bool = False, python: Optional[str] = None) -> List[str]:
    """The argv that starts the agent on a target: ``sh -c`` finding a Python 3, then the bootstrap.

    The shell execs the first candidate of :data:`PYTHONS` found on the target
    with the agent program, whose first lines (:func:`_guard`) hand a Python
    older than 3.6 on to the next candidate before the bootstrap is compiled.
    The usual target so starts one Python, not a version probe and then the
    agent (a Python start is most of an agent's start-up CPU); the agent is
    the process the transport started, so stopping it stops the agent.
    ``cache``: keep the compiled payload on the target (:mod:`kensa.hosts.agent.bootstrap`).
    ``python``: run exactly this interpreter (:func:`check_python`); when it is not an executable
    file, or is older than 3.6, the command exits with :data:`NO_PYTHON` and tries no other.
    """
    bootstrap = f"{bootstrap_source()}\nboot({sha256!r}, cache={bool(cache)!r})\n"
    program = f"{_guard()}exec(compile({bootstrap!r}, '<kensa-bootstrap>', 'exec'))\n"
    flags = " ".join(PYTHON_FLAGS)
    if python is not None:
        quoted = shlex.quote(check_python(python, "the target"))
        # Index past the last candidate: the guard hands an old Python on to none.
        return ["/bin/sh", "-c", (
            f"k={shlex.quote(program)}; "
            f"if [ -f {quoted} ] && [ -x {quoted} ]; then exec {quoted} {flags} -c \"$k\" {len(PYTHONS)} \"$k\"; fi; "
            f"echo {shlex.quote(f'{NO_PYTHON_MESSAGE} (tried {python})')} >&2; exit {NO_PYTHON}")]
    tried = " ".join(PYTHONS)
    script = (
        f"k={shlex.quote(program)}; i=0; "
        f"for p in {' '.join(shlex.quote(p) for p in PYTHONS)}; do "
        f"if command -v \"$p\" >/dev/null 2>&1; then exec \"$p\" {flags} -c \"$k\" \"$i\" \"$k\"; fi; "
        "i=$((i + 1)); done; "
        f"echo {shlex.quote(f'{NO_PYTHON_MESSAGE} (tried {tried})')} >&2; exit {NO_PYTHON}"
    )
    return ["/bin/sh", "-c", script]
