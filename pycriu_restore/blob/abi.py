"""ctypes mirror of ``restorer_blob/abi.h``: the arguments the restorer blob reads.

Every ``#define`` and every struct of abi.h appears here under the same name, with the same
fields in the same order; abi.h documents what each field means. tests/test_blob_abi.py
compiles abi.h with gcc and checks each value, size and offset against this module, so the
two cannot drift apart silently.

Rules (from abi.h): fixed-width fields only; an address is a ``c_uint64`` in the task's
address space; holes are explicit ``_pad`` fields left at zero; any layout change bumps
``BLOB_ABI_VERSION`` on both sides.
"""

from __future__ import annotations

import ctypes
from ctypes import c_int32, c_int64, c_uint8, c_uint32, c_uint64

BLOB_ARGS_MAGIC = 0x42435950  # "PYCB" in memory, little-endian
BLOB_ABI_VERSION = 1

BLOB_PAGE_SIZE = 4096
BLOB_STACK_BYTES = 32768

BLOB_ENTRY_RESTORE_TASK = "restore_task"

# blob_args.flags
BLOB_F_EXIT = 1 << 0

# The blob's own exit statuses; args.exit_code must be below BLOB_EXIT_RESERVED.
BLOB_EXIT_RESERVED = 240
BLOB_EXIT_BAD_MAGIC = 240
BLOB_EXIT_BAD_VERSION = 241
BLOB_EXIT_BAD_SIZE = 242
BLOB_EXIT_BAD_ARGS = 243
BLOB_EXIT_UNSUPPORTED = 244
BLOB_EXIT_STEP_FAILED = 245

# blob_vma.blob_flags
BLOB_VMA_NO_PROT_WRITE = 1 << 0
BLOB_VMA_CLOSE_FD = 1 << 1


class BlobRseq(ctypes.Structure):
    """struct blob_rseq: an rseq(2) area to unregister or register."""

    _fields_ = [
        ("addr", c_uint64),
        ("len", c_uint32),
        ("sig", c_uint32),
    ]


class BlobVma(ctypes.Structure):
    """struct blob_vma: one VMA to map at its checkpointed address."""

    _fields_ = [
        ("start", c_uint64),
        ("end", c_uint64),
        ("pgoff", c_uint64),
        ("madv", c_uint64),
        ("prot", c_uint32),
        ("flags", c_uint32),
        ("blob_flags", c_uint32),
        ("fd", c_int32),
    ]


class BlobPageRead(ctypes.Structure):
    """struct blob_page_read: one preadv(2) batch from the pages image."""

    _fields_ = [
        ("file_off", c_uint64),
        ("first_iov", c_uint64),
        ("nr_iovs", c_uint32),
        ("_pad", c_uint32),
    ]


class BlobIovec(ctypes.Structure):
    """struct blob_iovec: struct iovec with fixed-width fields."""

    _fields_ = [
        ("base", c_uint64),
        ("len", c_uint64),
    ]


class BlobRemap(ctypes.Structure):
    """struct blob_remap: an mremap(2) of a kernel-made area (vvar, vdso) into place."""

    _fields_ = [
        ("old_start", c_uint64),
        ("new_start", c_uint64),
        ("len", c_uint64),
    ]


class BlobSigaction(ctypes.Structure):
    """struct blob_sigaction: one rt_sigaction(2) call (kernel struct sigaction, x86-64)."""

    _fields_ = [
        ("signo", c_uint32),
        ("_pad", c_uint32),
        ("handler", c_uint64),
        ("flags", c_uint64),
        ("restorer", c_uint64),
        ("mask", c_uint64),
    ]


class BlobMm(ctypes.Structure):
    """struct blob_mm: the layout of struct prctl_mm_map (linux/prctl.h)."""

    _fields_ = [
        ("start_code", c_uint64),
        ("end_code", c_uint64),
        ("start_data", c_uint64),
        ("end_data", c_uint64),
        ("start_brk", c_uint64),
        ("brk", c_uint64),
        ("start_stack", c_uint64),
        ("arg_start", c_uint64),
        ("arg_end", c_uint64),
        ("env_start", c_uint64),
        ("env_end", c_uint64),
        ("auxv", c_uint64),
        ("auxv_size", c_uint32),
        ("exe_fd", c_uint32),
    ]


class BlobThread(ctypes.Structure):
    """struct blob_thread: per-thread state the blob sets from inside each thread."""

    _fields_ = [
        ("tid", c_uint32),
        ("_pad", c_uint32),
        ("stack_top", c_uint64),
        ("sigframe", c_uint64),
        ("fs_base", c_uint64),
        ("gs_base", c_uint64),
        ("clear_child_tid", c_uint64),
        ("robust_list", c_uint64),
        ("robust_list_len", c_uint64),
        ("rseq", BlobRseq),
        ("comm", c_uint8 * 16),
    ]


class BlobArgs(ctypes.Structure):
    """struct blob_args: everything restore_task needs; the blob writes progress/error back."""

    _fields_ = [
        ("magic", c_uint32),
        ("abi_version", c_uint32),
        ("args_size", c_uint32),
        ("flags", c_uint32),
        ("exit_code", c_uint32),
        ("progress", c_uint32),
        ("error", c_int64),
        ("error_addr", c_uint64),
        ("bootstrap_start", c_uint64),
        ("bootstrap_len", c_uint64),
        ("task_size", c_uint64),
        ("self_rseq", BlobRseq),
        ("vmas", c_uint64),
        ("nr_vmas", c_uint32),
        ("pages_fd", c_int32),
        ("page_reads", c_uint64),
        ("nr_page_reads", c_uint32),
        ("_pad0", c_uint32),
        ("iovs", c_uint64),
        ("nr_iovs", c_uint32),
        ("_pad1", c_uint32),
        ("remaps", c_uint64),
        ("nr_remaps", c_uint32),
        ("_pad2", c_uint32),
        ("mm", BlobMm),
        ("sigactions", c_uint64),
        ("nr_sigactions", c_uint32),
        ("_pad3", c_uint32),
        ("threads", c_uint64),
        ("nr_threads", c_uint32),
        ("_pad4", c_uint32),
    ]

    @classmethod
    def new(cls) -> BlobArgs:
        """Zeroed args with a valid header (magic, version, size) and no pages fd.

        Every array is empty and no flag is set: the caller fills in what it needs.
        """
        args = cls()
        args.magic = BLOB_ARGS_MAGIC
        args.abi_version = BLOB_ABI_VERSION
        args.args_size = ctypes.sizeof(cls)
        args.pages_fd = -1
        return args


# The C name of each mirrored struct (what tests/test_blob_abi.py compares).
STRUCTS: dict[str, type[ctypes.Structure]] = {
    "blob_rseq": BlobRseq,
    "blob_vma": BlobVma,
    "blob_page_read": BlobPageRead,
    "blob_iovec": BlobIovec,
    "blob_remap": BlobRemap,
    "blob_sigaction": BlobSigaction,
    "blob_mm": BlobMm,
    "blob_thread": BlobThread,
    "blob_args": BlobArgs,
}
