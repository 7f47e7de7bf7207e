"""A thread's registers as core-PID.img records them: ThreadInfoX86 (images/core-x86.proto).

    gpregs   PTRACE_GETREGSET NT_PRSTATUS (struct user_regs_struct), after the syscall
             fix-up below
    fpregs   the legacy FXSAVE region of PTRACE_GETREGSET NT_X86_XSTATE: control words,
             st0-7, xmm0-15
    xsave    the XSAVE header's xstate_bv, then one array per component *this kernel
             enables* (XCR0, from the regset's sw_reserved), copied from its standard-format
             offset (CPUID 0xD): ymmh_space, opmask_reg, zmm_upper, hi16_zmm, pkru.
             As CRIU's save_task_regs (criu/arch/x86/crtools.c), a component is recorded
             whether or not its xstate_bv bit is set, and AMX tiles are not recorded.
    tls      the three GDT TLS entries (PTRACE_GET_THREAD_AREA 12, 13, 14)

The fix-up (compel/arch/x86/src/lib/infect.c, get_task_regs): a task stopped inside a
syscall has rax = -ERESTART* and orig_rax = the syscall. CRIU records it so that the
restored task goes on correctly:
    -ERESTARTSYS, -ERESTARTNOINTR, -ERESTARTNOHAND  rax = orig_rax, rip -= 2: the
                                                    syscall instruction runs again
    -ERESTART_RESTARTBLOCK (clock_nanosleep ...)    rax = -EINTR: the syscall returns
                                                    "interrupted"; the restart block
                                                    lived in the kernel and is lost
"""

from __future__ import annotations

import errno
import struct

from pycriu_restore.blob.cpuid import XsaveComponent, cpuid, xsave_components
from pycriu_restore.blob.xsave import IMAGE_COMPONENTS
from pycriu_restore.dump.errors import DumpError
from pycriu_restore.images.schemas import core_x86_pb2
from pycriu_restore.linux import ptrace
from pycriu_restore.linux.regs import REG_NAMES, UserRegs, signed, unsigned
from pycriu_restore.linux.xstate import (FXSAVE_SIZE, XSAVE_HEADER_OFFSET, XSAVE_MIN_SIZE,
                                         header_xfeatures, regset_xcr0)

# include/linux/errno.h (kernel-internal restart codes, never seen by user space).
ERESTARTSYS = 512
ERESTARTNOINTR = 513
ERESTARTNOHAND = 514
ERESTART_RESTARTBLOCK = 516
# The syscall instruction is two bytes (0f 05).
SYSCALL_INSN_BYTES = 2
# <asm/segment.h>: __USER_CS, the code segment of 64-bit user mode (32-bit tasks: 0x23).
USER64_CS = 0x33

# <asm/segment.h>: the GDT TLS entries of x86_64, GDT_ENTRY_TLS_MIN .. +GDT_ENTRY_TLS_ENTRIES.
GDT_ENTRY_TLS_MIN = 12
GDT_ENTRY_TLS_ENTRIES = 3

# struct user_regs_struct name -> UserX86RegsEntry name: the image drops the "r" of the
# legacy registers (rax -> ax, orig_rax -> orig_ax) and calls eflags "flags".
_RENAMED = {"rax": "ax", "rbx": "bx", "rcx": "cx", "rdx": "dx", "rsi": "si", "rdi": "di",
            "rbp": "bp", "rsp": "sp", "rip": "ip", "orig_rax": "orig_ax", "eflags": "flags"}
_GPREG_NAMES = {name: _RENAMED.get(name, name) for name in REG_NAMES}

# <asm/user_64.h> struct user_i387_struct: the FXSAVE fields, with their offset and format.
_FXSAVE_SCALARS = {"cwd": (0, "<H"), "swd": (2, "<H"), "twd": (4, "<H"), "fop": (6, "<H"),
                   "rip": (8, "<Q"), "rdp": (16, "<Q"), "mxcsr": (24, "<I"),
                   "mxcsr_mask": (28, "<I")}
_ST_SPACE = (32, 32)     # offset, u32 words: 8 x87 registers, 16 bytes apart
_XMM_SPACE = (160, 64)   # offset, u32 words: xmm0-15

# CPUID.(EAX=7,ECX=0):ECX bit 7, CET_SS: CRIU then records a cet entry (compel's
# X86_FEATURE_SHSTK).
_CPUID_CET_SS_ECX_BIT = 7


def fixed_up_gpregs(regs: UserRegs) -> UserRegs:
    """Return ``regs`` as CRIU records them: a syscall-restart state resolved (see above)."""
    out = UserRegs.from_buffer_copy(bytes(regs))
    if signed(out.orig_rax) >= 0:
        code = -signed(out.rax)
        if code in (ERESTARTSYS, ERESTARTNOINTR, ERESTARTNOHAND):
            out.rax = out.orig_rax
            out.rip -= SYSCALL_INSN_BYTES
        elif code == ERESTART_RESTARTBLOCK:
            out.rax = unsigned(-errno.EINTR)
    return out


def gpregs_entry(regs: UserRegs) -> core_x86_pb2.UserX86RegsEntry:
    """UserX86RegsEntry from a (fixed-up) user_regs_struct; 64-bit tasks only."""
    entry = core_x86_pb2.UserX86RegsEntry(mode=core_x86_pb2.NATIVE)
    for kernel_name, image_name in _GPREG_NAMES.items():
        setattr(entry, image_name, getattr(regs, kernel_name))
    return entry


def fpregs_entry(xstate: bytes, pid: int,
                 components: dict[int, XsaveComponent] | None = None) -> core_x86_pb2.UserX86FpregsEntry:
    """UserX86FpregsEntry from the NT_X86_XSTATE regset of task ``pid``."""
    if len(xstate) < XSAVE_MIN_SIZE:
        raise DumpError(f"NT_X86_XSTATE is {len(xstate)} bytes, an XSAVE area has at least "
                        f"{XSAVE_MIN_SIZE} (a CPU without XSAVE is not supported)", pid=pid)
    components = xsave_components() if components is None else components
    entry = core_x86_pb2.UserX86FpregsEntry()
    for name, (offset, fmt) in _FXSAVE_SCALARS.items():
        setattr(entry, name, struct.unpack_from(fmt, xstate, offset)[0])
    for field, (offset, words) in (("st_space", _ST_SPACE), ("xmm_space", _XMM_SPACE)):
        getattr(entry, field).extend(struct.unpack_from(f"<{words}I", xstate, offset))
    assert _XMM_SPACE[0] + 4 * _XMM_SPACE[1] <= FXSAVE_SIZE, "fpregs_entry: xmm past FXSAVE"

    xsave = entry.xsave
    xsave.xstate_bv = header_xfeatures(xstate)
    xcr0 = regset_xcr0(xstate)
    for number, (field, width) in IMAGE_COMPONENTS.items():
        if not xcr0 >> number & 1:
            continue
        comp = components.get(number)
        if comp is None or comp.offset + comp.size_bytes > len(xstate):
            raise DumpError(f"xsave component {number} ({field}) is enabled (XCR0 {xcr0:#x}) but "
                            f"not inside the {len(xstate)}-byte NT_X86_XSTATE regset", pid=pid)
        kind = "I" if width == 4 else "Q"
        getattr(xsave, field).extend(
            struct.unpack_from(f"<{comp.size_bytes // width}{kind}", xstate, comp.offset))
    if cpuid(7, 0)[2] >> _CPUID_CET_SS_ECX_BIT & 1:
        # A task that never enabled a shadow stack (ARCH_SHSTK_ENABLE): CRIU's zeros.
        xsave.cet.cet = 0
        xsave.cet.ssp = 0
    assert XSAVE_HEADER_OFFSET == FXSAVE_SIZE, "fpregs_entry: header follows the FXSAVE region"
    return entry


def tls_entries(pid: int) -> list[core_x86_pb2.UserDescT]:
    """The three GDT TLS entries of a ptrace-stopped task, as UserDescT records."""
    out = []
    for number in range(GDT_ENTRY_TLS_MIN, GDT_ENTRY_TLS_MIN + GDT_ENTRY_TLS_ENTRIES):
        desc = ptrace.get_thread_area(pid, number)
        out.append(core_x86_pb2.UserDescT(
            entry_number=desc.entry_number, base_addr=desc.base_addr, limit=desc.limit,
            seg_32bit=bool(desc.seg_32bit), contents_h=bool(desc.contents & 2),
            contents_l=bool(desc.contents & 1), read_exec_only=bool(desc.read_exec_only),
            limit_in_pages=bool(desc.limit_in_pages), seg_not_present=bool(desc.seg_not_present),
            usable=bool(desc.useable)))
    return out


def thread_info(pid: int, clear_tid_addr: int) -> core_x86_pb2.ThreadInfoX86:
    """ThreadInfoX86 of a ptrace-stopped 64-bit task: registers, FPU state, TLS entries."""
    regs = ptrace.get_regs(pid)
    if regs.cs != USER64_CS:
        raise DumpError(f"cs is {regs.cs:#x}, not the 64-bit user code segment {USER64_CS:#x}: "
                        "32-bit tasks are not dumped", pid=pid)
    info = core_x86_pb2.ThreadInfoX86(clear_tid_addr=clear_tid_addr)
    info.gpregs.CopyFrom(gpregs_entry(fixed_up_gpregs(regs)))
    info.fpregs.CopyFrom(fpregs_entry(ptrace.get_xstate(pid), pid))
    info.tls.extend(tls_entries(pid))
    return info
