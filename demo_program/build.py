"""Build the demo program: demo_program/demo.c -> one static, freestanding x86-64 ELF.

The program that ``pycrestore demo`` checkpoints and restores (demo.c says what it does).
It is built like the restorer blob (restorer_blob/build.py) - no libc, raw ``syscall``
instructions from the blob's ``syscall.h`` - but as an ordinary executable:

    -static -no-pie -fno-pie            one fixed-address ELF: no interpreter, no libc, so
                                        the checkpoint holds only its own mappings, the
                                        stack and the vdso
    -ffreestanding -nostdlib -fno-builtin   no libc, no startup files (_start is in demo.c)
    -mgeneral-regs-only                 the compiler never touches the SSE registers, so
                                        xmm15 keeps the value demo.c checks
    -fno-stack-protector -fcf-protection=none -fno-asynchronous-unwind-tables
                                        no TLS canary (fs is never set up), no endbr64,
                                        no .eh_frame
    -Wl,--build-id=sha1                 a GNU build-id note: CRIU records it in files.img
                                        and checks it on restore, so the demo shows it

Standalone (stdlib only): setup.py and tools/build_inplace.py load this file by path,
before the package is importable, and call :func:`build`. It runs gcc through the blob's
build script (loaded by path too), so both builds fail and report alike.
"""

from __future__ import annotations

import importlib.util
import pathlib

SOURCE_DIR = pathlib.Path(__file__).resolve().parent
SOURCE = SOURCE_DIR / "demo.c"
# syscall.h: the blob's raw-syscall helpers, shared rather than copied.
BLOB_SOURCE_DIR = SOURCE_DIR.parent / "restorer_blob"

COMPILE_FLAGS = (
    "-O2",
    "-static",
    "-no-pie",
    "-fno-pie",
    "-ffreestanding",
    "-nostdlib",
    "-fno-builtin",
    "-fno-stack-protector",
    "-fcf-protection=none",
    "-fno-asynchronous-unwind-tables",
    "-fno-tree-loop-distribute-patterns",
    "-mgeneral-regs-only",
    "-Wall",
    "-Wextra",
)
LINK_FLAGS = (
    "-Wl,--build-id=sha1",
    "-Wl,-z,noexecstack",
)



def _blob_build():
    """restorer_blob/build.py, loaded by path (this script runs before the package exists)."""
    spec = importlib.util.spec_from_file_location("restorer_blob_build", BLOB_SOURCE_DIR / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_BLOB_BUILD = _blob_build()
BuildError = _BLOB_BUILD.BuildError


def build(out_path: pathlib.Path, *, cc: str = "gcc") -> None:
    """Compile demo.c into out_path (pycriu_restore/demo/demo-program), mode 0755.

    out_path is replaced only when gcc succeeds. Needs gcc and the kernel's uapi headers
    (linux-libc-dev). Raises BuildError.
    """
    _BLOB_BUILD.compile_to(pathlib.Path(out_path),
                           [*COMPILE_FLAGS, f"-I{BLOB_SOURCE_DIR}", str(SOURCE), *LINK_FLAGS],
                           cc=cc, mode=0o755, what="the demo program")


if __name__ == "__main__":
    import sys

    target = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else (
        SOURCE_DIR.parent / "pycriu_restore" / "demo" / "demo-program")
    try:
        build(target)
    except BuildError as err:
        sys.exit(f"build.py: {err}")
    print(f"build.py: wrote {target}")
