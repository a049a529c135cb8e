"""How setup.py builds the optional C extension kensa._audit (see docs/packaging.md).

KENSA_BUILD_EXTENSION:
  auto (default)   compile it; if that fails, install pure Python and warn loudly
  required or 1    fail the build when it cannot be compiled (wheel builds use this)
  never or 0       do not compile it: a pure-Python py3-none-any install
"""

import os
import sys
import sysconfig

from setuptools.command.build_ext import build_ext
from setuptools.errors import CCompilerError, ExecError, PlatformError

MODES = {"": "auto", "auto": "auto", "required": "required", "1": "required", "never": "never", "0": "never"}
RAW_MODE = os.environ.get("KENSA_BUILD_EXTENSION", "auto")
MODE = MODES.get(RAW_MODE.strip().lower())
if MODE is None:
    sys.exit(f"KENSA_BUILD_EXTENSION={RAW_MODE!r} is not one of auto, required (1) or never (0)")

FIX = "install a C compiler and the Python headers (RHEL: gcc python3-devel; Ubuntu: gcc python3-dev)"
RULE = "*" * 78
BANNER = f"""
{RULE}
kensa: building WITHOUT the C extension kensa._audit: {{why}}
kensa installs as pure Python and writes no audit records;
kensa.audit.status() reports reason "no_extension".
To emit audit records, {FIX},
then reinstall with `pip install --no-cache-dir --force-reinstall kensa`
(pip caches the wheel it built), or install a kensa wheel.
KENSA_BUILD_EXTENSION=required turns this warning into a build error.
{RULE}
"""


def fall_back(why: str) -> None:
    if MODE == "required":
        # SystemExit, as distutils itself reports errors, so no handler here rewraps it.
        raise SystemExit(f"error: kensa._audit could not be built ({why}) and KENSA_BUILD_EXTENSION=required: "
                         f"{FIX}, or unset KENSA_BUILD_EXTENSION to install kensa without audit emission")
    sys.stderr.write(BANNER.format(why=why))


class OptionalBuildExt(build_ext):
    """Builds kensa._audit; in auto mode a failure leaves a working pure-Python install."""

    def run(self) -> None:
        try:
            super().run()
        except PlatformError as exc:  # no usable compiler at all
            fall_back(str(exc))

    def build_extension(self, ext) -> None:
        try:
            super().build_extension(ext)
        except (CCompilerError, ExecError, PlatformError, OSError) as exc:
            fall_back(str(exc))
            # An editable install then skips copying the missing module into src/.
            ext.optional = True


def extension_options() -> dict:
    """The setup() arguments that build kensa._audit, or none (KENSA_BUILD_EXTENSION=never)."""
    if MODE == "never":
        return {}
    try:
        import cffi  # noqa: F401  (setup() needs it to understand cffi_modules)
    except ImportError as exc:
        fall_back(f"cffi is not installed in the build environment: {exc}")
        return {}
    # cffi compiles against the stable ABI except on free-threaded CPython, so
    # the wheel is tagged cp39-abi3 exactly when the module is an abi3 one.
    abi3 = not sysconfig.get_config_var("Py_GIL_DISABLED")
    return {
        "cffi_modules": ["csrc/build_ffi.py:ffibuilder"],
        "cmdclass": {"build_ext": OptionalBuildExt},
        "options": {"bdist_wheel": {"py_limited_api": "cp39"}} if abi3 else {},
    }

