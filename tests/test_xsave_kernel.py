"""The signal frame's XSAVE area against the kernel itself, on whatever CPU this runs on.

tests/c/xsave_roundtrip.c loads known values into every vector register this CPU has (ymm,
or zmm0-31 and k0-7 with AVX-512, and PKRU with protection keys) and asks the kernel for a
signal frame; the builder (blob/xsave.py) must produce the same area from the same values.
Then the other way: the kernel's rt_sigreturn through a frame the builder made must load
every one of those registers. Nothing here is pinned to one CPU: sizes, features and
offsets are this machine's.
"""

from __future__ import annotations

import struct
import subprocess

import pytest

from conftest import REPO, seized_fork
from pycriu_restore.blob.cpuid import supported_xfeatures, xsave_components
from pycriu_restore.blob.kernel_frame import KernelFrame, fresh_task_frame
from pycriu_restore.blob.sigframe import build_sigframe
from pycriu_restore.blob.sigframe_layout import Fpstate64
from pycriu_restore.blob.xsave import IMAGE_COMPONENTS, build_xsave_area
from pycriu_restore.linux import ptrace
from pycriu_restore.linux.xstate import (PKRU_LINUX_DEFAULT, XSAVE_HEADER_OFFSET,
                                         XSAVE_SW_RESERVED_OFFSET)
from pycriu_restore.plan.model import Thread

AVX, AVX512, PKRU = 1 << 2, 0b111 << 5, 1 << 9
TEST_PKRU = 0x55555550
FXSAVE_REGISTERS_END = 416        # cwd .. xmm15 of struct _fpstate_64; reserved bytes follow


def _value(seed: int) -> int:
    """splitmix64 finaliser, as value() in xsave_roundtrip.c."""
    m = (1 << 64) - 1
    z = seed * 0x9E3779B97F4A7C15 & m
    z = (z ^ z >> 30) * 0xBF58476D1CE4E5B9 & m
    z = (z ^ z >> 27) * 0x94D049BB133111EB & m
    return z ^ z >> 31


VEC = [[_value(0x1000 + 8 * r + q) for q in range(8)] for r in range(32)]
KREG = [_value(0x2000 + i) for i in range(8)]


@pytest.fixture(scope="module")
def program(tmp_path_factory: pytest.TempPathFactory) -> str:
    out = tmp_path_factory.mktemp("xsave") / "xsave_roundtrip"
    subprocess.run(["gcc", "-O1", "-static", "-mavx512f", "-o", str(out),
                    str(REPO / "tests" / "c" / "xsave_roundtrip.c")], check=True)
    return str(out)


@pytest.fixture(scope="module")
def frame() -> KernelFrame:
    return fresh_task_frame()


def _features(frame: KernelFrame) -> int:
    """What the C program may load here: the vector state this kernel's frames carry."""
    have = frame.xfeatures & AVX
    if frame.xfeatures & AVX512 == AVX512:
        have |= AVX512
    return have | (frame.xfeatures & PKRU)


def _words(data: bytes, fmt: str) -> list[int]:
    return list(struct.unpack(f"<{len(data) // struct.calcsize(fmt)}{fmt}", data))


def _thread_from_values(features: int) -> Thread:
    """A thread whose image holds the C program's values, in CRIU's fields."""
    xmm = b"".join(struct.pack("<2Q", *VEC[r][:2]) for r in range(16))
    xsave: dict[str, object] = {"xstate_bv": 0x3}
    if features & AVX:
        xsave["xstate_bv"] |= AVX
        xsave["ymmh_space"] = _words(b"".join(struct.pack("<2Q", *VEC[r][2:4]) for r in range(16)), "I")
    if features & AVX512:
        xsave["xstate_bv"] |= AVX512
        xsave["opmask_reg"] = KREG
        xsave["zmm_upper"] = [w for r in range(16) for w in VEC[r][4:8]]
        xsave["hi16_zmm"] = [w for r in range(16, 32) for w in VEC[r]]
    if features & PKRU:
        xsave["xstate_bv"] |= PKRU
        xsave["pkru"] = [TEST_PKRU, 0]
    return Thread(tid=1, gpregs={}, fpregs={"cwd": 0x37F, "mxcsr": 0x1F80, "mxcsr_mask": 0,
                                            "xmm_space": _words(xmm, "I")},
                  xsave=xsave, blk_sigset=0, sas=None, clear_tid_addr=0, futex_rla=0,
                  futex_rla_len=0, rseq=None, comm="x")


def test_probe_reads_what_a_c_program_sees(program: str, frame: KernelFrame) -> None:
    """fresh_task_frame() (a Python child) and a C program get the same sw bytes."""
    area = subprocess.run([program, "capture", str(_features(frame))], check=True,
                          capture_output=True).stdout
    assert KernelFrame.parse(area).xstate_size == frame.xstate_size
    assert KernelFrame.parse(area).xfeatures == frame.xfeatures


def test_a_fresh_task_has_linux_default_pkru(frame: KernelFrame) -> None:
    """PKRU_LINUX_DEFAULT, which the CPU policy may drop, is what this kernel gives a fresh
    task (where the CPU has protection keys; elsewhere its frames have no PKRU at all)."""
    if not frame.xfeatures & PKRU:
        assert not supported_xfeatures() & PKRU     # the CPU has none, the kernel hid nothing
        return
    comp = xsave_components()[9]
    assert struct.unpack_from("<I", frame.area, comp.offset)[0] == PKRU_LINUX_DEFAULT


def test_builder_area_equals_the_kernels(program: str, frame: KernelFrame) -> None:
    """Same values in, same bytes out: legacy registers, sw bytes, header and every
    component in use, at this CPU's offsets."""
    features = _features(frame)
    kernel = subprocess.run([program, "capture", str(features)], check=True,
                            capture_output=True).stdout
    built = build_xsave_area(_thread_from_values(features), xstate_size=frame.xstate_size,
                             xfeatures=frame.xfeatures, components=xsave_components()).data
    assert len(built) == len(kernel) == frame.xstate_size + 4
    # x87 control word, MXCSR (the C program's are the defaults) and xmm0-15.
    legacy = Fpstate64.from_buffer_copy(kernel)
    assert (legacy.cwd, legacy.mxcsr) == (0x37F, 0x1F80)
    assert built[32:FXSAVE_REGISTERS_END] == kernel[32:FXSAVE_REGISTERS_END]  # st, xmm
    sw = slice(XSAVE_SW_RESERVED_OFFSET, XSAVE_SW_RESERVED_OFFSET + 20)
    assert built[sw] == kernel[sw]
    bv = struct.unpack_from("<Q", kernel, XSAVE_HEADER_OFFSET)[0]
    assert struct.unpack_from("<Q", built, XSAVE_HEADER_OFFSET)[0] == bv
    checked = 0
    for number, comp in xsave_components().items():
        if bv >> number & 1 and number in IMAGE_COMPONENTS:
            where = slice(comp.offset, comp.offset + comp.size_bytes)
            assert built[where] == kernel[where], f"component {number}"
            checked |= 1 << number
    assert checked == features & (AVX | AVX512 | PKRU)
    assert built[-4:] == kernel[-4:]                                        # MAGIC2


def test_sigreturn_through_the_builders_frame_loads_every_register(program: str,
                                                                  frame: KernelFrame) -> None:
    """rt_sigreturn through a built frame: ymm (or zmm0-31 and k0-7) and PKRU come back."""
    features = _features(frame)
    regs = _sigreturn(program, features, xstate_size=frame.xstate_size)
    vec, kreg, pkru = regs
    width = 8 if features & AVX512 else 4           # qwords per register that came back
    count = 32 if features & AVX512 else 16
    assert [v[:width] for v in vec[:count]] == [v[:width] for v in VEC[:count]]
    if features & AVX512:
        assert kreg == KREG
    if features & PKRU:
        assert pkru == TEST_PKRU


def test_a_frame_sized_from_the_regset_loses_the_vector_state(program: str,
                                                              frame: KernelFrame) -> None:
    """The old bug, shown against the kernel: where the ptrace regset is larger than a fresh
    task's frames (AMX CPUs), a frame sized from it takes the legacy path and the upper
    halves come back zero. Elsewhere both sizes are one, which is why it went unseen."""
    with seized_fork() as pid:
        regset_bytes = len(ptrace.get_xstate(pid))
    if regset_bytes == frame.xstate_size:
        assert frame.xfeatures & (1 << 18) == 0     # no dynamic feature: nothing to lose
        return
    vec, _kreg, _pkru = _sigreturn(program, _features(frame), xstate_size=regset_bytes)
    assert [v[:2] for v in vec[:16]] == [v[:2] for v in VEC[:16]]   # xmm: the legacy part
    assert all(v[2:4] == [0, 0] for v in vec[:16])                   # ymm upper halves: lost


def _sigreturn(program: str, features: int, *, xstate_size: int) -> tuple[list[list[int]], list[int], int]:
    """Run the C program's sigreturn mode with a frame built for it; return its registers."""
    proc = subprocess.Popen([program, "sigreturn", str(features)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE)
    try:
        _ready, frame_addr, after, stack_top = proc.stdout.readline().split()
        thread = _thread_from_values(features)
        gpregs = {name: 0 for name in ("r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "di",
                                       "si", "bp", "bx", "dx", "ax", "cx", "fs", "gs")}
        gpregs.update(ip=int(after, 16), sp=int(stack_top, 16), flags=0x202, cs=0x33, ss=0x2B)
        thread = Thread(**{**thread.__dict__, "gpregs": gpregs})
        built = build_sigframe(thread, int(frame_addr, 16), xstate_size=xstate_size,
                               xfeatures=fresh_task_frame().xfeatures, components=xsave_components())
        out, _ = proc.communicate(built.data, timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, f"xsave_roundtrip sigreturn exited {proc.returncode}"
    vec = [list(struct.unpack_from("<8Q", out, 64 * r)) for r in range(32)]
    kreg = list(struct.unpack_from("<8Q", out, 32 * 64))
    (pkru,) = struct.unpack_from("<I", out, 32 * 64 + 64)
    return vec, kreg, pkru

