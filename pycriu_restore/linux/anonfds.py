"""Anonymous-inode fds the stdlib cannot fully make: timerfd, signalfd, epoll, inotify.

Python 3.11 has ``os.eventfd`` and ``select.epoll``, but ``select.epoll.register`` cannot
set an event's 64-bit ``data`` (it stores the fd there), and there is no timerfd, signalfd
or inotify at all; these are ctypes calls to glibc's wrappers. Errors are ``OSError`` with
the errno, for the caller (files/) to report with the object it was restoring.
"""

from __future__ import annotations

import ctypes
import fcntl

from pycriu_restore.linux.libc import libc_function, raise_errno

# <sys/timerfd.h> / <linux/timerfd.h>
TFD_CLOEXEC = 0o2000000
TFD_NONBLOCK = 0o4000
TFD_TIMER_ABSTIME = 1 << 0
TFD_TIMER_CANCEL_ON_SET = 1 << 1
TFD_IOC_SET_TICKS = 0x40085400  # _IOW('T', 0, __u64): set the expirations count (CONFIG_CHECKPOINT_RESTORE)
# <sys/signalfd.h>
SFD_CLOEXEC = 0o2000000
SFD_NONBLOCK = 0o4000
# <sys/epoll.h>
EPOLL_CLOEXEC = 0o2000000
EPOLL_CTL_ADD = 1
# <sys/inotify.h> / <linux/inotify.h>
IN_CLOEXEC = 0o2000000
IN_NONBLOCK = 0o4000
IN_ALL_EVENTS = 0xFFF
INOTIFY_IOC_SETNEXTWD = 0x40044900  # _IOW('I', 0, __s32): the wd the next add_watch gets
# <sys/eventfd.h>
EFD_SEMAPHORE = 1
EFD_CLOEXEC = 0o2000000
EFD_NONBLOCK = 0o4000
SIGSET_BYTES = 8  # the kernel's sigset_t on x86-64 (_NSIG / 8): what signalfd(2) takes


class Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class Itimerspec(ctypes.Structure):
    """``struct itimerspec`` (<time.h>)."""

    _fields_ = [("it_interval", Timespec), ("it_value", Timespec)]


class EpollEvent(ctypes.Structure):
    """``struct epoll_event`` (<sys/epoll.h>): packed on x86-64, 12 bytes."""

    _pack_ = 1
    _fields_ = [("events", ctypes.c_uint32), ("data", ctypes.c_uint64)]


EPOLL_EVENT_SIZE = ctypes.sizeof(EpollEvent)


_timerfd_create = libc_function("timerfd_create", ctypes.c_int, [ctypes.c_int, ctypes.c_int])
_timerfd_settime = libc_function("timerfd_settime", ctypes.c_int,
                                 [ctypes.c_int, ctypes.c_int, ctypes.POINTER(Itimerspec), ctypes.c_void_p])
_signalfd = libc_function("syscall", ctypes.c_long, [ctypes.c_long, ctypes.c_int, ctypes.POINTER(ctypes.c_uint64),
                                                     ctypes.c_size_t, ctypes.c_int])
SYS_SIGNALFD4 = 289  # <asm/unistd_64.h>: the raw call takes the mask size (glibc's wrapper fixes it)
_epoll_create1 = libc_function("epoll_create1", ctypes.c_int, [ctypes.c_int])
_epoll_ctl = libc_function("epoll_ctl", ctypes.c_int, [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.POINTER(EpollEvent)])
_inotify_init1 = libc_function("inotify_init1", ctypes.c_int, [ctypes.c_int])
_inotify_add_watch = libc_function("inotify_add_watch", ctypes.c_int, [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32])


def timerfd_create(clockid: int, flags: int) -> int:
    fd = _timerfd_create(clockid, flags)
    if fd < 0:
        raise_errno(f"timerfd_create(clock {clockid})")
    return fd


def timerfd_settime(fd: int, flags: int, value_ns: tuple[int, int], interval_ns: tuple[int, int]) -> None:
    """Arm timer ``fd``: first expiry after ``value_ns`` (sec, nsec), then every ``interval_ns``."""
    spec = Itimerspec(Timespec(*interval_ns), Timespec(*value_ns))
    if _timerfd_settime(fd, flags, ctypes.byref(spec), None) < 0:
        raise_errno("timerfd_settime")


def timerfd_set_ticks(fd: int, ticks: int) -> None:
    """Set the count of expirations not read yet (what the next read(2) returns)."""
    fcntl.ioctl(fd, TFD_IOC_SET_TICKS, ctypes.c_uint64(ticks))


def signalfd(mask: int, flags: int) -> int:
    """A new signalfd for the signals of ``mask`` (bit n-1 = signal n)."""
    m = ctypes.c_uint64(mask)
    fd = _signalfd(SYS_SIGNALFD4, -1, ctypes.byref(m), SIGSET_BYTES, flags)
    if fd < 0:
        raise_errno(f"signalfd4(mask {mask:#x})")
    return int(fd)


def epoll_create1(flags: int) -> int:
    fd = _epoll_create1(flags)
    if fd < 0:
        raise_errno("epoll_create1")
    return fd


def epoll_add(epfd: int, fd: int, events: int, data: int) -> None:
    """EPOLL_CTL_ADD ``fd`` to ``epfd`` with ``events`` and the 64-bit ``data`` the waiter gets back."""
    ev = EpollEvent(events, data)
    if _epoll_ctl(epfd, EPOLL_CTL_ADD, fd, ctypes.byref(ev)) < 0:
        raise_errno(f"epoll_ctl(ADD fd {fd}, events {events:#x})")


def inotify_init1(flags: int) -> int:
    fd = _inotify_init1(flags)
    if fd < 0:
        raise_errno("inotify_init1")
    return fd


def inotify_set_next_wd(fd: int, wd: int) -> None:
    fcntl.ioctl(fd, INOTIFY_IOC_SETNEXTWD, wd)


def inotify_add_watch(fd: int, path: str, mask: int) -> int:
    wd = _inotify_add_watch(fd, path.encode(), mask)
    if wd < 0:
        raise_errno(f"inotify_add_watch({path!r}, {mask:#x})")
    return wd
