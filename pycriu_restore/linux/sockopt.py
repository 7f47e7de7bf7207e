"""Socket options that Python's ``socket`` module does not name (Linux values).

Compared with the headers by tests/test_linux_tcp_repair.py: <asm-generic/socket.h> for the
SOL_SOCKET ones (x86-64 uses the generic values), <linux/in.h> and <linux/in6.h> for the IP
ones.
"""

from __future__ import annotations

import ctypes

# <asm-generic/socket.h>
SO_NO_CHECK = 11
SO_SNDBUFFORCE = 32  # SO_SNDBUF past net.core.wmem_max (needs CAP_NET_ADMIN)
SO_RCVBUFFORCE = 33
SO_BUF_LOCK = 72

# <linux/in.h>
IP_PKTINFO = 8
IP_FREEBIND = 15

# <linux/in6.h>
IPV6_FREEBIND = 78


class Timeval(ctypes.Structure):
    """``struct timeval`` (<sys/time.h>, 64-bit): the value of SO_SNDTIMEO / SO_RCVTIMEO."""

    _fields_ = [
        ("tv_sec", ctypes.c_long),
        ("tv_usec", ctypes.c_long),
    ]


class Linger(ctypes.Structure):
    """``struct linger`` (<sys/socket.h>): the value of SO_LINGER."""

    _fields_ = [
        ("l_onoff", ctypes.c_int),
        ("l_linger", ctypes.c_int),
    ]
