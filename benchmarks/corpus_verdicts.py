"""How many checks of a rule corpus give a definite verdict on a target, read-only.

    python -m benchmarks.corpus_verdicts CORPUS_DIR [--root /] [--variables FILE] [--json OUT]

Every rule file under CORPUS_DIR is read with PyYAML (not kensa's loader: this
measures the check methods alone), and each check of each rule's default
implementation (else its first) is evaluated with ``kensa.checks.evaluate_check``
against the target (``/``, the live host, unless ``--root`` names an image root).
``{{ name }}`` placeholders are filled from ``--variables`` (a YAML file with a
``variables:`` mapping); a check still holding one is counted as needing a
variable, not evaluated. ``command`` and ``set_compare`` checks without a
``timeout`` get ``--command-timeout`` seconds (default 20).

A rule's verdict combines its checks as ``kensa.checks.compliance`` does. The
table gives, per check method, how many checks came out compliant, not
compliant, not assessable, error or unsupported (a method or field kensa does not
know), and the share of rules whose verdict is definite (compliant or not
compliant). Every entry of the target's /etc is hashed before and after (content,
mode, owner): a change is listed and makes the run fail, since checks must never
change anything (on a shared machine, rule out another writer before blaming one).
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import re
import sys
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import yaml

from kensa.checks import CHECKS, evaluate_check
from kensa.errors import KensaError
from kensa.hosts.local import LocalHost

_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z0-9_]+)\s*\}\}")
COLUMNS = ("compliant", "not_compliant", "not_assessable", "error", "unsupported", "needs_variable")


class Plain:
    """A check as evaluate_check takes one."""

    def __init__(self, method: str, params: Mapping[str, Any]) -> None:
        self.method, self.params, self.supported, self.unsupported_reason = method, params, True, ""


def tree_state(top: Path) -> Dict[str, str]:
    """Path -> digest of mode, owner and content, for every entry under ``top``."""
    state: Dict[str, str] = {}
    for folder, dirs, files in os.walk(top):
        for name in files + dirs:
            path = Path(folder, name)
            try:
                st = path.lstat()
                meta = f"{st.st_mode} {st.st_uid} {st.st_gid}"
                data = os.readlink(path).encode() if path.is_symlink() else path.read_bytes() if path.is_file() else b""
            except OSError as exc:
                meta, data = "unreadable", str(exc.errno).encode()
            state[str(path)] = meta + " " + hashlib.sha256(data).hexdigest()
    return state


def substitute(value: Any, variables: Mapping[str, Any]) -> Tuple[Any, bool]:
    """``value`` with its placeholders filled, and whether one is left unfilled."""
    if isinstance(value, str):
        left = False

        def fill(match: "re.Match[str]") -> str:
            nonlocal left
            if match.group(1) not in variables:
                left = True
                return match.group(0)
            found = variables[match.group(1)]
            return ",".join(map(str, found)) if isinstance(found, list) else str(found)

        return _PLACEHOLDER.sub(fill, value), left
    if isinstance(value, list):
        items = [substitute(item, variables) for item in value]
        return [item for item, _ in items], any(left for _, left in items)
    if isinstance(value, dict):
        pairs = {key: substitute(item, variables) for key, item in value.items()}
        return {key: item for key, (item, _) in pairs.items()}, any(left for _, left in pairs.values())
    return value, False


def checks_of(rule: Mapping[str, Any]) -> List[Dict[str, Any]]:
    impls = [impl for impl in rule.get("implementations") or [] if isinstance(impl, dict)]
    chosen = next((impl for impl in impls if impl.get("default")), impls[0] if impls else {})
    check = chosen.get("check")
    if not isinstance(check, dict):
        return []
    return [c for c in check["checks"] if isinstance(c, dict)] if "checks" in check else [check]


def evaluate(host: LocalHost, check: Dict[str, Any], variables: Mapping[str, Any], timeout: float) -> Tuple[str, str]:
    method = str(check.get("method"))
    params, left = substitute({k: v for k, v in check.items() if k != "method"}, variables)
    if method not in CHECKS:
        return "unsupported", f"unknown method {method}"
    unknown = CHECKS[method].schema.unknown(params)
    if unknown:
        return "unsupported", f"fields kensa does not read: {', '.join(unknown)}"
    if left:
        return "needs_variable", "a {{ variable }} is not set"
    if method in ("command", "set_compare") and "timeout" not in params:
        params["timeout"] = timeout
    try:
        found = evaluate_check(Plain(method, params), host)
    except KensaError as exc:
        return "error", str(exc)
    return found.verdict.value, found.detail


def combine(verdicts: List[str]) -> str:
    for verdict in ("not_compliant", "error", "unsupported", "needs_variable", "not_assessable"):
        if verdict in verdicts:
            return verdict
    return "compliant" if verdicts else "unsupported"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("corpus", type=Path)
    parser.add_argument("--root", default="/")
    parser.add_argument("--variables", type=Path)
    parser.add_argument("--command-timeout", type=float, default=20.0)
    parser.add_argument("--json", type=Path, default=Path("corpus_verdicts.json"))
    args = parser.parse_args(argv)
    variables: Dict[str, Any] = {}
    if args.variables:
        variables = dict((yaml.safe_load(args.variables.read_text()) or {}).get("variables") or {})
    host = LocalHost(args.root)
    etc = Path(args.root, "etc")
    before = tree_state(etc)
    per_method: Dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    rules: Dict[str, str] = {}
    samples: Dict[str, List[str]] = collections.defaultdict(list)
    for path in sorted(args.corpus.rglob("*.yml")):
        rule = yaml.safe_load(path.read_text())
        if not isinstance(rule, dict) or "id" not in rule:
            continue
        verdicts = []
        for check in checks_of(rule):
            verdict, detail = evaluate(host, check, variables, args.command_timeout)
            per_method[str(check.get("method"))][verdict] += 1
            verdicts.append(verdict)
            if verdict in ("error", "unsupported", "not_assessable") and len(samples[verdict]) < 15:
                samples[verdict].append(f"{rule['id']} ({check.get('method')}): {detail[:160]}")
        rules[str(rule["id"])] = combine(verdicts)
    after = tree_state(etc)
    changed = sorted(path for path in before.keys() | after.keys() if before.get(path) != after.get(path))
    totals = collections.Counter(rules.values())
    definite = totals["compliant"] + totals["not_compliant"]
    print(f"{'method':24}" + "".join(f"{c:>16}" for c in COLUMNS))
    for method in sorted(per_method, key=lambda m: -sum(per_method[m].values())):
        print(f"{method:24}" + "".join(f"{per_method[method][c]:>16}" for c in COLUMNS))
    print(f"\nrules: {len(rules)}; " + ", ".join(f"{c} {totals[c]}" for c in COLUMNS))
    print(f"definite verdicts: {definite}/{len(rules)} = {definite / max(len(rules), 1):.1%}")
    for verdict, lines in samples.items():
        print(f"\nsome {verdict}:\n  " + "\n  ".join(lines))
    print(f"\n/etc unchanged: {not changed}" + "".join(f"\n  changed: {path}" for path in changed))
    args.json.write_text(json.dumps({
        "root": args.root, "rules": len(rules), "rule_verdicts": dict(totals), "definite_share": definite / max(len(rules), 1),
        "per_method": {m: dict(c) for m, c in per_method.items()}, "etc_unchanged": not changed, "etc_changed": changed,
    }, indent=2))
    return 0 if not changed else 1


if __name__ == "__main__":
    sys.exit(main())
