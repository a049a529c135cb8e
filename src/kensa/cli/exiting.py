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
import contextlib
import os
import signal
import sys
import threading
from typing import Any, Iterator, Mapping, NoReturn, Sequence

__all__ = ["EXIT_INTERRUPTED", "FLUSH_FAILED", "NOT_RUN", "Stop", "exit_process", "exit_status", "stop_on_interrupt", "stopped_code"]

#: The status CPython exits with when flushing stdout or stderr at exit fails.
FLUSH_FAILED = 120

#: The command was stopped by Ctrl-C (SIGINT), as a shell reports it (128 + 2).
EXIT_INTERRUPTED = 130

#: Status of a rule's row when the run was stopped (Ctrl-C) before the rule's transaction began.
NOT_RUN = "not_run"

_STOPPING = (b"\nkensa: stopping: no further transaction begins; the ones running end, and the service "
             b"restarts they asked for are done (Ctrl-C again: a local run stops where it is)\n")


class Stop:
    """Ctrl-C, for a command that runs transactions: :meth:`is_set` once it asked the command to
    begin no further one. Until the command :meth:`arm` s it (its transactions are about to run),
    Ctrl-C interrupts at once, as without it: loading rules or logging in has nothing to finish."""

    def __init__(self) -> None:
        self._requested = threading.Event()
        self.armed = False

    def arm(self) -> None:
        self.armed = True

    def set(self) -> None:
        self._requested.set()

    def is_set(self) -> bool:
        return self._requested.is_set()


@contextlib.contextmanager
def stop_on_interrupt(stop: Stop) -> Iterator[None]:
    """While inside, the first Ctrl-C (SIGINT) after ``stop`` is armed sets it and says so on stderr,
    for the command to begin no further transaction; any other raises KeyboardInterrupt where the
    main thread is, as Python's own handler does. Only in the main thread, and only over that
    default handler: a SIGINT the caller ignores or handles stays theirs."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return

    stopping = [False]  # not stop.is_set(): a second handler may run inside the first's Event.set

    def interrupted(signum: int, frame: Any) -> None:
        if stopping[0] or not stop.armed:
            raise KeyboardInterrupt
        stopping[0] = True
        stop.set()
        try:
            os.write(2, _STOPPING)  # not sys.stderr: the main thread may be inside a write to it
        except OSError:
            _stderr_gone()

    previous = signal.signal(signal.SIGINT, interrupted)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _stderr_gone() -> None:
    """stderr cannot be written (its reader died, often of the same Ctrl-C): later writes go to
    /dev/null instead of raising where the main thread happens to be."""
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
    finally:
        os.close(null)


def stopped_code(code: int, results: Sequence[Any], rows: Sequence[Mapping[str, Any]], hosts: int = 1) -> int:
    """The exit code of a command whose ``rows`` (of rules without a result) may say :data:`NOT_RUN`:
    with some, :data:`EXIT_INTERRUPTED` (3, a host left changed and unverified, wins), after saying
    on stderr what ran; else ``code`` (no Ctrl-C, or one after every rule had begun)."""
    not_run = sum(row["status"] == NOT_RUN for row in rows)
    if not not_run:
        return code
    changed = len({result.host for result in results})
    try:
        sys.stderr.write(f"kensa: interrupted: no transaction began after Ctrl-C; {len(results)} ran, on {changed} of "
                         f"{hosts} host{'s' if hosts != 1 else ''}, each to its end; {not_run} rules were not run\n")
    except (OSError, ValueError):
        _stderr_gone()
    return code if code == 3 else EXIT_INTERRUPTED


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
