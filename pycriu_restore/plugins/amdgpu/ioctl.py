"""How the amdgpu plugin talks to GPU drivers: ioctl numbers, the call, and its errors.

The three driver interfaces the plugin uses -- /dev/kfd (kfd.py), the DRM render nodes
/dev/dri/renderD<minor> (drm.py) and dma-buf fds (dmabuf.py) -- are all ioctls on an fd
with a C struct as argument. This module holds what they share:

* the ioctl request encoding of <asm-generic/ioctl.h> (x86-64 uses the generic one)::

      31 30 29                    16 15            8 7             0
     +-----+------------------------+---------------+---------------+
     | dir |  size of the argument  | type (a char) |  nr (command) |
     +-----+------------------------+---------------+---------------+
       dir: 0 none, 1 write (user -> kernel), 2 read (kernel -> user), 3 both

* :func:`call_ioctl`, the one place where ``OSError`` from an ioctl becomes a
  :class:`GpuIoctlError` that names the ioctl, the device and the errno;
* the error family of the device layer.

tests/test_amdgpu_abi.py checks every number built here against the C headers.
"""

from __future__ import annotations

import ctypes
import errno as errno_mod
import fcntl
import os
from collections.abc import Callable
from typing import Any

from pycriu_restore.errors import EXIT_ENVIRONMENT, EXIT_RESTORE, PycrestoreError
from pycriu_restore.linux.errors import errno_text

# <asm-generic/ioctl.h>: field widths and directions.
_IOC_NRBITS = 8
_IOC_TYPEBITS = 8
_IOC_SIZEBITS = 14
_IOC_NRSHIFT = 0
_IOC_TYPESHIFT = _IOC_NRSHIFT + _IOC_NRBITS
_IOC_SIZESHIFT = _IOC_TYPESHIFT + _IOC_TYPEBITS
_IOC_DIRSHIFT = _IOC_SIZESHIFT + _IOC_SIZEBITS
_IOC_WRITE = 1
_IOC_READ = 2

# kmtIoctl (CRIU plugins/amdgpu/amdgpu_plugin.c) retries EINTR/EAGAIN this many times.
_MAX_RETRIES = 200

# The one function every GPU ioctl goes through, with fcntl.ioctl's signature. Tests put a
# model of the kernel here (tests/fake_amdgpu.py: KFD and amdgpu DRM at the ioctl
# boundary, checking each call as the kernel would); nothing else may replace it.
ioctl_syscall: Callable[[int, int, Any, bool], int] = fcntl.ioctl


def _ioc(direction: int, type_char: str, nr: int, size: int) -> int:
    """Encode an ioctl request number like the kernel's _IOC() macro."""
    assert 0 <= size < (1 << _IOC_SIZEBITS), f"_ioc: argument of {size} bytes is too large"
    return ((direction << _IOC_DIRSHIFT) | (ord(type_char) << _IOC_TYPESHIFT)
            | (nr << _IOC_NRSHIFT) | (size << _IOC_SIZESHIFT))


def ior(type_char: str, nr: int, arg_type: Any) -> int:
    """_IOR(type, nr, T): the kernel writes a T back to user space."""
    return _ioc(_IOC_READ, type_char, nr, ctypes.sizeof(arg_type))


def iow(type_char: str, nr: int, arg_type: Any) -> int:
    """_IOW(type, nr, T): user space passes a T in."""
    return _ioc(_IOC_WRITE, type_char, nr, ctypes.sizeof(arg_type))


def iowr(type_char: str, nr: int, arg_type: Any) -> int:
    """_IOWR(type, nr, T): a T goes in and comes back updated."""
    return _ioc(_IOC_READ | _IOC_WRITE, type_char, nr, ctypes.sizeof(arg_type))


class GpuDeviceError(PycrestoreError):
    """Base of the amdgpu device layer's errors (kfd, DRM render nodes, dma-bufs)."""

    exit_code = EXIT_RESTORE


class GpuIoctlError(GpuDeviceError):
    """An ioctl on a GPU device failed; ``errno`` is the kernel's answer."""

    def __init__(self, ioctl_name: str, device: str, err_no: int, detail: str = "") -> None:
        self.ioctl_name = ioctl_name
        self.device = device
        self.errno = err_no
        extra = f": {detail}" if detail else ""
        super().__init__(f"{ioctl_name} on {device} failed: {errno_text(err_no)}{extra}")


class DeviceUnavailable(GpuDeviceError):
    """The machine lacks the device the images need, or its driver is too old.

    This is the machine not matching the images, hence ``EXIT_ENVIRONMENT``.
    """

    exit_code = EXIT_ENVIRONMENT


def call_ioctl(fd: int, request: int, arg: ctypes.Structure | ctypes.Union, ioctl_name: str,
               device: str) -> int:
    """Issue ioctl ``request`` on ``fd`` with ``arg`` (updated in place); return its result.

    ``fcntl.ioctl`` releases the GIL for the call, so a blocking ioctl (WAIT_CS) does not
    stall other Python threads. EINTR and EAGAIN are retried like CRIU's kmtIoctl does;
    any other failure raises :class:`GpuIoctlError` naming ``ioctl_name`` and ``device``.
    """
    for _ in range(_MAX_RETRIES):
        try:
            return ioctl_syscall(fd, request, arg, True)
        except OSError as err:
            if err.errno in (errno_mod.EINTR, errno_mod.EAGAIN):
                continue
            raise GpuIoctlError(ioctl_name, device, err.errno or 0) from err
    raise GpuIoctlError(ioctl_name, device, errno_mod.EAGAIN,
                        f"still interrupted after {_MAX_RETRIES} tries")


def open_device(path: str, flags: int = os.O_RDWR | os.O_CLOEXEC) -> int:
    """Open a device node; a missing node is :class:`DeviceUnavailable`, naming the path."""
    try:
        return os.open(path, flags)
    except FileNotFoundError as err:
        raise DeviceUnavailable(f"{path} does not exist: no such device on this machine "
                                "(is the amdgpu driver loaded?)") from err
    except OSError as err:
        raise GpuDeviceError(f"cannot open {path}: {errno_text(err.errno or 0)}") from err
