"""A real run for the evidence and report tests: rules of every outcome, a target root, the kensa command.

The rules are this project's own. In a fresh root the remediation run ends
with one transaction committed, one skipped (already compliant), one rolled
back (its two steps cannot both hold) and one rule not applicable (its only
implementation needs a capability the root lacks).
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any, Dict, Tuple

from kensa.cli.main import main

RULES: Dict[str, str] = {
    "ssh-root.yml": """\
id: ev-ssh-root
title: No root login over SSH
severity: high
references:
  nist_800_53: [AC-6(2), IA-2]
  cis:
    rhel9: {section: '5.1.20', level: L1}
implementations:
  - default: true
    remediation: {mechanism: config_set, path: /etc/ssh/sshd_config, key: PermitRootLogin, value: "no", separator: " "}
""",
    "banner-present.yml": """\
id: ev-banner-present
title: The login banner is already in place
severity: low
references:
  nist_800_53: [AC-8]
implementations:
  - default: true
    remediation: {mechanism: file_content, path: /etc/issue, content: "Authorized use only.\\n", mode: "0644"}
""",
    "motd-conflict.yml": """\
id: ev-motd-conflict
title: Two messages of the day that cannot both hold
severity: low
references:
  stig:
    rhel9: {vuln_id: V-900001, stig_id: RHEL-09-900001, cci: [CCI-000048]}
implementations:
  - default: true
    remediation:
      steps:
        - {mechanism: file_content, path: /etc/motd, content: "one\\n", mode: "0644"}
        - {mechanism: file_content, path: /etc/motd, content: "two\\n", mode: "0644"}
""",
    "dropin-only.yml": """\
id: ev-dropin-only
title: X11 forwarding off in an sshd drop-in
severity: low
references:
  nist_800_53: [CM-6]
implementations:
  - when: sshd_config_d
    remediation: {mechanism: config_set, path: /etc/ssh/sshd_config.d/50-ev.conf, key: X11Forwarding, value: "no", separator: " "}
""",
}

SSHD_BEFORE = "# test sshd\nPermitRootLogin yes\n"
OUTCOMES = {
    "ev-ssh-root": "committed",
    "ev-banner-present": "skipped",
    "ev-motd-conflict": "rolled_back",
    "ev-dropin-only": "not_applicable",
}
CHECK_VERDICTS = {
    "ev-ssh-root": "not_compliant",
    "ev-banner-present": "compliant",
    "ev-motd-conflict": "not_compliant",
    "ev-dropin-only": "not_applicable",
}


def write_rules(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in RULES.items():
        (folder / name).write_text(text)
    return folder


def make_root(folder: Path) -> Path:
    (folder / "etc/ssh").mkdir(parents=True)
    (folder / "etc/ssh/sshd_config").write_text(SSHD_BEFORE)
    (folder / "etc/ssh/sshd_config").chmod(0o600)
    (folder / "etc/issue").write_text("Authorized use only.\n")
    (folder / "etc/issue").chmod(0o644)
    return folder


def kensa(*argv: str) -> Tuple[int, str]:
    """The kensa command run in this process: its exit code and what it printed."""
    out = io.StringIO()
    code = main(list(argv), out=out)
    return code, out.getvalue()


def remediation_run(base: Path, fmt: str = "json") -> Dict[str, Any]:
    """A remediation run through ``kensa report --remediate`` in a fresh root under ``base``."""
    rules = write_rules(base / "rules")
    root = make_root(base / "root")
    journal = base / "journal.db"
    code, out = kensa("--journal", str(journal), "report", str(rules), "--root", str(root), "--remediate", "--format", fmt)
    return {"code": code, "out": out, "rules": rules, "root": root, "journal": journal}


def transaction_ids(report_json: str) -> Dict[str, str]:
    """Rule id -> transaction id, from a ``--format json`` report."""
    return {r["rule"]: r["txn"] for r in json.loads(report_json)["results"] if r["txn"]}


def oscal_schema(path: Path) -> Dict[str, Any]:
    """NIST's schema with the two Unicode classes Python's ``re`` lacks rewritten (see tests/data/oscal/README.md)."""
    text = path.read_text()
    text = text.replace(r"\\p{L}", r"[^\\W\\d_]").replace(r"\\p{N}", r"\\d")
    assert not re.search(r"\\\\p\{", text)
    schema: Dict[str, Any] = json.loads(text)
    return schema
