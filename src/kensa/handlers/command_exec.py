"""command_exec: run a command on the live host. Not capturable: it cannot be undone.

The command (``run``, as Kensa's rules spell it, or ``command``) is split with
shlex and run without a shell, under a timeout. ``unless`` is every step's
(:data:`kensa.facts.params.UNLESS`: a string runs with ``/bin/sh -c``, a list
without a shell); the engine skips the step when it exits 0 before apply, and
this mechanism also reads it as its own validate.

Whether the step holds:

- with an ``unless`` command, when ``unless`` exits 0: before apply the step
  is then already compliant (the command is not run), after apply a
  still-failing ``unless`` fails the transaction's validate phase;
- without one, nothing on the host says whether the command's effect is there,
  so the step holds only right after its own successful run: ``apply``
  remembers the exit status of the command it ran (for that step's parameters,
  on that thread), and the next ``validate`` of those parameters on that thread
  reads it once. A validate with no run before it (the engine's compliance
  check, ``kensa check``) is False, so the command always runs, and it never
  runs twice in one transaction.
"""

from __future__ import annotations

import shlex
import threading
from collections import OrderedDict
from typing import Any, Dict, List, Mapping, Optional, Tuple

from kensa.errors import ParamError

from kensa.model import PreState, RollbackResult, StepResult
from kensa.facts.params import UNLESS, Field, Schema, as_given, seconds
from kensa.hosts.protocol import Host, ReadableHost

DEFAULT_TIMEOUT = 300.0
_MAX_PENDING = 1024


def command(value: Any) -> List[str]:
    """A command line, split as a shell would into an argument list (no shell runs it)."""
    if not isinstance(value, str) or not value.strip():
        raise ParamError(f"must be a non-empty string, got {value!r}")
    try:
        argv = shlex.split(value)
    except ValueError as exc:
        raise ParamError(f"{value!r} cannot be split into arguments: {exc}") from None
    if not argv:
        raise ParamError(f"{value!r} holds no command")
    return argv


def _one_command(values: Dict[str, Any]) -> None:
    if values["run"] is None and values["command"] is None:
        raise ParamError("", field="run", problem="is required (the command to run; 'command' is its other name)")
    if values["run"] is not None and values["command"] is not None:
        # Running one and ignoring the other would carry out half of what the rule says.
        raise ParamError("", field="command", problem="is the other name of 'run': give one of them, not both")


SCHEMA = Schema(
    "command_exec",
    {
        "run": Field(command),
        "command": Field(command),
        "unless": UNLESS,
        "timeout": Field(seconds, written=as_given),
    },
    check=_one_command,
)


class CommandExec:
    """Run an argument list; success is exit status 0."""

    name = "command_exec"
    capturable = False

    def __init__(self) -> None:
        # Per thread: id(params) -> (host, params, exit status) of runs not yet validated.
        # The engine applies and validates a step on one thread with the very same host
        # and params objects; holding them keeps their ids from being reused.
        self._runs = threading.local()

    schema = SCHEMA

    def _command(self, params: Mapping[str, Any]) -> List[str]:
        read = SCHEMA.read(params)
        argv: List[str] = read["run"] if read["run"] is not None else read["command"]
        return argv

    def _timeout(self, params: Mapping[str, Any]) -> float:
        timeout = SCHEMA.read(params)["timeout"]
        return DEFAULT_TIMEOUT if timeout is None else float(timeout)

    def _live(self, host: ReadableHost) -> None:
        if not host.is_live:
            raise ParamError(f"{self.name}: commands run on the live host only, and the target is the root {host.root}")

    def validate(self, host: ReadableHost, params: Mapping[str, Any]) -> bool:
        self._live(host)
        self._command(params)  # bad params are refused here, before anything runs
        timeout = self._timeout(params)
        unless = SCHEMA.read(params)["unless"]
        if unless is None:
            return self._ran_ok(host, params)
        return host.run(unless, timeout).returncode == 0

    def _pending(self) -> "OrderedDict[int, Tuple[Host, Mapping[str, Any], int]]":
        runs: Optional[OrderedDict[int, Tuple[Host, Mapping[str, Any], int]]] = getattr(self._runs, "pending", None)
        if runs is None:
            runs = self._runs.pending = OrderedDict()
        return runs

    def _ran_ok(self, host: ReadableHost, params: Mapping[str, Any]) -> bool:
        # Read once: a later validate of the same step must not inherit this run.
        run = self._pending().pop(id(params), None)
        return run is not None and run[0] is host and run[1] is params and run[2] == 0

    def apply(self, host: Host, params: Mapping[str, Any], pre: Optional[PreState]) -> StepResult:
        self._live(host)
        argv = self._command(params)
        pending = self._pending()
        pending.pop(id(params), None)
        done = host.run(argv, self._timeout(params))
        pending[id(params)] = (host, params, done.returncode)
        while len(pending) > _MAX_PENDING:
            # Runs whose transaction stopped before its validate phase; a run dropped
            # here only makes its own validate fail, visibly.
            pending.popitem(last=False)
        output = (done.stdout + done.stderr).strip()
        detail = f"exit status {done.returncode}" + (f": {output[-500:]}" if output else "")
        return StepResult(self.name, ok=done.returncode == 0, changed=True, detail=detail)

    def capture(self, host: ReadableHost, params: Mapping[str, Any]) -> PreState:
        raise NotImplementedError(f"{self.name} is not capturable")

    def rollback(self, host: Host, pre: PreState) -> RollbackResult:
        raise NotImplementedError(f"{self.name} is not capturable")
