"""The path resolver: tests/test_fuzz_paths.py at ``path_scale`` times its example counts."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from typing import Any, Dict, List

from .context import REPO, Context, child_env
from .report import Section, table

TEST_FILE = "tests/test_fuzz_paths.py"
TIMEOUT = 1800.0


def run(ctx: Context) -> Section:
    title = "Fuzzing the path resolver"
    counts_file = ctx.workdir("fuzz_paths") / "counts.json"
    env = dict(child_env(), KENSA_FUZZ_SCALE=str(ctx.size.path_scale), KENSA_FUZZ_REPORT=str(counts_file))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", TEST_FILE, "-q", "-p", "no:cacheprovider"],
        cwd=str(REPO), env=env, capture_output=True, text=True, timeout=TIMEOUT,
    )
    summary = (proc.stdout.strip().splitlines() or ["(no output)"])[-1]
    counts: Dict[str, Any] = json.loads(counts_file.read_text()) if counts_file.exists() else {}
    problems: List[str] = []
    if proc.returncode != 0 or not re.search(r"\d+ passed", summary) or re.search(r"\d+ failed", summary):
        problems.append(f"{TEST_FILE} at scale {ctx.size.path_scale}: {summary}\n{proc.stdout[-3000:]}")
    ops = ("info", "read_file", "write_file", "remove_file", "set_meta")
    outcomes = sorted({key.split(":", 1)[1] for key in counts if key.split(":", 1)[0] in ops})
    rows = [(op, *(counts.get(f"{op}:{o}", 0) for o in outcomes)) for op in ops]
    links = sorted((k.split(":", 1)[1], v) for k, v in counts.items() if k.startswith("link:"))
    body = [
        f"`{TEST_FILE}` run with `KENSA_FUZZ_SCALE={ctx.size.path_scale}`: {summary}. Trees built: "
        f"{counts.get('trees', 0):,} ({counts.get('dir', 0):,} directories, {counts.get('file', 0):,} files, "
        f"{sum(v for _, v in links):,} symlinks); operations on them: {counts.get('operations', 0):,}, plus "
        f"{counts.get('through link:PathEscapeError', 0):,} operations through a symlink (all refused). "
        "Every operation either refused with a KensaError or stayed inside the root; the sentinels outside "
        "were never changed or read.",
        "",
        *table(["operation", *outcomes], rows),
        "",
        *table(["symlink kind", "made"], links),
    ]
    figures = {"operations": counts.get("operations", 0), "trees": counts.get("trees", 0), "passed": not problems,
               "through_link_refused": counts.get("through link:PathEscapeError", 0),
               "through_link_ok": counts.get("through link:ok", 0)}
    return Section(
        "fuzz_paths", title,
        tried=f"{counts.get('trees', 0):,} hostile trees, {counts.get('operations', 0) + counts.get('through link:PathEscapeError', 0):,} operations",
        found="no escape from the root" if not problems else "a path escaped or crashed",
        body=tuple(body), problems=tuple(problems), figures=figures,
    )
