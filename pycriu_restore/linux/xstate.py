"""The XSAVE area as the NT_X86_XSTATE regset returns it (extended FPU/SSE/AVX/PKRU state).

::

    offset 0    +---------------------------------+
                | legacy FXSAVE region (512 B)     |  x87, MXCSR, xmm0-15
          464   |   sw_reserved[48]: here the      |  ptrace puts XCR0 (u64) in the first 8
                |   kernel's regset stores XCR0    |  bytes; a *signal frame* keeps
                |                                  |  struct _fpx_sw_bytes here instead
    offset 512  +---------------------------------+
                | XSAVE header (64 B): xfeatures,  |
                | xcomp_bv, reserved               |
    offset 576  +---------------------------------+
                | extended components (AVX, ...)   |  at offsets CPUID leaf 0xD gives
                +---------------------------------+  total: the regset's length

The sw_reserved difference is a trap seen in research/feasibility-spike.md §2: copying the
regset into a sigframe unchanged gives ``xstate_size = 0`` and the kernel silently restores
only the legacy state (ymm upper halves reset). Whoever builds sigframes must rewrite it.

Offsets are those of ``struct _fpstate_64`` (``sw_reserved``) and ``struct _xstate``
(``xstate_hdr``) in <asm/sigcontext.h>; a test compiles C and compares them.
"""

from __future__ import annotations

import struct

# <asm/sigcontext.h>: offsetof(struct _fpstate_64, sw_reserved)
XSAVE_SW_RESERVED_OFFSET = 464
# <asm/sigcontext.h>: sizeof(struct _fpstate_64), the legacy FXSAVE region
FXSAVE_SIZE = 512
# <asm/sigcontext.h>: offsetof(struct _xstate, xstate_hdr), and its size (struct _header)
XSAVE_HEADER_OFFSET = 512
XSAVE_HEADER_SIZE = 64
# The smallest XSAVE area: legacy region + header (x87 and SSE only).
XSAVE_MIN_SIZE = XSAVE_HEADER_OFFSET + XSAVE_HEADER_SIZE

# XCR0 feature bits (<asm/fpu/types.h>, kernel-internal; Intel SDM vol. 1 §13.1).
XFEATURE_MASK_FP = 1 << 0
XFEATURE_MASK_SSE = 1 << 1
XFEATURE_MASK_YMM = 1 << 2
XFEATURE_MASK_PKRU = 1 << 9

# Short names of the XSAVE state components (the kernel's xfeature_names[] in
# arch/x86/kernel/fpu/xstate.c, abbreviated; Intel SDM vol. 1 table 13-1).
XFEATURE_NAMES: dict[int, str] = {
    0: "x87", 1: "SSE", 2: "AVX (YMM_Hi128)", 3: "MPX BNDREGS", 4: "MPX BNDCSR",
    5: "AVX-512 opmask", 6: "AVX-512 ZMM_Hi256", 7: "AVX-512 Hi16_ZMM", 8: "Processor Trace",
    9: "PKRU", 10: "PASID", 11: "CET user", 12: "CET supervisor", 13: "HDC", 14: "UINTR",
    15: "LBR", 16: "HWP", 17: "AMX TILECFG", 18: "AMX TILEDATA", 19: "APX",
}
# PKRU as Linux gives it to every task on a CPU with protection keys: access disabled for
# keys 1-15, key 0 open (arch/x86/mm/pkeys.c: init_pkru_value).
PKRU_LINUX_DEFAULT = 0x55555554


def xfeature_names(mask: int) -> str:
    """``mask``'s components by name, lowest first (``"AVX-512 opmask, PKRU"``)."""
    return ", ".join(XFEATURE_NAMES.get(bit, f"component {bit}")
                     for bit in range(mask.bit_length()) if mask >> bit & 1)


def regset_xcr0(xstate: bytes) -> int:
    """Return the XCR0 value that PTRACE_GETREGSET(NT_X86_XSTATE) stored in sw_reserved.

    Precondition: ``xstate`` is the regset as read from the kernel, not a sigframe copy.
    """
    if len(xstate) < XSAVE_MIN_SIZE:
        raise AssertionError(f"regset_xcr0: xstate is {len(xstate)} bytes, "
                             f"an XSAVE area has at least {XSAVE_MIN_SIZE}")
    (xcr0,) = struct.unpack_from("<Q", xstate, XSAVE_SW_RESERVED_OFFSET)
    return xcr0


def header_xfeatures(xstate: bytes) -> int:
    """Return the XSAVE header's ``xfeatures`` bitmap: which components hold live state."""
    if len(xstate) < XSAVE_MIN_SIZE:
        raise AssertionError(f"header_xfeatures: xstate is {len(xstate)} bytes, "
                             f"an XSAVE area has at least {XSAVE_MIN_SIZE}")
    (xfeatures,) = struct.unpack_from("<Q", xstate, XSAVE_HEADER_OFFSET)
    return xfeatures
