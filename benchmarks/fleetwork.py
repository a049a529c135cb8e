"""The work of the fleet benchmark, written once for each tool: the same edits on the same hosts.

Every host is a directory on the controller reached through one of the rig's
sshd servers (``kensa_root``). Its starting tree is :func:`seed`; the edits
are :func:`edits`: ``rules - 2`` sshd_config keys (some replace a line, the
rest append one), one whole file (``/etc/issue.net``) and one kernel
parameter set now and persisted (``net.ipv4.ip_forward``: the value under
the root's ``/proc/sys`` and a ``/etc/sysctl.d`` file). From that one list
come kensa's rule files, Ansible's playbook (``lineinfile``/``copy``, as
ansible-core has no sysctl module without the ansible.posix collection) and
pyinfra's deploy (``files.line``/``files.put``). :func:`snapshot` reads a
host's tree back so that the runs can be compared file by file.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Tuple

#: The Python both kensa's agent and Ansible's modules start on every host.
PYTHON = "/usr/bin/python3"

# Real sshd_config keywords first; synthetic ones only when more rules are asked for.
_SSHD_KEYS = [
    ("PermitRootLogin", "no"), ("MaxAuthTries", "4"), ("X11Forwarding", "no"), ("PermitEmptyPasswords", "no"),
    ("ClientAliveInterval", "300"), ("ClientAliveCountMax", "3"), ("LoginGraceTime", "60"), ("MaxSessions", "10"),
    ("MaxStartups", "10:30:60"), ("IgnoreRhosts", "yes"), ("HostbasedAuthentication", "no"),
    ("PermitUserEnvironment", "no"), ("AllowTcpForwarding", "no"), ("AllowAgentForwarding", "no"),
    ("GatewayPorts", "no"), ("PermitTunnel", "no"), ("LogLevel", "VERBOSE"), ("Banner", "/etc/issue.net"),
    ("UseDNS", "no"), ("Compression", "no"), ("TCPKeepAlive", "no"), ("StrictModes", "yes"),
    ("PrintLastLog", "yes"), ("PubkeyAuthentication", "yes"), ("KbdInteractiveAuthentication", "no"),
]
# Keys the seeded file already holds, with other values: those edits replace a line.
_SEEDED = {"PermitRootLogin": "yes", "MaxAuthTries": "6", "X11Forwarding": "yes", "ClientAliveInterval": "0",
           "LogLevel": "INFO", "UseDNS": "yes"}

ISSUE = "Authorized use only\n"
SYSCTL_KEY, SYSCTL_VALUE = "net.ipv4.ip_forward", "0"
SYSCTL_PROC = "/proc/sys/net/ipv4/ip_forward"
SYSCTL_PERSIST = f"/etc/sysctl.d/99-kensa_{SYSCTL_KEY}.conf"


@dataclass(frozen=True)
class Edit:
    """One rule's change: a config key, the banner file, or the sysctl."""

    rule: str
    kind: str  # config_set | file_content | sysctl_set
    key: str = ""
    value: str = ""


def edits(rules: int) -> List[Edit]:
    """The ``rules`` edits of every host, in the order each tool applies them."""
    if rules < 3:
        raise ValueError("the fleet work needs at least 3 rules (one config key, the banner, the sysctl)")
    keys = list(_SSHD_KEYS) + [(f"KensaBenchKey{i:03d}", f"value{i}") for i in range(max(0, rules - 2 - len(_SSHD_KEYS)))]
    found = [Edit(f"bench-{i + 1:03d}", "config_set", key, value) for i, (key, value) in enumerate(keys[: rules - 2])]
    found.append(Edit(f"bench-{rules - 1:03d}", "file_content"))
    found.append(Edit(f"bench-{rules:03d}", "sysctl_set", SYSCTL_KEY, SYSCTL_VALUE))
    return found


def seed(root: Path) -> None:
    """A fresh host tree: an sshd_config, a banner, a live sysctl value and an empty sysctl.d."""
    for directory in ("etc/ssh", "etc/sysctl.d", "proc/sys/net/ipv4"):
        (root / directory).mkdir(parents=True, exist_ok=True)
    config = "# sshd_config of a benchmark host\n" + "".join(f"{key} {value}\n" for key, value in _SEEDED.items())
    (root / "etc/ssh/sshd_config").write_text(config + "Subsystem sftp /usr/lib/openssh/sftp-server\n")
    (root / "etc/issue.net").write_text("Debian GNU/Linux\n")
    (root / SYSCTL_PROC.lstrip("/")).write_text("1\n")
    for path in (root / "etc/ssh/sshd_config", root / "etc/issue.net", root / SYSCTL_PROC.lstrip("/")):
        os.chmod(path, 0o644)


def snapshot(root: Path) -> Dict[str, Tuple[str, str]]:
    """Every file under ``root``: relative path -> (octal mode, content)."""
    found: Dict[str, Tuple[str, str]] = {}
    for directory, _, names in os.walk(root):
        for name in names:
            path = Path(directory) / name
            mode = stat.S_IMODE(path.lstat().st_mode)
            found[str(path.relative_to(root))] = (oct(mode), path.read_text(errors="replace"))
    return found


# --- kensa ---------------------------------------------------------------------------


def kensa_rules(directory: Path, work: List[Edit]) -> None:
    """One rule file per edit (their names sort in the order of ``work``)."""
    directory.mkdir(parents=True, exist_ok=True)
    for edit in work:
        if edit.kind == "config_set":
            remediation = {"mechanism": "config_set", "path": "/etc/ssh/sshd_config", "key": edit.key, "value": edit.value, "separator": " "}
        elif edit.kind == "file_content":
            remediation = {"mechanism": "file_content", "path": "/etc/issue.net", "content": ISSUE}
        else:
            remediation = {"mechanism": "sysctl_set", "key": edit.key, "value": edit.value}
        body = {
            "id": edit.rule,
            "title": f"Benchmark edit {edit.rule}",
            "description": "One change of the fleet benchmark.",
            "severity": "low",
            "category": "system",
            "implementations": [{"default": True, "remediation": remediation}],
        }
        # JSON is YAML: no quoting rules to get wrong.
        (directory / f"{edit.rule}.yml").write_text(json.dumps(body, indent=2) + "\n")


def inventory(path: Path, hosts: List[Tuple[str, int, Path]], key: Path) -> None:
    """An Ansible INI inventory that kensa and ansible-playbook both read: (name, port, root) per host.

    ``ansible_python_interpreter`` gives kensa the interpreter ansible.cfg gives Ansible
    (:data:`PYTHON`), so both start the same Python on every host.
    """
    lines = ["[fleet]"]
    for name, port, root in hosts:
        lines.append(
            f"{name} ansible_host=127.0.0.1 ansible_port={port} ansible_user=root "
            f"ansible_ssh_private_key_file={key} kensa_root={root} ansible_python_interpreter={PYTHON}"
        )
    path.write_text("\n".join(lines) + "\n")


# --- ansible-playbook ---------------------------------------------------------------


def playbook(work: List[Edit]) -> str:
    """The same edits as Ansible tasks (JSON is YAML)."""
    tasks: List[Dict[str, object]] = []
    for edit in work:
        if edit.kind == "config_set":
            tasks.append({"name": edit.rule, "ansible.builtin.lineinfile": {
                "path": "{{ kensa_root }}/etc/ssh/sshd_config", "regexp": rf"^\s*{edit.key}\s", "line": f"{edit.key} {edit.value}"}})
        elif edit.kind == "file_content":
            tasks.append({"name": edit.rule, "ansible.builtin.copy": {"dest": "{{ kensa_root }}/etc/issue.net", "content": ISSUE}})
        else:
            tasks.append({"name": f"{edit.rule} now", "ansible.builtin.copy": {
                "dest": "{{ kensa_root }}" + SYSCTL_PROC, "content": f"{edit.value}\n"}})
            tasks.append({"name": f"{edit.rule} persisted", "ansible.builtin.lineinfile": {
                "path": "{{ kensa_root }}" + SYSCTL_PERSIST, "regexp": rf"^\s*{edit.key}\s*=",
                "line": f"{edit.key} = {edit.value}", "create": True, "mode": "0644"}})
    return json.dumps([{"hosts": "all", "gather_facts": False, "tasks": tasks}], indent=2) + "\n"


def ansible_cfg(scratch: Path, forks: int, known_hosts: Path, kex: str = "") -> str:
    """ansible.cfg as its users tune it for speed: pipelining, ControlPersist, no fact gathering;
    ``kex``: the key exchange its ssh logins use (empty: OpenSSH's default)."""
    return (
        "[defaults]\n"
        f"forks = {forks}\n"
        "gathering = explicit\n"
        "host_key_checking = True\n"
        f"interpreter_python = {PYTHON}\n"
        "retry_files_enabled = False\n"
        "timeout = 120\n"
        f"local_tmp = {scratch / 'ansible-local'}\n"
        "[ssh_connection]\n"
        "pipelining = True\n"
        f"ssh_args = -o ControlMaster=auto -o ControlPersist=60s -o UserKnownHostsFile={known_hosts} "
        f"-o StrictHostKeyChecking=yes -o BatchMode=yes{f' -o KexAlgorithms={kex}' if kex else ''}\n"
        f"control_path_dir = {scratch / 'ansible-cp'}\n"
    )


# --- pyinfra ------------------------------------------------------------------------------


def pyinfra_inventory(hosts: List[Tuple[str, int, Path]], key: Path, known_hosts: Path) -> str:
    """pyinfra's inventory: the same hosts, each with its root as host data."""
    entries = [
        (name, {"ssh_hostname": "127.0.0.1", "ssh_port": port, "ssh_user": "root", "ssh_key": str(key),
                "ssh_known_hosts_file": str(known_hosts), "ssh_strict_host_key_checking": "yes", "kensa_root": str(root)})
        for name, port, root in hosts
    ]
    return f"fleet = {entries!r}\n"


def pyinfra_deploy(work: List[Edit]) -> str:
    """The same edits as pyinfra operations."""
    lines = [
        "from io import StringIO",
        "from pyinfra import host",
        "from pyinfra.operations import files",
        "root = host.data.kensa_root",
    ]
    for edit in work:
        if edit.kind == "config_set":
            pattern, line = r"^\s*" + edit.key + r"\s.*$", f"{edit.key} {edit.value}"
            lines.append(
                f"files.line(name={edit.rule!r}, path=root + '/etc/ssh/sshd_config', line={pattern!r}, replace={line!r})"
            )
        elif edit.kind == "file_content":
            lines.append(f"files.put(name={edit.rule!r}, src=StringIO({ISSUE!r}), dest=root + '/etc/issue.net')")
        else:
            now, persisted = edit.value + "\n", f"{edit.key} = {edit.value}\n"
            lines.append(f"files.put(name={edit.rule + ' now'!r}, src=StringIO({now!r}), dest=root + {SYSCTL_PROC!r})")
            lines.append(
                f"files.put(name={edit.rule + ' persisted'!r}, src=StringIO({persisted!r}), "
                f"dest=root + {SYSCTL_PERSIST!r}, mode='644')"
            )
    return "\n".join(lines) + "\n"
