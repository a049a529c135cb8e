"""``kensa check`` of a whole rule corpus on this live host: how many rules load, how many
get a definite verdict, and why the others do not. Read-only, and shown to be: every
file under /etc is compared before and after (mode, owner, size, mtime, SHA-256).

    python -m benchmarks.corpus_check CORPUS_DIR [--config-dir DIR] [--as-os ID:VERSION] [--json OUT]

CORPUS_DIR defaults to $KENSA_CORPUS (the public Kensa corpus is not part of this
project). ``--config-dir`` gives variable files (see :mod:`kensa.rules.variables`;
``benchmarks/corpus-variables`` holds values of this project's choosing).
``--as-os rhel:9`` checks the rules as if this host's os-release said so: the
platform gate then passes for rules of that family, and the checks themselves still
run against this host. A definite verdict is compliant, not compliant or not
applicable; unsupported, not assessable and error are not.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import re
import stat
import sys
from dataclasses import replace
from typing import Any, Dict, List, Optional, Tuple

DEFINITE = ("compliant", "not_compliant", "not_applicable")


def snapshot(top: str) -> Dict[str, Tuple[Any, ...]]:
    """Every entry under ``top``: kind, mode, owner, size, mtime and, for files, SHA-256."""
    seen: Dict[str, Tuple[Any, ...]] = {}
    for directory, dirs, files in os.walk(top):
        for name in dirs + files:
            path = os.path.join(directory, name)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            digest = ""
            if stat.S_ISREG(st.st_mode):
                try:
                    with open(path, "rb") as stream:
                        digest = hashlib.sha256(stream.read()).hexdigest()
                except OSError as exc:
                    digest = f"unreadable: {exc.errno}"
            seen[path] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_size,
                          st.st_mtime_ns, digest)
    return seen


def _kind(message: str) -> str:
    return "undefined variable" if "undefined variable" in message else "malformed"


def _reason(detail: str) -> str:
    """A reason with its paths, quotes and numbers folded, to count alike ones together."""
    text = re.sub(r"\([^)]*implementations[^)]*\)", "", detail)
    text = re.sub(r"'[^']*'", "'…'", text)
    return re.sub(r"\s+", " ", text)[:110]


def run(corpus: str, config_dir: Optional[str], as_os: Optional[str]) -> Dict[str, Any]:
    from kensa.handlers import default_registry
    from kensa.hosts.local import LocalHost
    from kensa.rules.applicability import OsRelease
    from kensa.rules.assess import check_rules, observe
    from kensa.rules.load import load_rule_set
    from kensa.rules.variables import load_variables

    before = snapshot("/etc")
    host = LocalHost("/")
    loaded = load_rule_set([corpus], variables=load_variables(config_dir))
    facts = observe(host)
    if as_os:
        ident, _, version = as_os.partition(":")
        facts = replace(facts, os_release=OsRelease(ident, version))
    results = check_rules(loaded.rules, host, default_registry(), facts=facts)
    after = snapshot("/etc")
    changed = sorted(path for path in set(before) | set(after) if before.get(path) != after.get(path))
    files = len(loaded.rules) + len(loaded.problems)
    verdicts = collections.Counter(r.verdict.value for r in results)
    verdicts.update("error" for _ in loaded.problems)
    why: Dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for r in results:
        if r.verdict.value not in ("compliant", "not_compliant"):
            why[r.verdict.value][_reason(r.detail)] += 1
    for problem in loaded.problems:
        why["error"][_reason(problem.message.split(": ", 1)[-1])] += 1
    definite = sum(verdicts[v] for v in DEFINITE)
    return {
        "corpus": corpus,
        "os_release": str(facts.os_release) if facts.os_release else None,
        "capabilities": sorted(facts.capabilities),
        "files": files,
        "loaded": len(loaded.rules),
        "not_loaded": dict(collections.Counter(_kind(p.message) for p in loaded.problems)),
        "verdicts": dict(verdicts),
        "definite": definite,
        "definite_share": round(definite / files, 4) if files else 0.0,
        "etc_unchanged": not changed,
        "etc_changed": changed[:20],
        "reasons": {verdict: counts.most_common(15) for verdict, counts in why.items()},
    }


def print_report(report: Dict[str, Any]) -> None:
    print(f"CORPUS CHECK  {report['corpus']}  (os-release: {report['os_release']})")
    print(f"  rule files      {report['files']}")
    print(f"  loaded          {report['loaded']}   not loaded: {report['not_loaded'] or 'none'}")
    for verdict in ("compliant", "not_compliant", "not_applicable", "not_assessable", "unsupported", "error"):
        print(f"  {verdict:<15} {report['verdicts'].get(verdict, 0)}")
    print(f"  definite        {report['definite']} of {report['files']} ({report['definite_share']:.1%})")
    print(f"  /etc unchanged  {'yes' if report['etc_unchanged'] else 'NO: ' + ', '.join(report['etc_changed'])}")
    for verdict, reasons in report["reasons"].items():
        print(f"  why {verdict}:")
        for reason, count in reasons:
            print(f"    {count:>4}  {reason}")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.corpus_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("corpus", nargs="?", default=os.environ.get("KENSA_CORPUS"))
    parser.add_argument("--config-dir", help="variable files for the corpus's {{ name }} templates")
    parser.add_argument("--as-os", metavar="ID:VERSION", help="check as if this host's os-release said so (rhel:9)")
    parser.add_argument("--json", metavar="OUT", help="also write the report as JSON")
    args = parser.parse_args(argv)
    if not args.corpus or not os.path.isdir(args.corpus):
        parser.error("give the corpus directory (or set KENSA_CORPUS)")
    report = run(args.corpus, args.config_dir, args.as_os)
    print_report(report)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as stream:
            json.dump(report, stream, indent=2)
    return 0 if report["etc_unchanged"] else 1


if __name__ == "__main__":
    sys.exit(main())
