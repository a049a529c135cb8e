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
"""

from __future__ import annotations

import compileall
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, Optional

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
    site = scratch / "site"
    if not (site / "kensa").is_dir():
        shutil.copytree(source / "kensa", site / "kensa", ignore=shutil.ignore_patterns("__pycache__"))
        if not compileall.compile_dir(str(site / "kensa"), quiet=1, workers=0):
            raise RuntimeError(f"compiling kensa under {site} failed")
    result["PYTHONPATH"] = os.pathsep.join([str(site), *filter(None, [result.get("PYTHONPATH")])])
    built = subprocess.run([sys.executable, "-c", "from kensa.hosts.payload import build_payload; build_payload()"],
                           env=result, capture_output=True, text=True)
    if built.returncode != 0:
        raise RuntimeError(f"building the agent payload of the kensa under {site} failed: {built.stderr[-2000:]}")
    return result
