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
