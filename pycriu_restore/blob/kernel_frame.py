"""Ask the running kernel what a signal frame's XSAVE area looks like for a fresh task.

rt_sigreturn restores the extended FPU state (YMM, ZMM, opmask, PKRU ...) only if the
frame's ``struct _fpx_sw_bytes`` matches the task it runs in (arch/x86/kernel/fpu/signal.c,
``check_xstate_in_sigframe``): ``xstate_size`` must not exceed the task's
``fpstate->user_size``, and MAGIC2 must sit right after it. Otherwise the kernel silently
takes the legacy path and restores x87/SSE alone. The two numbers a frame builder needs are
therefore the ones the kernel itself writes into every frame (``save_sw_bytes``)::

    sw_bytes.xstate_size = fpstate->user_size        bytes of the XSAVE area
    sw_bytes.xfeatures   = fpstate->user_xfeatures   components laid out in it

Neither is the length of the ptrace NT_X86_XSTATE regset: that is the kernel's *maximum*
(``fpu_user_cfg.max_size``), which includes dynamic features such as AMX tile data (8 KiB)
that a task only gets after ARCH_REQ_XCOMP_PERM and its first use. On a CPU with AMX the
regset is 11008 bytes while a fresh task's frames are 2816: a frame sized from the regset
is refused, and every restored thread loses its vector registers. Nor is it a formula over
CPUID: which features a task's frame carries is the kernel's decision.

So this module asks the kernel: it forks a child (a fresh task, as every restored task is:
``fpu_clone`` gives each new task the default fpstate), sends the child a signal, and the
child's handler copies the XSAVE area of the frame the kernel built. The handler is a
ctypes callback; it runs inside ``raise(2)``, a ctypes call that released the GIL, so the
callback can take it. The answer cannot change while this process runs, so it is cached.
"""

from __future__ import annotations

import ctypes
import functools
import os
import signal
import struct
from dataclasses import dataclass

from pycriu_restore.blob.errors import FpuStateMismatch
from pycriu_restore.blob.sigframe_layout import (FP_XSTATE_MAGIC1, FP_XSTATE_MAGIC2,
                                                 FP_XSTATE_MAGIC2_SIZE, FpxSwBytes, UContext)
from pycriu_restore.linux.libc import libc_function
from pycriu_restore.linux.xstate import FXSAVE_SIZE, XSAVE_SW_RESERVED_OFFSET

# <bits/sigaction.h> (glibc's struct sigaction on x86-64) and <asm/signal.h>.
SA_SIGINFO = 0x4
PROBE_SIGNAL = signal.SIGUSR1
# The child's exit status when it could not capture a frame (printed by the parent).
_NO_FRAME = 3


class _LibcSigaction(ctypes.Structure):
    """glibc's struct sigaction: sigaction(3) fills sa_restorer and SA_RESTORER itself."""

    _fields_ = [
        ("sa_sigaction", ctypes.c_void_p),
        ("sa_mask", ctypes.c_uint64 * 16),     # sigset_t: 1024 bits
        ("sa_flags", ctypes.c_int),
        ("sa_restorer", ctypes.c_void_p),
    ]


_HANDLER = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)
_sigaction = libc_function("sigaction", ctypes.c_int,
                           [ctypes.c_int, ctypes.POINTER(_LibcSigaction), ctypes.c_void_p])
_raise = libc_function("raise", ctypes.c_int, [ctypes.c_int])


@dataclass(frozen=True)
class KernelFrame:
    """The XSAVE part of a signal frame the kernel built for a fresh task of this machine."""

    xstate_size: int    # sw_bytes.xstate_size: the task's fpstate->user_size
    xfeatures: int      # sw_bytes.xfeatures: the task's fpstate->user_xfeatures
    area: bytes         # the XSAVE area as the kernel wrote it: xstate_size + MAGIC2

    @classmethod
    def parse(cls, area: bytes) -> KernelFrame:
        """Read the sw bytes of a captured area and check the kernel's own invariants."""
        if len(area) < FXSAVE_SIZE:
            raise FpuStateMismatch(f"the kernel's signal frame holds {len(area)} bytes of FPU "
                                   f"state, less than the {FXSAVE_SIZE}-byte legacy region")
        sw = FpxSwBytes.from_buffer_copy(area, XSAVE_SW_RESERVED_OFFSET)
        if sw.magic1 != FP_XSTATE_MAGIC1:
            raise FpuStateMismatch("the kernel's signal frames carry no XSAVE area (a CPU "
                                   "without XSAVE is not supported)")
        end = sw.xstate_size
        if len(area) != end + FP_XSTATE_MAGIC2_SIZE or \
                struct.unpack_from("<I", area, end)[0] != FP_XSTATE_MAGIC2:
            raise AssertionError(f"KernelFrame.parse: no MAGIC2 at {end} in a "
                                 f"{len(area)}-byte kernel frame")
        return cls(xstate_size=sw.xstate_size, xfeatures=sw.xfeatures, area=bytes(area))


def capture_in_this_task() -> bytes:
    """Signal the calling task and return the XSAVE area of the frame the kernel made.

    Changes this task's PROBE_SIGNAL disposition: call it in a child made for the purpose.
    """
    captured: list[bytes] = []

    def handler(_signo: int, _info: int, uc_addr: int) -> None:
        fpstate = UContext.from_address(uc_addr).uc_mcontext.fpstate
        sw = FpxSwBytes.from_address(fpstate + XSAVE_SW_RESERVED_OFFSET)
        size = sw.xstate_size + FP_XSTATE_MAGIC2_SIZE if sw.magic1 == FP_XSTATE_MAGIC1 \
            else FXSAVE_SIZE
        captured.append(ctypes.string_at(fpstate, size))

    callback = _HANDLER(handler)            # kept alive until the signal was handled
    action = _LibcSigaction(sa_sigaction=ctypes.cast(callback, ctypes.c_void_p).value,
                            sa_flags=SA_SIGINFO)
    if _sigaction(PROBE_SIGNAL, ctypes.byref(action), None) != 0:
        raise OSError(ctypes.get_errno(), "sigaction")
    _raise(PROBE_SIGNAL)                    # delivered before raise returns
    if not captured:
        raise AssertionError("capture_in_this_task: the handler did not run")
    return captured[0]


@functools.cache
def fresh_task_frame() -> KernelFrame:
    """The XSAVE layout of this kernel's signal frames for a freshly forked task (cached).

    Raises FpuStateMismatch if the kernel's frames have no XSAVE area.
    """
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:                             # the child: capture, send, leave at once
        status = _NO_FRAME
        try:
            os.close(read_fd)
            data = capture_in_this_task()
            view = memoryview(data)
            while view:
                view = view[os.write(write_fd, view):]
            status = 0
        finally:
            os._exit(status)
    os.close(write_fd)
    chunks = []
    with os.fdopen(read_fd, "rb") as pipe:
        while chunk := pipe.read(65536):
            chunks.append(chunk)
    _, wait_status = os.waitpid(pid, 0)
    if wait_status != 0:
        raise FpuStateMismatch(f"the child that asks the kernel for a signal frame ended with "
                               f"wait status {wait_status:#x}: the frame layout is unknown")
    return KernelFrame.parse(b"".join(chunks))
