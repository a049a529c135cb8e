"""package_present and package_absent through dnf and rpm, on this machine made to look RHEL-family.

A Debian machine with dnf and rpm installed (apt-get install dnf createrepo-c rpm)
runs the handlers in a private mount namespace (``unshare -m``) in which dpkg's
database is hidden and rpm's database, dnf's state and repositories, and /opt
(where the test package puts its one file) are fresh tmpfs mounts: the target is
live ("/") and has an rpm database and no dpkg one, so ``package_*`` picks dnf.
The test rpms (1.0 and 1.1 of one package) are built with rpmbuild and served
as a ``file://`` repository made with createrepo_c. Everything the namespace
mounts goes when its process ends; nothing of this machine's packages changes.
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

from conftest import require_real

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = "kensa-test-rpm"

# Installs and removes packages, as the dpkg tests do: never beside them.
pytestmark = pytest.mark.xdist_group("dpkg")

SPEC = """\
Name: {name}
Version: {version}
Release: 1
Summary: kensa test package
License: MIT
BuildArch: noarch
%description
A package the kensa tests build.
%install
mkdir -p %{{buildroot}}/opt/kensa-test
echo {version} > %{{buildroot}}/opt/kensa-test/version
%files
/opt/kensa-test/version
"""

NAMESPACE = """\
set -e
for d in /var/lib/dpkg /var/lib/rpm /var/lib/dnf /var/cache/dnf /etc/dnf /opt /var/log; do
    mount -t tmpfs tmpfs "$d"
done
[ -d /etc/yum.repos.d ] && mount -t tmpfs tmpfs /etc/yum.repos.d
mkdir -p /etc/dnf/vars
echo 9 > /etc/dnf/vars/releasever
printf '[main]\\ngpgcheck=0\\nclean_requirements_on_remove=True\\nreposdir={repos}\\n' > /etc/dnf/dnf.conf
rpm --initdb
exec "$@"
"""

SCENARIO = """\
import json, os, subprocess, sys
from kensa.handlers import default_registry
from kensa.hosts.local import LocalHost

repo, name = sys.argv[1], sys.argv[2]
registry, host, params = default_registry(), LocalHost("/"), {"name": name}

def rpm_qa():
    done = subprocess.run(["rpm", "--dbpath", "/var/lib/rpm", "-qa"], stdout=subprocess.PIPE, universal_newlines=True)
    return sorted(done.stdout.split())

def dnf(*argv):
    subprocess.run(["dnf", "-y", *argv], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

out = {"before": rpm_qa()}
present, absent = registry["package_present"], registry["package_absent"]
out["compliant_before"] = present.validate(host, params)
pre = present.capture(host, params)
out["manager"] = [pre.data["manager"], pre.data["tool"]]
step = present.apply(host, params, pre)
out["install"] = [step.ok, step.detail, present.validate(host, params), rpm_qa()]
back = present.rollback(host, pre)
out["install_rolled_back"] = [back.ok, back.detail, rpm_qa(), os.path.exists("/opt/kensa-test/version")]

dnf("install", name + "-1.0-1.noarch")
out["old_installed"] = rpm_qa()
pre = absent.capture(host, params)
step = absent.apply(host, params, pre)
out["remove"] = [step.ok, step.detail, absent.validate(host, params), rpm_qa()]
back = absent.rollback(host, pre)
out["remove_rolled_back"] = [back.ok, back.detail, rpm_qa()]

pre = absent.capture(host, params)
absent.apply(host, params, pre)
os.unlink(os.path.join(repo, name + "-1.0-1.noarch.rpm"))
subprocess.run(["createrepo_c", "-q", "--update", repo], check=True)
dnf("clean", "all")
back = absent.rollback(host, pre)
out["lost_version"] = [back.ok, back.detail, rpm_qa()]
print(json.dumps(out))
"""


def missing() -> str:
    for tool in ("dnf", "rpm", "rpmbuild", "createrepo_c", "unshare"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install dnf rpm createrepo-c util-linux)"
    return ""


@pytest.fixture
def scenario(tmp_path: Path) -> Dict[str, Any]:
    """Build the rpms and the repository, run :data:`SCENARIO` in the namespace, return what it saw."""
    if os.geteuid() != 0:
        require_real("the dnf tests mount in a private namespace and need root")
    why = missing()
    if why:
        require_real(why)
    top, repo, repos = tmp_path / "rpmbuild", tmp_path / "repo", tmp_path / "repos"
    repo.mkdir()
    repos.mkdir()
    for version in ("1.0", "1.1"):
        spec = tmp_path / f"{version}.spec"
        spec.write_text(SPEC.format(name=PACKAGE, version=version))
        subprocess.run(["rpmbuild", "--define", f"_topdir {top}", "-bb", str(spec)], check=True, capture_output=True)
    for rpm in (top / "RPMS" / "noarch").glob("*.rpm"):
        shutil.copy(rpm, repo)
    subprocess.run(["createrepo_c", "-q", str(repo)], check=True)
    (repos / "kensa-test.repo").write_text(
        f"[kensa-test]\nname=kensa test\nbaseurl=file://{repo}\ngpgcheck=0\nmetadata_expire=0\n")
    # rpm on Debian keeps its database under ~/.rpmdb: point it at the namespace's /var/lib/rpm.
    home = tmp_path / "home"
    home.mkdir()
    (home / ".rpmdb").symlink_to("/var/lib/rpm")
    script = tmp_path / "namespace.sh"
    script.write_text(NAMESPACE.format(repos=repos))
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(home), "PYTHONPATH": str(SRC)}
    done = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", str(script),
                           sys.executable, "-c", SCENARIO, str(repo), PACKAGE],
                          capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    result: Dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return result


def test_dnf_install_remove_and_rollback_on_an_rpm_family_host(scenario: Dict[str, Any]) -> None:
    """On a live host with an rpm database and no dpkg one, package_present uses dnf; its rollback
    removes the package (rpm -qa as before, its file gone); package_absent of 1.0 (1.1 is the
    newest) is rolled back by reinstalling exactly 1.0; when the repository no longer has 1.0, the
    rollback fails naming the package and version and quoting dnf."""
    assert scenario["before"] == [] and scenario["compliant_before"] is False
    assert scenario["manager"] == ["dnf", "dnf"]
    ok, detail, holds, installed = scenario["install"]
    assert ok and holds, detail
    assert installed == [f"{PACKAGE}-1.1-1.noarch"]
    ok, detail, after, file_left = scenario["install_rolled_back"]
    assert ok and "best-effort" in detail, detail
    assert after == scenario["before"] and file_left is False

    assert scenario["old_installed"] == [f"{PACKAGE}-1.0-1.noarch"]
    ok, detail, holds, after = scenario["remove"]
    assert ok and holds and after == [], detail
    ok, detail, after = scenario["remove_rolled_back"]
    assert ok, detail
    assert after == [f"{PACKAGE}-1.0-1.noarch"]

    ok, detail, after = scenario["lost_version"]
    assert not ok and after == []
    assert f"{PACKAGE} 0:1.0-1.noarch cannot be reinstalled" in detail, detail
