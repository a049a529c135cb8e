"""What the mechanism tests share: kensa's CLI on a temporary root, rule files, xattrs to prove restores exact."""

from __future__ import annotations

import io
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple

import yaml

from agent_targets import transport_for
from conftest import copy_live_tree
from kensa.cli.main import main
from kensa.engine import Engine
from kensa.handlers import default_registry
from kensa.hosts.remote import RemoteHosts
from kensa.journal import SqliteJournal


def kensa_cli(*argv: str) -> Tuple[int, str]:
    """``kensa ARGV`` in this process: (exit code, stdout)."""
    out = io.StringIO()
    code = main(list(argv), out=out)
    return code, out.getvalue()


def write_rule(directory: Path, rule_id: str, check: Optional[Mapping[str, Any]], steps: List[Mapping[str, Any]]) -> Path:
    """A rule file of one default implementation with ``check`` (None: compliant when every
    step validates) and the remediation ``steps``."""
    directory.mkdir(parents=True, exist_ok=True)
    rule = {
        "id": rule_id, "title": rule_id, "severity": "medium", "category": "test",
        "implementations": [{"default": True, "remediation": {"steps": [dict(s) for s in steps]}}],
    }
    if check is not None:
        rule["implementations"][0]["check"] = dict(check)  # type: ignore[index]
    path = directory / f"{rule_id}.yml"
    path.write_text(yaml.safe_dump(rule, sort_keys=False))
    return path


def remediate(journal: Path, rules: Path, root: Path) -> List[Dict[str, Any]]:
    """``kensa remediate --json`` of ``rules`` on ``root``: its results."""
    _, out = kensa_cli("--journal", str(journal), "--no-audit", "remediate", str(rules), "--root", str(root), "--json")
    results: List[Dict[str, Any]] = json.loads(out)["results"]
    return results


def check(journal: Path, rules: Path, root: Path) -> Dict[str, str]:
    """``kensa check --json`` of ``rules`` on ``root``: rule id -> verdict."""
    _, out = kensa_cli("--journal", str(journal), "--no-audit", "check", str(rules), "--root", str(root), "--json")
    return {row["rule"]: row["verdict"] for row in json.loads(out)["rules"]}


def rollback(journal: Path, txn: str) -> Tuple[int, Dict[str, Any]]:
    """``kensa rollback TXN --json``: (exit code, its result)."""
    code, out = kensa_cli("--journal", str(journal), "--no-audit", "rollback", txn, "--json")
    return code, json.loads(out) if out.strip().startswith("{") else {"output": out}


def mark(path: Path, security: bool = True) -> None:
    """Give ``path`` a ``user.*`` xattr and (as root) a ``security.*`` one, so a restore must keep both."""
    os.setxattr(path, "user.kensa-test", b"kept", follow_symlinks=False)
    if security and os.geteuid() == 0:
        os.setxattr(path, "security.kensa-test", b"kept too", follow_symlinks=False)


def read_text(path: Path) -> Optional[str]:
    return path.read_text() if path.exists() else None


def copy_etc(dest: Path) -> None:
    """This machine's /etc copied to ``dest``, as :func:`conftest.copy_live_tree` copies."""
    copy_live_tree("/etc", dest)


#: Python run first in a private mount namespace by :func:`in_private_namespace`: /etc is
#: bind-mounted from argv[2] (a copy, so nothing written there reaches this machine's),
#: /usr/local/sbin is a tmpfs holding the programs given as JSON in argv[1] (name -> source).
NAMESPACE_PRELUDE = '''
import json, os, subprocess, sys
subprocess.run(["mount", "--bind", sys.argv[2], "/etc"], check=True)
subprocess.run(["mount", "-t", "tmpfs", "tmpfs", "/usr/local/sbin"], check=True)
for _name, _source in json.loads(sys.argv[1]).items():
    with open("/usr/local/sbin/" + _name, "w") as _f:
        _f.write(_source)
    os.chmod("/usr/local/sbin/" + _name, 0o755)
sys.argv = [sys.argv[0]] + sys.argv[3:]
'''


def in_private_namespace(script: str, programs: Mapping[str, str], work: Path, *args: str) -> Dict[str, Any]:
    """Run ``script`` (after :data:`NAMESPACE_PRELUDE`) as root in a private mount namespace whose
    /etc is a copy made in ``work`` and where ``programs`` are installed; it prints one JSON
    document, returned here."""
    import subprocess
    import sys

    copy_etc(work / "etc")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        ["unshare", "-m", "--propagation", "private", sys.executable, "-c", NAMESPACE_PRELUDE + script,
         json.dumps(dict(programs)), str(work / "etc"), *args],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    found: Dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return found


@contextmanager
def agent_engine(journal_path: Path) -> Iterator[Engine]:
    """An engine whose ``ssh://admin@target/ROOT`` hosts are kensa's agent started on this machine
    (a real process over SubprocessTransport), journaling to ``journal_path``."""
    hosts = RemoteHosts(transport_for)
    try:
        with SqliteJournal(journal_path) as journal:
            yield Engine(default_registry(), journal=journal, hosts=hosts)
    finally:
        hosts.close()


def agent_key(root: Path) -> str:
    """The host key under which :func:`agent_engine` reaches ``root`` through the agent."""
    return f"ssh://admin@target{root}"
