"""The CPU policy (restore/cpucap.py) on real checkpoints, against CPUs described by the
XSAVE features their signal frames carry: no root, no restore, every CPU it can meet.

criu-4.2 was dumped on an AMD EPYC (x87, SSE, AVX, PKRU); criu-4.2-more on an Intel Xeon
with AVX-512, AMX and PKU (their READMEs). The restoring CPUs below are frames' xfeatures:
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import FIXTURES, FIXTURES_MORE, needs_fixtures, needs_fixtures_more
from pycriu_restore.errors import EXIT_ENVIRONMENT
from pycriu_restore.images import ImageSet, dump_image, load_image
from pycriu_restore.images.image import Image, kind_of
from pycriu_restore.images.schemas import cpuinfo_pb2
from pycriu_restore.plan.build import build_plan
from pycriu_restore.plan.errors import UnsupportedFeature
from pycriu_restore.restore.cpucap import (INSTRUCTION_WORDS, CpuCap, CpuMismatch, check_cpu,
                                           host_capability_words, parse_cpu_cap)

pytestmark = [needs_fixtures, needs_fixtures_more]

AVX_ONLY = 0x7             # x87, SSE, AVX: a CPU without AVX-512 and without PKU
AMD_PKU = 0x207            # the AMD EPYC of criu-4.2
AVX512_NO_PKU = 0x200E7    # an Intel Xeon without PKU (AMX TILECFG in its frames)
AVX512_PKU = 0x202E7       # the Intel Xeon of criu-4.2-more


def plan(pack: Path, name: str):
    return build_plan(ImageSet.open(pack / "images" / name))


def test_same_cpu_restores_silently() -> None:
    assert check_cpu(plan(FIXTURES, "counter"), AMD_PKU).notes == ()
    assert check_cpu(plan(FIXTURES_MORE, "creds"), AVX512_PKU).notes == ()


def test_default_pkru_is_dropped_with_a_note() -> None:
    """PKRU 0x55555554 is Linux's default: a CPU without PKU loses nothing."""
    result = check_cpu(plan(FIXTURES, "counter"), AVX_ONLY)
    assert result.notes == ("thread 31100: PKRU at its default value, which this CPU cannot hold "
                            "(its signal frames lack it): left out, nothing changes",)
    assert check_cpu(plan(FIXTURES_MORE, "posixtimer"), AVX512_NO_PKU).notes[0].startswith(
        "thread 40400: PKRU at its default value")


def test_pkru_the_process_set_is_refused() -> None:
    with pytest.raises(CpuMismatch, match=r"thread 31600 holds PKRU state \(PKRU 0x5555555c\)") as err:
        check_cpu(plan(FIXTURES, "fpu"), AVX_ONLY)
    assert err.value.exit_code == EXIT_ENVIRONMENT


def test_avx512_state_on_a_cpu_without_it_is_refused() -> None:
    with pytest.raises(CpuMismatch, match="thread 40100 holds AVX-512 opmask, AVX-512 ZMM_Hi256, "
                                          "AVX-512 Hi16_ZMM state that this CPU cannot restore"):
        check_cpu(plan(FIXTURES_MORE, "avx512"), AMD_PKU)
    # Its AVX-512 state needs AVX-512, its PKRU needs PKU: both are named.
    with pytest.raises(CpuMismatch, match="holds PKRU state"):
        check_cpu(plan(FIXTURES_MORE, "avx512"), AVX512_NO_PKU)


def test_avx512_arrays_at_their_init_state_need_no_avx512() -> None:
    """creds was dumped on an AVX-512 CPU (so its images have the arrays) without using it
    (xstate_bv 0x202): an AMD CPU restores it."""
    assert check_cpu(plan(FIXTURES_MORE, "creds"), AMD_PKU).notes == ()


def test_more_state_than_the_dump_cpu_is_refused_unless_none() -> None:
    """glibc sized its lazy-binding save area on the dump CPU (restore/cpucap.py)."""
    with pytest.raises(CpuMismatch, match=r"this CPU has XSAVE state the dump CPU lacked \(AVX-512"):
        check_cpu(plan(FIXTURES, "threads"), AVX512_PKU)
    relaxed = check_cpu(plan(FIXTURES, "threads"), AVX512_PKU, CpuCap.NONE)
    assert any("glibc's lazy-binding save area can overflow" in w for w in relaxed.warnings)


def test_cap_none_drops_with_a_warning() -> None:
    result = check_cpu(plan(FIXTURES, "fpu"), AVX_ONLY, CpuCap.NONE)
    assert result.warnings == ("thread 31600: PKRU state dropped (--cpu-cap without fpu): the "
                               "process may fault or compute wrong results",)


def test_parse_cpu_cap() -> None:
    assert parse_cpu_cap("fpu,ins") == CpuCap.FPU | CpuCap.INS
    assert parse_cpu_cap("all") == CpuCap.FPU | CpuCap.CPU | CpuCap.INS
    assert parse_cpu_cap("none") == CpuCap.NONE
    with pytest.raises(ValueError, match="unknown cpu cap 'sse'"):
        parse_cpu_cap("fpu,sse")


def test_ins_without_cpuinfo_is_refused() -> None:
    with pytest.raises(CpuMismatch, match="the images have no cpuinfo.img"):
        check_cpu(plan(FIXTURES, "counter"), AMD_PKU, CpuCap.FPU | CpuCap.INS)


def _with_cpuinfo(tmp_path: Path, words: list[int]) -> Path:
    images = tmp_path / "counter"
    shutil.copytree(FIXTURES / "images" / "counter", images)
    entry = cpuinfo_pb2.CpuinfoEntry()
    x86 = entry.x86_entry.add(vendor_id=cpuinfo_pb2.CpuinfoX86Entry.AMD, cpu_family=25, model=1,
                              stepping=1, capability_ver=2, model_id="dump CPU", xfeatures_mask=AMD_PKU)
    x86.capability.extend(words)
    kind, _ = kind_of("cpuinfo.img")
    (images / "cpuinfo.img").write_bytes(dump_image(Image(kind, entries=[entry], extras=[None])))
    return images


def test_cpuinfo_img_is_read_and_compared(tmp_path: Path) -> None:
    host = host_capability_words()
    words = [host.get(w, 0) for w in range(20)]
    images = _with_cpuinfo(tmp_path / "same", words)
    same = build_plan(ImageSet.open(images))
    assert same.dump_cpu.capability == tuple(words) and same.dump_cpu.model == "dump CPU"
    assert same.dump_cpu.xfeatures == AMD_PKU          # from cpuinfo.img, not inferred
    check_cpu(same, AMD_PKU, CpuCap.ALL)               # a CPU like this one: accepted
    word, bit = next((w, b) for w in INSTRUCTION_WORDS for b in range(32) if not host[w] >> b & 1)
    words[word] |= 1 << bit                            # an instruction-set bit this CPU lacks
    other = build_plan(ImageSet.open(_with_cpuinfo(tmp_path / "other", words)))
    with pytest.raises(CpuMismatch, match=rf"this CPU lacks capabilities the dump CPU \(dump CPU\) "
                                          rf"had .*word {word} bits {1 << bit:#x}"):
        check_cpu(other, AMD_PKU, CpuCap.INS)


def _patched_core(tmp_path: Path, change) -> Path:
    images = tmp_path / "counter"
    shutil.copytree(FIXTURES / "images" / "counter", images)
    core = load_image(images / "core-31100.img")
    change(core.entries[0].thread_info.fpregs.xsave)
    (images / "core-31100.img").write_bytes(dump_image(core))
    return images


def test_state_without_data_in_the_image_is_refused(tmp_path: Path) -> None:
    """AMX tiles in use: CRIU's format has no field for them, so they cannot come back."""
    images = _patched_core(tmp_path, lambda x: setattr(x, "xstate_bv", x.xstate_bv | 1 << 18))
    with pytest.raises(UnsupportedFeature, match=r"core-31100.img: .*xstate_bv 0x40202: AMX TILEDATA in use"):
        build_plan(ImageSet.open(images))


def test_cli_names_an_unknown_cap() -> None:
    result = subprocess.run([sys.executable, "-m", "pycriu_restore", "restore", "-D",
                             str(FIXTURES / "images" / "counter"), "--cpu-cap", "sse"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "unknown cpu cap 'sse'" in result.stderr
