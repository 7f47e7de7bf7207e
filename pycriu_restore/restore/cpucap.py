"""May this machine hold the CPU state of the images? CRIU's ``--cpu-cap``, as a policy.

A restored thread gets its FPU/XSAVE state back through its signal frame (blob/xsave.py),
which carries the components this kernel's frames carry (``KernelFrame.xfeatures``). A
component the image has in use (its ``xstate_bv`` bit set) and the frames do not carry
cannot come back: this CPU lacks it (PKRU without protection keys, AVX-512 ...). What that
means depends on the value the thread held::

    default value (all zero; PKRU also as Linux   dropped, with a note: the thread reads the
      gives it to every task, 0x55555554)         same values (no such register: no access
                                                  restriction, nothing to lose)
    anything else                                 refused, exit 4, naming the components
                                                  and the threads: the process uses them
                                                  (glibc chose AVX-512 string functions on an
                                                  AVX-512 CPU), it would fault or go wrong

The caps, CRIU's names, comma separated (``--cpu-cap fpu,ins``):

    fpu    the check above (the default, as in CRIU)
    none   no check: state this CPU cannot hold is dropped with a warning
    ins    also compare the instruction-set words of the dump CPU (cpuinfo.img) with this
           CPU's: an instruction the process may have chosen at start must exist here
    cpu    also compare every capability word both CPUs can name (stricter than ins)
    all    fpu, cpu and ins

``ins`` and ``cpu`` need cpuinfo.img, which ``criu dump`` writes only when asked; without it
they refuse (exit 4) rather than pass unchecked. Where the images have no cpuinfo.img, the
dump CPU's XSAVE features are read from the xsave arrays CRIU wrote (one for every component
the dump CPU had, in use or not: ../shared/fixtures/criu-4.2-more/README.md).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from pycriu_restore.blob.cpuid import cpuid
from pycriu_restore.blob.xsave import IMAGE_COMPONENTS, LEGACY_XFEATURES
from pycriu_restore.linux.xstate import PKRU_LINUX_DEFAULT, XFEATURE_MASK_PKRU, xfeature_names
from pycriu_restore.plan.model import DumpCpu, RestorePlan, Thread
from pycriu_restore.restore.errors import EnvironmentMismatch


class CpuCap(enum.Flag):
    """What the CPU check compares (CRIU's CPU_CAP_* of criu/include/cr_options.h)."""

    NONE = 0
    FPU = 1
    CPU = 2
    INS = 4
    ALL = FPU | CPU | INS


DEFAULT_CPU_CAP = CpuCap.FPU
CPU_CAP_NAMES = {"none": CpuCap.NONE, "fpu": CpuCap.FPU, "cpu": CpuCap.CPU,
                 "ins": CpuCap.INS, "all": CpuCap.ALL}


class CpuMismatch(EnvironmentMismatch):
    """This CPU cannot hold state the images use, or lacks features the dump CPU had."""


def parse_cpu_cap(text: str) -> CpuCap:
    """``"fpu,ins"`` -> CpuCap; raises ValueError naming an unknown word."""
    caps = CpuCap.NONE
    for word in filter(None, (w.strip() for w in text.split(","))):
        if word not in CPU_CAP_NAMES:
            raise ValueError(f"unknown cpu cap {word!r} (expected {', '.join(CPU_CAP_NAMES)})")
        caps |= CPU_CAP_NAMES[word]
    return caps


# The capability words of the kernel's x86_capability[] (arch/x86/include/asm/cpufeatures.h)
# that are plain CPUID registers, so this CPU's can be read the same way: word -> (leaf,
# subleaf, register index in (eax, ebx, ecx, edx)). The other words are Linux's own
# (synthetic bits, bugs, power management) and are not compared.
CPUID_WORDS: dict[int, tuple[int, int, int]] = {
    0: (0x1, 0, 3),            # CPUID_1_EDX: fpu ... sse2, ht
    1: (0x80000001, 0, 3),     # CPUID_8000_0001_EDX: syscall, nx, lm ...
    4: (0x1, 0, 2),            # CPUID_1_ECX: sse3 ... avx, f16c, rdrand
    6: (0x80000001, 0, 2),     # CPUID_8000_0001_ECX: lahf_lm, abm, sse4a ...
    9: (0x7, 0, 1),            # CPUID_7_0_EBX: bmi1, avx2, bmi2, avx512f ...
    10: (0xD, 1, 0),           # CPUID_D_1_EAX: xsaveopt, xsavec, xsaves
    12: (0x7, 1, 0),           # CPUID_7_1_EAX: avx_vnni, avx512_bf16 ...
    16: (0x7, 0, 2),           # CPUID_7_ECX: avx512_vbmi, pku, vaes ...
    18: (0x7, 0, 3),           # CPUID_7_EDX: avx512_fp16, amx ...
}
# The words that describe instructions a program may pick at start (ins): all of the above
# but CPUID_D_1_EAX, which is about how the kernel saves state, not what a program runs.
INSTRUCTION_WORDS = (0, 1, 4, 6, 9, 12, 16, 18)


@dataclass(frozen=True)
class CpuCheck:
    """What the check allowed: notes (exact, for -v) and warnings (worth a look)."""

    notes: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


def host_capability_words() -> dict[int, int]:
    """This CPU's CPUID_WORDS, read with CPUID (0 where the leaf is not implemented)."""
    max_basic, max_extended = cpuid(0)[0], cpuid(0x80000000)[0]
    words = {}
    for word, (leaf, subleaf, reg) in CPUID_WORDS.items():
        implemented = leaf <= (max_extended if leaf & 0x80000000 else max_basic)
        words[word] = cpuid(leaf, subleaf)[reg] if implemented else 0
    return words


def check_cpu(plan: RestorePlan, frame_xfeatures: int, caps: CpuCap = DEFAULT_CPU_CAP, *,
              host_words: Callable[[], Mapping[int, int]] = host_capability_words) -> CpuCheck:
    """Decide whether this machine may restore ``plan`` (see the module docstring).

    ``frame_xfeatures`` is what this kernel's signal frames carry (kernel_frame.py).
    Raises CpuMismatch (exit 4) naming what is missing; returns the notes and warnings.
    """
    notes: list[str] = []
    warnings: list[str] = []
    # More state than the dump CPU: glibc sized its lazy-binding save area from the dump
    # CPU's CPUID, and XSAVE here writes every component of its mask that is in use, past
    # that area (seen: the threads fixture, dumped on AMD, crashed 1 restore in 5 on an
    # AVX-512 CPU, in ld.so's xsavec). CRIU's fpu check refuses a different XSAVE size too.
    overflow, other = _more_state(plan, frame_xfeatures)
    if overflow and caps & CpuCap.FPU:
        raise CpuMismatch(f"this CPU has XSAVE state the dump CPU lacked ({xfeature_names(overflow)}): "
                          "glibc sized its lazy-binding save area on the dump CPU and would write "
                          "past it here (the restored process can crash); restore on a CPU with "
                          "the same XSAVE features, or pass --cpu-cap none to take the risk")
    if overflow or other:
        warnings.append(f"this CPU has XSAVE state the dump CPU lacked "
                        f"({xfeature_names(overflow | other)})"
                        + (": glibc's lazy-binding save area can overflow (--cpu-cap none)"
                           if overflow else ": not used by the restored process"))
    lost = _state_this_cpu_cannot_hold(plan.tasks_threads(), frame_xfeatures)
    for (mask, in_use), tids in lost.items():
        plural = len(tids) > 1
        who = f"thread{'s' if plural else ''} {_tid_list(tids)}"
        if not in_use:
            notes.append(f"{who}: {xfeature_names(mask)} at its default value, which this CPU "
                         "cannot hold (its signal frames lack it): left out, nothing changes")
        elif caps & CpuCap.FPU:
            raise CpuMismatch(f"{who} {'hold' if plural else 'holds'} {xfeature_names(mask)} "
                              f"state{_pkru_value(plan, tids[0], mask)} that this CPU cannot "
                              f"restore (this kernel's signal frames carry "
                              f"{xfeature_names(frame_xfeatures)}): restore on a CPU with these "
                              "features, or pass --cpu-cap none to drop the state")
        else:
            warnings.append(f"{who}: {xfeature_names(mask)} state dropped (--cpu-cap without "
                            "fpu): the process may fault or compute wrong results")
    if caps & (CpuCap.INS | CpuCap.CPU):
        _compare_capability_words(plan.dump_cpu, caps, host_words())
    return CpuCheck(notes=tuple(notes), warnings=tuple(warnings))


def _state_this_cpu_cannot_hold(threads: Iterable[Thread],
                                frame_xfeatures: int) -> dict[tuple[int, bool], list[int]]:
    """(components missing here, any of them not at its default) -> the threads concerned."""
    out: dict[tuple[int, bool], list[int]] = {}
    for thread in threads:
        if thread.xsave is None:
            continue
        in_image = int(thread.xsave.get("xstate_bv", 0)) & ~LEGACY_XFEATURES
        missing = in_image & ~frame_xfeatures
        if not missing:
            continue
        in_use = any(not _at_default(thread, bit) for bit in range(missing.bit_length())
                     if missing >> bit & 1)
        out.setdefault((missing, in_use), []).append(thread.tid)
    return out


def _at_default(thread: Thread, bit: int) -> bool:
    """True if component ``bit`` of ``thread`` holds the value a task without it would see."""
    if bit not in IMAGE_COMPONENTS:
        return False                    # no data in the image: cannot be shown to be default
    values = list((thread.xsave or {}).get(IMAGE_COMPONENTS[bit][0]) or [])
    if 1 << bit == XFEATURE_MASK_PKRU:
        return values[:1] in ([], [0], [PKRU_LINUX_DEFAULT]) and not any(values[1:])
    return not any(values)


# The components glibc's lazy-binding trampoline saves (sysdeps/x86/sysdep.h, STATE_SAVE_MASK:
# SSE, AVX, MPX BNDREGS, AVX-512 opmask, ZMM_Hi256, Hi16_ZMM). It sizes its save area on the
# stack once, at start, from CPUID on the CPU the process started on.
GLIBC_STATE_SAVE_MASK = (1 << 1) | (1 << 2) | (1 << 3) | (1 << 5) | (1 << 6) | (1 << 7)


def _more_state(plan: RestorePlan, frame_xfeatures: int) -> tuple[int, int]:
    """XSAVE components this CPU has and the dump CPU lacked: (those glibc's trampoline
    saves, the others). 0, 0 when the images do not say what the dump CPU had."""
    dump = plan.dump_cpu.xfeatures if plan.dump_cpu is not None else None
    if dump is None:
        return 0, 0
    known = sum(1 << bit for bit in IMAGE_COMPONENTS)
    extra = frame_xfeatures & known & ~dump
    return extra & GLIBC_STATE_SAVE_MASK, extra & ~GLIBC_STATE_SAVE_MASK


def _compare_capability_words(dump: DumpCpu | None, caps: CpuCap,
                              host: Mapping[int, int]) -> None:
    """ins/cpu: every capability bit of the dump CPU in the compared words exists here."""
    wanted = "cpu" if caps & CpuCap.CPU else "ins"
    if dump is None or not dump.capability:
        raise CpuMismatch(f"--cpu-cap {wanted} compares the dump CPU with this one, but the "
                          "images have no cpuinfo.img (criu dump writes it with --cpu-cap); "
                          "restore with --cpu-cap fpu or none")
    words = CPUID_WORDS if caps & CpuCap.CPU else INSTRUCTION_WORDS
    missing = [f"word {w} bits {dump.capability[w] & ~host.get(w, 0):#x}" for w in sorted(words)
               if w < len(dump.capability) and dump.capability[w] & ~host.get(w, 0)]
    if missing:
        raise CpuMismatch(f"this CPU lacks capabilities the dump CPU ({dump.model or 'unknown'}) "
                          f"had (cpuinfo.img, the kernel's x86_capability words): "
                          f"{'; '.join(missing)}; restore on such a CPU or relax --cpu-cap")


def _pkru_value(plan: RestorePlan, tid: int, mask: int) -> str:
    """`` (PKRU 0x5555555c)`` when PKRU is among the components: its value tells a person
    whether the process set protection keys itself."""
    if not mask & XFEATURE_MASK_PKRU:
        return ""
    thread = next(t for t in plan.tasks_threads() if t.tid == tid)
    values = list((thread.xsave or {}).get(IMAGE_COMPONENTS[9][0]) or [0])
    return f" (PKRU {values[0]:#x})"


def _tid_list(tids: list[int]) -> str:
    return ", ".join(map(str, tids)) if len(tids) <= 8 else \
        f"{', '.join(map(str, tids[:8]))} and {len(tids) - 8} more"
