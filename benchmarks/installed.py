"""Run kensa in a benchmark as a pip-installed kensa runs: from compiled bytecode.

A checkout's ``src/`` has no ``__pycache__`` when the environment sets
``PYTHONDONTWRITEBYTECODE``, so a kensa command started from it compiles
every module it imports, a cost a wheel install never pays (pip
compiles at install, as the peers' virtualenvs were). :func:`kensa_env` copies
the package into the benchmark's scratch directory, compiles it there, builds
its agent payload once (kept in the user's cache, named by the copy's files:
what the first remote command after an install does, and every later one
reads), and returns the environment that runs that copy. Nothing is written
into the source tree.

``PYTHONPYCACHEPREFIX`` alone would not do: with it set, Python reads bytecode
only under the prefix, so the interpreter's own standard library, compiled next
to its sources, would be compiled again on every start.

:func:`kensa_python` is the interpreter those commands run with: a virtual
environment of this Python, as the peers run from theirs. Its ``site`` reads
only the environment's own site-packages; kensa's dependencies come from this
Python's site-packages through ``PYTHONPATH``, where no ``.pth`` file runs.
A machine's Python may carry ``.pth`` files that import at every start (this
one's imports certifi and with it pathlib, tempfile and zipfile, about 30 ms),
which a kensa installed in an environment of its own does not run, and the
peers' environments do not either.
"""

from __future__ import annotations

import compileall
import os
import shutil
import site
import subprocess
import sys
import venv
from pathlib import Path
from typing import Dict, List, Optional

SRC = Path(__file__).resolve().parent.parent / "src"


def kensa_env(scratch: Path, env: Optional[Dict[str, str]] = None, source: Path = SRC) -> Dict[str, str]:
    """``env`` (default: this process's) for running ``python -m kensa`` from bytecode compiled under ``scratch``.

    The checkout's package (``source/kensa``) is copied to ``scratch/site/kensa``
    and compiled once (later calls with the same ``scratch`` reuse it), and its agent payload
    built and kept; ``PYTHONPATH`` then puts that copy first and ``PYTHONDONTWRITEBYTECODE`` is
    dropped, as in an ordinary installed environment. Without a checkout (kensa installed) the
    environment is returned unchanged but for that variable.
    """
    result = dict(os.environ if env is None else env)
    result.pop("PYTHONDONTWRITEBYTECODE", None)
    if not (source / "kensa").is_dir():
        return result
    copy = scratch / "site"
    if not (copy / "kensa").is_dir():
        shutil.copytree(source / "kensa", copy / "kensa", ignore=shutil.ignore_patterns("__pycache__"))
        if not compileall.compile_dir(str(copy / "kensa"), quiet=1, workers=0):
            raise RuntimeError(f"compiling kensa under {copy} failed")
    # This Python's site-packages after the copy: kensa's dependencies, without running their .pth files.
    result["PYTHONPATH"] = os.pathsep.join([str(copy), *filter(None, [result.get("PYTHONPATH")]), *_site_packages()])
    built = subprocess.run([kensa_python(scratch), "-c", "from kensa.hosts.payload import build_payload; build_payload()"],
                           env=result, capture_output=True, text=True)
    if built.returncode != 0:
        raise RuntimeError(f"building the agent payload of the kensa under {copy} failed: {built.stderr[-2000:]}")
    return result


def _site_packages() -> List[str]:
    return [path for path in site.getsitepackages() if os.path.isdir(path)]


def kensa_python(scratch: Path) -> str:
    """The Python kensa's timed commands run with: a virtual environment of this one under
    ``scratch`` (made once, without pip; see the module docstring)."""
    target = scratch / "venv"
    python = target / "bin" / "python"
    if not python.exists():
        venv.EnvBuilder(with_pip=False, symlinks=True).create(str(target))
    return str(python)
