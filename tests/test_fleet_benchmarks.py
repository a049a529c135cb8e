"""The fleet and group-commit benchmarks keep working (tiny runs; their timings are not judged here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import require_real, require_root

REPO = Path(__file__).resolve().parent.parent


def _run(*argv: str, timeout: float = 600) -> "subprocess.CompletedProcess[str]":
    if not (REPO / "benchmarks").is_dir():
        pytest.skip("not a source checkout")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), *sys.path]))
    return subprocess.run([sys.executable, "-m", *argv], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def test_group_commit_benchmark_prints_both_variants_and_their_ratio() -> None:
    """`python -m benchmarks.groupcommit` (small) exits 0 with a row per variant, their commit counts and the ratio."""
    proc = _run("benchmarks.groupcommit", "--threads", "4", "--per-thread", "3", "--rounds", "1", "--no-write")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = {words[0]: words for words in map(str.split, proc.stdout.splitlines()) if len(words) == 6 and words[0] in ("per-call", "group") and words[3].isdigit()}
    assert set(rows) == {"per-call", "group"}
    # 12 transactions, begin and finish each: 24 durable writes in both variants, one commit each in per-call.
    assert rows["per-call"][3:5] == ["24", "24"] and rows["group"][4] == "24"
    assert "group commit / per-call throughput" in proc.stdout


@pytest.mark.serial
def test_fleet_benchmark_runs_kensa_over_ssh_and_verifies_the_hosts(tmp_path: Path) -> None:
    """`python -m benchmarks.fleet` on 2 hosts x 3 rules (kensa only) changes every host, reports it verified, and writes JSON."""
    require_root("the fleet benchmark starts sshd servers")
    for tool in ("/usr/sbin/sshd", "/usr/bin/ssh", "/usr/bin/ssh-keygen"):
        if not os.path.exists(tool):
            require_real(f"the fleet benchmark needs {tool} (openssh-server, openssh-client)")
    out = tmp_path / "results"
    proc = _run("benchmarks.fleet", "--hosts", "2", "--rules", "3", "--workers", "2", "--tools", "kensa",
                "--out", str(out), "--readme", str(tmp_path / "README.md"))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads((out / "fleet.json").read_text())
    kensa = result["tools"]["kensa"]
    assert kensa["exit_code"] == 0 and kensa["verified"], kensa
    assert kensa["statuses"] == {"committed": 6}
    assert "FLEET:" in (tmp_path / "README.md").read_text()
