"""Every number and struct layout in ``pycriu_restore.linux`` against the C headers (gcc).

The test builds two C programs from the tables below (glibc's <signal.h> and the kernel's
<asm/sigcontext.h> define clashing structs, hence two), runs them, and compares each value
with the Python side. A completeness check makes sure that no constant defined in
``linux/`` escapes the comparison.
"""

from __future__ import annotations

import ctypes
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any


from pycriu_restore.linux import (anonfds, clone3, libc, memory, mount, namespaces, ptrace, regs, selfctl,
                                  syscalls, taskinfo, tty, waitstatus, xstate)


GLIBC_SIDE_PRELUDE = """
#define _GNU_SOURCE
#include <stddef.h>
#include <stdio.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/uio.h>
#include <sys/mount.h>
#include <sys/user.h>
#include <linux/elf.h>
#include <linux/ptrace.h>
#include <linux/sched.h>
#include <limits.h>
#include <linux/wait.h>
#include <linux/kcmp.h>
#include <asm/ldt.h>
#include <asm/unistd_64.h>
#include <sys/timerfd.h>
#include <sys/signalfd.h>
#include <sys/epoll.h>
#include <sys/inotify.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
"""

KERNEL_SIDE_PRELUDE = """
#include <stddef.h>
#include <stdio.h>
#include <asm/sigcontext.h>
#include <asm/signal.h>
#include <linux/timerfd.h>
#include <linux/inotify.h>
#include <asm/termios.h>
#include <asm/ioctls.h>
#include <linux/major.h>
"""

# (module, constant name) -> C expression, for headers that glibc's side can include.
GLIBC_CONSTANTS: dict[tuple[ModuleType, str], str] = {
    (ptrace, "PTRACE_PEEKUSER"): "PTRACE_PEEKUSR",
    (ptrace, "PTRACE_POKEUSER"): "PTRACE_POKEUSR",
    (ptrace, "NT_PRSTATUS"): "NT_PRSTATUS",
    (ptrace, "NT_X86_XSTATE"): "NT_X86_XSTATE",
    (ptrace, "USER_DEBUGREG_OFFSET"): "offsetof(struct user, u_debugreg)",
    (regs, "USER_REGS_SIZE"): "sizeof(struct user_regs_struct)",
    (clone3, "CLONE_ARGS_SIZE_VER2"): "CLONE_ARGS_SIZE_VER2",
    (waitstatus, "WALL"): "__WALL",
    (memory, "IOV_MAX"): "IOV_MAX",
    (memory, "MAP_LOCKED"): "MAP_LOCKED",
    (memory, "MAP_NORESERVE"): "MAP_NORESERVE",
    (memory, "MAP_HUGETLB"): "MAP_HUGETLB",
    (taskinfo, "SYS_GET_ROBUST_LIST"): "__NR_get_robust_list",
    (taskinfo, "SYS_KCMP"): "__NR_kcmp",
    (taskinfo, "KCMP_FILE"): "KCMP_FILE",
    (selfctl, "PR_SET_DUMPABLE"): "PR_SET_DUMPABLE",
    (selfctl, "PR_SET_NAME"): "PR_SET_NAME",
    (selfctl, "PR_SET_CHILD_SUBREAPER"): "PR_SET_CHILD_SUBREAPER",
    (selfctl, "PR_GET_CHILD_SUBREAPER"): "PR_GET_CHILD_SUBREAPER",
    (selfctl, "SIGACTION_SIZE"): "sizeof(struct sigaction)",
    (anonfds, "SYS_SIGNALFD4"): "__NR_signalfd4",
    (anonfds, "EPOLL_EVENT_SIZE"): "sizeof(struct epoll_event)",
}
for _name in ("TFD_CLOEXEC", "TFD_NONBLOCK", "TFD_TIMER_ABSTIME", "TFD_TIMER_CANCEL_ON_SET", "SFD_CLOEXEC",
              "SFD_NONBLOCK", "EPOLL_CLOEXEC", "EPOLL_CTL_ADD", "IN_CLOEXEC", "IN_NONBLOCK", "IN_ALL_EVENTS",
              "EFD_SEMAPHORE", "EFD_CLOEXEC", "EFD_NONBLOCK"):
    GLIBC_CONSTANTS[(anonfds, _name)] = _name
for _name in dir(ptrace):
    if _name.startswith("PTRACE_") and (ptrace, _name) not in GLIBC_CONSTANTS:
        GLIBC_CONSTANTS[(ptrace, _name)] = _name
for _module in (clone3, namespaces):
    for _name in dir(_module):
        if _name.startswith("CLONE_") and _name not in ("CLONE_ARGS_SIZE_VER2",):
            GLIBC_CONSTANTS.setdefault((_module, _name), _name)
for _name in dir(mount):
    if _name.startswith("MS_"):
        GLIBC_CONSTANTS[(mount, _name)] = _name
for _name in dir(syscalls):
    if _name.startswith("NR_"):
        GLIBC_CONSTANTS[(syscalls, _name)] = "__NR_" + _name[3:].lower()

KERNEL_CONSTANTS: dict[tuple[ModuleType, str], str] = {
    (xstate, "XSAVE_SW_RESERVED_OFFSET"): "offsetof(struct _fpstate_64, sw_reserved)",
    (xstate, "FXSAVE_SIZE"): "sizeof(struct _fpstate_64)",
    (xstate, "XSAVE_HEADER_OFFSET"): "offsetof(struct _xstate, xstate_hdr)",
    (xstate, "XSAVE_HEADER_SIZE"): "sizeof(struct _header)",
    (ptrace, "KERNEL_SIGSET_SIZE"): "sizeof(sigset_t)",   # asm/signal.h: the kernel's mask
    (anonfds, "SIGSET_BYTES"): "sizeof(sigset_t)",
    (anonfds, "TFD_IOC_SET_TICKS"): "TFD_IOC_SET_TICKS",   # <linux/timerfd.h>, not glibc's
    (anonfds, "INOTIFY_IOC_SETNEXTWD"): "INOTIFY_IOC_SETNEXTWD",
}

# linux/tty.py: the kernel's termios and ioctls (glibc's <termios.h> has another struct termios).
for _name in ("TCGETS", "TCSETS", "TIOCEXCL", "TIOCSCTTY", "TIOCGPGRP", "TIOCSPGRP", "TIOCGWINSZ", "TIOCSWINSZ",
              "TIOCPKT", "TIOCGSID", "TIOCGPTN", "TIOCSPTLCK", "TIOCGPKT", "TIOCGPTLCK", "TIOCGEXCL",
              "TIOCGLCKTRMIOS", "TIOCSLCKTRMIOS", "NCCS", "TTYAUX_MAJOR", "UNIX98_PTY_MASTER_MAJOR",
              "UNIX98_PTY_SLAVE_MAJOR", "UNIX98_PTY_MAJOR_COUNT"):
    KERNEL_CONSTANTS[(tty, _name)] = _name
KERNEL_CONSTANTS[(tty, "KERNEL_TERMIOS_SIZE")] = "sizeof(struct termios)"
KERNEL_CONSTANTS[(tty, "KERNEL_TERMIOS_CC_OFFSET")] = "offsetof(struct termios, c_cc)"
KERNEL_CONSTANTS[(tty, "WINSIZE_SIZE")] = "sizeof(struct winsize)"

# Constants with no uapi header to compare against, and why.
NOT_IN_UAPI = {
    (clone3, "MAX_PID_NS_LEVEL"),      # kernel/pid_namespace.c (internal)
    (namespaces, "ALL_CLONE_NEW"),     # our own union of the CLONE_NEW* flags
    (namespaces, "NSEC_PER_SEC"),      # a unit, not an ABI value
    (xstate, "XSAVE_MIN_SIZE"),        # derived: header offset + header size
    (xstate, "XFEATURE_MASK_FP"),      # XCR0 bits: Intel SDM vol. 1 13.1, no uapi header
    (xstate, "XFEATURE_MASK_SSE"),
    (xstate, "XFEATURE_MASK_YMM"),
    (xstate, "XFEATURE_MASK_PKRU"),
    (xstate, "PKRU_LINUX_DEFAULT"),    # arch/x86/mm/pkeys.c; test_xsave_kernel.py reads it
                                       # from a fresh task's frame where the CPU has PKU
    (waitstatus, "SYSCALL_STOP_SIG"),  # SIGTRAP | 0x80, from ptrace(2)
    (selfctl, "TASK_COMM_LEN"),        # include/linux/sched.h (internal); prctl(2) says 16 bytes
    (tty, "PTMX_MINOR"),               # Documentation/admin-guide/devices.txt: 5,2 is /dev/ptmx
    (tty, "MINORS_PER_MAJOR"),         # drivers/tty/pty.c: 256 slaves per Unix98 major
}


def _field_offset(struct: Any, path: str) -> int:
    """Offset of a (possibly nested, dotted) field of a ctypes struct."""
    offset = 0
    current = struct
    for part in path.split("."):
        descriptor = getattr(current, part)
        offset += descriptor.offset
        current = {f[0]: f[1] for f in current._fields_}[part]   # f[2]: a bitfield width
    return offset


def _struct_checks() -> list[tuple[str, int, str]]:
    """(label, python value, C expression) for every struct we mirror."""
    checks: list[tuple[str, int, str]] = []

    def add_struct(struct: Any, c_type: str, fields: dict[str, str]) -> None:
        checks.append((f"sizeof {struct.__name__}", ctypes.sizeof(struct), f"sizeof({c_type})"))
        for py_path, c_path in fields.items():
            checks.append((f"{struct.__name__}.{py_path}", _field_offset(struct, py_path),
                           f"offsetof({c_type}, {c_path})"))

    add_struct(regs.UserRegs, "struct user_regs_struct", {n: n for n in regs.REG_NAMES})
    add_struct(clone3.CloneArgs, "struct clone_args",
               {n: n for n, _ in clone3.CloneArgs._fields_})
    add_struct(ptrace.PtraceRseqConfiguration, "struct ptrace_rseq_configuration",
               {n: n for n, _ in ptrace.PtraceRseqConfiguration._fields_})
    add_struct(ptrace.PtraceSyscallInfo, "struct ptrace_syscall_info", {
        "op": "op", "arch": "arch", "instruction_pointer": "instruction_pointer",
        "stack_pointer": "stack_pointer", "u.entry.nr": "entry.nr",
        "u.entry.args": "entry.args", "u.exit.rval": "exit.rval",
        "u.exit.is_error": "exit.is_error", "u.seccomp.nr": "seccomp.nr",
        "u.seccomp.args": "seccomp.args", "u.seccomp.ret_data": "seccomp.ret_data"})
    add_struct(ptrace.Siginfo, "siginfo_t", {
        "si_signo": "si_signo", "si_errno": "si_errno", "si_code": "si_code",
        "fields.fault.si_addr": "si_addr", "fields.kill.si_pid": "si_pid",
        "fields.kill.si_uid": "si_uid"})
    add_struct(libc.Iovec, "struct iovec", {"iov_base": "iov_base", "iov_len": "iov_len"})
    # The flag bits after limit are bitfields (no offsetof): the size covers them.
    add_struct(ptrace.UserDesc, "struct user_desc",
               {"entry_number": "entry_number", "base_addr": "base_addr", "limit": "limit"})
    return checks


def _run_c(tmp_path: Path, stem: str, prelude: str, exprs: list[str]) -> list[int]:
    """Compile a program printing each expression as a signed 64-bit number; run it."""
    body = "\n".join(f'    printf("%lld\\n", (long long)({e}));' for e in exprs)
    source = tmp_path / f"{stem}.c"
    source.write_text(f"{prelude}\nint main(void)\n{{\n{body}\n    return 0;\n}}\n")
    exe = tmp_path / stem
    build = subprocess.run(["gcc", "-Wall", "-Werror", "-o", str(exe), str(source)],
                           capture_output=True, text=True)
    assert build.returncode == 0, f"gcc failed on {source}:\n{build.stderr}"
    run = subprocess.run([str(exe)], capture_output=True, text=True, check=True)
    values = [int(line) for line in run.stdout.split()]
    assert len(values) == len(exprs)
    return values


def _compare(labels: list[str], python_values: list[int], c_exprs: list[str],
             c_values: list[int]) -> None:
    wrong = [f"{label}: python {py:#x}, C {c_expr} = {c:#x}"
             for label, py, c_expr, c in zip(labels, python_values, c_exprs, c_values)
             if py != c]
    assert not wrong, "mismatches with the C headers:\n" + "\n".join(wrong)


def test_glibc_side_constants_and_structs_match_headers(tmp_path: Path) -> None:
    items = sorted(GLIBC_CONSTANTS.items(), key=lambda kv: (kv[0][0].__name__, kv[0][1]))
    labels = [f"{mod.__name__}.{name}" for (mod, name), _ in items]
    values = [getattr(mod, name) for (mod, name), _ in items]
    exprs = [expr for _, expr in items]
    for label, value, expr in _struct_checks():
        labels.append(label)
        values.append(value)
        exprs.append(expr)
    c_values = _run_c(tmp_path, "glibc_side", GLIBC_SIDE_PRELUDE, exprs)
    _compare(labels, values, exprs, c_values)
    # The comparison must have covered the big groups, or the table building broke.
    assert sum(1 for mod, name in GLIBC_CONSTANTS if name.startswith("PTRACE_")) >= 40
    assert sum(1 for mod, name in GLIBC_CONSTANTS if name.startswith("CLONE_")) >= 20


def test_kernel_side_constants_match_headers(tmp_path: Path) -> None:
    items = list(KERNEL_CONSTANTS.items())
    labels = [f"{mod.__name__}.{name}" for (mod, name), _ in items]
    values = [getattr(mod, name) for (mod, name), _ in items]
    exprs = [expr for _, expr in items]
    c_values = _run_c(tmp_path, "kernel_side", KERNEL_SIDE_PRELUDE, exprs)
    _compare(labels, values, exprs, c_values)


def test_every_linux_constant_is_checked() -> None:
    """A new integer constant in linux/ must be added to a table above (or NOT_IN_UAPI)."""
    checked = set(GLIBC_CONSTANTS) | set(KERNEL_CONSTANTS) | NOT_IN_UAPI
    checked_names = {name for _module, name in checked}
    missing = []
    for module in (clone3, libc, memory, mount, namespaces, ptrace, regs, selfctl, syscalls, taskinfo,
                   tty, waitstatus, xstate):
        for name, value in vars(module).items():
            if name.startswith("_") or not name.isupper() or name in checked_names:
                continue   # private, not a constant, or imported from the module checked
            if isinstance(value, int) and not isinstance(value, bool):
                if (module, name) not in checked:
                    missing.append(f"{module.__name__}.{name}")
    assert not missing, f"constants not compared with a header: {missing}"
