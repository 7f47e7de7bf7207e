"""ctypes mirrors of the x86-64 signal frame: what rt_sigreturn(2) reads from the stack.

From the kernel's uapi headers (tests/test_sigframe_layout.py compiles C against them and
compares every size and offset): <asm/sigcontext.h> (``struct sigcontext``, ``struct
_fpstate_64``, ``struct _fpx_sw_bytes``, ``struct _header``), <asm/signal.h>
(``stack_t``), <asm/ucontext.h> (``struct ucontext``, ``UC_*``). ``struct rt_sigframe``
is kernel-internal (arch/x86/include/asm/sigframe.h), so its layout is spelled out here::

    struct rt_sigframe {                 offset  size
        char *pretcode;                      0      8   return address of the handler; unused
        struct ucontext uc;                  8    304   flags, link, sigaltstack, sigcontext, mask
        struct siginfo info;               312    128
    };                                            440
    ... then, 64-byte aligned, the XSAVE area the sigcontext's fpstate points to.

rt_sigreturn finds the frame at RSP - 8 (arch/x86/kernel/signal_64.c: ``frame =
(struct rt_sigframe __user *)(regs->sp - sizeof(long))``): the caller sets RSP to the
address of ``uc``.
"""

from __future__ import annotations

import ctypes
from ctypes import c_int32, c_uint8, c_uint16, c_uint32, c_uint64

# <asm/sigcontext.h>
FP_XSTATE_MAGIC1 = 0x46505853       # _fpx_sw_bytes.magic1: an XSAVE area follows the legacy one
FP_XSTATE_MAGIC2 = 0x46505845       # u32 right after the XSAVE area (at fpstate + xstate_size)
FP_XSTATE_MAGIC2_SIZE = 4

# <asm/ucontext.h>
UC_FP_XSTATE = 0x1                  # the frame has an XSAVE area
UC_SIGCONTEXT_SS = 0x2              # sigcontext.ss is valid and restored
UC_STRICT_RESTORE_SS = 0x4          # restore ss as saved, do not fix it up

# <linux/signal.h>: sigaltstack flags
SS_DISABLE = 2

# <asm-generic/siginfo.h>: SI_MAX_SIZE
SIGINFO_BYTES = 128


class FpxSwBytes(ctypes.Structure):
    """struct _fpx_sw_bytes: the software-reserved tail of the legacy region in a frame."""

    _fields_ = [
        ("magic1", c_uint32),
        ("extended_size", c_uint32),     # xstate_size + FP_XSTATE_MAGIC2_SIZE
        ("xfeatures", c_uint64),         # the components laid out in the area (user_xfeatures)
        ("xstate_size", c_uint32),       # bytes of the XSAVE area, MAGIC2 not included
        ("padding", c_uint32 * 7),
    ]


class Fpstate64(ctypes.Structure):
    """struct _fpstate_64: the 512-byte legacy FXSAVE region."""

    _fields_ = [
        ("cwd", c_uint16),
        ("swd", c_uint16),
        ("twd", c_uint16),               # abridged (FXSAVE) tag word
        ("fop", c_uint16),
        ("rip", c_uint64),
        ("rdp", c_uint64),
        ("mxcsr", c_uint32),
        ("mxcsr_mask", c_uint32),
        ("st_space", c_uint32 * 32),     # 8 x87 registers, 16 bytes each
        ("xmm_space", c_uint32 * 64),    # xmm0-15
        ("reserved2", c_uint32 * 12),
        ("sw_reserved", FpxSwBytes),
    ]


class XsaveHeader(ctypes.Structure):
    """struct _header: the XSAVE header right after the legacy region."""

    _fields_ = [
        ("xfeatures", c_uint64),         # XSTATE_BV: components not in their init state
        ("reserved1", c_uint64 * 2),     # reserved1[0] is XCOMP_BV: 0 for the standard format
        ("reserved2", c_uint64 * 5),
    ]


class SigContext(ctypes.Structure):
    """struct sigcontext (x86-64): the general registers rt_sigreturn restores."""

    _fields_ = [
        ("r8", c_uint64),
        ("r9", c_uint64),
        ("r10", c_uint64),
        ("r11", c_uint64),
        ("r12", c_uint64),
        ("r13", c_uint64),
        ("r14", c_uint64),
        ("r15", c_uint64),
        ("rdi", c_uint64),
        ("rsi", c_uint64),
        ("rbp", c_uint64),
        ("rbx", c_uint64),
        ("rdx", c_uint64),
        ("rax", c_uint64),
        ("rcx", c_uint64),
        ("rsp", c_uint64),
        ("rip", c_uint64),
        ("eflags", c_uint64),
        ("cs", c_uint16),
        ("gs", c_uint16),
        ("fs", c_uint16),
        ("ss", c_uint16),
        ("err", c_uint64),
        ("trapno", c_uint64),
        ("oldmask", c_uint64),
        ("cr2", c_uint64),
        ("fpstate", c_uint64),           # address of the legacy region (64-byte aligned)
        ("reserved1", c_uint64 * 8),
    ]


class StackT(ctypes.Structure):
    """stack_t (<asm/signal.h>): a sigaltstack."""

    _fields_ = [
        ("ss_sp", c_uint64),
        ("ss_flags", c_int32),
        ("_pad", c_uint32),
        ("ss_size", c_uint64),
    ]


class UContext(ctypes.Structure):
    """struct ucontext (<asm/ucontext.h>, x86-64: sigset_t is one unsigned long)."""

    _fields_ = [
        ("uc_flags", c_uint64),
        ("uc_link", c_uint64),
        ("uc_stack", StackT),
        ("uc_mcontext", SigContext),
        ("uc_sigmask", c_uint64),
    ]


class RtSigframe(ctypes.Structure):
    """struct rt_sigframe (arch/x86/include/asm/sigframe.h, kernel-internal)."""

    _fields_ = [
        ("pretcode", c_uint64),
        ("uc", UContext),
        ("info", c_uint8 * SIGINFO_BYTES),
    ]


# The C name of each mirrored uapi struct (what tests/test_sigframe_layout.py compares).
UAPI_STRUCTS: dict[str, type[ctypes.Structure]] = {
    "struct _fpx_sw_bytes": FpxSwBytes,
    "struct _fpstate_64": Fpstate64,
    "struct _header": XsaveHeader,
    "struct sigcontext": SigContext,
    "stack_t": StackT,
    "struct ucontext": UContext,
}
