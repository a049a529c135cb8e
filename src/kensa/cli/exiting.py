"""How the ``kensa`` command ends: everything interpreter shutdown does that matters, then ``os._exit``.

A normal exit then frees every module and object one by one, sqlite's
connections and ssh's transports included in no order: about 40 ms of a
one-host remote run here, after all its work is done and its output written,
which the kernel does at once when the process ends. :func:`exit_process`
does what shutdown does that someone waits for (other threads finish, the
``atexit`` handlers run: the audit records' flush, the ssh masters' and the
agents' ends, the journals' close; stdout and stderr are flushed) and ends the
process without that teardown. It is only for the command's own entry points
(``kensa`` and ``python -m kensa``): a program that calls
:func:`kensa.cli.main` keeps its interpreter.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
from typing import NoReturn

__all__ = ["EXIT_INTERRUPTED", "FLUSH_FAILED", "exit_process", "exit_status"]

#: The status CPython exits with when flushing stdout or stderr at exit fails.
FLUSH_FAILED = 120

#: The command was stopped by Ctrl-C (SIGINT), as a shell reports it (128 + 2).
EXIT_INTERRUPTED = 130


def exit_process(code: int) -> NoReturn:
    """End this process with ``code``, after other non-daemon threads, the atexit handlers and a flush of
    stdout and stderr; a flush that fails makes the status :data:`FLUSH_FAILED` as CPython's exit would."""
    current = threading.current_thread()
    for thread in threading.enumerate():
        if thread is not current and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            code = code or FLUSH_FAILED
    os._exit(code)


def exit_status(exc: SystemExit) -> int:
    """The status the interpreter would exit with for ``exc``: None is 0, an int itself; anything
    else is written to stderr, as the interpreter does, and is 1."""
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code
    try:
        sys.stderr.write(f"{exc.code}\n")
    except (OSError, ValueError, AttributeError):
        pass  # stderr is gone: the status still says the command failed
    return 1
