"""cffi build script for kensa._audit (API mode, out-of-line).

The cdef is csrc/kensa_audit.h itself with its preprocessor lines removed, so
the C surface is written once, followed by csrc/kernel_cdef.h, which names the
fields of the kernel's struct audit_status and its constants with ``...`` so
that their layout and values come from <linux/audit.h> at build time.
"""

import os

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))


def read_cdef(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return "".join(line for line in f if not line.lstrip().startswith("#"))


ffibuilder = FFI()
ffibuilder.cdef(read_cdef(os.path.join(HERE, "kensa_audit.h")))
with open(os.path.join(HERE, "kernel_cdef.h"), encoding="utf-8") as f:
    ffibuilder.cdef(f.read())
ffibuilder.set_source(
    "kensa._audit",
    '#include <sys/socket.h>\n#include <linux/netlink.h>\n#include <linux/audit.h>\n#include "kensa_audit.h"',
    sources=[os.path.relpath(os.path.join(HERE, "kensa_audit.c"))],
    include_dirs=[os.path.relpath(HERE)],
    # Never libaudit: kensa_audit.c dlopens libaudit.so.1 at run time, so a
    # wheel needs no libaudit to build and works on hosts without it.
    libraries=["dl", "pthread"],
    extra_compile_args=["-Wall", "-Wextra", "-std=gnu99"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
