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
before the package is importable, and call :func:`build`.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import tempfile

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

# gcc's diagnostics can be long; a BuildError keeps the end, where the errors are.
MAX_STDERR_CHARS = 4000


class BuildError(Exception):
    """The demo program could not be built: gcc is missing or failed. The message says which."""


def build(out_path: pathlib.Path, *, cc: str = "gcc") -> None:
    """Compile demo.c into out_path (pycriu_restore/demo/demo-program), mode 0755.

    out_path is replaced only when gcc succeeds (written to a temporary file, then renamed).
    Needs gcc and the kernel's uapi headers (linux-libc-dev). Raises BuildError.
    """
    compiler = shutil.which(cc)
    if compiler is None:
        raise BuildError(f"{cc} not found: install it (apt-get install gcc) to build the demo program")
    out_path = pathlib.Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=out_path.name + ".", suffix=".tmp", dir=out_path.parent)
    os.close(fd)
    tmp_path = pathlib.Path(tmp_name)
    cmd = [compiler, *COMPILE_FLAGS, f"-I{BLOB_SOURCE_DIR}", "-o", str(tmp_path), str(SOURCE), *LINK_FLAGS]
    try:
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        except OSError as err:
            raise BuildError(f"cannot run {compiler}: {err}") from err
        if proc.returncode != 0:
            tail = proc.stderr.strip()
            if len(tail) > MAX_STDERR_CHARS:
                tail = "..." + tail[-MAX_STDERR_CHARS:]
            raise BuildError(f"{compiler} failed on {SOURCE.name} with exit status {proc.returncode}:\n{tail}")
        tmp_path.chmod(0o755)  # mkstemp made it 0600; it is a program every user may run
        os.replace(tmp_path, out_path)
    finally:
        tmp_path.unlink(missing_ok=True)


if __name__ == "__main__":
    import sys

    target = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else (
        SOURCE_DIR.parent / "pycriu_restore" / "demo" / "demo-program")
    try:
        build(target)
    except BuildError as err:
        sys.exit(f"build.py: {err}")
    print(f"build.py: wrote {target}")
