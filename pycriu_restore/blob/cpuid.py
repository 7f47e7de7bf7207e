"""CPUID from Python, and what leaf 0xD says about the XSAVE area of this CPU.

A signal frame's XSAVE area is in the *standard* (non-compacted) format: each state
component sits at the offset CPUID leaf 0xD sub-leaf ``n`` reports for it (EBX), with the
size it reports (EAX) (Intel SDM vol. 1 §13.4.3, "Extended Region of an XSAVE Area"; AMD
APM vol. 3, CPUID Fn0000_000D). The offsets differ between CPUs (AVX-512 or not, AMD or
Intel), so they are read from the CPU the task will run on, never hard-coded.

Python cannot execute ``cpuid`` itself. :func:`cpuid` runs a 27-byte machine-code stub from
an executable anonymous page through ctypes::

    push %rbx                 53              rbx is callee-saved; cpuid overwrites it
    mov  %edi, %eax           89 f8           leaf
    mov  %esi, %ecx           89 f1           sub-leaf
    mov  %rdx, %r8            49 89 d0        out: uint32_t[4]
    cpuid                     0f a2
    mov  %eax, (%r8)          41 89 00
    mov  %ebx, 4(%r8)         41 89 58 04
    mov  %ecx, 8(%r8)         41 89 48 08
    mov  %edx, 12(%r8)        41 89 50 0c
    pop  %rbx                 5b
    ret                       c3

tests/test_sigframe.py assembles the listing with binutils and compares the bytes.
"""

from __future__ import annotations

import ctypes
import functools
import mmap
from dataclasses import dataclass
from typing import Callable

CPUID_STUB = bytes.fromhex("53" "89f8" "89f1" "4989d0" "0fa2" "418900" "41895804" "41894808"
                           "4189500c" "5b" "c3")

# CPUID leaf 0xD: processor extended state enumeration (Intel SDM vol. 2A, CPUID).
CPUID_LEAF_XSTATE = 0xD

# First extended component: 0 (x87) and 1 (SSE) live in the 512-byte legacy region.
FIRST_EXTENDED_COMPONENT = 2
# Highest user-state component the kernel's uapi covers today (XFEATURE_XTILE_DATA = 18).
LAST_COMPONENT = 18

_Regs = ctypes.c_uint32 * 4


@dataclass(frozen=True)
class XsaveComponent:
    """One XSAVE state component in the standard format: where and how big."""

    number: int       # state component number (bit in XCR0 / xstate_bv)
    offset: int       # bytes from the start of the XSAVE area
    size_bytes: int


@functools.cache
def _stub() -> tuple[mmap.mmap, Callable[[int, int, ctypes.Array], None]]:
    """Map the stub once into an executable page and return it with its ctypes function.

    The page is kept for the life of the process: the function pointer refers into it.
    """
    page = mmap.mmap(-1, mmap.PAGESIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,
                     prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    page.write(CPUID_STUB)
    address = ctypes.addressof(ctypes.c_char.from_buffer(page))
    prototype = ctypes.CFUNCTYPE(None, ctypes.c_uint32, ctypes.c_uint32, ctypes.POINTER(_Regs))
    return page, prototype(address)


def cpuid(leaf: int, subleaf: int = 0) -> tuple[int, int, int, int]:
    """Execute CPUID(leaf, subleaf) on this CPU; return (eax, ebx, ecx, edx)."""
    out = _Regs()
    _stub()[1](leaf, subleaf, out)
    return out[0], out[1], out[2], out[3]


def supported_xfeatures() -> int:
    """The user state components this CPU can save (CPUID 0xD.0 EDX:EAX, a superset of XCR0)."""
    eax, _ebx, _ecx, edx = cpuid(CPUID_LEAF_XSTATE, 0)
    return eax | edx << 32


@functools.cache
def xsave_components() -> dict[int, XsaveComponent]:
    """Offset and size of every extended user state component this CPU supports.

    Components 0 and 1 (x87, SSE) are in the legacy region and not listed; supervisor
    components (sub-leaves with ECX bit 0 set, e.g. CET) have no standard-format offset
    and are left out.
    """
    supported = supported_xfeatures()
    found = {}
    for number in range(FIRST_EXTENDED_COMPONENT, LAST_COMPONENT + 1):
        if not supported >> number & 1:
            continue
        size, offset, flags, _edx = cpuid(CPUID_LEAF_XSTATE, number)
        if size == 0 or flags & 1:
            continue
        found[number] = XsaveComponent(number=number, offset=offset, size_bytes=size)
    return found
