"""Build the restorer blob: restorer_blob/*.c and *.S -> one position-independent ELF.

The blob is freestanding C (no libc, raw ``syscall`` instructions) that a restored task
runs last; ``pycriu_restore/blob/loader.py`` reads the ELF this script writes. The flags
below make an image that can run at any address after R_X86_64_RELATIVE relocations only:

    -fpie -fvisibility=hidden           position independent, every reference PC-relative
                                        (no GOT, no symbol relocations)
    -ffreestanding -nostdlib -fno-builtin   no libc, no startup files
    -fno-stack-protector                no TLS canary: the blob has no TLS (fs may be anything)
    -fcf-protection=none                no endbr64: the tracer jumps to any entry directly
    -fno-asynchronous-unwind-tables     no .eh_frame: nothing unwinds
    -fno-tree-loop-distribute-patterns  string.c's loops must not become calls to themselves
    -mgeneral-regs-only                 the blob must not touch the FPU/SSE state, which the
                                        final rt_sigreturn restores from the sigframe
    -pie --no-dynamic-linker -T blob.lds   one RWX PT_LOAD at vaddr 0 (blob.lds says why)
    -z defs                             an undefined symbol (say, a libc call) fails the link

These are the flags of research/feasibility-spike.md section 2, where such a blob restored a
process end to end on this kernel.

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
LINKER_SCRIPT = SOURCE_DIR / "blob.lds"

COMPILE_FLAGS = (
    "-O2",
    "-fpie",
    "-ffreestanding",
    "-nostdlib",
    "-fno-stack-protector",
    "-fcf-protection=none",
    "-fno-asynchronous-unwind-tables",
    "-fvisibility=hidden",
    "-fno-tree-loop-distribute-patterns",
    "-fno-builtin",
    "-mgeneral-regs-only",
    "-Wall",
    "-Wextra",
)
LINK_FLAGS = (
    "-Wl,-pie",
    "-Wl,--no-dynamic-linker",
    "-Wl,-z,norelro",
    "-Wl,-z,defs",
    "-Wl,-z,noexecstack",
    "-Wl,--build-id=none",  # a build-id note would be discarded by blob.lds, with a warning
    "-Wl,--no-warn-rwx-segments",  # binutils >= 2.39: the one segment is RWX on purpose
)

# gcc's diagnostics can be long; a BuildError keeps the end, where the errors are.
MAX_STDERR_CHARS = 4000


class BuildError(Exception):
    """The blob could not be built: gcc is missing or failed. The message says which and why."""


def sources() -> list[pathlib.Path]:
    """The blob's translation units, in a stable order (entry.S first: its code comes first)."""
    return sorted(SOURCE_DIR.glob("*.S")) + sorted(SOURCE_DIR.glob("*.c"))


def compile_to(out_path: pathlib.Path, args: list[str], *, cc: str = "gcc", mode: int = 0o644,
               what: str = "the restorer blob") -> None:
    """Run ``cc ARGS -o TMP`` and move TMP to out_path, with ``mode``, only if cc succeeds.

    The temporary file sits beside out_path and is renamed over it, so a failed build never
    leaves a truncated output behind. Also used by demo_program/build.py. Raises BuildError
    (naming ``what``) if cc is not on PATH or exits non-zero.
    """
    compiler = shutil.which(cc)
    if compiler is None:
        raise BuildError(f"{cc} not found: install it (apt-get install gcc) to build {what}")
    out_path = pathlib.Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=out_path.name + ".", suffix=".tmp", dir=out_path.parent)
    os.close(fd)
    tmp_path = pathlib.Path(tmp_name)
    try:
        try:
            proc = subprocess.run([compiler, *args, "-o", str(tmp_path)], capture_output=True,
                                  text=True, check=False)
        except OSError as err:
            raise BuildError(f"cannot run {compiler}: {err}") from err
        if proc.returncode != 0:
            raise BuildError(_describe_failure(compiler, proc.returncode, proc.stderr))
        tmp_path.chmod(mode)   # mkstemp made it 0600; the installed file is for every user
        os.replace(tmp_path, out_path)
    finally:
        tmp_path.unlink(missing_ok=True)


def link(srcs: list[pathlib.Path], out_path: pathlib.Path, *, cc: str = "gcc",
         extra_flags: tuple[str, ...] = ()) -> None:
    """Compile and link srcs with the blob's flags and linker script into out_path.

    Also used by the tests to make small ELFs the loader must accept or refuse;
    extra_flags come last, so they can override the defaults. Raises BuildError.
    """
    compile_to(pathlib.Path(out_path), [*COMPILE_FLAGS, f"-I{SOURCE_DIR}", *map(str, srcs),
                                        *LINK_FLAGS, f"-Wl,-T,{LINKER_SCRIPT}", *extra_flags], cc=cc)


def build(out_path: pathlib.Path, *, cc: str = "gcc") -> None:
    """Build the restorer blob from restorer_blob/ into out_path (pycriu_restore/blob/restorer.elf).

    Needs gcc and the kernel's uapi headers (linux-libc-dev, for syscall numbers).
    Raises BuildError, with gcc's messages, if the build fails.
    """
    srcs = sources()
    if not srcs:
        raise BuildError(f"{SOURCE_DIR}: no .c or .S sources for the restorer blob")
    link(srcs, pathlib.Path(out_path), cc=cc)


def _describe_failure(compiler: str, returncode: int, stderr: str) -> str:
    """One message for a failed gcc run: the exit status, a hint when one is known, and stderr."""
    hint = ""
    if "No such file" in stderr and ("asm/" in stderr or "linux/" in stderr):
        hint = " (the kernel headers are missing: apt-get install linux-libc-dev)"
    tail = stderr.strip()
    if len(tail) > MAX_STDERR_CHARS:
        tail = "..." + tail[-MAX_STDERR_CHARS:]
    return f"{compiler} failed with exit status {returncode}{hint}:\n{tail}"


if __name__ == "__main__":
    import sys

    target = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else (
        SOURCE_DIR.parent / "pycriu_restore" / "blob" / "restorer.elf")
    try:
        build(target)
    except BuildError as err:
        sys.exit(f"build.py: {err}")
    print(f"build.py: wrote {target}")
