"""``python -m reliability [--full|--reduced] [--output FILE] [--json FILE] [--only KEY ...]``.

Runs the scenarios, writes the markdown report (default docs/reliability.md)
and, when asked, the figures as JSON. Exits 1 when any scenario found a
problem or a loss, 2 when the machine could not be put back as it was.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from types import FrameType
from typing import Dict, List, Optional

from kensa.audit.listener import AuditListener

from .context import REPO, Context
from .machine import AuditControl
from .report import Section, as_json, render
from .sizes import SIZES

# Scenario modules, in the order they run; each has run(ctx) -> Section.
SCENARIOS = (
    "fuzz_encoder", "fuzz_rules", "fuzz_paths", "atheris_runs", "sanitizers", "crash", "load", "audit_faults", "adversarial",
)


def _interrupt(signum: int, frame: Optional[FrameType]) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _commit() -> str:
    out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "src", "csrc"], capture_output=True, text=True)
    return (out.stdout.strip() or "unknown") + (" (with uncommitted changes in src/ or csrc/)" if dirty.stdout.strip() else "")


def _meta(size: str, elapsed: float) -> Dict[str, str]:
    from kensa import __version__

    return {
        "size": size,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "version": __version__,
        "commit": _commit(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "cpus": str(os.cpu_count()),
        "elapsed": f"{elapsed / 60:.1f} min",
    }


def _failed(key: str, exc: BaseException) -> Section:
    text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    return Section(key, key, "", "the scenario raised", problems=(f"{key} raised {text}",))


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reliability", description=__doc__.split("\n")[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--full", dest="size", action="store_const", const="full")
    group.add_argument("--reduced", dest="size", action="store_const", const="reduced")
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "reliability.md")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--only", nargs="+", choices=sorted(SCENARIOS), default=None)
    args = parser.parse_args(argv)
    size = SIZES[args.size or "reduced"]

    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupt)
    started = time.monotonic()
    control = AuditControl()
    # Only kensa's records are kept, in a large buffer: runs send hundreds of thousands.
    log = AuditListener.open(containing=b"op=kensa", receive_buffer=64 << 20) if os.geteuid() == 0 else None
    scratch = Path(tempfile.mkdtemp(prefix="kensa-reliability-"))
    sections: List[Section] = []
    restored_ok = True
    try:
        ctx = Context(size, control, log, scratch)
        for key in SCENARIOS:
            if args.only and key not in args.only:
                continue
            print(f"[reliability] {key} ...", flush=True)
            t0 = time.monotonic()
            try:
                section = importlib.import_module(f"reliability.{key}").run(ctx)
            except Exception as exc:  # one broken scenario must not hide the others
                traceback.print_exc()
                section = _failed(key, exc)
            finally:
                fixed = control.restore()
                if log is not None:
                    log.forget()
            if fixed:
                note = f"left the machine changed, put back: {', '.join(fixed)}"
                section = dataclasses.replace(section, problems=section.problems + (note,))
            print(f"[reliability] {key}: {section.found or section.skipped} ({time.monotonic() - t0:.0f} s)", flush=True)
            sections.append(section)
    finally:
        try:
            control.restore()
        except Exception:
            restored_ok = False
            traceback.print_exc()
        if log is not None:
            log.close()
        shutil.rmtree(scratch, ignore_errors=True)

    meta = _meta(size.name, time.monotonic() - started)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(render(sections, meta))
    if args.json is not None:
        args.json.write_text(as_json(sections, meta))
    bad = [p for s in sections for p in s.problems]
    losses = sum(s.losses for s in sections)
    print(f"[reliability] wrote {args.output}: {len(bad)} problems, {losses} losses of journaled data")
    for problem in bad:
        print(f"  - {problem}")
    if not restored_ok:
        return 2
    return 1 if bad or losses else 0


if __name__ == "__main__":
    sys.exit(main())
