"""The start of a command: kensa's against the peers' and a bare Python, in one run.

``python -m benchmarks.startup [--runs 10] [--rules 100] [--ansible-playbook PATH] [--pyinfra PATH] [--no-write]``

Every command below is started ``--runs`` times, the commands interleaved
round by round; reported are the median wall time and the median CPU time
(user + system of the process and what it started, from ``wait4``). kensa
runs as an installed kensa does, from bytecode compiled before anything is
timed (:mod:`benchmarks.installed`); the peers from their virtualenvs.

- ``python -c pass``: the interpreter's own start, the floor of every row.
- ``kensa --help`` and ``kensa remediate --help``: the CLI's start and its parser.
- ``kensa check RULES --root DIR``: loading ``--rules`` rules
  (:mod:`benchmarks.fleetwork`'s) and checking them on a seeded root; it
  changes nothing.
- ``ansible-playbook --help`` and ``pyinfra --help``: the peers' CLI start,
  when they are found (on ``PATH`` or given).

The verdict is each peer's ``--help`` CPU over kensa's, measured in the same
run. Results go to ``benchmarks/results/startup.{txt,json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from benchmarks import fleetwork
from benchmarks.installed import kensa_env, kensa_python

HERE = Path(__file__).resolve().parent


def _start(argv: List[str], env: Dict[str, str], cwd: Path) -> Tuple[float, float, int]:
    """Run ``argv`` to its end, output discarded: (wall s, CPU s of it and its children, exit code)."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    return wall, usage.ru_utime + usage.ru_stime, proc.returncode


def commands(scratch: Path, rules: int, peers: Dict[str, Optional[str]]) -> Dict[str, Tuple[List[str], Dict[str, str]]]:
    """Each row's argv and environment; the check's rules and root are made under ``scratch``."""
    fleetwork.kensa_rules(scratch / "rules", fleetwork.edits(rules))
    fleetwork.seed(scratch / "root")
    kensa = kensa_env(scratch)
    python = kensa_python(scratch)
    plain = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
    journal = str(scratch / "journal.db")
    rows: Dict[str, Tuple[List[str], Dict[str, str]]] = {
        "python -c pass": ([python, "-c", "pass"], plain),
        "kensa --help": ([python, "-m", "kensa", "--help"], kensa),
        "kensa remediate --help": ([python, "-m", "kensa", "remediate", "--help"], kensa),
        f"kensa check ({rules} rules)": ([python, "-m", "kensa", "--journal", journal, "check",
                                          str(scratch / "rules"), "--root", str(scratch / "root")], kensa),
    }
    for name, executable in peers.items():
        if executable:
            rows[f"{name} --help"] = ([executable, "--help"], plain)
    return rows


def measure(runs: int, rules: int, peers: Dict[str, Optional[str]], scratch: Path) -> Dict[str, Any]:
    """Every command ``runs`` times, interleaved: per row the medians and the exit codes seen."""
    rows = commands(scratch, rules, peers)
    seen: Dict[str, List[Tuple[float, float, int]]] = {name: [] for name in rows}
    for _ in range(runs):
        for name, (argv, env) in rows.items():
            seen[name].append(_start(argv, env, scratch))
    result: Dict[str, Any] = {"runs": runs, "rules": rules, "rows": {}}
    for name, samples in seen.items():
        result["rows"][name] = {
            "wall_ms": 1000 * statistics.median(s[0] for s in samples),
            "cpu_ms": 1000 * statistics.median(s[1] for s in samples),
            "exit_codes": sorted({s[2] for s in samples}),
        }
    kensa = result["rows"]["kensa --help"]["cpu_ms"]
    result["ratios"] = {name: row["cpu_ms"] / kensa for name, row in result["rows"].items()
                        if name.endswith(" --help") and not name.startswith("kensa")}
    result["missing"] = sorted(name for name, executable in peers.items() if not executable)
    return result


def render(result: Dict[str, Any]) -> str:
    lines = [f"STARTUP: median of {result['runs']} starts of each command, interleaved; kensa from compiled bytecode",
             f"{'command':<28} {'wall ms':>8} {'CPU ms':>8}  exit"]
    for name, row in result["rows"].items():
        lines.append(f"{name:<28} {row['wall_ms']:>8.0f} {row['cpu_ms']:>8.0f}  {','.join(map(str, row['exit_codes']))}")
    for name, ratio in result["ratios"].items():
        lines.append(f"{name} / kensa --help CPU: {ratio:.1f}x")
    for name in result["missing"]:
        lines.append(f"{name}: not measured (not found; pip install {'ansible-core' if name.startswith('ansible') else name})")
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.startup", description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--rules", type=int, default=100, help="rules kensa check loads (at least 3)")
    p.add_argument("--ansible-playbook", default=shutil.which("ansible-playbook"), help="ansible-playbook executable")
    p.add_argument("--pyinfra", default=shutil.which("pyinfra"), help="pyinfra executable")
    p.add_argument("--no-write", action="store_true", help="print the table only")
    p.add_argument("--out", default=str(HERE / "results"))
    args = p.parse_args(argv)
    peers = {"ansible-playbook": args.ansible_playbook, "pyinfra": args.pyinfra}
    with tempfile.TemporaryDirectory(prefix="kensa-startup-", dir="/var/tmp" if os.path.isdir("/var/tmp") else None) as scratch:
        result = measure(args.runs, args.rules, peers, Path(scratch))
    text = render(result)
    print(text, end="")
    if not args.no_write:
        os.makedirs(args.out, exist_ok=True)
        Path(args.out, "startup.txt").write_text(text)
        Path(args.out, "startup.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
