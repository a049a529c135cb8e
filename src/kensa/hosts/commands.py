"""Commands a host runs for kensa: an argument list, no shell, output held up to a cap.

:func:`run_command` is what :meth:`kensa.hosts.local.LocalHost.run` (and so the
agent on a remote host) does. It answers as ``subprocess.run`` with
``universal_newlines=True`` did, but holds at most ``cap`` bytes of each of
stdout and stderr: a command that writes more is killed, and the call raises
:class:`~kensa.errors.HostAccessError` (``EFBIG``) naming the command and the
cap, so a runaway command cannot exhaust the memory of the agent or of the
controller its answer goes to. It runs on the target's Python (3.6+).
"""

from __future__ import annotations

import errno
import locale
import os
import selectors
import subprocess
import time
from typing import Dict, List, Optional, Sequence

from kensa.errors import HostAccessError

__all__ = ["run_command"]


def _text(data: bytes) -> str:
    # What subprocess's text mode gives: the locale's encoding, universal newlines.
    return data.decode(locale.getpreferredencoding(False)).replace("\r\n", "\n").replace("\r", "\n")


def _stop(proc: "subprocess.Popen[bytes]") -> None:
    proc.kill()
    proc.wait()


def run_command(argv: Sequence[str], timeout: float, cap: int, stdin: Optional[int] = None) -> "subprocess.CompletedProcess[str]":
    """Run ``argv`` with stdin closed (or reading the open descriptor ``stdin``, which stays the
    caller's to close); its exit status and output (see the module docstring).

    Raises HostAccessError when the command is not found (``ENOENT``), outlives ``timeout``
    seconds (``ETIMEDOUT``; it is killed), writes more than ``cap`` bytes on one stream (``EFBIG``)
    or is killed by a signal (``EINTR``). It runs in a session of its own.
    """
    args = list(argv)
    try:
        # A session of its own: the terminal's Ctrl-C (to its foreground process group) does not
        # kill it, so a run asked to stop lets the transaction running end.
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL if stdin is None else stdin, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)
    except FileNotFoundError as exc:
        raise HostAccessError(errno.ENOENT, f"command {args[0]!r} not found") from exc
    deadline = time.monotonic() + timeout
    output: Dict[str, List[bytes]] = {"stdout": [], "stderr": []}
    held = {"stdout": 0, "stderr": 0}
    with selectors.DefaultSelector() as selector:
        for name in output:
            stream = getattr(proc, name)
            selector.register(stream, selectors.EVENT_READ, name)
        try:
            while selector.get_map():
                left = deadline - time.monotonic()
                if left <= 0:
                    _stop(proc)
                    raise HostAccessError(errno.ETIMEDOUT, f"command {args!r} timed out after {timeout} s")
                for key, _ in selector.select(left):
                    name = key.data
                    chunk = os.read(key.fd, 1 << 16)
                    if not chunk:
                        selector.unregister(key.fileobj)
                        continue
                    held[name] += len(chunk)
                    if held[name] > cap:
                        _stop(proc)
                        raise HostAccessError(errno.EFBIG, f"command {args!r} wrote more than {cap} bytes on {name}; "
                                                           "it was stopped, and its output is not kept")
                    output[name].append(chunk)
        finally:
            proc.stdout.close()  # type: ignore[union-attr]
            proc.stderr.close()  # type: ignore[union-attr]
    try:
        code = proc.wait(max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        _stop(proc)
        raise HostAccessError(errno.ETIMEDOUT, f"command {args!r} timed out after {timeout} s") from None
    if code < 0:
        # Its exit status says nothing about what it was asked: an error, never an answer.
        raise HostAccessError(errno.EINTR, f"command {args!r} was killed by signal {-code}")
    return subprocess.CompletedProcess(args, code, _text(b"".join(output["stdout"])), _text(b"".join(output["stderr"])))
