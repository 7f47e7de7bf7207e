"""Thin ctypes wrappers for the Linux calls Python's stdlib lacks, one concept per module.

==============  =================================================================
libc.py         the C library through ctypes, ``struct iovec``
errors.py       this layer's error family (``TaskGone``, ``PidInUse`` ...)
syscalls.py     x86_64 syscall numbers (<asm/unistd_64.h>) and names
clone3.py       fork with exact pids (``set_tid``)
namespaces.py   ``unshare``, ``setns``, ``CLONE_NEW*``, time-namespace offsets
ptrace.py       ptrace requests (SEIZE, INTERRUPT, GETREGSET, rseq config ...)
regs.py         ``struct user_regs_struct`` (x86_64)
xstate.py       the NT_X86_XSTATE (XSAVE) area's layout
waitstatus.py   waitpid for one tracee, and the kinds of ptrace stops
memory.py       ``process_vm_readv/writev`` and ``/proc/PID/mem``
procmaps.py     ``/proc/PID/maps`` parsing
==============  =================================================================

Nothing here knows about checkpoint images; ``pycriu_restore.tracee`` builds on it.
"""
