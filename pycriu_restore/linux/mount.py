"""``mount(2)``, which Python's stdlib lacks; used to give a new pid namespace its own /proc."""

from __future__ import annotations

import ctypes

from pycriu_restore.linux.errors import os_errors
from pycriu_restore.linux.libc import libc_function, raise_errno

# <linux/mount.h> (also <sys/mount.h>)
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REC = 0x4000
MS_PRIVATE = 1 << 18

_mount = libc_function("mount", ctypes.c_int,
                       [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p])


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    """mount(source, target, fstype, flags, data); raises a LinuxError naming the target."""
    src = source.encode() if source is not None else None
    fs = fstype.encode() if fstype is not None else None
    opts = ctypes.c_char_p(data.encode()) if data is not None else None
    with os_errors(f"mount {fstype or source} on {target}"):
        if _mount(src, target.encode(), fs, flags, opts) != 0:
            raise_errno("mount")


def make_mounts_private() -> None:
    """Stop mount events propagating to and from the parent namespace (after CLONE_NEWNS)."""
    mount(None, "/", None, MS_REC | MS_PRIVATE)


def mount_proc() -> None:
    """A /proc that shows the caller's pid namespace (the caller must be in a private mount ns)."""
    mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)


def mount_devpts() -> None:
    """A devpts instance of its own on /dev/pts (the caller must be in a private mount ns).

    /dev/ptmx opens the devpts mounted on the "pts" beside it (fs/devpts/inode.c
    devpts_acquire), so new ptys get indexes from this instance, starting at 0, whatever the
    host's terminals hold. mode=620 and gid 5 (tty) are what Debian's /dev/pts has.
    """
    mount("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=620,gid=5")
