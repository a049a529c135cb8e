"""The fleet benchmark: M rules on N hosts over SSH, kensa against ansible-playbook and pyinfra, in one run.

``python -m benchmarks.fleet [--hosts 50] [--rules 20] [--workers 16] [--peer-hosts N] [--no-write]`` (as root)

Every tool gets the same loopback sshd servers (:mod:`benchmarks.sshrig`),
the same inventory of hosts (each a root directory behind a server, kensa's
``kensa_root``) seeded alike, and the same edits (:mod:`benchmarks.fleetwork`),
with as many hosts in flight (kensa ``--workers``, ``ansible-playbook -f``,
``pyinfra --parallel``). kensa runs its CLI (``kensa remediate --inventory``):
every change is a transaction with capture, journal, validation and five
audit records. Ansible runs with pipelining and ControlPersist on and fact
gathering off; pyinfra with ``--no-wait``. kensa and Ansible start the same
Python on every host (``/usr/bin/python3``: Ansible's ``interpreter_python``,
kensa's ``ansible_python_interpreter`` in the shared inventory); pyinfra runs
shell commands and starts none. Afterwards every host's tree is
compared, file by file, across the tools: a tool whose result differs is
reported as such, not timed as equal work.

Reported per tool: wall time of the whole command, transactions (changes) per
second, and peak controller memory (:mod:`benchmarks.procmem`: the tool's
processes and its ssh clients, PSS), and kensa's throughput over each peer's.
``--peer-hosts`` runs the peers on the first N hosts only (they are slow);
kensa always does the whole fleet. Before the timed runs, kensa makes its
first contact with the servers untimed (:func:`first_contact`: its agent
compiles the payload into the targets' cache, as any earlier run leaves it);
``--cold`` times that first contact instead. ``--memory-hosts 1,10,50`` also measures
kensa's controller memory with that many hosts connected at once.
Results go to ``benchmarks/results/fleet.{txt,json}`` and the table into
``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from benchmarks import fleetwork
from benchmarks.installed import kensa_env, kensa_python
from benchmarks.cpuacct import CpuGroup
from benchmarks.procmem import PeakMemory, _ssh_clients
from benchmarks.sshrig import LOGIN_HOMES, Rig

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
TOOLS = ("kensa", "ansible-playbook", "pyinfra")
README_BEGIN = "<!-- fleet results: written by python -m benchmarks.fleet -->"
README_END = "<!-- end of fleet results -->"
# pyinfra logs in with paramiko, which has no post-quantum key exchange: the OpenSSH tools get the
# same classical one, or their logins cost several times the CPU of pyinfra's for the same work.
KEX = "curve25519-sha256"

Host = Tuple[str, int, Path]

#: The CPU group of the rig's sshd servers, while a run is on (every target-side process lands in it).
TARGETS: Optional[CpuGroup] = None


def _env(**extra: str) -> Dict[str, str]:
    env = dict(os.environ, **extra)
    if (SRC / "kensa").is_dir():
        env["PYTHONPATH"] = os.pathsep.join([str(SRC), *filter(None, [os.environ.get("PYTHONPATH")])])
    return env


def _hosts(rig: Rig, base: Path, count: int) -> List[Host]:
    hosts = []
    for index in range(count):
        root = base / f"h{index:03d}"
        root.mkdir(parents=True)
        fleetwork.seed(root)
        hosts.append((f"h{index:03d}", rig.servers[index % len(rig.servers)].port, root))
    return hosts


def _end_ssh_clients(marker: str) -> None:
    """End the ssh clients (ControlPersist masters) a tool left running, by pid; they hold the marker path."""
    for pid in _ssh_clients(marker):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass


def _timed(argv: List[str], env: Dict[str, str], cwd: Path, marker: str, log: Path) -> Dict[str, Any]:
    """Run ``argv`` to its end: wall seconds, exit code, peak memory, CPU seconds of the tool's processes
    and of the targets' (the rig's sshd servers and all they start) meanwhile; output into ``log``."""
    tool = CpuGroup(log.parent.name)
    targets_before = TARGETS.seconds() if TARGETS is not None else None
    try:
        with open(log, "wb") as out:
            start = time.perf_counter()
            proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    preexec_fn=tool.enter)
            memory = PeakMemory(proc.pid, marker)
            code = proc.wait()
            wall = time.perf_counter() - start
            memory.stop()
        _end_ssh_clients(marker)
        controller = tool.seconds()
    finally:
        tool.close()
    targets_after = TARGETS.seconds() if TARGETS is not None else None
    return {
        "wall_s": wall,
        "exit_code": code,
        "peak_memory_kib": memory.peak_total_kib,
        "peak_main_kib": memory.peak_main_kib,
        "peak_processes": memory.peak_processes,
        "controller_cpu_s": controller,
        "target_cpu_s": None if targets_before is None or targets_after is None else targets_after - targets_before,
    }


def run_kensa(rig: Rig, scratch: Path, hosts: List[Host], rules: int, workers: int, env: Dict[str, str],
              name: str = "kensa", kex: str = "", python: str = sys.executable) -> Dict[str, Any]:
    """Time ``kensa remediate --inventory`` on ``hosts`` with ``env`` (:func:`benchmarks.installed.kensa_env`)
    and ``python`` (:func:`benchmarks.installed.kensa_python`)."""
    work = scratch / name
    work.mkdir()
    ssh_config = []
    if kex:
        (work / "ssh_config").write_text(f"KexAlgorithms {kex}\n")
        ssh_config = ["--ssh-config", str(work / "ssh_config")]
    fleetwork.kensa_rules(work / "rules", fleetwork.edits(rules))
    fleetwork.inventory(work / "inventory.ini", hosts, rig.key)
    argv = [python, "-m", "kensa", "--journal", str(work / "journal.db"), "remediate", str(work / "rules"),
            "--inventory", str(work / "inventory.ini"), "--workers", str(workers), "--known-hosts", str(rig.known_hosts),
            # The inventory names the key too; -k is what the engine's own connections log in with.
            "-k", str(rig.key),
            # Every host's sshd and agent run on this one machine: logins are slower than over a network.
            "--connect-timeout", "120",
            "--strict-host-keys", *ssh_config, "--json"]
    run = _timed(argv, env, work, str(rig.known_hosts), work / "output.txt")
    text = (work / "output.txt").read_text(errors="replace")
    statuses: Dict[str, int] = {}
    try:
        report = json.loads(text[text.index("{"):])
        for host in report.get("hosts", [report]):
            for result in host.get("results", []):
                statuses[result["status"]] = statuses.get(result["status"], 0) + 1
    except ValueError:
        run["error"] = text[-2000:]
    run["statuses"] = statuses
    return run


def run_ansible(rig: Rig, scratch: Path, hosts: List[Host], rules: int, workers: int, executable: str,
                kex: str = "") -> Dict[str, Any]:
    work = scratch / "ansible-playbook"
    work.mkdir()
    (work / "playbook.yml").write_text(fleetwork.playbook(fleetwork.edits(rules)))
    (work / "ansible.cfg").write_text(fleetwork.ansible_cfg(work, workers, rig.known_hosts, kex))
    fleetwork.inventory(work / "inventory.ini", hosts, rig.key)
    env = _env(ANSIBLE_CONFIG=str(work / "ansible.cfg"), ANSIBLE_HOME=str(work / "home"))
    argv = [executable, "-i", str(work / "inventory.ini"), "-f", str(workers), str(work / "playbook.yml")]
    return _timed(argv, env, work, str(rig.known_hosts), work / "output.txt")


def run_pyinfra(rig: Rig, scratch: Path, hosts: List[Host], rules: int, workers: int, executable: str) -> Dict[str, Any]:
    work = scratch / "pyinfra"
    work.mkdir()
    (work / "deploy.py").write_text(fleetwork.pyinfra_deploy(fleetwork.edits(rules)))
    (work / "inventory.py").write_text(fleetwork.pyinfra_inventory(hosts, rig.key, rig.known_hosts))
    argv = [executable, "-y", "--parallel", str(workers), "--no-wait", "inventory.py", "deploy.py"]
    return _timed(argv, _env(), work, str(rig.known_hosts), work / "output.txt")


def _verify(results: Dict[str, Dict[str, Any]], trees: Dict[str, List[Host]]) -> None:
    """Mark each tool's run verified when every host it ran ends equal to kensa's (or the first tool's) same host.

    The reference itself must differ from a freshly seeded host: equal trees
    where nothing happened would prove nothing.
    """
    if not trees:
        return
    reference_tool = "kensa" if "kensa" in trees else next(iter(trees))
    reference = [fleetwork.snapshot(root) for _, _, root in trees[reference_tool]]
    with tempfile.TemporaryDirectory() as fresh:
        fleetwork.seed(Path(fresh))
        seeded = fleetwork.snapshot(Path(fresh))
    for tool, hosts in trees.items():
        mismatch = None
        for index, (name, _, root) in enumerate(hosts):
            tree = fleetwork.snapshot(root)
            if tree == seeded:
                mismatch = f"host {name} was not changed"
            elif tree != reference[index]:
                differing = sorted(path for path in set(tree) | set(reference[index]) if tree.get(path) != reference[index].get(path))
                mismatch = f"host {name}: {', '.join(differing)} differ from {reference_tool}'s"
            if mismatch:
                break
        results[tool]["verified"] = mismatch is None
        results[tool]["mismatch"] = mismatch


def first_contact(rig: Rig, scratch: Path, env: Dict[str, str], kex: str = "", python: str = sys.executable) -> Dict[str, Any]:
    """Three rules on one throwaway host, before anything is timed: kensa's first agent on these
    servers compiles its payload into the login user's cache there (every server shares one
    home), as the first run against a host does once; the timed runs are later runs. Returned
    for the report: what that first contact took."""
    base = scratch / "first-contact"
    run = run_kensa(rig, base, _hosts(rig, base / "roots", 1), 3, 1, env, name="run", kex=kex, python=python)
    return {k: run[k] for k in ("wall_s", "controller_cpu_s", "target_cpu_s", "exit_code")}


def memory_per_host(rig: Rig, scratch: Path, counts: List[int], env: Dict[str, str], kex: str = "",
                    python: str = sys.executable) -> List[Dict[str, Any]]:
    """kensa's controller memory with N hosts connected at once (--workers N, one rule each)."""
    rows = []
    for count in counts:
        base = scratch / f"memory-{count}"
        hosts = _hosts(rig, base / "roots", count)
        run = run_kensa(rig, base, hosts, 3, count, env, name="run", kex=kex, python=python)
        rows.append({"hosts": count, **{k: run[k] for k in ("wall_s", "peak_memory_kib", "peak_main_kib", "peak_processes")}})
    return rows


def render(result: Dict[str, Any]) -> str:
    rows = result["tools"]
    lines = [
        f"FLEET: {result['rules']} rules on hosts over loopback SSH ({result['servers']} sshd), "
        f"{result['workers']} hosts in flight, one run each, OpenSSH key exchange {result.get('kex', 'default')}, "
        f"root's home on the servers: {result.get('login_home', 'machine')}",
        f"{'tool':<17} {'hosts':>5} {'changes':>7} {'wall s':>8} {'changes/s':>9} {'peak MiB':>8} {'main MiB':>8} {'procs':>5} "
        f"{'ctl CPU s':>9} {'tgt CPU s':>9} {'CPU ms/change':>13}  result",
    ]
    for tool, row in rows.items():
        if "why_not" in row:
            lines.append(f"{tool:<17} not measured: {row['why_not']}")
            continue
        state = "verified" if row.get("verified") else f"NOT EQUAL: {row.get('mismatch')}"
        if row["exit_code"] != 0:
            state = f"exit {row['exit_code']}; {state}"
        lines.append(
            f"{tool:<17} {row['hosts']:>5} {row['changes']:>7} {row['wall_s']:>8.2f} {row['changes_per_s']:>9.1f} "
            f"{row['peak_memory_kib'] / 1024:>8.0f} {row['peak_main_kib'] / 1024:>8.0f} {row['peak_processes']:>5} "
            f"{_seconds(row.get('controller_cpu_s')):>9} {_seconds(row.get('target_cpu_s')):>9} "
            f"{_seconds(row.get('cpu_ms_per_change'), 1):>13}  {state}"
        )
    contact = result.get("kensa_first_contact")
    if contact:
        lines.append(f"kensa's first contact, untimed before the runs above (1 host x 3 rules, the agent compiled into "
                     f"the targets' cache): {contact['wall_s']:.2f} s, ctl CPU {_seconds(contact.get('controller_cpu_s'))} s, "
                     f"tgt CPU {_seconds(contact.get('target_cpu_s'))} s")
    for peer, ratio in result["ratios"].items():
        lines.append(f"kensa / {peer} throughput: {ratio:.1f}x")
    for peer, ratio in result.get("cpu_ratios", {}).items():
        lines.append(f"{peer} / kensa CPU per change (controller and targets): {ratio:.1f}x")
    if result.get("memory"):
        lines.append("kensa controller memory with N hosts connected at once (PSS of kensa and its ssh clients):")
        for row in result["memory"]:
            lines.append(
                f"  {row['hosts']:>3} hosts: {row['peak_memory_kib'] / 1024:6.0f} MiB total, "
                f"{row['peak_main_kib'] / 1024:5.0f} MiB in the kensa process, {row['peak_processes']} processes"
            )
        if len(result["memory"]) > 1:
            lines.append(f"  per connected host: {result['memory_per_host_kib'] / 1024:.1f} MiB")
    return "\n".join(lines) + "\n"


def _seconds(value: Optional[float], digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _write_readme(text: str, readme: Path) -> None:
    block = f"{README_BEGIN}\n```\n{text}```\n{README_END}"
    current = readme.read_text() if readme.exists() else ""
    if README_BEGIN in current and README_END in current:
        head, rest = current.split(README_BEGIN, 1)
        current = head + block + rest.split(README_END, 1)[1]
    else:
        current = current.rstrip("\n") + "\n\n" + block + "\n"
    readme.write_text(current)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.fleet", description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--hosts", type=int, default=50)
    p.add_argument("--rules", type=int, default=20)
    p.add_argument("--workers", type=int, default=16)
    p.add_argument("--servers", type=int, default=0, help="sshd servers (default: one per host)")
    p.add_argument("--peer-hosts", type=int, default=0, help="run the peers on the first N hosts only (default: all)")
    p.add_argument("--tools", default=",".join(TOOLS), help="comma-separated subset of " + ", ".join(TOOLS))
    p.add_argument("--ansible-playbook", default=shutil.which("ansible-playbook"), help="ansible-playbook executable")
    p.add_argument("--pyinfra", default=shutil.which("pyinfra"), help="pyinfra executable")
    p.add_argument("--memory-hosts", default="", help="also measure kensa's memory with these many hosts connected, e.g. 1,10,50")
    p.add_argument("--kex", default=KEX, help=f"key exchange of the OpenSSH logins, kensa's and Ansible's (default {KEX}, "
                   "as pyinfra's paramiko negotiates; '' keeps OpenSSH's default, post-quantum sntrup761x25519 on 9.x)")
    p.add_argument("--login-home", choices=LOGIN_HOMES, default="fresh",
                   help="root's home on the sshd servers: 'fresh' (Debian's default dotfiles, as on a new host; the "
                        "default) or 'machine' (this machine's, whose .bashrc every SSH session runs)")
    p.add_argument("--scratch", default="/var/tmp", help="where the hosts' roots and the journal go (disk-backed)")
    p.add_argument("--cold", action="store_true",
                   help="no untimed first contact: kensa's timed run is its first against these servers, its "
                        "agents compiling the payload into the targets' cache (as runs before L were timed)")
    p.add_argument("--no-write", action="store_true", help="print the table only")
    p.add_argument("--keep", action="store_true", help="keep the scratch directory (roots, outputs) and print where it is")
    p.add_argument("--out", default=str(HERE / "results"))
    p.add_argument("--readme", default=str(HERE / "README.md"), help="the file whose fleet results block is rewritten")
    args = p.parse_args(argv)
    tools = [tool for tool in args.tools.split(",") if tool]
    executables = {"ansible-playbook": args.ansible_playbook, "pyinfra": args.pyinfra}
    peer_hosts = args.peer_hosts or args.hosts
    memory_counts = [int(n) for n in args.memory_hosts.split(",") if n]
    servers = args.servers or max([args.hosts, *memory_counts])
    scratch = Path(tempfile.mkdtemp(prefix="kensa-fleet-", dir=args.scratch))
    results: Dict[str, Dict[str, Any]] = {}
    trees: Dict[str, List[Host]] = {}
    memory: List[Dict[str, Any]] = []
    contact: Optional[Dict[str, Any]] = None
    try:
        # kensa's bytecode is compiled here, before anything is timed, as installing a wheel does.
        kensa = kensa_env(scratch, _env())
        python = kensa_python(scratch)
        with Rig(servers, base=str(scratch), login_home=args.login_home) as rig:
            global TARGETS
            TARGETS = CpuGroup("targets")
            for server in rig.servers:
                if server.proc is not None:
                    TARGETS.add(server.proc.pid)
            contact = first_contact(rig, scratch, kensa, args.kex, python) if "kensa" in tools and not args.cold else None
            for tool in tools:
                count = args.hosts if tool == "kensa" else peer_hosts
                if tool != "kensa" and not executables.get(tool):
                    results[tool] = {"why_not": f"{tool} not found (pip install {'ansible-core' if tool.startswith('ansible') else 'pyinfra'})"}
                    continue
                print(f"... {tool}: {count} hosts x {args.rules} rules", file=sys.stderr, flush=True)
                hosts = _hosts(rig, scratch / "roots" / tool, count)
                if tool == "kensa":
                    run = run_kensa(rig, scratch, hosts, args.rules, args.workers, kensa, kex=args.kex, python=python)
                elif tool == "ansible-playbook":
                    run = run_ansible(rig, scratch, hosts, args.rules, args.workers, executables[tool], kex=args.kex)
                else:
                    run = run_pyinfra(rig, scratch, hosts, args.rules, args.workers, executables[tool])
                run.update(hosts=count, changes=count * args.rules)
                run["changes_per_s"] = run["changes"] / run["wall_s"]
                if run["controller_cpu_s"] is not None and run["target_cpu_s"] is not None:
                    run["cpu_ms_per_change"] = 1000 * (run["controller_cpu_s"] + run["target_cpu_s"]) / run["changes"]
                results[tool], trees[tool] = run, hosts
            _verify(results, trees)
            if memory_counts:
                print(f"... kensa memory with {memory_counts} hosts connected", file=sys.stderr, flush=True)
                memory = memory_per_host(rig, scratch, memory_counts, kensa, args.kex, python)
    finally:
        if TARGETS is not None:
            TARGETS.close()
        if args.keep:
            print(f"kept {scratch}", file=sys.stderr)
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    ratios = {
        peer: results["kensa"]["changes_per_s"] / results[peer]["changes_per_s"]
        for peer in tools
        if peer != "kensa" and "kensa" in results and "changes_per_s" in results.get(peer, {})
    }
    cpu_ratios = {
        peer: results[peer]["cpu_ms_per_change"] / results["kensa"]["cpu_ms_per_change"]
        for peer in ratios if "cpu_ms_per_change" in results[peer] and "cpu_ms_per_change" in results["kensa"]
    }
    result: Dict[str, Any] = {
        "rules": args.rules, "workers": args.workers, "servers": servers, "kex": args.kex or "OpenSSH's default", "login_home": args.login_home,
        "tools": results, "ratios": ratios, "cpu_ratios": cpu_ratios,
        "memory": memory, "kensa_first_contact": contact,
        "machine": {"cpus": os.cpu_count(), "loadavg_at_end": os.getloadavg()},
    }
    if len(memory) > 1:
        first, last = memory[0], memory[-1]
        result["memory_per_host_kib"] = (last["peak_memory_kib"] - first["peak_memory_kib"]) / (last["hosts"] - first["hosts"])
    text = render(result)
    print(text, end="")
    if not args.no_write:
        os.makedirs(args.out, exist_ok=True)
        Path(args.out, "fleet.txt").write_text(text)
        Path(args.out, "fleet.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
        _write_readme(text, Path(args.readme))
    return 0


if __name__ == "__main__":
    sys.exit(main())
