"""Terminal ioctls and the kernel's ``struct termios`` / ``struct winsize``.

Python's ``termios`` module speaks glibc's ``struct termios`` (tcgetattr/tcsetattr), which
has 32 control characters and speed fields, and it lacks the pty ioctls altogether
(TIOCGPTN, TIOCSPTLCK, TIOCGPTLCK, TIOCGPKT). CRIU dumps and restores the kernel's view
through the raw ioctls (criu/tty.c restore_tty_params: TCSETS, TIOCSLCKTRMIOS, TIOCSWINSZ),
so these are the raw ioctls too. Every call raises ``OSError`` with the errno; files/tty.py
names the terminal in its errors.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import signal
import struct
from collections.abc import Iterator
from contextlib import contextmanager

# <asm-generic/ioctls.h> (x86-64 uses the generic numbers).
TCGETS = 0x5401
TCSETS = 0x5402
TIOCEXCL = 0x540C
TIOCSCTTY = 0x540E
TIOCGPGRP = 0x540F
TIOCSPGRP = 0x5410
TIOCGWINSZ = 0x5413
TIOCSWINSZ = 0x5414
TIOCPKT = 0x5420
TIOCGSID = 0x5429
TIOCGPTN = 0x80045430  # _IOR('T', 0x30, unsigned int): the pty's index (its /dev/pts/N)
TIOCSPTLCK = 0x40045431  # _IOW('T', 0x31, int): lock (1) or unlock (0) the slave
TIOCGPKT = 0x80045438  # _IOR('T', 0x38, int)
TIOCGPTLCK = 0x80045439  # _IOR('T', 0x39, int)
TIOCGEXCL = 0x80045440  # _IOR('T', 0x40, int)
TIOCGLCKTRMIOS = 0x5456
TIOCSLCKTRMIOS = 0x5457
# <asm-generic/termbits.h>: the kernel's struct termios has NCCS = 19 control characters.
NCCS = 19
# <linux/major.h>: a pty master opened through /dev/ptmx is TTYAUX_MAJOR:2; the masters and
# slaves of the Unix98 ptys have majors of their own, 8 of each (UNIX98_PTY_MAJOR_COUNT).
TTYAUX_MAJOR = 5
PTMX_MINOR = 2
UNIX98_PTY_MASTER_MAJOR = 128
UNIX98_PTY_SLAVE_MAJOR = 136
UNIX98_PTY_MAJOR_COUNT = 8
# Minors per major: slave N is (136 + N // 256, N % 256) (drivers/tty/pty.c).
MINORS_PER_MAJOR = 256


class KernelTermios(ctypes.Structure):
    """``struct termios`` of <asm-generic/termbits.h>: what TCGETS/TCSETS move."""

    _fields_ = [
        ("c_iflag", ctypes.c_uint32),
        ("c_oflag", ctypes.c_uint32),
        ("c_cflag", ctypes.c_uint32),
        ("c_lflag", ctypes.c_uint32),
        ("c_line", ctypes.c_uint8),
        ("c_cc", ctypes.c_uint8 * NCCS),
    ]


KERNEL_TERMIOS_SIZE = 36  # sizeof(struct termios): checked against the header with the layout below
KERNEL_TERMIOS_CC_OFFSET = 17
WINSIZE_SIZE = 8


class Winsize(ctypes.Structure):
    """``struct winsize`` of <asm-generic/termios.h>."""

    _fields_ = [("ws_row", ctypes.c_uint16), ("ws_col", ctypes.c_uint16),
                ("ws_xpixel", ctypes.c_uint16), ("ws_ypixel", ctypes.c_uint16)]


def _int_arg(fd: int, request: int, value: int) -> None:
    fcntl.ioctl(fd, request, struct.pack("i", value))


def _int_result(fd: int, request: int) -> int:
    return struct.unpack("i", fcntl.ioctl(fd, request, b"\0" * 4))[0]


def pty_index(master_fd: int) -> int:
    """The index N of a pty master (its slave is /dev/pts/N)."""
    return _int_result(master_fd, TIOCGPTN)


def set_pty_locked(master_fd: int, locked: bool) -> None:
    """Lock or unlock the slave side: a locked pty's slave cannot be opened (EIO)."""
    _int_arg(master_fd, TIOCSPTLCK, 1 if locked else 0)


def pty_locked(master_fd: int) -> bool:
    return bool(_int_result(master_fd, TIOCGPTLCK))


def set_packet_mode(master_fd: int, on: bool) -> None:
    _int_arg(master_fd, TIOCPKT, 1 if on else 0)


def packet_mode(master_fd: int) -> bool:
    return bool(_int_result(master_fd, TIOCGPKT))


def set_exclusive(fd: int) -> None:
    """TIOCEXCL: further opens of the tty fail with EBUSY (unless CAP_SYS_ADMIN)."""
    fcntl.ioctl(fd, TIOCEXCL)


def exclusive(fd: int) -> bool:
    return bool(_int_result(fd, TIOCGEXCL))


def get_termios(fd: int, locked: bool = False) -> KernelTermios:
    """TCGETS (or TIOCGLCKTRMIOS, the bits that TCSETS may not change)."""
    buf = bytearray(ctypes.sizeof(KernelTermios))
    fcntl.ioctl(fd, TIOCGLCKTRMIOS if locked else TCGETS, buf)
    return KernelTermios.from_buffer_copy(buf)


def set_termios(fd: int, t: KernelTermios, locked: bool = False) -> None:
    """TCSETS (or TIOCSLCKTRMIOS, which needs CAP_SYS_ADMIN)."""
    fcntl.ioctl(fd, TIOCSLCKTRMIOS if locked else TCSETS, bytes(t))


def get_winsize(fd: int) -> Winsize:
    return Winsize.from_buffer_copy(fcntl.ioctl(fd, TIOCGWINSZ, bytes(ctypes.sizeof(Winsize))))


def set_winsize(fd: int, w: Winsize) -> None:
    fcntl.ioctl(fd, TIOCSWINSZ, bytes(w))


def make_controlling(fd: int) -> None:
    """TIOCSCTTY, arg 0: the caller, a session leader without a terminal, takes this one.
    Never steals one that is another session's (that is arg 1 with CAP_SYS_ADMIN)."""
    fcntl.ioctl(fd, TIOCSCTTY, 0)


def set_foreground_group(fd: int, pgrp: int) -> None:
    """TIOCSPGRP from a task whose controlling terminal this is.

    A task outside the current foreground group would get SIGTTOU for it (tty_check_change
    in drivers/tty/tty_jobctrl.c) unless it blocks the signal, so it is blocked meanwhile.
    """
    with job_control_stops_blocked():
        fcntl.ioctl(fd, TIOCSPGRP, struct.pack("i", pgrp))


def foreground_group(fd: int) -> int:
    return _int_result(fd, TIOCGPGRP)


def session_of(fd: int) -> int:
    """TIOCGSID: the session whose controlling terminal this is (ENOTTY if none)."""
    return _int_result(fd, TIOCGSID)


@contextmanager
def job_control_stops_blocked() -> Iterator[None]:
    """SIGTTOU blocked meanwhile: the kernel then lets a background task change the terminal
    (TCSETS, TIOCSPGRP) instead of stopping it."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTTOU})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def is_pty_master(rdev: int) -> bool:
    """A device number of a pty master (/dev/ptmx, or a Unix98 master major)."""
    major, minor = os.major(rdev), os.minor(rdev)
    return (major, minor) == (TTYAUX_MAJOR, PTMX_MINOR) or \
        UNIX98_PTY_MASTER_MAJOR <= major < UNIX98_PTY_MASTER_MAJOR + UNIX98_PTY_MAJOR_COUNT


def pty_slave_index(rdev: int) -> int | None:
    """The index of a Unix98 pty slave device number, or None if it is not one."""
    major, minor = os.major(rdev), os.minor(rdev)
    if not UNIX98_PTY_SLAVE_MAJOR <= major < UNIX98_PTY_SLAVE_MAJOR + UNIX98_PTY_MAJOR_COUNT:
        return None
    return (major - UNIX98_PTY_SLAVE_MAJOR) * MINORS_PER_MAJOR + minor


# The ctypes layouts must be the kernel's (tests/test_linux_abi.py compares the numbers above).
assert ctypes.sizeof(KernelTermios) == KERNEL_TERMIOS_SIZE and KernelTermios.c_cc.offset == KERNEL_TERMIOS_CC_OFFSET
assert ctypes.sizeof(Winsize) == WINSIZE_SIZE
