"""The fleet and group-commit benchmarks keep working (tiny runs; their timings are not judged here)."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import require_real, require_root

REPO = Path(__file__).resolve().parent.parent


def benchmark_module(name: str) -> Any:
    """``benchmarks.NAME`` of this checkout (skips in an sdist's copy of the tests)."""
    if not (REPO / "benchmarks").is_dir():
        pytest.skip("not a source checkout")
    sys.path.insert(0, str(REPO))
    try:
        return importlib.import_module(f"benchmarks.{name}")
    finally:
        sys.path.remove(str(REPO))


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


def test_the_fleet_inventory_gives_kensa_the_python_ansible_is_given(tmp_path: Path) -> None:
    """kensa reads the benchmark's shared inventory as running ansible.cfg's interpreter_python on every host,
    so both tools start the same Python."""
    fleetwork = benchmark_module("fleetwork")
    from kensa.inventory import load_inventory

    fleetwork.inventory(tmp_path / "inventory.ini", [("h0", 2200, tmp_path / "r0"), ("h1", 2201, tmp_path / "r1")],
                        tmp_path / "key")
    pythons = {host.target.python for host in load_inventory(tmp_path / "inventory.ini")}
    configured = [line for line in fleetwork.ansible_cfg(tmp_path, 2, tmp_path / "known").splitlines()
                  if line.startswith("interpreter_python")]
    assert configured == [f"interpreter_python = {pythons.pop()}"] and not pythons


@pytest.mark.parametrize("login_home", ["fresh", "machine"])
def test_the_rig_s_sessions_run_with_the_root_home_asked_for(login_home: str) -> None:
    """With ``login_home="fresh"`` a command over the rig's SSH runs with root's home replaced by one
    holding Debian's default dotfiles (so no tool pays this machine's own .bashrc per session), and
    this machine's /root is untouched; with "machine" it is this machine's home."""
    require_root("the sshd rig needs root")
    sshrig = benchmark_module("sshrig")
    if sshrig.missing() is not None:
        require_real(f"the sshd rig cannot run: {sshrig.missing()}")
    home = os.path.expanduser("~root")
    before = sorted(os.listdir(home))
    with sshrig.Rig(1, login_home=login_home) as rig:
        server = rig.servers[0]
        done = subprocess.run(
            ["ssh", "-i", str(rig.key), "-p", str(server.port), *[arg for opt in rig.ssh_options() for arg in ("-o", opt)],
             "root@127.0.0.1", "ls -A ~; cat ~/.bashrc"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    if login_home == "fresh":
        assert done.stdout.split("\n")[:2] == [".bashrc", ".profile"]
        default = next(path for path in sshrig._DOTFILES[".bashrc"] if os.path.isfile(path))
        assert done.stdout.endswith(Path(default).read_text())
    else:
        assert done.stdout.endswith(Path(home, ".bashrc").read_text())
    assert sorted(os.listdir(home)) == before


def test_the_benchmarks_run_kensa_from_bytecode_compiled_outside_the_source_tree(tmp_path: Path) -> None:
    """The environment the benchmarks time kensa commands with (``benchmarks.installed.kensa_env``, as
    ``benchmarks.fleet`` uses it, and ``kensa_python``, a virtual environment of its own) runs every kensa
    module from bytecode compiled in the scratch directory beforehand, none compiled from source at
    start, and writes no ``__pycache__`` into the source tree, even with ``PYTHONDONTWRITEBYTECODE`` set
    in the caller's environment."""
    installed = benchmark_module("installed")
    fleet = benchmark_module("fleet")
    assert fleet.kensa_env is installed.kensa_env
    source = tmp_path / "src"
    shutil.copytree(REPO / "src" / "kensa", source / "kensa", ignore=shutil.ignore_patterns("__pycache__"))
    scratch = tmp_path / "scratch"
    caller = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", PYTHONPATH=str(source))
    env = installed.kensa_env(scratch, caller, source=source)
    assert "PYTHONDONTWRITEBYTECODE" not in env
    python = installed.kensa_python(scratch)
    # A virtual environment of its own, as the peers have: its site runs no .pth file of this Python's.
    prefix = subprocess.run([python, "-c", "import sys; print(sys.prefix != sys.base_prefix)"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert prefix.stdout.strip() == "True", prefix.stderr
    proc = subprocess.run([python, "-v", "-m", "kensa", "remediate", "--help"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    loaded = [line.split("code object from ", 1)[1] for line in proc.stderr.splitlines()
              if line.startswith("# code object from ") and "kensa" in line]
    assert len(loaded) > 10, proc.stderr[-2000:]
    site = str(scratch / "site" / "kensa")
    assert [path for path in loaded if not (path.startswith(f"'{site}") and path.endswith(".pyc'"))] == []
    assert list(source.rglob("__pycache__")) == []


def test_the_startup_benchmark_starts_every_command_and_reports_the_peers_it_lacks(tmp_path: Path) -> None:
    """`python -m benchmarks.startup` (one run, 3 rules, no peers) exits 0 with a row per command: the bare
    Python and kensa's help succeed, the check of the seeded root runs its rules (exit 1: not compliant),
    and each peer not given is said not measured."""
    out = tmp_path / "results"
    proc = _run("benchmarks.startup", "--runs", "1", "--rules", "3", "--ansible-playbook", "", "--pyinfra", "",
                "--out", str(out), timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = json.loads((out / "startup.json").read_text())["rows"]
    assert {name: row["exit_codes"] for name, row in rows.items()} == {
        "python -c pass": [0], "kensa --help": [0], "kensa remediate --help": [0], "kensa check (3 rules)": [1]}
    assert "ansible-playbook: not measured" in proc.stdout and "pyinfra: not measured" in proc.stdout
