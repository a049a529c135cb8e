"""Checks that run a shell command on the target: ``command`` and ``set_compare``.

The command runs as ``/bin/sh -c COMMAND`` through the host (``host.run``), so on a
remote host it runs there, with a time limit (``timeout``, 60 s unless given; a
command that overruns is a fault). On an image root it is not run at all: the
command would read the controller, not the image, so the check is not assessable.

``command``: compliant when the exit status is ``expected_exit`` (0 unless given)
and, when ``expected_stdout`` (or its other name ``expected_output``) is given,
the output contains it; an empty ``expected_stdout`` asks for no output at all.
An exit status equal to ``not_assessable_exit`` means the command itself says it
cannot assess this host (its output is the reason).

``set_compare``: the lines ``observed_command`` prints are the members present
(``alias_separator`` splits a line into names of one member); compliant when each
is among ``authorized`` (a comma-separated string or a list). Declared members
that are absent are reported but do not fail the check; an empty ``authorized``
is not assessable (nobody has said what is allowed).
"""

from __future__ import annotations

from typing import Any, List, Mapping, Set

from kensa.checks.method import CheckMethod, holds_if, not_compliant
from kensa.errors import CheckError, CheckNotAssessable, ParamError
from kensa.facts.params import Field, Schema, as_given, non_blank, seconds, text
from kensa.hosts.protocol import ReadableHost
from kensa.model import Finding

DEFAULT_TIMEOUT = 60.0
LIST_SEPARATOR = ","


def _exit_status(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 255:
        raise ParamError(f"must be an exit status from 0 to 255, got {value!r}")
    return value


def _shown(command: str) -> str:
    first = command.strip().splitlines()[0] if command.strip() else ""
    return repr(first[:120] + ("..." if len(first) > 120 or "\n" in command.strip() else ""))


def _run(host: ReadableHost, command: str, timeout: float) -> Any:
    if not host.is_live:
        raise CheckNotAssessable(
            f"a command runs on a running host; on the image root {host.root} it would read the controller, "
            "not the image, so it is not run"
        )
    return host.run(["/bin/sh", "-c", command], timeout)


def _command(host: ReadableHost, fields: Mapping[str, Any]) -> Finding:
    command = fields["run"] if fields["run"] is not None else fields["cmd"]
    done = _run(host, command, fields["timeout"] or DEFAULT_TIMEOUT)
    if fields["not_assessable_exit"] is not None and done.returncode == fields["not_assessable_exit"]:
        raise CheckNotAssessable(done.stdout.strip()[:500] or f"the command {_shown(command)} says it cannot assess this host")
    want = 0 if fields["expected_exit"] is None else fields["expected_exit"]
    if done.returncode != want:
        return not_compliant(f"{_shown(command)} exited {done.returncode}, expected {want}")
    output = fields["expected_stdout"] if fields["expected_stdout"] is not None else fields["expected_output"]
    if output is not None:
        if not output.strip() and done.stdout.strip():
            return not_compliant(f"{_shown(command)} printed {done.stdout.strip().splitlines()[0][:200]!r}, expected no output")
        if output.strip() and output not in done.stdout:
            return not_compliant(f"the output of {_shown(command)} does not contain {output!r}")
    return holds_if(True, f"{_shown(command)} exited {done.returncode}" + ("" if output is None else " with the expected output"))


def _members(value: Any) -> List[str]:
    items = value.split(LIST_SEPARATOR) if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
        raise ParamError(f"must be a comma-separated string or a list of names, got {value!r}")
    return sorted({item.strip() for item in items if item.strip()})


def _set_compare(host: ReadableHost, fields: Mapping[str, Any]) -> Finding:
    authorized: Set[str] = set(fields["authorized"])
    if not authorized:
        raise CheckNotAssessable("no authorized members are declared, so there is nothing to compare against")
    done = _run(host, fields["observed_command"], fields["timeout"] or DEFAULT_TIMEOUT)
    if done.returncode != 0:
        raise CheckError(
            f"set_compare: {_shown(fields['observed_command'])} exited {done.returncode}, so what is on the host is "
            f"unknown: {done.stderr.strip()[:300]}"
        )
    separator = fields["alias_separator"]
    unauthorized, matched, observed = [], set(), set()
    for entry in sorted({line.strip() for line in done.stdout.splitlines() if line.strip()}):
        names = [name.strip() for name in (entry.split(separator) if separator else [entry]) if name.strip()]
        if not names:
            continue
        observed.add(names[0])
        if authorized & set(names):
            matched |= authorized & set(names)
        else:
            unauthorized.append(names[0])
    detail = f"observed {len(observed)}, authorized {len(authorized)}"
    absent = sorted(authorized - matched)
    if absent:
        detail += f"; declared but absent: {', '.join(absent)}"
    if unauthorized:
        return not_compliant(f"present but not authorized: {', '.join(unauthorized)} ({detail})")
    return holds_if(True, f"every observed member is authorized ({detail})")


_TIMEOUT = Field(seconds, written=as_given)


def _one_command(values: Mapping[str, Any]) -> None:
    if values["run"] is not None and values["cmd"] is not None:
        raise ParamError("", field="cmd", problem="is the other name of 'run': give one of them, not both")

METHODS = (
    CheckMethod(
        Schema("command", {
            "run": Field(non_blank), "cmd": Field(non_blank),
            "expected_exit": Field(_exit_status, written=as_given), "not_assessable_exit": Field(_exit_status, written=as_given),
            "expected_stdout": Field(text), "expected_output": Field(text), "timeout": _TIMEOUT,
        }, at_least_one_of=("run", "cmd"), check=_one_command),
        _command,
    ),
    CheckMethod(
        Schema("set_compare", {
            "observed_command": Field(non_blank, required=True),
            "authorized": Field(_members, required=True, written=as_given),
            "alias_separator": Field(non_blank), "timeout": _TIMEOUT,
        }),
        _set_compare,
    ),
)
