"""The XSAVE area of a signal frame, built from a thread's checkpointed FPU state.

rt_sigreturn restores the FPU, SSE, AVX ... state from the area the sigcontext's
``fpstate`` points to (arch/x86/kernel/fpu/signal.c). It takes the XSAVE path only when
the area is laid out exactly as the kernel expects; otherwise it silently restores the
legacy part alone and the ymm upper halves come back zero (research/feasibility-spike.md
§2). The area, ``xstate_size + 4`` bytes, 64-byte aligned::

    0     legacy FXSAVE region (struct _fpstate_64): x87, MXCSR, xmm0-15    from fpregs
    464     sw_reserved = struct _fpx_sw_bytes:
              magic1 FP_XSTATE_MAGIC1, extended_size = xstate_size + 4,
              xfeatures = this kernel's user xfeatures, xstate_size
    512   XSAVE header: xstate_bv (from the image), xcomp_bv 0 (standard format)
    576.. each component n set in xstate_bv, at CPUID 0xD.n's offset        from xsave.*
    xstate_size: FP_XSTATE_MAGIC2

The kernel checks: magic1; ``xstate_size`` at least the minimum and at most this task's
``fpstate->user_size``; ``extended_size >= xstate_size``; MAGIC2 at ``fpstate + xstate_size``
(``check_xstate_in_sigframe``); it then restores the components of ``xfeatures`` that the
task may use. So ``xstate_size`` and ``xfeatures`` are exactly what the kernel writes into a
fresh task's own frames (kernel_frame.py): never the ptrace regset's length, which is the
kernel's maximum and includes dynamic features such as AMX tile data. The component offsets
come from this CPU (``cpuid.xsave_components``).

Components the image has in use but this kernel's frames do not carry are left out and
returned in ``XsaveArea.dropped``. Whether that is acceptable is not decided here: the CPU
policy (restore/cpucap.py) refuses a restore before any frame is built unless every such
component holds its default value (a task dumped on a machine with PKU holds the kernel's
default PKRU, which a machine without PKU cannot hold and does not need).
"""

from __future__ import annotations

import ctypes
import struct
from collections.abc import Mapping
from dataclasses import dataclass

from pycriu_restore.blob.cpuid import XsaveComponent
from pycriu_restore.blob.errors import BadThreadState, FpuStateMismatch
from pycriu_restore.blob.sigframe_layout import (FP_XSTATE_MAGIC1, FP_XSTATE_MAGIC2,
                                                 FP_XSTATE_MAGIC2_SIZE, Fpstate64, FpxSwBytes,
                                                 XsaveHeader)
from pycriu_restore.linux.xstate import (FXSAVE_SIZE, XFEATURE_MASK_FP, XFEATURE_MASK_SSE,
                                         XSAVE_HEADER_OFFSET, XSAVE_MIN_SIZE)
from pycriu_restore.plan.model import Thread

# The legacy components every x86-64 XSAVE area has (FP and SSE live in the legacy region).
LEGACY_XFEATURES = XFEATURE_MASK_FP | XFEATURE_MASK_SSE

# Component number -> (UserX86XsaveEntry field, bytes per array element) (images/core-x86.proto).
IMAGE_COMPONENTS: dict[int, tuple[str, int]] = {
    2: ("ymmh_space", 4),      # YMM_Hi128: upper halves of ymm0-15
    3: ("bndreg_state", 8),    # MPX BNDREGS
    4: ("bndcsr_state", 8),    # MPX BNDCSR
    5: ("opmask_reg", 8),      # AVX-512 k0-k7
    6: ("zmm_upper", 8),       # AVX-512 ZMM_Hi256
    7: ("hi16_zmm", 8),        # AVX-512 Hi16_ZMM
    9: ("pkru", 4),            # PKRU (+ 4 bytes of padding)
}

# The fxsave fields of UserX86FpregsEntry, with their width in struct _fpstate_64.
_LEGACY_SCALARS = {"cwd": 16, "swd": 16, "twd": 16, "fop": 16, "rip": 64, "rdp": 64,
                   "mxcsr": 32, "mxcsr_mask": 32}
_LEGACY_ARRAYS = {"st_space": 32, "xmm_space": 64}

_U32 = struct.Struct("<I")


@dataclass(frozen=True)
class XsaveArea:
    """A built XSAVE area: ``data`` is xstate_size + 4 bytes (MAGIC2 included)."""

    data: bytes
    xstate_bv: int      # the header's XSTATE_BV as written
    dropped: int        # components of the image left out: this machine lacks them

    @property
    def xstate_size(self) -> int:
        return len(self.data) - FP_XSTATE_MAGIC2_SIZE


def area_bytes(xstate_size: int) -> int:
    """Bytes an area takes in the frame: the XSAVE area and MAGIC2."""
    return xstate_size + FP_XSTATE_MAGIC2_SIZE


def build_xsave_area(thread: Thread, *, xstate_size: int, xfeatures: int,
                     components: Mapping[int, XsaveComponent]) -> XsaveArea:
    """Lay out ``thread``'s FPU state as the XSAVE area of a signal frame.

    ``xstate_size`` and ``xfeatures`` are the sw bytes this kernel writes into a fresh task's
    frames (kernel_frame.KernelFrame); ``components`` maps component numbers to this CPU's
    offsets.
    Raises FpuStateMismatch if the kernel's area cannot hold the state (no XSAVE, a
    component of another size), BadThreadState if the image's fields are malformed.
    """
    where = f"thread {thread.tid}"
    if xstate_size < XSAVE_MIN_SIZE or xfeatures & LEGACY_XFEATURES != LEGACY_XFEATURES:
        raise FpuStateMismatch(f"{where}: this kernel's XSAVE area is {xstate_size} bytes with "
                               f"features {xfeatures:#x}, expected at least {XSAVE_MIN_SIZE} bytes with "
                               "x87 and SSE (a CPU without XSAVE is not supported)")
    area = bytearray(area_bytes(xstate_size))

    legacy = _legacy_region(thread)
    legacy.sw_reserved = FpxSwBytes(magic1=FP_XSTATE_MAGIC1,
                                    extended_size=area_bytes(xstate_size),
                                    xfeatures=xfeatures, xstate_size=xstate_size)
    area[:FXSAVE_SIZE] = bytes(legacy)

    image = thread.xsave or {}
    image_bv = int(image.get("xstate_bv", LEGACY_XFEATURES))
    dropped = image_bv & ~xfeatures
    xstate_bv = (image_bv & xfeatures) | (image_bv & LEGACY_XFEATURES)
    for number in _bits(xstate_bv & ~LEGACY_XFEATURES):
        if number not in components or number not in IMAGE_COMPONENTS:
            # In this kernel's frames yet unknown to CPUID or to the image format (AMX tile
            # config: CRIU keeps no data for it): left at init, and the CPU policy refused
            # the restore before if the image had it in use.
            dropped |= 1 << number
            xstate_bv &= ~(1 << number)
            continue
        comp = components[number]
        data = _component_bytes(where, image, number)
        if len(data) != comp.size_bytes:
            raise FpuStateMismatch(f"{where}: xsave component {number} "
                                   f"({IMAGE_COMPONENTS[number][0]}) holds {len(data)} bytes, "
                                   f"this CPU's is {comp.size_bytes}")
        if comp.offset + comp.size_bytes > xstate_size:
            raise FpuStateMismatch(f"{where}: xsave component {number} ends at byte "
                                   f"{comp.offset + comp.size_bytes}, past this kernel's "
                                   f"{xstate_size}-byte area")
        area[comp.offset:comp.offset + comp.size_bytes] = data

    header = XsaveHeader(xfeatures=xstate_bv)   # reserved1[0] (XCOMP_BV) 0: standard format
    area[XSAVE_HEADER_OFFSET:XSAVE_HEADER_OFFSET + ctypes.sizeof(header)] = bytes(header)
    _U32.pack_into(area, xstate_size, FP_XSTATE_MAGIC2)
    return XsaveArea(data=bytes(area), xstate_bv=xstate_bv, dropped=dropped)


def _legacy_region(thread: Thread) -> Fpstate64:
    """The FXSAVE region from UserX86FpregsEntry; an absent array is all zero."""
    fp = thread.fpregs
    legacy = Fpstate64()
    for name, bits in _LEGACY_SCALARS.items():
        value = int(fp.get(name, 0))
        if not 0 <= value < 1 << bits:
            raise BadThreadState(f"thread {thread.tid}: fpregs.{name} = {value:#x} does not fit "
                                 f"in {bits} bits")
        setattr(legacy, name, value)
    for name, words in _LEGACY_ARRAYS.items():
        values = list(fp.get(name) or [0] * words)
        if len(values) != words:
            raise BadThreadState(f"thread {thread.tid}: fpregs.{name} has {len(values)} words, "
                                 f"expected {words}")
        getattr(legacy, name)[:] = values
    return legacy


def _component_bytes(where: str, image: Mapping[str, object], number: int) -> bytes:
    """Component ``number``'s array from the image, as little-endian bytes."""
    name, width = IMAGE_COMPONENTS[number]
    values = image.get(name) or []
    if not isinstance(values, (list, tuple)):
        raise BadThreadState(f"{where}: xsave.{name} is {type(values).__name__}, expected a list")
    fmt = "<%d%s" % (len(values), "I" if width == 4 else "Q")
    try:
        return struct.pack(fmt, *values)
    except struct.error as err:
        raise BadThreadState(f"{where}: xsave.{name}: {err}") from err


def _bits(mask: int) -> list[int]:
    """The numbers of the set bits of ``mask``, lowest first."""
    return [n for n in range(mask.bit_length()) if mask >> n & 1]
