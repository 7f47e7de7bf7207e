"""Before any fork: can this process give every thread the credentials its image asks for?

The blob sets each thread's credentials itself (restorer.c, step CREDS, in the order of
CRIU's restore_creds), starting from the restorer's own: root with our capability sets.
A thread can only keep or lose privileges on the way, never gain them, so everything the
images ask for must already be ours:

- every capability in any of the image's sets (bounding, permitted, effective,
  inheritable, ambient) must be in our bounding set and our permitted set: a capability
  outside them cannot be given back (capset(2), PR_CAPBSET_DROP only drop). On the
  machines this project runs on, root lacks CAP_SYS_RESOURCE, so a task dumped with it
  cannot be restored exactly;
- no capability number may be past this kernel's last (``/proc/sys/kernel/cap_last_cap``):
  capset would drop it silently;
- we need CAP_SETUID, CAP_SETGID and CAP_SETPCAP (setres*id, setgroups, securebits,
  bounding set) and CAP_SYS_ADMIN (seccomp filters without no_new_privs,
  PTRACE_O_SUSPEND_SECCOMP) in our effective set;
- no_new_privs and seccomp filters are inherited and cannot be dropped: if we run with
  either, a task whose image has neither cannot be restored.

Each refusal is a :class:`MissingPrivilege` (exit 4) naming the thread's core image and
the field. Reads /proc only; changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pycriu_restore.plan.model import Creds, RestorePlan, Thread
from pycriu_restore.restore.errors import MissingPrivilege

# <linux/capability.h>: CAP_* numbers 0..40 (CAP_LAST_CAP = CAP_CHECKPOINT_RESTORE, 40, in
# Linux 5.9 .. 6.18). tests/test_restore_privileges.py checks them against the header.
CAP_NAMES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
    "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW",
    "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
    "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ",
    "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
)
_CAP = {name: number for number, name in enumerate(CAP_NAMES)}
# What the blob's CREDS and SECCOMP steps and the tracer's seize need from us.
NEEDED_BY_RESTORER = ("CAP_SETUID", "CAP_SETGID", "CAP_SETPCAP", "CAP_SYS_ADMIN")
_CAP_SETS = ("cap_bnd", "cap_prm", "cap_eff", "cap_inh", "cap_amb")

PROC_STATUS = Path("/proc/self/status")
CAP_LAST_CAP = Path("/proc/sys/kernel/cap_last_cap")


def cap_name(number: int) -> str:
    return CAP_NAMES[number] if number < len(CAP_NAMES) else f"capability {number}"


def _names(mask: int) -> str:
    return ", ".join(cap_name(bit) for bit in range(mask.bit_length()) if mask >> bit & 1)


@dataclass(frozen=True)
class OwnPrivileges:
    """The restorer's own state, as proc(5) /proc/self/status shows it."""

    cap_prm: int
    cap_eff: int
    cap_bnd: int
    no_new_privs: bool
    seccomp_mode: int
    cap_last_cap: int

    @classmethod
    def read(cls, status: Path = PROC_STATUS, last_cap: Path = CAP_LAST_CAP) -> OwnPrivileges:
        fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
        return cls(cap_prm=int(fields["CapPrm"], 16), cap_eff=int(fields["CapEff"], 16),
                   cap_bnd=int(fields["CapBnd"], 16), no_new_privs=fields["NoNewPrivs"].strip() == "1",
                   seccomp_mode=int(fields.get("Seccomp", "0")), cap_last_cap=int(last_cap.read_text()))


def check_privileges(plan: RestorePlan, own: OwnPrivileges | None = None) -> None:
    """Raise MissingPrivilege for the first thread whose creds we cannot give exactly.

    ``own`` defaults to this process's (tests pass another machine's).
    """
    own = own or OwnPrivileges.read()
    threads = [t for task in plan.tasks for t in task.threads if t.creds is not None]
    if not threads:
        return
    lacking = [name for name in NEEDED_BY_RESTORER if not own.cap_eff >> _CAP[name] & 1]
    if lacking:
        raise MissingPrivilege(f"pycrestore lacks {', '.join(lacking)} in its effective capabilities "
                               f"(CapEff {own.cap_eff:#x}): it cannot set the restored threads' credentials")
    if own.seccomp_mode:
        raise MissingPrivilege(f"pycrestore runs under seccomp (mode {own.seccomp_mode}): every restored "
                               "task would inherit its filters")
    for thread in threads:
        _check_thread(thread, thread.creds, own)  # type: ignore[arg-type]


def _check_thread(thread: Thread, creds: Creds, own: OwnPrivileges) -> None:
    where = f"core-{thread.tid}.img: thread_core.creds"
    valid = (1 << (own.cap_last_cap + 1)) - 1
    ours = own.cap_bnd & own.cap_prm
    for field in _CAP_SETS:
        mask = getattr(creds, field)
        if mask & ~valid:
            raise MissingPrivilege(f"{where}.{field} {mask:#x} has {_names(mask & ~valid)}, past this kernel's "
                                   f"last capability {own.cap_last_cap} ({CAP_LAST_CAP})")
        if mask & ~ours:
            raise MissingPrivilege(f"{where}.{field} {mask:#x} needs {_names(mask & ~ours)}, which pycrestore "
                                   f"does not have (CapBnd {own.cap_bnd:#x}, CapPrm {own.cap_prm:#x}): it cannot be given back")
    if own.no_new_privs and not creds.no_new_privs:
        raise MissingPrivilege(f"{where}.no_new_privs is 0, but pycrestore runs with no_new_privs, which "
                               "every restored task inherits and cannot clear")
