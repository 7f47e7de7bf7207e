"""Checks of the machine against the plan, run before the first fork (nothing is changed).

CRIU makes the same checks when it opens each file (files-reg.c): a regular file must have
its dumped size, except files opened O_APPEND (logs grow), and a mapped ELF file must
carry the dumped GNU build-id. A changed binary mapped into a restored process would run
with the old process's data and crash far from the cause, so this fails early and says why.
"""

from __future__ import annotations

import os
import stat

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from pycriu_restore.plan.model import MappedFile, OpenFile, RestorePlan
from pycriu_restore.restore.errors import FileMismatch, PidTaken


def check_plan(plan: RestorePlan, new_pid_ns: bool) -> None:
    """Raise EnvironmentMismatch for the first thing on this machine that differs from the plan."""
    if not new_pid_ns:
        for task in plan.tasks:
            for thread in task.threads:
                _check_pid_free(thread.tid)
    seen: set[str] = set()
    for task in plan.tasks:
        for f in task.files:
            if isinstance(f, OpenFile):  # pipes are created anew: nothing to check
                _check_open_file(f.path, f.expected_size, f.expected_mode)
        for mapped in [task.mm.exe] + [v.file for v in task.vmas if v.file is not None]:
            if mapped.memfd_inode is None and mapped.path not in seen:  # memfds are made anew
                seen.add(mapped.path)
                check_mapped_file(mapped)
        for d in (task.cwd, task.root):
            if not os.path.isdir(d):
                raise FileMismatch(d, "directory missing (it is the task's cwd or root)")


# XSAVE components (Intel SDM vol. 1 13.1; bit = component number) and the CRIU xsave field
# that holds each: CRIU dumps a field for every component the dump CPU had, in use or not.
XSAVE_COMPONENT_FIELDS = {2: "ymmh_space", 3: "bndreg_state", 4: "bndcsr_state", 5: "opmask_reg",
                          6: "zmm_upper", 7: "hi16_zmm", 9: "pkru"}
XSAVE_COMPONENT_NAMES = {2: "AVX", 3: "MPX BNDREGS", 4: "MPX BNDCSR", 5: "AVX-512 opmask",
                         6: "AVX-512 ZMM_Hi256", 7: "AVX-512 Hi16_ZMM", 9: "PKRU"}


def cpu_warnings(plan: RestorePlan, host_xfeatures: int) -> list[str]:
    """What differs between the dump CPU's XSAVE features (seen in the images) and this one's.

    Not an error, as CRIU does not fail without a cpuinfo.img either, but worth saying:
    a process sizes some buffers from CPUID at start (glibc's lazy-binding trampoline saves
    the XSAVE state on the stack), so a CPU with *more* state can overflow them, and a CPU
    with *less* faults on instructions the process already uses (RDPKRU without PKRU).
    """
    thread = plan.root.main_thread
    if thread.xsave is None:
        return []
    dumped = 0
    for bit, name in XSAVE_COMPONENT_FIELDS.items():
        if thread.xsave.get(name):
            dumped |= 1 << bit
    known = sum(1 << bit for bit in XSAVE_COMPONENT_FIELDS)
    extra, missing = host_xfeatures & known & ~dumped, dumped & ~host_xfeatures
    names = lambda mask: ", ".join(XSAVE_COMPONENT_NAMES[b] for b in sorted(XSAVE_COMPONENT_NAMES) if mask >> b & 1)  # noqa: E731
    out = []
    if extra:
        out.append(f"this CPU has XSAVE state the dump CPU lacked ({names(extra)}): buffers the process sized "
                   "from CPUID at start (glibc's lazy-binding trampoline) can overflow; restore on a CPU with the same features")
    if missing:
        out.append(f"this CPU lacks XSAVE state the dump CPU had ({names(missing)}): it is left out, and instructions "
                   "that use it fault in the restored process")
    return out


def _check_pid_free(pid: int) -> None:
    try:
        with open(f"/proc/{pid}/comm") as f:
            holder = f"{f.read().strip()!r} (pid {pid})"
    except FileNotFoundError:
        return
    except OSError:
        holder = "another process"
    raise PidTaken(pid, holder)


def _check_open_file(path: str, expected_size: int | None, expected_mode: int | None) -> None:
    try:
        st = os.stat(path)
    except FileNotFoundError as err:
        raise FileMismatch(path, "missing (an open file of the checkpoint)") from err
    except OSError as err:
        raise FileMismatch(path, f"cannot stat: {err.strerror}") from err
    if expected_mode is not None and stat.S_IFMT(st.st_mode) != stat.S_IFMT(expected_mode):
        raise FileMismatch(path, f"file type changed: mode {st.st_mode:#o}, dumped {expected_mode:#o}")
    if expected_size is not None and st.st_size != expected_size:
        raise FileMismatch(path, f"size is {st.st_size} bytes, dumped with {expected_size}")


def check_mapped_file(mapped: MappedFile) -> None:
    """A file a VMA maps (or the exe): present, same size, same ELF build-id."""
    _check_open_file(mapped.path, mapped.expected_size, None)
    if mapped.build_id is None:
        return
    found = elf_build_id(mapped.path)
    if found != mapped.build_id:
        raise FileMismatch(
            mapped.path,
            f"ELF build-id is {found.hex() if found else 'absent'}, dumped {mapped.build_id.hex()} (the binary was rebuilt or replaced)",
        )


def elf_build_id(path: str) -> bytes | None:
    """The GNU build-id note's descriptor bytes, or None if the file has none or is not ELF."""
    try:
        with open(path, "rb") as f:
            elf = ELFFile(f)
            for segment in elf.iter_segments():
                if segment.header.p_type != "PT_NOTE":
                    continue
                for note in segment.iter_notes():
                    if note["n_type"] == "NT_GNU_BUILD_ID":
                        return bytes.fromhex(note["n_desc"])
    except (ELFError, OSError):
        return None
    return None
