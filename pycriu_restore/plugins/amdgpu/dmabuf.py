"""CPU access to a dma-buf: <linux/dma-buf.h>'s DMA_BUF_IOCTL_SYNC bracket.

A dma-buf fd (what KFD's RESTORE hands back for each VRAM/GTT BO) can be mmapped when the
exporter allows it -- GTT BOs and host-visible VRAM on amdgpu. CPU writes through such a
mapping must be bracketed so that the exporter can flush or invalidate caches::

    DMA_BUF_IOCTL_SYNC(START | WRITE)   before the first write
    ... write through the mapping ...
    DMA_BUF_IOCTL_SYNC(END | WRITE)     after the last write (also on failure)

:func:`cpu_write_access` is that pair as a context manager. Numbers and the struct
mirror linux-libc-dev's <linux/dma-buf.h>; tests/test_amdgpu_abi.py checks them.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from contextlib import contextmanager

from pycriu_restore.plugins.amdgpu.ioctl import call_ioctl, iow

DMA_BUF_BASE = "b"

DMA_BUF_SYNC_READ = 1 << 0
DMA_BUF_SYNC_WRITE = 2 << 0
DMA_BUF_SYNC_RW = DMA_BUF_SYNC_READ | DMA_BUF_SYNC_WRITE
DMA_BUF_SYNC_START = 0 << 2
DMA_BUF_SYNC_END = 1 << 2


class DmaBufSync(ctypes.Structure):
    """``struct dma_buf_sync``."""

    _fields_ = [("flags", ctypes.c_uint64)]  # DMA_BUF_SYNC_START/END | READ/WRITE


DMA_BUF_IOCTL_SYNC = iow(DMA_BUF_BASE, 0, DmaBufSync)

# C type name -> mirror, for tests/test_amdgpu_abi.py.
STRUCTS: dict[str, type[ctypes.Structure]] = {"struct dma_buf_sync": DmaBufSync}


def sync(dmabuf_fd: int, flags: int, device: str = "dma-buf") -> None:
    """DMA_BUF_IOCTL_SYNC with ``flags`` (one of START/END, plus READ and/or WRITE)."""
    call_ioctl(dmabuf_fd, DMA_BUF_IOCTL_SYNC, DmaBufSync(flags=flags), "DMA_BUF_IOCTL_SYNC",
               device)


@contextmanager
def cpu_write_access(dmabuf_fd: int, device: str = "dma-buf") -> Iterator[None]:
    """Bracket CPU writes to a mapping of ``dmabuf_fd``: SYNC_START on entry, SYNC_END on exit.

    The END is issued even when the body raises, so the exporter never stays in CPU
    access mode; an error from END itself is raised only if the body succeeded.
    """
    sync(dmabuf_fd, DMA_BUF_SYNC_START | DMA_BUF_SYNC_WRITE, device)
    try:
        yield
    except BaseException:
        try:
            sync(dmabuf_fd, DMA_BUF_SYNC_END | DMA_BUF_SYNC_WRITE, device)
        except Exception:  # noqa: BLE001 - the body's error is the one to report
            pass
        raise
    sync(dmabuf_fd, DMA_BUF_SYNC_END | DMA_BUF_SYNC_WRITE, device)
