"""The rt_sigframe a restored thread leaves the blob through: its checkpointed registers.

The blob ends with rt_sigreturn, RSP = frame + 8; the kernel then loads every general
register, the flags, the signal mask, the sigaltstack and the FPU/XSAVE state from the frame
(arch/x86/kernel/signal_64.c, ``SYSCALL_DEFINE0(rt_sigreturn)``). One frame per thread, built
here from the plan's ``Thread`` at the address the bootstrap layout gives it::

    addr (64-byte aligned)
    +----------------------------------+ +0
    | struct rt_sigframe (440 bytes)   |    pretcode 0, uc {flags, link 0, uc_stack = Thread.sas,
    |                                  |    uc_mcontext = Thread.gpregs, uc_sigmask =
    |                                  |    Thread.blk_sigset}, siginfo 0
    +----------------------------------+ +448 = SIGFRAME_XSAVE_OFFSET (64-byte aligned)
    | XSAVE area (xstate_size bytes)   |    xsave.py: legacy region, header, components
    | FP_XSTATE_MAGIC2 (4 bytes)       |
    +----------------------------------+ sigframe_bytes(xstate_size), a multiple of 64

The registers are taken as dumped: CRIU already rewrote a task caught in a syscall for the
restart (``ax``/``ip``, research/criu-restore-internals.md §2.6), and rt_sigreturn sets
orig_ax to -1 itself. Struct layouts: ``sigframe_layout.py``.
"""

from __future__ import annotations

import ctypes
from collections.abc import Mapping
from dataclasses import dataclass

from pycriu_restore.blob import abi
from pycriu_restore.blob.cpuid import XsaveComponent
from pycriu_restore.blob.errors import BadThreadState
from pycriu_restore.blob.sigframe_layout import (SS_DISABLE, UC_FP_XSTATE, UC_SIGCONTEXT_SS,
                                                 UC_STRICT_RESTORE_SS, RtSigframe)
from pycriu_restore.blob.xsave import area_bytes, build_xsave_area
from pycriu_restore.plan.model import Thread

ALIGN = abi.BLOB_SIGFRAME_ALIGN
# Where the XSAVE area starts, from the frame's address: the frame rounded up to 64 bytes.
SIGFRAME_XSAVE_OFFSET = -(-ctypes.sizeof(RtSigframe) // ALIGN) * ALIGN
# What rt_sigreturn finds at RSP - 8: RSP is the frame's address plus pretcode.
SIGRETURN_RSP_OFFSET = RtSigframe.uc.offset

UC_FLAGS = UC_FP_XSTATE | UC_SIGCONTEXT_SS | UC_STRICT_RESTORE_SS

# CRIU's register names (UserX86RegsEntry) -> struct sigcontext's.
GPREG_TO_SIGCONTEXT: dict[str, str] = {
    "r8": "r8", "r9": "r9", "r10": "r10", "r11": "r11",
    "r12": "r12", "r13": "r13", "r14": "r14", "r15": "r15",
    "di": "rdi", "si": "rsi", "bp": "rbp", "bx": "rbx",
    "dx": "rdx", "ax": "rax", "cx": "rcx", "sp": "rsp",
    "ip": "rip", "flags": "eflags",
    "cs": "cs", "ss": "ss", "fs": "fs", "gs": "gs",
}
# Segment selectors are 16-bit fields of the sigcontext.
_SELECTORS = ("cs", "ss", "fs", "gs")


@dataclass(frozen=True)
class Sigframe:
    """A thread's frame, ready to be written at ``addr``."""

    addr: int           # the struct rt_sigframe (pretcode)
    data: bytes         # sigframe_bytes(xstate_size) bytes
    xstate_bv: int      # what the XSAVE header restores
    dropped_xfeatures: int   # image components this machine lacks (xsave.py)

    @property
    def sigreturn_rsp(self) -> int:
        """RSP at the rt_sigreturn syscall: the kernel reads the frame at RSP - 8."""
        return self.addr + SIGRETURN_RSP_OFFSET

    @property
    def fpstate_addr(self) -> int:
        return self.addr + SIGFRAME_XSAVE_OFFSET


def sigframe_bytes(xstate_size: int) -> int:
    """Bytes one frame takes: rt_sigframe, XSAVE area, MAGIC2, rounded up to 64."""
    return -(-(SIGFRAME_XSAVE_OFFSET + area_bytes(xstate_size)) // ALIGN) * ALIGN


def build_sigframe(thread: Thread, addr: int, *, xstate_size: int, xfeatures: int,
                   components: Mapping[int, XsaveComponent]) -> Sigframe:
    """Build ``thread``'s rt_sigframe for address ``addr`` (64-byte aligned).

    ``xstate_size``/``xfeatures`` are what this kernel writes into a fresh task's frames
    (kernel_frame.py), ``components`` this CPU's XSAVE layout (cpuid.xsave_components).
    Raises BadThreadState if a register is missing or out of range, FpuStateMismatch (from
    xsave.py) if the FPU state does not fit this CPU.
    """
    if addr % ALIGN:
        raise AssertionError(f"build_sigframe: frame at {addr:#x} is not {ALIGN}-byte aligned")
    xsave = build_xsave_area(thread, xstate_size=xstate_size, xfeatures=xfeatures,
                             components=components)

    frame = RtSigframe()
    uc = frame.uc
    uc.uc_flags = UC_FLAGS
    sas = thread.sas if thread.sas is not None else (0, 0, SS_DISABLE)
    uc.uc_stack.ss_sp, uc.uc_stack.ss_size, uc.uc_stack.ss_flags = sas
    uc.uc_sigmask = thread.blk_sigset
    _fill_registers(thread, uc.uc_mcontext)
    uc.uc_mcontext.fpstate = addr + SIGFRAME_XSAVE_OFFSET

    data = bytearray(sigframe_bytes(xstate_size))
    data[:ctypes.sizeof(frame)] = bytes(frame)
    data[SIGFRAME_XSAVE_OFFSET:SIGFRAME_XSAVE_OFFSET + len(xsave.data)] = xsave.data
    return Sigframe(addr=addr, data=bytes(data), xstate_bv=xsave.xstate_bv,
                    dropped_xfeatures=xsave.dropped)


def _fill_registers(thread: Thread, sc: ctypes.Structure) -> None:
    """Copy every general register of the image into the sigcontext."""
    for criu_name, field in GPREG_TO_SIGCONTEXT.items():
        if criu_name not in thread.gpregs:
            raise BadThreadState(f"thread {thread.tid}: register {criu_name} missing from gpregs")
        value = int(thread.gpregs[criu_name])
        limit = 1 << (16 if criu_name in _SELECTORS else 64)
        if not 0 <= value < limit:
            raise BadThreadState(f"thread {thread.tid}: register {criu_name} = {value:#x} is out "
                                 f"of range for sigcontext.{field}")
        setattr(sc, field, value)
