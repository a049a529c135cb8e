"""Coverage-guided fuzzing with atheris (libFuzzer), where it is installed: full size only.

``python -m reliability.atheris_runs TARGET WORKDIR [libFuzzer flags]`` runs
one target in its own process (libFuzzer exits the process when done):

- ``rules``: ``parse_rule`` on the fuzzer's bytes: a Rule or a RuleError;
- ``encoder``: ``format_phase_record`` on three fuzzed values: the six fields;
- ``paths``: a LocalHost operation on a fuzzed path in a tree with symlinks
  out of the root, including names no file system can hold (lone
  surrogates): success inside the root or a KensaError.

The parent checks the sentinel outside the tree afterwards.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List

from .context import Context, child_env
from .report import Section, table

TARGETS = ("rules", "encoder", "paths")
SENTINEL = b"SENTINEL: outside the root\n"
_DONE = re.compile(r"Done (\d+) runs in (\d+) second")


def _tree(work: Path) -> Path:
    root = work / "root"
    (work / "outside").mkdir(parents=True, exist_ok=True)
    (work / "outside" / "secret").write_bytes(SENTINEL)
    (root / "etc" / "ssh").mkdir(parents=True, exist_ok=True)
    (root / "etc" / "motd").write_bytes(b"inside\n")
    for name, target in (("up", "../outside"), ("abs", str(work / "outside")), ("file", "../outside/secret"),
                         ("etc/loop", "loop"), ("etc/dangling", "nowhere")):
        if not os.path.lexists(root / name):
            os.symlink(target, root / name)
    return root


def _target(name: str, work: Path) -> Callable[[bytes], None]:
    import atheris

    with atheris.instrument_imports():
        import kensa.audit.emitter as audit, kensa.hosts.local as host, kensa.rules.load as rules
        from kensa.errors import KensaError

    if name == "rules":
        def rules_one(data: bytes) -> None:
            try:
                rules.parse_rule(data, "fuzz.yml")
            except rules.RuleError:
                pass
        return rules_one
    if name == "encoder":
        def encoder_one(data: bytes) -> None:
            fdp = atheris.FuzzedDataProvider(data)
            values = [fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 4000)) for _ in range(3)]
            ok = fdp.ConsumeBool()
            body = audit.format_phase_record(values[0], "apply", ok, values[1], values[2])
            keys = [token.partition("=")[0] for token in body.decode("ascii").split(" ")]
            assert keys == ["op", "phase", "txn", "rule", "host", "res"], body[:200]
            assert len(body) <= audit.MAX_BODY and b"'" not in body
        return encoder_one
    local = host.LocalHost(str(_tree(work)))
    ops: List[Callable[[str], Any]] = [
        lambda p: local.info(p, content=True), local.read_file, lambda p: local.write_file(p, b"fuzzed\n"),
        local.remove_file, lambda p: local.set_meta(p, mode=0o644),
    ]
    pieces = ["..", ".", "", "up", "abs", "file", "etc", "loop", "dangling", "motd", "ssh", "outside", "secret"]

    def paths_one(data: bytes) -> None:
        fdp = atheris.FuzzedDataProvider(data)
        op = ops[fdp.ConsumeIntInRange(0, len(ops) - 1)]
        parts = [pieces[fdp.ConsumeIntInRange(0, len(pieces) - 1)] if fdp.ConsumeBool() else fdp.ConsumeUnicode(12)
                 for _ in range(fdp.ConsumeIntInRange(0, 6))]
        try:
            found = op("/" + "/".join(parts))
        except KensaError:
            return
        content = getattr(found, "content", None)
        assert not content or SENTINEL not in content, "read the sentinel outside the root"
    return paths_one


def main(argv: List[str]) -> None:
    import atheris

    name, work = argv[1], Path(argv[2])
    atheris.Setup([argv[0], *argv[3:]], _target(name, work))
    atheris.Fuzz()


def run(ctx: Context) -> Section:
    title = "Coverage-guided fuzzing (atheris)"
    if ctx.size.atheris_seconds == 0:
        return Section("atheris_runs", title, "", "", skipped="the full size only (`--full`)")
    if importlib.util.find_spec("atheris") is None:
        return Section("atheris_runs", title, "", "", skipped="atheris is not installed (`pip install atheris`)")
    rows = []
    problems = []
    figures: Dict[str, Any] = {}
    for name in TARGETS:
        work = ctx.workdir(f"atheris-{name}")
        argv = [sys.executable, "-m", "reliability.atheris_runs", name, str(work),
                f"-max_total_time={ctx.size.atheris_seconds}", "-rss_limit_mb=4096", "-timeout=10"]
        proc = subprocess.run(argv, capture_output=True, text=True, env=child_env(), cwd=str(work),
                              timeout=ctx.size.atheris_seconds * 3 + 120)
        done = _DONE.search(proc.stderr)
        runs = int(done.group(1)) if done else 0
        sentinel_ok = name != "paths" or (work / "outside" / "secret").read_bytes() == SENTINEL
        ok = proc.returncode == 0 and done is not None and sentinel_ok
        if not ok:
            problems.append(f"atheris {name}: exit {proc.returncode}, sentinel {'intact' if sentinel_ok else 'CHANGED'}: {proc.stderr[-2000:]}")
        cov = re.findall(r"cov: (\d+)", proc.stderr)
        rows.append((name, runs, f"{ctx.size.atheris_seconds} s", cov[-1] if cov else "-", "clean" if ok else "CRASH"))
        figures[name] = {"runs": runs, "ok": ok}
    body = [
        "libFuzzer through atheris, each target for a fixed time, instrumenting kensa's modules for coverage. "
        "`coverage` is libFuzzer's count of covered edges at the end.",
        "",
        *table(["target", "runs", "time", "coverage", "result"], rows),
    ]
    return Section(
        "atheris_runs", title, tried=f"{sum(r[1] for r in rows):,} runs over {len(rows)} targets",
        found="no crash" if not problems else f"{len(problems)} targets crashed",
        body=tuple(body), problems=tuple(problems), figures=figures,
    )


if __name__ == "__main__":
    main(sys.argv)
