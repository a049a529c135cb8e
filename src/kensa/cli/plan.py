"""Which rules run where: the target of a run, and the rules loaded for it with its variables.

What applies on a target (platforms, ``when`` capabilities, dependencies) is
decided by :mod:`kensa.rules.assess`; the capability probes are
:mod:`kensa.rules.capabilities`.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any, Dict, FrozenSet, List, Optional, Sequence, Tuple

from kensa.errors import UsageError, VariableFileError

__all__ = ["Target", "check_rule_arguments", "detect_capabilities", "load", "load_rule_set_for", "target_for", "transactions_for"]


@dataclass(frozen=True)
class Target:
    """Where rules run: the host key the engine and audit records use, and its root."""

    key: str
    root: str


def target_for(root: Optional[str]) -> Target:
    if root is None:
        return Target("localhost", "/")
    path = os.path.abspath(root)
    if not os.path.isdir(path):
        raise UsageError(f"--root {root}: no such directory")
    return Target("localhost" if path == "/" else path, path)


def _existing(paths: Sequence[str]) -> None:
    for path in paths:
        if not os.path.exists(path):
            raise UsageError(f"{path}: no such rule file or directory")


def check_rule_arguments(paths: Sequence[str], assignments: Sequence[str] = (), config_dir: Optional[str] = None) -> None:
    """What the command line says about its rules, checked without loading them (a remote command
    checks it before reaching any host): the rule paths exist, every ``--var`` is ``NAME=VALUE``,
    ``--config-dir`` is a directory. Raises as :func:`load_rule_set_for` would."""
    _existing(paths)
    if assignments:
        from kensa.rules.variables import parse_assignment

        for text in assignments:
            parse_assignment(text)
    if config_dir and not os.path.isdir(config_dir):
        raise VariableFileError(f"{config_dir}: no such variable directory")


def load(paths: Sequence[str]) -> List[Any]:
    """The rules of ``paths``, without variables; the first bad file raises RuleError."""
    from kensa.rules.load import load_rules

    _existing(paths)
    return load_rules(paths)


def load_rule_set_for(
    paths: Sequence[str],
    assignments: Sequence[str] = (),
    config_dir: Optional[str] = None,
    *,
    host_name: str = "",
    groups: Sequence[str] = (),
) -> Any:
    """The :class:`kensa.rules.RuleSet` of ``paths`` for a target named ``host_name`` in
    ``groups``: variables from ``config_dir``'s files and the ``NAME=VALUE``
    ``assignments`` (``--var``). A bad variable source raises (nothing is loaded);
    a bad rule file is one of the set's problems."""
    from kensa.rules.load import load_rule_set
    from kensa.rules.variables import load_variables, parse_assignment

    _existing(paths)
    overrides = [parse_assignment(text) for text in assignments]
    variables = load_variables(config_dir, host=host_name or None, groups=groups, overrides=overrides)
    return load_rule_set(paths, variables=variables)


def detect_capabilities(host: Any) -> FrozenSet[str]:
    """Capabilities that ``when`` gates of rules can name, detected on the target (see
    :mod:`kensa.rules.capabilities`)."""
    from kensa.rules.capabilities import detect_capabilities as detect

    return detect(host)


def transactions_for(rules: Sequence[Any], target: Target, host: Any) -> Tuple[List[Any], List[Dict[str, Any]]]:
    """Transactions for the rules that apply and are supported on ``host``, in dependency
    order, and a row (rule, status = its verdict, detail) for each of the others."""
    from kensa.rules.assess import plan_rules

    _, planned = plan_rules(rules, host, host_key=target.key)
    txns = [p.transaction for p in planned if p.transaction is not None]
    rows = [
        {"rule": p.rule.id, "status": p.verdict.verdict.value, "detail": p.verdict.detail}
        for p in planned
        if p.verdict is not None
    ]
    return txns, rows


def report_rule_problems(rule_sets: Sequence[Any]) -> bool:
    """Print each bad rule file of ``rule_sets`` once, on stderr; True when there was one."""
    from kensa.cli.render import printable

    seen = set()
    for ruleset in rule_sets:
        for problem in ruleset.problems:
            if problem.message not in seen:
                seen.add(problem.message)
                sys.stderr.write(f"kensa: {printable(problem.message)}\n")
    return bool(seen)
