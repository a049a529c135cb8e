"""Remote targets for tests: kensa's agent started as a local process by SubprocessTransport.

The agent runs with this test run's own Python (its directory first on PATH,
so the bootstrap's ``python3`` is that interpreter) and is confined, like any
remote agent, to the root it is told. ``py36_path`` makes a ``python3`` that
runs the agent with what Python 3.7+ added taken away before the payload
loads: ``import dataclasses`` fails and ``typing`` has no ``Protocol``,
``runtime_checkable`` or ``Literal``.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Dict, List, Optional

from kensa.hosts.remote import SubprocessTransport
from kensa.model import RemoteTarget

PYTHON_DIR = os.path.dirname(sys.executable)


def agent_env(path: Optional[str] = None) -> Dict[str, str]:
    """An environment whose PATH finds this run's Python first (or is exactly ``path``)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTHON")}
    env["PATH"] = path if path is not None else f"{PYTHON_DIR}:/usr/bin:/bin"
    return env


def transport(name: str = "target", path: Optional[str] = None) -> SubprocessTransport:
    """A transport that starts the agent on this machine under the name ``name``."""
    return SubprocessTransport(name=name, env=agent_env(path))


def transport_for(target: RemoteTarget) -> SubprocessTransport:
    """The ``remote=`` function of default_engine in tests: every target is this machine."""
    return transport(target.host)


_PY36 = '''#!/bin/sh
# python3 as Python 3.6 would look to kensa's agent: no dataclasses, no typing.Protocol,
# runtime_checkable or Literal. Run as: python3 [FLAGS...] -c SOURCE [ARGS...]
while [ "$1" != "-c" ] && [ "${1#-}" != "$1" ]; do shift; done
[ "$1" = "-c" ] || exec {python} "$@"
shift
exec {python} -I -S -B -c '
import sys, typing
sys.modules["dataclasses"] = None
for name in ("Protocol", "runtime_checkable", "Literal"):
    delattr(typing, name)
source = sys.argv[1]
sys.argv = ["-c"] + sys.argv[2:]
exec(compile(source, "<string>", "exec"))
' "$@"
'''


def py36_path(directory: Path) -> str:
    """A PATH whose ``python3`` is this run's Python with the 3.7+ features removed (see the module docstring)."""
    directory.mkdir(parents=True, exist_ok=True)
    wrapper = directory / "python3"
    wrapper.write_text(_PY36.replace("{python}", sys.executable))
    wrapper.chmod(0o755)
    return f"{directory}:/usr/bin:/bin"


_CREATING = ("open", "openat", "creat", "mkdir", "mkdirat", "rename", "renameat", "renameat2", "unlink", "unlinkat",
             "symlink", "symlinkat", "link", "linkat")


def traced_transport(log: Path, env: Dict[str, str]) -> SubprocessTransport:
    """A transport whose agent runs under ``strace -f``, its calls that create, rename or remove files in ``log``."""
    if shutil.which("strace") is None:
        from conftest import require_real

        require_real("strace is not installed")
    return SubprocessTransport(["strace", "-f", "-y", "-qq", "-e", f"trace={','.join(_CREATING)}", "-o", str(log), "--"],
                               name="traced", env=env)


def traced_changes(log: Path) -> List[str]:
    """The successful calls in a :func:`traced_transport` log that create, write, rename or remove a file."""
    changes = []
    for line in log.read_text().splitlines():
        call = line.split(None, 1)[1] if " " in line else line
        name = call.split("(", 1)[0]
        creates = name != "open" and name != "openat" or "O_CREAT" in call or "O_WRONLY" in call or "O_RDWR" in call
        if name in _CREATING and creates and "= -1" not in call:
            changes.append(call)
    return changes


def logging_python(directory: Path, log: Path, version: str = "") -> str:
    """A PATH whose ``python3`` logs each start into ``log`` and then runs this test run's Python;
    with ``version`` ("3.5"), that Python sees itself as that version."""
    directory.mkdir(parents=True, exist_ok=True)
    fake = ""
    if version:
        major, minor = version.split(".")
        fake = f"sys.version_info = ({major}, {minor}, 0)\n"
    wrapper = directory / "python3"
    wrapper.write_text(
        f"#!/bin/sh\necho start >> {log}\n"
        'while [ "$1" != "-c" ] && [ "${1#-}" != "$1" ]; do shift; done\n'
        f'[ "$1" = "-c" ] || exec {sys.executable} "$@"\nshift\n'
        f"exec {sys.executable} -I -S -B -c '\nimport sys\n{fake}source = sys.argv[1]\n"
        'sys.argv = ["-c"] + sys.argv[2:]\nexec(compile(source, "<string>", "exec"))\n\' "$@"\n'
    )
    wrapper.chmod(0o755)
    return f"{directory}:/usr/bin:/bin"


def motd_root(tmp_path: Path) -> Path:
    """A target root holding only /etc/motd."""
    top = tmp_path / "root"
    (top / "etc").mkdir(parents=True)
    (top / "etc" / "motd").write_text("welcome\n")
    return top


def small_root(tmp_path: Path) -> Path:
    """A target root with an sshd_config (Port, PermitRootLogin) and a motd: what the agent tests change."""
    top = tmp_path / "root"
    (top / "etc" / "ssh").mkdir(parents=True)
    (top / "etc" / "ssh" / "sshd_config").write_text("Port 22\nPermitRootLogin yes\n")
    (top / "etc" / "motd").write_text("welcome\n")
    return top
