"""x86_64 system call numbers that pycrestore uses, and names for the rest.

Numbers come from <asm/unistd_64.h> (``__NR_mmap`` is ``NR_MMAP`` here); a test compiles C
and compares each one. They are needed where the stdlib cannot make the call for us:
``syscall()`` through ctypes (clone3) and syscalls injected into a tracee.

For messages, :func:`syscall_name` names these numbers itself and any other with
python-ptrace's x86_64 table, which covers every number, so that ``InjectedSyscallFailed``
can say ``mmap`` instead of ``syscall 9``.
"""

from __future__ import annotations

# <asm/unistd_64.h>
NR_READ = 0
NR_WRITE = 1
NR_CLOSE = 3
NR_MMAP = 9
NR_MPROTECT = 10
NR_MUNMAP = 11
NR_RT_SIGRETURN = 15
NR_MREMAP = 25
NR_GETPID = 39
NR_EXIT = 60
NR_PRCTL = 157
NR_ARCH_PRCTL = 158
NR_GETTID = 186
NR_RESTART_SYSCALL = 219
NR_CLOCK_NANOSLEEP = 230
NR_EXIT_GROUP = 231
NR_OPENAT = 257
NR_PREADV = 295
NR_PROCESS_VM_READV = 310
NR_PROCESS_VM_WRITEV = 311
NR_RSEQ = 334
NR_PIDFD_OPEN = 434
NR_CLONE3 = 435
NR_PIDFD_GETFD = 438


# The names of the numbers above (NR_MMAP -> "mmap"): every syscall pycrestore injects or
# waits for is named without importing python-ptrace's table, which takes ~6 ms, and the
# tracer names a syscall for its messages on every injection.
_OWN_NAMES = {value: name[len("NR_"):].lower() for name, value in list(globals().items()) if name.startswith("NR_")}


def syscall_name(nr: int) -> str:
    """Return the x86_64 name of syscall ``nr`` (``"mmap"``), or ``"syscall 999"``."""
    if nr in _OWN_NAMES:
        return _OWN_NAMES[nr]
    from ptrace.syscall.linux.x86_64 import SYSCALL_NAMES

    return SYSCALL_NAMES.get(nr, f"syscall {nr}")
