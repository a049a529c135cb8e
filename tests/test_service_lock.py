"""The service actions a run asks for at its end (``notify``) run inside the target's locks.

A restart or reload queued by a host's transactions is carried out after them; if it ran
under no lock, a kensa run on the target or a second controller could change the files the
service is being restarted to read. Here the service manager is real enough to be asked:
inside a private mount namespace /run/systemd/system exists (kensa's sign that systemd runs)
and ``systemctl`` on PATH is a probe, a separate process that tries every target lock file
kensa keeps and writes down which ones it found held, then exits 0 (the restart "worked").
/run/kensa is a fresh tmpfs there too, so the target-side locks are private to the test.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict

import pytest

from conftest import require_real, require_root

# The systemctl kensa runs: tries each lock file of the directories given, logs which were held.
PROBE = r"""
import fcntl, glob, json, os, sys
log, directories = sys.argv[1], sys.argv[2:]
found = {}
for directory in directories:
    held = False
    for path in glob.glob(os.path.join(directory, "*.lock")):
        fd = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            held = True
        finally:
            os.close(fd)
    found[directory] = held
with open(log, "a") as out:
    out.write(json.dumps(found) + "\n")
"""

IN_NAMESPACE = r"""
import json, os, sys
from pathlib import Path
sys.path[:0] = sys.argv[2].split(os.pathsep)
from agent_targets import PYTHON_DIR, transport
from kensa.engine import Engine
from kensa.handlers import default_registry
from kensa.hosts.local import resolve_host
from kensa.hosts.remote import RemoteHosts
from kensa.hosts.targetlock import SYSTEM_LOCK_DIRECTORY, TargetLocks
from kensa.model import ServiceAction, ServiceVerb, Step, Transaction

top = Path(sys.argv[1])
probe_bin = top / "bin"
probe_bin.mkdir()
notify = ServiceAction(ServiceVerb.RESTART, "kensa-test-unit", at_end=True)
found = {}
remote = RemoteHosts(lambda target: transport(target.host, path=f"{probe_bin}:{PYTHON_DIR}:/usr/bin:/bin"))
for name, hosts, key in (("local", resolve_host, "localhost"), ("remote", remote, "ssh://root@target/")):
    controller = top / (name + "-locks")
    log = top / (name + ".probe")
    watched = [str(controller)] + ([str(SYSTEM_LOCK_DIRECTORY)] if name == "remote" else [])
    (probe_bin / "systemctl").write_text(
        "#!/bin/sh\nexec %s -c '%s' %s %s\n" % (sys.executable, sys.argv[3], log, " ".join(watched)))
    (probe_bin / "systemctl").chmod(0o755)
    os.environ["PATH"] = f"{probe_bin}:{os.environ['PATH']}"
    engine = Engine(default_registry(), hosts=hosts, target_lock=TargetLocks(controller, timeout=10))
    path = top / (name + ".conf")
    result = engine.run(Transaction(name, (Step("file_content", {"path": str(path), "content": "x\n"}),), host=key,
                                    services=(notify,)))
    notified = [[host, o.status.value, o.detail] for host, o in engine.notify_pending()]
    found[name] = {"status": result.status.value, "notified": notified,
                   "probes": [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []}
remote.close()
print(json.dumps(found))
"""


@pytest.fixture(scope="module")
def probed(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Any]:
    """IN_NAMESPACE's findings: for a local and a remote host, each notify's outcome and what the probe saw."""
    require_root()
    if shutil.which("unshare") is None:
        require_real("unshare is not installed")
    if os.path.isdir("/run/systemd/system"):
        pytest.skip("systemd runs this machine: the probe would stand in for the real service manager")
    top = tmp_path_factory.mktemp("service-lock")
    tests = str(Path(__file__).resolve().parent)
    path = os.pathsep.join([tests, *(p for p in sys.path if p)])
    script = ("mkdir -p /run/systemd /run/kensa && mount -t tmpfs kensa-test /run/systemd && mkdir /run/systemd/system && "
              'mount -t tmpfs kensa-test /run/kensa && exec "$PYTHON" -c "$SCRIPT" "$TOP" "$TESTPATH" "$PROBE"')
    env = dict(os.environ, SCRIPT=IN_NAMESPACE, PROBE=PROBE, TOP=str(top), TESTPATH=path, PYTHON=sys.executable,
               PYTHONPATH=path)
    done = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    found: Dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return found


@pytest.mark.parametrize("name", ["local", "remote"])
def test_a_restart_at_the_end_of_a_run_runs_while_the_target_is_locked(probed: Dict[str, Any], name: str) -> None:
    """A committed transaction's notify restart is carried out by notify_pending with the controller's
    lock of the target held (and, for a remote host, the target's own lock, on the target): another
    process trying them while systemctl runs finds every one held."""
    found = probed[name]
    assert found["status"] == "committed"
    (_, status, detail), = found["notified"]
    assert (status, detail) == ("done", "systemctl restart -- kensa-test-unit")
    (seen,) = found["probes"]
    assert seen and all(seen.values()), seen
