"""Signal-frame building blocks: the CPUID stub, this CPU's XSAVE layout, the XSAVE area and
the frame of a hand-made thread. (That the kernel accepts such a frame and restores ymm1 is
shown end to end by tests/test_blob_e2e.py; the fixtures' frames by test_blob_bootstrap.py.)
"""

from __future__ import annotations

import ctypes
import struct
import subprocess

import pytest

from pycriu_restore.blob import cpuid
from pycriu_restore.blob.cpuid import XsaveComponent
from pycriu_restore.blob.errors import BadThreadState, FpuStateMismatch
from pycriu_restore.blob.sigframe import (SIGFRAME_XSAVE_OFFSET, SIGRETURN_RSP_OFFSET,
                                          build_sigframe, sigframe_bytes)
from pycriu_restore.blob.sigframe_layout import (FP_XSTATE_MAGIC1, FP_XSTATE_MAGIC2, SS_DISABLE,
                                                 Fpstate64, RtSigframe, XsaveHeader)
from pycriu_restore.blob.xsave import build_xsave_area
from pycriu_restore.linux import ptrace
from pycriu_restore.linux.xstate import regset_xcr0
from pycriu_restore.plan.model import Thread
from conftest import seized_fork

YMM = {2: XsaveComponent(2, 576, 256)}
REG_NAMES = ("r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "di", "si", "bp", "bx", "dx",
             "ax", "cx", "sp", "ip", "flags", "cs", "ss", "fs", "gs")


def _thread(**changes: object) -> Thread:
    fields = dict(tid=77, gpregs={name: i + 1 for i, name in enumerate(REG_NAMES)},
                  fpregs={"cwd": 0x37F, "mxcsr": 0x1F80, "xmm_space": list(range(64))},
                  xsave={"xstate_bv": 7, "ymmh_space": list(range(100, 164))},
                  blk_sigset=0x1234, sas=None, clear_tid_addr=0, futex_rla=0, futex_rla_len=0,
                  rseq=None, comm="t")
    fields["gpregs"].update(cs=0x33, ss=0x2B, fs=0, gs=0)
    fields.update(changes)
    return Thread(**fields)


# --- CPUID -------------------------------------------------------------------------------


def test_cpuid_stub_is_its_documented_listing(tmp_path) -> None:
    """The bytes equal what binutils assembles from the listing in cpuid.py's docstring."""
    src, obj, raw = tmp_path / "cpuid.S", tmp_path / "cpuid.o", tmp_path / "cpuid.bin"
    src.write_text("\tpush %rbx\n\tmov %edi, %eax\n\tmov %esi, %ecx\n\tmov %rdx, %r8\n\tcpuid\n"
                   "\tmov %eax, (%r8)\n\tmov %ebx, 4(%r8)\n\tmov %ecx, 8(%r8)\n"
                   "\tmov %edx, 12(%r8)\n\tpop %rbx\n\tret\n")
    subprocess.run(["as", "-o", str(obj), str(src)], check=True)
    subprocess.run(["objcopy", "-O", "binary", "-j", ".text", str(obj), str(raw)], check=True)
    assert raw.read_bytes() == cpuid.CPUID_STUB


def test_cpuid_answers_like_the_kernel() -> None:
    """Leaf 0 names the vendor the kernel reports; XCR0 (from a ptrace regset) is a subset
    of what CPUID 0xD.0 says the CPU supports, and YMM sits at 576 (the standard format)."""
    _eax, ebx, ecx, edx = cpuid.cpuid(0)
    vendor = struct.pack("<III", ebx, edx, ecx).decode()
    with open("/proc/cpuinfo") as info:
        assert f"vendor_id\t: {vendor}" in info.read()
    xcr0 = _xcr0_of_a_child()
    assert xcr0 & ~cpuid.supported_xfeatures() == 0
    components = cpuid.xsave_components()
    if xcr0 & 0x4:
        assert components[2] == XsaveComponent(2, 576, 256)
    for comp in components.values():
        assert comp.offset >= 576 and comp.size_bytes > 0


def _xcr0_of_a_child() -> int:
    with seized_fork() as pid:
        return regset_xcr0(ptrace.get_xstate(pid))


# --- the XSAVE area ----------------------------------------------------------------------


def test_xsave_area_layout() -> None:
    area = build_xsave_area(_thread(), xstate_size=832, xfeatures=0x7, components=YMM)
    assert len(area.data) == 836 and area.xstate_bv == 7 and area.dropped == 0
    legacy = Fpstate64.from_buffer_copy(area.data)
    assert (legacy.cwd, legacy.mxcsr, list(legacy.xmm_space)) == (0x37F, 0x1F80, list(range(64)))
    assert list(legacy.st_space) == [0] * 32      # absent from the image: zero
    sw = legacy.sw_reserved
    assert (sw.magic1, sw.extended_size, sw.xfeatures, sw.xstate_size) == (FP_XSTATE_MAGIC1, 836, 7, 832)
    assert XsaveHeader.from_buffer_copy(area.data, 512).xfeatures == 7
    assert list(struct.unpack_from("<64I", area.data, 576)) == list(range(100, 164))
    assert struct.unpack_from("<I", area.data, 832)[0] == FP_XSTATE_MAGIC2


def test_fxsave_only_thread_gets_the_legacy_features() -> None:
    area = build_xsave_area(_thread(xsave=None), xstate_size=832, xfeatures=0x7, components=YMM)
    assert area.xstate_bv == 0x3
    assert area.data[576:832] == bytes(256)


def test_component_past_the_kernel_area_is_refused() -> None:
    with pytest.raises(FpuStateMismatch, match="ends at byte 832, past this kernel's 700-byte area"):
        build_xsave_area(_thread(), xstate_size=700, xfeatures=0x7, components=YMM)


def test_kernel_without_xsave_is_refused() -> None:
    with pytest.raises(FpuStateMismatch, match="512 bytes with features 0x3"):
        build_xsave_area(_thread(), xstate_size=512, xfeatures=0x3, components=YMM)


@pytest.mark.parametrize("fpregs, message", [
    ({"cwd": 0x10000}, r"fpregs.cwd = 0x10000 does not fit in 16 bits"),
    ({"st_space": [1, 2, 3]}, r"fpregs.st_space has 3 words, expected 32"),
])
def test_malformed_fpregs_are_bad_thread_state(fpregs: dict, message: str) -> None:
    with pytest.raises(BadThreadState, match=message):
        build_xsave_area(_thread(fpregs=fpregs), xstate_size=832, xfeatures=0x7, components=YMM)


# --- the frame ---------------------------------------------------------------------------


def test_frame_of_a_hand_made_thread() -> None:
    addr = 0x7000_0000_0040
    frame = build_sigframe(_thread(), addr, xstate_size=832, xfeatures=0x7, components=YMM)
    assert len(frame.data) == sigframe_bytes(832) and len(frame.data) % 64 == 0
    assert frame.sigreturn_rsp == addr + 8 == addr + SIGRETURN_RSP_OFFSET
    rt = RtSigframe.from_buffer_copy(frame.data)
    sc = rt.uc.uc_mcontext
    assert (sc.r8, sc.r15, sc.rdi, sc.rip, sc.eflags) == (1, 8, 9, 17, 18)
    assert (sc.cs, sc.ss) == (0x33, 0x2B) and sc.fpstate == addr + SIGFRAME_XSAVE_OFFSET == addr + 448
    assert (rt.uc.uc_stack.ss_sp, rt.uc.uc_stack.ss_size, rt.uc.uc_stack.ss_flags) == (0, 0, SS_DISABLE)
    assert rt.uc.uc_sigmask == 0x1234 and rt.pretcode == 0 and bytes(rt.info) == bytes(128)
    assert frame.data[ctypes.sizeof(RtSigframe):SIGFRAME_XSAVE_OFFSET] == bytes(8)
    assert frame.data[SIGFRAME_XSAVE_OFFSET:SIGFRAME_XSAVE_OFFSET + 836] == build_xsave_area(
        _thread(), xstate_size=832, xfeatures=0x7, components=YMM).data


def test_missing_register_is_bad_thread_state() -> None:
    regs = {name: 0 for name in REG_NAMES if name != "ip"}
    with pytest.raises(BadThreadState, match="thread 77: register ip missing from gpregs"):
        build_sigframe(_thread(gpregs=regs), 0x1000, xstate_size=832, xfeatures=0x7, components=YMM)


def test_unaligned_frame_is_a_caller_bug() -> None:
    with pytest.raises(AssertionError, match="build_sigframe: frame at 0x1008"):
        build_sigframe(_thread(), 0x1008, xstate_size=832, xfeatures=0x7, components=YMM)
