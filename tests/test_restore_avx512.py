"""criu-4.2-more's avx512: zmm0-31, k0-7 and PKRU 0x55555574, held across a loop on purpose.

On a CPU with AVX-512 and protection keys it restores and its own checks pass (verify.py);
on any other CPU the default policy refuses it, exit 4, naming what this CPU lacks. Either
way, with --cpu-cap none, every register this CPU does have is checked at the first
instruction after rt_sigreturn against the image: the XSAVE path on whatever CPU runs this.
Every test kills what it restored, by pid, and waits until /proc/PID is gone.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys

import pytest

from conftest import FIXTURES_MORE, kill_and_wait, pid_max_at_least, needs_fixtures_more
from pycriu_restore.blob.cpuid import xsave_components
from pycriu_restore.blob.kernel_frame import fresh_task_frame
from pycriu_restore.images import ImageSet
from pycriu_restore.linux.xstate import XFEATURE_MASK_PKRU
from pycriu_restore.restore.cpucap import CpuCap
from pycriu_restore.restore.orchestrator import RestoreOptions, restore

pytestmark = needs_fixtures_more

IMAGES = FIXTURES_MORE / "images" / "avx512"
PID = 40100
AVX512 = 0b111 << 5
HOST = fresh_task_frame().xfeatures
RUNS_HERE = HOST & AVX512 == AVX512 and bool(HOST & XFEATURE_MASK_PKRU)


@pytest.fixture(autouse=True)
def _pid_max():
    with pid_max_at_least(65536):
        subprocess.run([str(FIXTURES_MORE / "install.sh"), "avx512"], check=True, capture_output=True)
        yield
    assert not os.path.exists(f"/proc/{PID}"), f"pid {PID} is still in use after the test"


def test_avx512_restores_where_the_cpu_has_it_and_is_refused_elsewhere(tmp_path) -> None:
    pidfile = tmp_path / "pid"
    result = subprocess.run([sys.executable, "-m", "pycriu_restore", "restore", "-D", str(IMAGES), "-d",
                             "--pidfile", str(pidfile)], capture_output=True, text=True, timeout=120)
    if not RUNS_HERE:
        assert result.returncode == 4, result.stderr
        assert result.stderr.count("\n") == 1 and "thread 40100 holds" in result.stderr
        lacking = (["AVX-512 opmask"] if HOST & AVX512 != AVX512 else []) + \
            (["PKRU state (PKRU 0x55555574)"] if not HOST & XFEATURE_MASK_PKRU else [])
        assert all(word in result.stderr for word in lacking), result.stderr
        assert not os.path.exists(f"/proc/{PID}")
        return
    assert result.returncode == 0, result.stderr
    try:
        check = subprocess.run([sys.executable, str(FIXTURES_MORE / "verify.py"), "avx512"],
                               capture_output=True, text=True, timeout=60)
        assert check.returncode == 0 and check.stdout.startswith("PASS avx512"), check.stdout
    finally:
        kill_and_wait(int(pidfile.read_text()))


def test_avx512_registers_equal_the_image_after_sigreturn() -> None:
    """zmm, k and ymm (and PKRU where the CPU has it) at the first instruction the restored
    thread runs, read through ptrace, against core-40100.img."""
    xsave = ImageSet.open(IMAGES).core(PID).thread_info.fpregs.xsave
    seen: dict[str, bytes] = {}

    def inspect(tracee) -> None:
        seen["xstate"] = tracee.xstate()

    restored = restore(str(IMAGES), RestoreOptions(cpu_cap=CpuCap.NONE, before_detach=inspect))
    kill_and_wait(restored.root_pid)
    regset, layout = seen["xstate"], xsave_components()
    (bv,) = struct.unpack_from("<Q", regset, 512)

    def component(number: int) -> bytes:
        comp = layout[number]
        return regset[comp.offset:comp.offset + comp.size_bytes]

    assert component(2) == struct.pack(f"<{len(xsave.ymmh_space)}I", *xsave.ymmh_space)
    assert any(xsave.ymmh_space)
    if HOST & AVX512 == AVX512:
        assert bv & AVX512 == AVX512
        assert component(5) == struct.pack("<8Q", *xsave.opmask_reg)
        assert component(6) == struct.pack("<64Q", *xsave.zmm_upper)
        assert component(7) == struct.pack("<128Q", *xsave.hi16_zmm)
    else:
        assert bv & AVX512 == 0                     # dropped, as --cpu-cap none asked
    if HOST & XFEATURE_MASK_PKRU:
        assert struct.unpack_from("<I", component(9))[0] == xsave.pkru[0] == 0x55555574
