"""command_exec: run a command on the live host. Not capturable: it cannot be undone.

The command (``run``, as Kensa's rules spell it, or ``command``) is split with
shlex and run without a shell, under a timeout. With an
``unless`` command, the step counts as already compliant when ``unless`` exits 0;
without one, validate reports False, so the engine always runs the command.
"""

from __future__ import annotations

import shlex
from typing import Any, List, Mapping, Optional

from ..host import LocalHost
from ..model import PreState, RollbackResult, StepResult
from .params import ParamError, require_str

DEFAULT_TIMEOUT = 300.0


class CommandExec:
    """Run an argument list; success is exit status 0."""

    name = "command_exec"
    capturable = False

    def _argv(self, params: Mapping[str, Any], key: str) -> List[str]:
        text = require_str(self.name, params, key)
        try:
            argv = shlex.split(text)
        except ValueError as exc:
            raise ParamError(f"{self.name}: cannot split {key} {text!r}: {exc}") from exc
        if not argv:
            raise ParamError(f"{self.name}: {key} {text!r} is empty")
        return argv

    def _command(self, params: Mapping[str, Any]) -> List[str]:
        return self._argv(params, "run" if "run" in params else "command")

    def _timeout(self, params: Mapping[str, Any]) -> float:
        value = params.get("timeout", DEFAULT_TIMEOUT)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ParamError(f"{self.name}: timeout must be a positive number of seconds, got {value!r}")
        return float(value)

    def _live(self, host: LocalHost) -> None:
        if not host.is_live:
            raise ParamError(f"{self.name}: commands run on the live host only, and the target is the root {host.root}")

    def validate(self, host: LocalHost, params: Mapping[str, Any]) -> bool:
        self._live(host)
        self._command(params)  # bad params are refused here, before anything runs
        timeout = self._timeout(params)
        if params.get("unless") is None:
            return False
        return host.run(self._argv(params, "unless"), timeout).returncode == 0

    def apply(self, host: LocalHost, params: Mapping[str, Any], pre: Optional[PreState]) -> StepResult:
        self._live(host)
        argv = self._command(params)
        done = host.run(argv, self._timeout(params))
        output = (done.stdout + done.stderr).strip()
        detail = f"exit status {done.returncode}" + (f": {output[-500:]}" if output else "")
        return StepResult(self.name, ok=done.returncode == 0, changed=True, detail=detail)

    def capture(self, host: LocalHost, params: Mapping[str, Any]) -> PreState:
        raise NotImplementedError(f"{self.name} is not capturable")

    def rollback(self, host: LocalHost, pre: PreState) -> RollbackResult:
        raise NotImplementedError(f"{self.name} is not capturable")
