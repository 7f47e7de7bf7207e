"""ptrace(2) requests, one function each, over libc's ``ptrace()`` through ctypes.

Why our own call path and not python-ptrace's ``ptrace.binding`` functions: python-ptrace
has no PTRACE_SEIZE, INTERRUPT or LISTEN, no GETREGSET for NT_X86_XSTATE, no GETSIGMASK /
SETSIGMASK, GET_SYSCALL_INFO or GET_RSEQ_CONFIGURATION (research/feasibility-spike.md §1),
and its calls raise their own ``PtraceError``. Sending every request through one
function here gives one errno path and one error boundary (``linux.errors.os_errors``:
ESRCH becomes ``TaskGone(pid)``). From python-ptrace we keep what fits:
``user_regs_struct`` (``linux.regs``) and syscall names (``linux.syscalls``).

Rules every caller follows (ptrace(2)):

* The tracer is a *thread*, not a process: every request for a task must come from the
  thread that seized it. The orchestrator drives all tasks from one thread.
* Apart from SEIZE, INTERRUPT, DETACH-of-a-dead-task and KILL, a request needs the task in
  a **ptrace-stop**; otherwise the kernel answers ESRCH (reported as ``TaskGone``).
* Memory is never bulk-written through ptrace (POKEDATA moves 8 bytes a call: ~100 s for
  256 MiB, spike §1); ``linux.memory`` does that.

Each constant names its header; a test compiles C and checks every number and struct.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

from pycriu_restore import faults
from pycriu_restore.linux.errors import os_errors
from pycriu_restore.linux.libc import Iovec, libc_function, raise_errno
from pycriu_restore.linux.regs import USER_REGS_SIZE, UserRegs

# <linux/ptrace.h>: requests
PTRACE_PEEKUSER = 3            # PTRACE_PEEKUSR in the kernel header
PTRACE_POKEUSER = 6            # PTRACE_POKEUSR
PTRACE_CONT = 7
PTRACE_KILL = 8
PTRACE_SINGLESTEP = 9
PTRACE_DETACH = 17
PTRACE_SYSCALL = 24
PTRACE_GET_THREAD_AREA = 25    # <asm/ptrace-abi.h> (x86): a GDT TLS entry
PTRACE_SETOPTIONS = 0x4200
PTRACE_GETEVENTMSG = 0x4201
PTRACE_GETSIGINFO = 0x4202
PTRACE_SETSIGINFO = 0x4203
PTRACE_GETREGSET = 0x4204
PTRACE_SETREGSET = 0x4205
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
PTRACE_LISTEN = 0x4208
PTRACE_GETSIGMASK = 0x420A
PTRACE_SETSIGMASK = 0x420B
PTRACE_GET_SYSCALL_INFO = 0x420E
PTRACE_GET_RSEQ_CONFIGURATION = 0x420F

# <linux/ptrace.h>: options (PTRACE_SEIZE's data, PTRACE_SETOPTIONS)
PTRACE_O_TRACESYSGOOD = 0x00000001   # syscall stops report SIGTRAP | 0x80
PTRACE_O_TRACEFORK = 0x00000002
PTRACE_O_TRACEVFORK = 0x00000004
PTRACE_O_TRACECLONE = 0x00000008
PTRACE_O_TRACEEXEC = 0x00000010
PTRACE_O_TRACEVFORKDONE = 0x00000020
PTRACE_O_TRACEEXIT = 0x00000040
PTRACE_O_TRACESECCOMP = 0x00000080
PTRACE_O_EXITKILL = 0x00100000       # SIGKILL the tracee if the tracer exits
PTRACE_O_SUSPEND_SECCOMP = 0x00200000

# <linux/ptrace.h>: events, in (status >> 16) of a stop reported by waitpid
PTRACE_EVENT_FORK = 1
PTRACE_EVENT_VFORK = 2
PTRACE_EVENT_CLONE = 3
PTRACE_EVENT_EXEC = 4
PTRACE_EVENT_VFORK_DONE = 5
PTRACE_EVENT_EXIT = 6
PTRACE_EVENT_SECCOMP = 7
PTRACE_EVENT_STOP = 128              # INTERRUPT, LISTEN and group stops of a seized task

# <linux/ptrace.h>: ptrace_syscall_info.op
PTRACE_SYSCALL_INFO_NONE = 0
PTRACE_SYSCALL_INFO_ENTRY = 1
PTRACE_SYSCALL_INFO_EXIT = 2
PTRACE_SYSCALL_INFO_SECCOMP = 3

# <linux/elf.h>: regset note types for GETREGSET/SETREGSET
NT_PRSTATUS = 1
NT_X86_XSTATE = 0x202

# <sys/user.h>: offsetof(struct user, u_debugreg), for PEEKUSER/POKEUSER of DR0..DR7
USER_DEBUGREG_OFFSET = 848

# The kernel's sigset_t is 64 bits on x86_64 (<asm/signal.h>); GETSIGMASK checks the size.
KERNEL_SIGSET_SIZE = 8

# Starting buffer for NT_X86_XSTATE. The kernel truncates silently to the buffer given, so
# get_xstate() grows it until the regset fits (AMX state makes it about 11 KiB).
_XSTATE_FIRST_GUESS = 4096
_XSTATE_LIMIT = 1 << 20

_ptrace = libc_function("ptrace", ctypes.c_long,
                        [ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p])

# Request number -> name, for messages ("ptrace(PTRACE_SEIZE) failed: EPERM ...").
_REQUEST_NAMES = {value: name for name, value in globals().items()
                  if name.startswith("PTRACE_") and not name.startswith(("PTRACE_O_",
                  "PTRACE_EVENT_", "PTRACE_SYSCALL_INFO_")) and isinstance(value, int)}


class PtraceRseqConfiguration(ctypes.Structure):
    """``struct ptrace_rseq_configuration`` from <linux/ptrace.h> (24 bytes)."""

    _fields_ = [
        ("rseq_abi_pointer", ctypes.c_uint64),
        ("rseq_abi_size", ctypes.c_uint32),
        ("signature", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
    ]


class _SyscallEntry(ctypes.Structure):
    _fields_ = [("nr", ctypes.c_uint64), ("args", ctypes.c_uint64 * 6)]


class _SyscallExit(ctypes.Structure):
    _fields_ = [("rval", ctypes.c_int64), ("is_error", ctypes.c_uint8)]


class _SyscallSeccomp(ctypes.Structure):
    _fields_ = [("nr", ctypes.c_uint64), ("args", ctypes.c_uint64 * 6),
                ("ret_data", ctypes.c_uint32)]


class _SyscallInfoUnion(ctypes.Union):
    _fields_ = [("entry", _SyscallEntry), ("exit", _SyscallExit),
                ("seccomp", _SyscallSeccomp)]


class PtraceSyscallInfo(ctypes.Structure):
    """``struct ptrace_syscall_info`` from <linux/ptrace.h> (88 bytes)."""

    _anonymous_ = ("u",)
    _fields_ = [
        ("op", ctypes.c_uint8),
        ("pad", ctypes.c_uint8 * 3),
        ("arch", ctypes.c_uint32),
        ("instruction_pointer", ctypes.c_uint64),
        ("stack_pointer", ctypes.c_uint64),
        ("u", _SyscallInfoUnion),
    ]


class _SigFault(ctypes.Structure):
    _fields_ = [("si_addr", ctypes.c_void_p)]


class _SigKill(ctypes.Structure):
    _fields_ = [("si_pid", ctypes.c_int), ("si_uid", ctypes.c_uint32)]


class _SigFields(ctypes.Union):
    _fields_ = [("fault", _SigFault), ("kill", _SigKill), ("raw", ctypes.c_uint8 * 112)]


class Siginfo(ctypes.Structure):
    """``siginfo_t`` from <signal.h> (128 bytes); only the members the restore reads.

    Defined here because python-ptrace's ``siginfo`` is 136 bytes with 16-bit uid/pid.
    ``fault.si_addr`` is valid for SIGSEGV/SIGBUS/SIGILL/SIGFPE/SIGTRAP,
    ``kill.si_pid``/``si_uid`` for signals sent by kill(2).
    """

    _fields_ = [
        ("si_signo", ctypes.c_int),
        ("si_errno", ctypes.c_int),
        ("si_code", ctypes.c_int),
        ("_align", ctypes.c_int),   # the union is 8-byte aligned
        ("fields", _SigFields),
    ]


@dataclass(frozen=True)
class RseqConfig:
    """Where a task registered its rseq area (``rseq(2)``); glibc >= 2.35 does it itself.

    ``abi_pointer == 0`` means nothing is registered.
    """

    abi_pointer: int
    abi_size: int
    signature: int
    flags: int


@dataclass(frozen=True)
class SyscallInfo:
    """Which side of a syscall a syscall-stop is on, decoded from PTRACE_GET_SYSCALL_INFO.

    ``op`` is a PTRACE_SYSCALL_INFO_* value; ``nr``/``args`` are set at entry (and at a
    seccomp stop), ``rval``/``is_error`` at exit. The exit side does not say which syscall
    it was: whoever steps the task remembers the entry (rt_sigreturn even rewrites
    orig_rax on its way out).
    """

    op: int
    instruction_pointer: int
    stack_pointer: int
    nr: int | None = None
    args: tuple[int, ...] = ()
    rval: int | None = None
    is_error: bool = False


def _name(request: int) -> str:
    """Name a request for messages: ``PTRACE_SEIZE``."""
    return _REQUEST_NAMES.get(request, f"request {request:#x}")


def _request(request: int, pid: int, addr: int = 0, data: int = 0) -> int:
    """Make one ptrace request; return its result or raise ``OSError`` (errno)."""
    faults.point("ptrace")
    ctypes.set_errno(0)   # PEEK* may return -1 as data: only errno tells an error apart
    result = _ptrace(request, pid, addr, data)
    if result == -1 and ctypes.get_errno() != 0:
        raise_errno(f"ptrace({_name(request)})")
    return result


def _call(request: int, pid: int, addr: int = 0, data: int = 0) -> int:
    """Make one ptrace request on ``pid``, with OSError translated (ESRCH: TaskGone)."""
    with os_errors(f"ptrace({_name(request)})", pid):
        return _request(request, pid, addr, data)


# -- attach and resume ---------------------------------------------------------------------

def seize(pid: int, options: int = 0) -> None:
    """Become ``pid``'s tracer without stopping it (PTRACE_SEIZE), with PTRACE_O_* options.

    Unlike PTRACE_ATTACH this sends no SIGSTOP, and enables INTERRUPT, LISTEN and
    PTRACE_EVENT_STOP reporting of group stops. The calling thread is the tracer from now on.
    """
    _call(PTRACE_SEIZE, pid, 0, options)


def interrupt(pid: int) -> None:
    """Ask a seized task to enter a ptrace-stop (PTRACE_INTERRUPT); it need not be stopped.

    The stop arrives through waitpid as PTRACE_EVENT_STOP with SIGTRAP (or a group stop if
    one is in progress), possibly after signal-delivery stops that were already pending.
    """
    _call(PTRACE_INTERRUPT, pid)


def listen(pid: int) -> None:
    """Let a task in a group stop stay stopped but report new events (PTRACE_LISTEN).

    Precondition: the task is in a group-stop (PTRACE_EVENT_STOP with a stopping signal).
    """
    _call(PTRACE_LISTEN, pid)


def cont(pid: int, sig: int = 0) -> None:
    """Resume a ptrace-stopped task (PTRACE_CONT), delivering ``sig`` if not 0."""
    _call(PTRACE_CONT, pid, 0, sig)


def syscall(pid: int, sig: int = 0) -> None:
    """Resume until the next syscall entry or exit (PTRACE_SYSCALL), delivering ``sig``."""
    _call(PTRACE_SYSCALL, pid, 0, sig)


def singlestep(pid: int, sig: int = 0) -> None:
    """Resume for one instruction (PTRACE_SINGLESTEP); the task then stops with SIGTRAP."""
    _call(PTRACE_SINGLESTEP, pid, 0, sig)


def detach(pid: int, sig: int = 0) -> None:
    """Stop tracing ``pid`` and let it run (PTRACE_DETACH), delivering ``sig`` if not 0.

    Precondition: the task is in a ptrace-stop (or dead). Afterwards no request for it
    will succeed until it is seized again.
    """
    _call(PTRACE_DETACH, pid, 0, sig)


def set_options(pid: int, options: int) -> None:
    """Replace the PTRACE_O_* options of a stopped tracee (PTRACE_SETOPTIONS)."""
    _call(PTRACE_SETOPTIONS, pid, 0, options)


def get_event_msg(pid: int) -> int:
    """Return the message of the last ptrace event (the new pid for a fork event)."""
    msg = ctypes.c_ulong()
    _call(PTRACE_GETEVENTMSG, pid, 0, ctypes.addressof(msg))
    return msg.value


# -- registers -----------------------------------------------------------------------------

def get_regset(pid: int, note_type: int, size_bytes: int) -> bytes:
    """Read regset ``note_type`` (NT_*) into a buffer of ``size_bytes``; return what the
    kernel filled in (it shortens ``iov_len`` to the regset's size, or truncates to ours).
    """
    buf = ctypes.create_string_buffer(size_bytes)
    iov = Iovec(ctypes.addressof(buf), size_bytes)
    _call(PTRACE_GETREGSET, pid, note_type, ctypes.addressof(iov))
    return buf.raw[:iov.iov_len]


def set_regset(pid: int, note_type: int, data: bytes) -> None:
    """Write regset ``note_type`` (NT_*) from ``data``, which must be the full regset."""
    buf = ctypes.create_string_buffer(bytes(data), len(data))
    iov = Iovec(ctypes.addressof(buf), len(data))
    _call(PTRACE_SETREGSET, pid, note_type, ctypes.addressof(iov))


def get_regs(pid: int) -> UserRegs:
    """Return the general-purpose registers (NT_PRSTATUS) of a ptrace-stopped task."""
    raw = get_regset(pid, NT_PRSTATUS, USER_REGS_SIZE)
    if len(raw) != USER_REGS_SIZE:
        raise AssertionError(f"get_regs: NT_PRSTATUS of pid {pid} is {len(raw)} bytes, "
                             f"expected {USER_REGS_SIZE}")
    return UserRegs.from_buffer_copy(raw)


def set_regs(pid: int, regs: UserRegs) -> None:
    """Set all general-purpose registers (NT_PRSTATUS) of a ptrace-stopped task."""
    set_regset(pid, NT_PRSTATUS, bytes(regs))


def get_xstate(pid: int) -> bytes:
    """Return the task's XSAVE area (NT_X86_XSTATE), as many bytes as the kernel has.

    The layout, and why it cannot go into a signal frame unchanged, is in ``linux.xstate``.
    """
    size = _XSTATE_FIRST_GUESS
    while True:
        raw = get_regset(pid, NT_X86_XSTATE, size)
        if len(raw) < size:
            return raw
        if size >= _XSTATE_LIMIT:
            raise AssertionError(f"get_xstate: pid {pid}'s XSAVE area fills {size} bytes")
        size *= 2   # it filled our buffer: it may have been cut, ask again with more room


def set_xstate(pid: int, xstate: bytes) -> None:
    """Write the task's XSAVE area. ``xstate`` must be exactly as long as ``get_xstate``'s
    result: the kernel accepts only the whole user-visible area (EFAULT otherwise).
    """
    set_regset(pid, NT_X86_XSTATE, xstate)


def peek_user(pid: int, offset: int) -> int:
    """Read the word at ``offset`` in the task's ``struct user`` (e.g. a debug register)."""
    return _call(PTRACE_PEEKUSER, pid, offset) & ((1 << 64) - 1)


def poke_user(pid: int, offset: int, value: int) -> None:
    """Write the word at ``offset`` in the task's ``struct user`` (e.g. DR0, DR7)."""
    _call(PTRACE_POKEUSER, pid, offset, value & ((1 << 64) - 1))


def debugreg_offset(index: int) -> int:
    """Offset of DR``index`` (0-7) in ``struct user``, for peek_user/poke_user."""
    if not 0 <= index <= 7:
        raise AssertionError(f"debugreg_offset: DR{index} does not exist (DR0-DR7)")
    return USER_DEBUGREG_OFFSET + 8 * index


# -- signals, rseq, syscall info -----------------------------------------------------------

def get_siginfo(pid: int) -> Siginfo:
    """Return the siginfo of the signal that caused the current signal-delivery stop."""
    info = Siginfo()
    _call(PTRACE_GETSIGINFO, pid, 0, ctypes.addressof(info))
    return info


def get_sigmask(pid: int) -> int:
    """Return the task's blocked-signal mask (bit ``n-1`` set: signal ``n`` blocked)."""
    mask = ctypes.c_uint64()
    _call(PTRACE_GETSIGMASK, pid, KERNEL_SIGSET_SIZE, ctypes.addressof(mask))
    return mask.value


def set_sigmask(pid: int, mask: int) -> None:
    """Set the task's blocked-signal mask (SIGKILL and SIGSTOP stay unblockable)."""
    value = ctypes.c_uint64(mask)
    _call(PTRACE_SETSIGMASK, pid, KERNEL_SIGSET_SIZE, ctypes.addressof(value))


def get_rseq_configuration(pid: int) -> RseqConfig:
    """Return the task's rseq registration (PTRACE_GET_RSEQ_CONFIGURATION, Linux 5.13+).

    The restorer needs it to unregister glibc's rseq before unmapping the old memory,
    else the kernel writes into an unmapped area and kills the task (spike §2).
    """
    conf = PtraceRseqConfiguration()
    _call(PTRACE_GET_RSEQ_CONFIGURATION, pid, ctypes.sizeof(conf), ctypes.addressof(conf))
    return RseqConfig(conf.rseq_abi_pointer, conf.rseq_abi_size, conf.signature, conf.flags)


def get_syscall_info(pid: int) -> SyscallInfo:
    """Describe the syscall-stop the task is in (PTRACE_GET_SYSCALL_INFO, Linux 5.3+).

    Precondition: a syscall-stop reached with PTRACE_SYSCALL (op is NONE at other stops).
    """
    raw = PtraceSyscallInfo()
    _call(PTRACE_GET_SYSCALL_INFO, pid, ctypes.sizeof(raw), ctypes.addressof(raw))
    if raw.op in (PTRACE_SYSCALL_INFO_ENTRY, PTRACE_SYSCALL_INFO_SECCOMP):
        part = raw.entry if raw.op == PTRACE_SYSCALL_INFO_ENTRY else raw.seccomp
        return SyscallInfo(raw.op, raw.instruction_pointer, raw.stack_pointer,
                           nr=part.nr, args=tuple(part.args))
    if raw.op == PTRACE_SYSCALL_INFO_EXIT:
        return SyscallInfo(raw.op, raw.instruction_pointer, raw.stack_pointer,
                           rval=raw.exit.rval, is_error=bool(raw.exit.is_error))
    return SyscallInfo(raw.op, raw.instruction_pointer, raw.stack_pointer)


class UserDesc(ctypes.Structure):
    """``struct user_desc`` from <asm/ldt.h> (16 bytes): one GDT TLS entry, flags as bits."""

    _fields_ = [
        ("entry_number", ctypes.c_uint32),
        ("base_addr", ctypes.c_uint32),
        ("limit", ctypes.c_uint32),
        ("seg_32bit", ctypes.c_uint32, 1),
        ("contents", ctypes.c_uint32, 2),
        ("read_exec_only", ctypes.c_uint32, 1),
        ("limit_in_pages", ctypes.c_uint32, 1),
        ("seg_not_present", ctypes.c_uint32, 1),
        ("useable", ctypes.c_uint32, 1),
        ("lm", ctypes.c_uint32, 1),
    ]


def get_thread_area(pid: int, entry_number: int) -> UserDesc:
    """Return GDT TLS entry ``entry_number`` (12-14 on x86_64) of a ptrace-stopped task.

    A checkpoint records all three (CRIU's arch_get_tls); 64-bit code rarely sets them,
    and an unset one reads back as read_exec_only and seg_not_present.
    """
    desc = UserDesc()
    _call(PTRACE_GET_THREAD_AREA, pid, entry_number, ctypes.addressof(desc))
    return desc
