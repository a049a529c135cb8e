"""Which auditctl rule lines kensa accepts: one watch or syscall rule, no control options.

A rule line is handed to ``auditctl`` as its argument list, so every option in it
is carried out, not only the first. A watch or syscall rule followed by ``-e 2``
would lock the audit configuration until reboot, ``-f 2`` would make an audit
failure panic the kernel, ``-D`` would delete every rule. So a line is accepted
only when it is exactly one rule, built from an allow-list of options per kind:

- ``-w PATH`` (absolute) with ``-p PERMS`` (letters of ``rwxa``), ``-k KEY`` and
  ``-F key=KEY``;
- ``-a LIST,ACTION`` or ``-A LIST,ACTION`` with ``-S``, ``-F``, ``-C`` and ``-k``.

Each option takes exactly one argument (as auditctl's getopt reads them), so the
line is read as option/argument pairs and anything else is refused by name.
This module imports nothing from kensa but the model, so the rule loader can
validate rule text without importing the handlers.
"""

from __future__ import annotations

import shlex
from typing import List, Tuple

from .model import KensaError

#: Options allowed after the first one, per rule kind.
WATCH_OPTIONS = frozenset({"-p", "-k", "-F"})
SYSCALL_OPTIONS = frozenset({"-S", "-F", "-C", "-k"})
_PERMS = frozenset("rwxa")


class AuditRuleError(KensaError, ValueError):
    """A rule line is not one watch or syscall rule made of allowed options."""


def rule_options(line: str) -> List[Tuple[str, str]]:
    """The (option, argument) pairs of the rule ``line``; raises AuditRuleError if refused.

    The first pair is ``-w``, ``-a`` or ``-A``; the others are from that kind's
    allow-list.
    """
    try:
        tokens = shlex.split(line)
    except ValueError as exc:  # unbalanced quotes
        raise AuditRuleError(f"cannot parse audit rule {line!r}: {exc}") from None
    if not tokens or tokens[0] not in ("-w", "-a", "-A"):
        first = tokens[0] if tokens else ""
        raise AuditRuleError(
            f"audit rule {line!r} starts with {first!r}: only '-w PATH ...' watches and "
            "'-a LIST,ACTION ...' syscall rules are accepted (control lines such as -D, -e, -f, -b are not)"
        )
    kind = tokens[0]
    allowed = WATCH_OPTIONS if kind == "-w" else SYSCALL_OPTIONS
    pairs: List[Tuple[str, str]] = []
    for index in range(0, len(tokens), 2):
        option = tokens[index]
        if index and option not in allowed:
            what = "a watch (-w)" if kind == "-w" else "a syscall rule (-a/-A)"
            raise AuditRuleError(
                f"audit rule {line!r}: option {option!r} is not allowed in {what}; "
                f"allowed are {', '.join(sorted(allowed))} (control and deletion options such as "
                "-e, -f, -D, -W, -d are refused)"
            )
        if index + 1 == len(tokens):
            raise AuditRuleError(f"audit rule {line!r}: option {option!r} has no argument")
        arg = tokens[index + 1]
        if kind == "-w" and option == "-F" and not arg.startswith("key="):
            raise AuditRuleError(f"audit rule {line!r}: a watch takes only '-F key=VALUE', not '-F {arg}'")
        if option == "-p" and (not arg or not set(arg) <= _PERMS):
            raise AuditRuleError(f"audit rule {line!r}: permissions {arg!r} must be letters of 'rwxa'")
        pairs.append((option, arg))
    target = pairs[0][1]
    if kind == "-w" and not target.startswith("/"):
        raise AuditRuleError(f"audit rule {line!r}: the watched path {target!r} must be absolute")
    if kind != "-w" and (target.count(",") != 1 or "" in target.split(",")):
        raise AuditRuleError(f"audit rule {line!r}: {target!r} is not LIST,ACTION such as 'always,exit'")
    return pairs
