"""A local apt repository of tiny Debian packages built in the test, on this live machine.

:class:`DebRepo` builds each package with ``dpkg-deb --build`` (a DEBIAN/control
and one config file under /etc, declared a conffile), indexes a chosen set of
them with ``dpkg-scanpackages`` into a flat ``file:`` repository, and adds it to
apt as one ``[trusted=yes]`` file under /etc/apt/sources.list.d. ``apt-get
update`` is limited to that file, so no test reaches the network, and leaves
the other lists alone. On exit every test package is purged, the sources file
and its lists are removed, and apt's cache is rebuilt from the machine's own
sources.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

PREFIX = "kensa-test-"
APT_LISTS = Path("/var/lib/apt/lists")


def missing_components() -> Optional[str]:
    """Why the repository cannot be built here, or None."""
    for tool in ("dpkg-deb", "dpkg-scanpackages", "apt-get", "apt-cache", "dpkg"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install dpkg-dev apt)"
    return None


def run(*argv: str) -> str:
    done = subprocess.run(list(argv), capture_output=True, text=True, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
                                                                         "DEBIAN_FRONTEND": "noninteractive"})
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def dpkg_list() -> List[str]:
    """``dpkg -l`` as an operator reads it: every package's state, name, version, arch and description."""
    return run("dpkg-query", "-l").splitlines()


def installed_test_packages() -> Dict[str, Tuple[str, str]]:
    """Test packages dpkg knows -> (status abbreviation, version)."""
    out = run("dpkg-query", "-W", "-f", "${db:Status-Abbrev}\t${Package}\t${Version}\n")
    found = {}
    for line in out.splitlines():
        abbrev, name, version = line.split("\t")
        if name.startswith(PREFIX) and abbrev.strip() not in ("un", "pn"):
            found[name] = (abbrev.strip(), version)
    return found


def auto_marks() -> List[str]:
    return run("apt-mark", "showauto").split()


class DebRepo:
    """Packages ``kensa-test-<name>`` in versions, served as a local apt repository."""

    def __init__(self, base: Path) -> None:
        self.base = base
        # apt reads the repository as its sandbox user, who cannot enter pytest's private
        # temporary directories.
        self.repo = Path(tempfile.mkdtemp(prefix="kensa-test-repo-"))
        self.repo.chmod(0o755)
        self.debs: Dict[Tuple[str, str], Path] = {}
        # A run killed before its clean-up left its source behind: its packages would be offered still.
        for stale in Path("/etc/apt/sources.list.d").glob("kensa-test-*.list"):
            stale.unlink()
        for stale in APT_LISTS.glob("_tmp_kensa-test-repo-*"):
            stale.unlink()
        self.sources = Path("/etc/apt/sources.list.d") / f"kensa-test-{uuid.uuid4().hex[:8]}.list"

    def build(self, name: str, version: str, depends: str = "", recommends: str = "") -> str:
        """Build package ``kensa-test-<name>`` at ``version`` (depending on and recommending
        other test packages); return its full name."""
        package = PREFIX + name
        tree = self.base / "build" / f"{package}-{version}"
        (tree / "DEBIAN").mkdir(parents=True)
        (tree / "etc").mkdir()
        control = (f"Package: {package}\nVersion: {version}\nArchitecture: all\n"
                   f"Maintainer: kensa tests <tests@example.invalid>\nDescription: kensa test package {name}\n")
        if depends:
            control += f"Depends: {PREFIX}{depends}\n"
        if recommends:
            control += f"Recommends: {PREFIX}{recommends}\n"
        (tree / "DEBIAN" / "control").write_text(control)
        (tree / "DEBIAN" / "conffiles").write_text(f"/etc/{package}.conf\n")
        (tree / "etc" / f"{package}.conf").write_text(f"version={version}\n")
        deb = self.base / "debs" / f"{package}_{version}_all.deb"
        deb.parent.mkdir(exist_ok=True)
        run("dpkg-deb", "--root-owner-group", "--build", str(tree), str(deb))
        self.debs[(package, version)] = deb
        return package

    def publish(self, only: Optional[Iterable[Tuple[str, str]]] = None) -> None:
        """Serve the built packages (or ``only`` those (package, version)) and update apt's lists of it."""
        for old in self.repo.glob("*.deb"):
            old.unlink()
        for key in (self.debs if only is None else only):
            shutil.copy(self.debs[key], self.repo / self.debs[key].name)
        index = subprocess.run(["dpkg-scanpackages", "-m", "."], cwd=self.repo, capture_output=True, text=True, check=True)
        (self.repo / "Packages").write_text(index.stdout)
        self.sources.write_text(f"deb [trusted=yes] file:{self.repo} ./\n")
        # apt takes a file: index of an unchanged modification time for the one it has: fetch afresh.
        self._forget_lists()
        run("apt-get", "update", "-q", "-o", f"Dir::Etc::sourcelist={self.sources}", "-o", "Dir::Etc::sourceparts=-",
            "-o", "APT::Get::List-Cleanup=0")

    def _forget_lists(self) -> None:
        mangled = str(self.repo).strip("/").replace("/", "_")
        for path in APT_LISTS.glob(f"_{mangled}_*"):
            path.unlink()

    def purge_all(self) -> None:
        names = sorted(installed_test_packages())
        if names:
            run("dpkg", "--purge", *names)

    def close(self) -> None:
        self.purge_all()
        self.sources.unlink(missing_ok=True)
        self._forget_lists()
        # apt rebuilds its caches from the sources that remain.
        for cache in Path("/var/cache/apt").glob("*.bin"):
            cache.unlink()
        shutil.rmtree(self.repo)
