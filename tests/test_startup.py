"""What a kensa command imports at start: what it does not need is not loaded, and what it needs
fails before anything is changed (no timing here: the cost is measured in benchmarks/)."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

import pytest

from conftest import snapshot_tree

SRC = Path(__file__).resolve().parent.parent / "src"

# Parts a command that reads no rules and touches no host has no use for.
_HEAVY = ("kensa.engine", "kensa.factory", "kensa.hosts.local", "kensa.hosts.remote", "kensa.rules", "kensa.handlers",
          "kensa.checks", "kensa.journal", "kensa.audit", "kensa.evidence", "yaml", "sqlite3", "cffi")


# A rule whose remediation rewrites /etc/motd, and whose check reads it.
_MOTD_RULE = (
    "id: startup-motd\ntitle: the motd says hello\nseverity: low\n"
    "implementations:\n  - default: true\n    check:\n      method: file_content\n      path: /etc/motd\n"
    "      expected_content: \"hello\\n\"\n    remediation:\n      mechanism: file_content\n      path: /etc/motd\n"
    "      content: \"hello\\n\"\n")


def _loaded(code: str) -> List[str]:
    """The modules (of _HEAVY, or under them) that the Python ``code`` has loaded when it prints them."""
    probe = (f"{code}\nimport sys, json\n"
             f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('yaml', 'sqlite3', 'cffi') "
             f"or any(m == h or m.startswith(h + '.') for h in {_HEAVY!r}))))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PYTHONPATH=str(SRC)))
    assert done.returncode == 0, done.stderr
    loaded: List[str] = json.loads(done.stdout.splitlines()[-1])
    return loaded


def test_import_kensa_loads_only_what_its_names_need_when_used() -> None:
    """``import kensa`` loads none of the engine, hosts, rules, journal or audit: its public names are
    imported when first used."""
    assert _loaded("import kensa") == []


def test_the_command_s_help_loads_no_engine_host_rule_journal_or_audit_code() -> None:
    """``kensa --help`` and ``kensa remediate --help`` build the whole parser without importing the parts
    the commands run with."""
    for argv in (["--help"], ["remediate", "--help"], ["check", "--help"]):
        code = (f"import contextlib, io\nfrom kensa.cli.main import main\nwith contextlib.redirect_stdout(io.StringIO()):\n"
                f"    try:\n        main({argv!r})\n    except SystemExit:\n        pass")
        assert _loaded(code) == [], argv


@pytest.mark.parametrize("package", ["kensa", "kensa.hosts", "kensa.audit", "kensa.rules"])
def test_the_public_names_of_a_package_stay_reachable(package: str) -> None:
    """Every name of the package's ``__all__`` is an attribute of it (imported on first use, the same object
    as in its defining module), ``dir`` lists them, ``from PACKAGE import *`` binds them, and an unknown
    name is an AttributeError."""
    module = importlib.import_module(package)
    for name in module.__all__:
        value = getattr(module, name)
        defined = getattr(value, "__module__", None)
        if isinstance(defined, str) and defined.startswith("kensa.") and hasattr(importlib.import_module(defined), name):
            assert getattr(importlib.import_module(defined), name) is value, name
    assert set(module.__all__) <= set(dir(module))
    namespace: Dict[str, Any] = {}
    exec(f"from {package} import *", namespace)
    assert set(module.__all__) <= set(namespace)
    with pytest.raises(AttributeError, match="no_such_name"):
        getattr(module, "no_such_name")


def test_the_kensa_names_are_the_engine_s_own() -> None:
    """``kensa.Engine``, ``kensa.Registry``, ``kensa.default_engine`` and the model's names are the objects
    their modules define."""
    import kensa
    from kensa.engine.registry import Registry
    from kensa.engine.run import Engine
    from kensa.factory import default_engine
    from kensa.model import Transaction

    assert kensa.Engine is Engine and kensa.Registry is Registry and kensa.default_engine is default_engine
    assert kensa.Transaction is Transaction


def test_a_check_of_this_machine_s_root_loads_no_ssh_transport_nor_audit_emitter(tmp_path: Path) -> None:
    """``kensa check RULES --root DIR`` loads the rules, the handlers and the local host, but neither the
    remote transport and its payload builder nor the kernel audit emitter and listener."""
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "motd.yml").write_text(_MOTD_RULE)
    (tmp_path / "root").mkdir()
    code = (f"import contextlib, io\nfrom kensa.cli.main import main\nwith contextlib.redirect_stdout(io.StringIO()):\n"
            f"    main(['--journal', {str(tmp_path / 'j.db')!r}, 'check', {str(rules)!r}, '--root', {str(tmp_path / 'root')!r}])")
    loaded = _loaded(code)
    assert "kensa.handlers.file_content" in loaded and "kensa.hosts.local" in loaded
    assert [m for m in loaded if m.startswith(("kensa.hosts.remote", "kensa.hosts.payload", "kensa.hosts.ssh",
                                               "kensa.audit.emitter", "kensa.audit.listener"))] == []


@pytest.mark.parametrize("missing", ["kensa.journal.rulesources", "kensa.evidence.record", "kensa.hosts.local",
                                     "kensa.handlers.file_content", "kensa.journal.store"])
def test_a_module_a_remediation_needs_fails_the_command_before_anything_changes(tmp_path: Path, missing: str) -> None:
    """With a module that ``kensa remediate`` uses missing (as in a broken install), the command fails
    before it changes the root: nothing that runs after a change may import for the first time."""
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "motd").write_text("old\n")
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "motd.yml").write_text(_MOTD_RULE)
    before = snapshot_tree(root)

    def remediate(blocked: str) -> "subprocess.CompletedProcess[str]":
        code = (f"import sys\nif {blocked!r}:\n    sys.modules[{blocked!r}] = None\nfrom kensa.cli.main import main\n"
                f"sys.exit(main(['--journal', {str(tmp_path / 'journal.db')!r}, '--no-audit', 'remediate', "
                f"{str(rules)!r}, '--root', {str(root)!r}]))")
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                              env=dict(os.environ, PYTHONPATH=str(SRC)))

    done = remediate(missing)
    assert done.returncode != 0, done.stdout + done.stderr
    assert snapshot_tree(root) == before, done.stdout + done.stderr
    # The same command with nothing missing does change the root: the rule is a real remediation.
    done = remediate("")
    assert done.returncode == 0, done.stdout + done.stderr
    assert (root / "etc" / "motd").read_text() == "hello\n"


def test_the_packages_that_import_names_on_first_use_reach_a_target_empty() -> None:
    """``kensa``, ``kensa.hosts`` and ``kensa.audit`` find their names with a module ``__getattr__``, which
    a Python 3.6 target does not call: the agent's payload must send them empty, never their source."""
    from kensa.hosts.payload import build_payload

    modules = build_payload().modules
    for package in ("kensa", "kensa.hosts", "kensa.audit"):
        assert modules.get(package, (True, ""))[1] == "", package


def test_a_remote_remediation_without_its_transport_fails_before_connecting(tmp_path: Path) -> None:
    """``kensa remediate -H`` with the SSH transport's module missing says so (exit 2, naming the module)
    before it tries any host: the transport is imported when the engine is built, not at the first
    connection."""
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "motd.yml").write_text(_MOTD_RULE)
    code = ("import sys\nsys.modules['kensa.hosts.remote'] = None\nfrom kensa.cli.main import main\n"
            f"sys.exit(main(['--journal', {str(tmp_path / 'journal.db')!r}, '--no-audit', 'remediate', {str(rules)!r}, "
            "'-H', 'root@127.0.0.1:1', '--connect-timeout', '5']))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(SRC)))
    assert done.returncode == 2, done.stdout + done.stderr
    assert "kensa.hosts.remote" in done.stderr and "reinstall kensa" in done.stderr


def test_the_agent_s_start_imports_no_standard_module_only_a_later_request_needs() -> None:
    """The agent's own modules (what it imports before its first request) leave out the standard
    modules it needs only later, if at all: pathlib (with urllib.parse and ipaddress), subprocess,
    tempfile (with shutil and random), uuid. Each is CPU every agent's start paid on every host."""
    probe = ("import sys, json\nimport kensa.hosts.agent.server, kensa.hosts.agent.compat, kensa.hosts.agent.bootstrap\n"
             "print(json.dumps(sorted(m for m in ('pathlib', 'urllib.parse', 'ipaddress', 'subprocess', 'tempfile',"
             " 'shutil', 'random', 'uuid') if m in sys.modules)))")
    # As the agent runs: isolated, without site-packages.
    done = subprocess.run([sys.executable, "-I", "-S", "-c", f"import sys; sys.path.insert(0, {str(SRC)!r})\n{probe}"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == []
