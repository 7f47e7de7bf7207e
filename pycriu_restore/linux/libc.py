"""The C library as seen through ctypes: fresh function objects and the C types we share.

Python 3.11's stdlib lacks ``ptrace``, ``process_vm_readv/writev``, ``unshare``, ``setns``
(the last two arrived in 3.12) and ``clone3``; the modules of ``linux/`` reach them here.

Two handles on the same library are kept:

* ``CDLL`` releases the GIL during the call: right for everything that may block
  (``ptrace``, ``process_vm_writev``).
* ``PyDLL`` keeps the GIL held across the call: required for ``clone3``, so that no other
  Python thread runs between the fork and ``PyOS_AfterFork_Child`` (feasibility spike §4).

Both have ``use_errno=True``: ctypes saves the C ``errno`` right after the call and
:func:`raise_errno` reads it with ``ctypes.get_errno()``.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Sequence
from typing import Any, NoReturn

# dlopen(NULL): the C library this interpreter is already linked against.
_LIBC = ctypes.CDLL(None, use_errno=True)
_LIBC_HOLDING_GIL = ctypes.PyDLL(None, use_errno=True)


def libc_function(name: str, restype: Any, argtypes: Sequence[Any], *,
                  hold_gil: bool = False) -> Any:
    """Return a new ctypes function object for libc's ``name`` with the given prototype.

    ``dll[name]`` (unlike ``dll.name``) builds a fresh object each time, so two modules that
    call ``syscall`` with different argument types never overwrite each other's
    ``argtypes``.
    """
    dll = _LIBC_HOLDING_GIL if hold_gil else _LIBC
    func = dll[name]
    func.restype = restype
    func.argtypes = list(argtypes)
    return func


def raise_errno(op: str) -> NoReturn:
    """Raise ``OSError`` from the errno saved by the last ctypes call of this thread.

    Precondition: the call was made through a function from :func:`libc_function` and
    returned its error value. Callers translate the ``OSError`` at the layer's boundary
    (``linux.errors.os_errors``).
    """
    err_no = ctypes.get_errno()
    raise OSError(err_no, f"{op}: {os.strerror(err_no)}")


class Iovec(ctypes.Structure):
    """``struct iovec`` from <sys/uio.h> (also the buffer descriptor of PTRACE_GETREGSET)."""

    _fields_ = [
        ("iov_base", ctypes.c_void_p),
        ("iov_len", ctypes.c_size_t),
    ]
