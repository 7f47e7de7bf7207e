"""SDMA linear-copy packets: the commands that copy BO contents on the GPU's DMA engine.

The fill path puts these in an indirect buffer (IB) and submits it to the SDMA ring
(kfd_backend.py). One COPY LINEAR packet is 7 dwords::

    dw0  header: op COPY (1) in bits 0-7, sub-op LINEAR (0) in bits 8-15
    dw1  count   (see below)
    dw2  parameter: 0 (no endian swap)
    dw3  source address, low 32 bits        dw4  source address, high 32 bits
    dw5  destination address, low 32 bits   dw6  destination address, high 32 bits

and the IB is padded with NOP (0) dwords to a multiple of 8 dwords.

The count field is not encoded the same way on every generation (research
/criu-restore-internals.md §5.12 point 4, where CRIU gets it wrong on GFX9+):

    family (amdgpu_drm.h)      SDMA    kernel emit_copy_buffer        count   max bytes/packet
    -------------------------  ------  -----------------------------  ------  ----------------
    SI (110)                   none    si_dma.c: another packet set   -       unsupported
    CI, KV (120, 125)          2.0     cik_sdma_emit_copy_buffer      bytes   2 MiB - 1
    VI, CZ (130, 135)          2.4/3   sdma_v2_4/_v3_0_...            bytes   2 MiB - 1
    AI (141) and later         4.0+    sdma_v4_0 ... sdma_v7_0_...    bytes-1 2 MiB

Sources: Linux drivers/gpu/drm/amd/amdgpu/{cik_sdma,sdma_v2_4,sdma_v3_0,sdma_v4_0,
sdma_v5_0,sdma_v5_2,sdma_v6_0,sdma_v7_0}.c (copy_max_bytes 0x1fffff before GFX9,
0x400000 from it), Mesa's si_sdma_copy_buffer / radv_sdma ("gfx_level >= GFX9 ? csize - 1
: csize"). The per-packet cap is CRIU's SDMA_LINEAR_COPY_MAX_SIZE (2 MiB, 2 MiB - 1 before
AI: research §5.7), within every generation's limit. SDMA 7.1's copy is 8 dwords; no
family constant names it yet, so it is not supported here.

The opcodes come from the kernel's private packet headers (cikd.h, vega10_sdma_pkt_open.h),
not from a uapi header: tests/test_amdgpu_sdma.py checks exact dwords instead.
"""

from __future__ import annotations

from pycriu_restore.plugins.amdgpu.drm import AMDGPU_FAMILY_AI, AMDGPU_FAMILY_CI
from pycriu_restore.plugins.amdgpu.ioctl import DeviceUnavailable

SDMA_OP_NOP = 0
SDMA_OP_COPY = 1
SDMA_SUBOP_COPY_LINEAR = 0

COPY_LINEAR_DWORDS = 7   # one COPY LINEAR packet
IB_ALIGN_DWORDS = 8      # an SDMA IB is a multiple of this many dwords (sdma_v*_ring_pad_ib)
DWORD_BYTES = 4

# CRIU's SDMA_LINEAR_COPY_MAX_SIZE: bytes per packet on AI and later (one less before).
LINEAR_COPY_MAX_BYTES = 1 << 21

_U32 = 0xFFFFFFFF
_U64_LIMIT = 1 << 64


def _check_family(family: int) -> None:
    """Refuse GPU families without SDMA (SI and older, or unknown)."""
    if family < AMDGPU_FAMILY_CI:
        raise DeviceUnavailable(f"GPU family {family} has no SDMA engine (SDMA starts with "
                                f"Sea Islands, family {AMDGPU_FAMILY_CI}): cannot copy BOs")


def max_copy_bytes(family: int) -> int:
    """Largest byte count one COPY LINEAR packet may carry on a GPU of ``family``."""
    _check_family(family)
    return LINEAR_COPY_MAX_BYTES if family >= AMDGPU_FAMILY_AI else LINEAR_COPY_MAX_BYTES - 1


def copy_count(nbytes: int, family: int) -> int:
    """The count dword for a copy of ``nbytes``: ``nbytes - 1`` from AI (SDMA 4.0) on."""
    limit = max_copy_bytes(family)
    if not 0 < nbytes <= limit:
        raise ValueError(f"one SDMA copy packet carries 1..{limit} bytes on family {family}, "
                         f"not {nbytes}")
    return nbytes - 1 if family >= AMDGPU_FAMILY_AI else nbytes


def header(op: int, sub_op: int = 0, extra: int = 0) -> int:
    """SDMA packet header dword: op in bits 0-7, sub-op in 8-15, extra in 16-31."""
    return (op & 0xFF) | ((sub_op & 0xFF) << 8) | ((extra & 0xFFFF) << 16)


def linear_copy_packet(src_va: int, dst_va: int, nbytes: int, family: int) -> list[int]:
    """One COPY LINEAR packet (7 dwords) copying ``nbytes`` from ``src_va`` to ``dst_va``."""
    for name, va in (("source", src_va), ("destination", dst_va)):
        if not (0 <= va and va + nbytes <= _U64_LIMIT):
            raise ValueError(f"SDMA copy {name} range {va:#x}+{nbytes:#x} is outside 64 bits")
    return [header(SDMA_OP_COPY, SDMA_SUBOP_COPY_LINEAR), copy_count(nbytes, family), 0,
            src_va & _U32, src_va >> 32, dst_va & _U32, dst_va >> 32]


def copy_packets(src_va: int, dst_va: int, nbytes: int, family: int) -> list[int]:
    """Packets copying ``nbytes`` in pieces of at most :func:`max_copy_bytes`, in order."""
    if nbytes <= 0:
        raise ValueError(f"an SDMA copy needs a positive byte count, not {nbytes}")
    step = max_copy_bytes(family)
    dwords: list[int] = []
    for done in range(0, nbytes, step):
        dwords += linear_copy_packet(src_va + done, dst_va + done, min(step, nbytes - done),
                                     family)
    return dwords


def pad_ib(dwords: list[int]) -> list[int]:
    """``dwords`` followed by NOPs up to the next multiple of :data:`IB_ALIGN_DWORDS`."""
    return dwords + [header(SDMA_OP_NOP)] * (-len(dwords) % IB_ALIGN_DWORDS)


def copy_ib(src_va: int, dst_va: int, nbytes: int, family: int) -> list[int]:
    """A whole IB for one copy: the packets of :func:`copy_packets`, NOP-padded."""
    return pad_ib(copy_packets(src_va, dst_va, nbytes, family))


def ib_bytes_for(nbytes: int, family: int) -> int:
    """Size in bytes of the padded IB that :func:`copy_ib` builds for ``nbytes``."""
    packets = -(-nbytes // max_copy_bytes(family))
    dwords = packets * COPY_LINEAR_DWORDS
    return (dwords + (-dwords % IB_ALIGN_DWORDS)) * DWORD_BYTES
