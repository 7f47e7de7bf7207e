"""The restorer blob runs: in a forked child, relocated for wherever mmap put it.

Each test builds args, runs the freshly built blob through pycriu_restore.blob.forkrun and
checks how the child ended: the exit status the args asked for, or the blob's own status
for each kind of bad args. The glibc rseq test makes the kernel itself check the blob's
rseq(RSEQ_FLAG_UNREGISTER) call.
"""

from __future__ import annotations

import ctypes
import dataclasses
import importlib.util
import pathlib
import signal

import pytest

from pycriu_restore.blob import abi
from pycriu_restore.blob.forkrun import ChildExit, run_in_child
from pycriu_restore.blob.loader import BLOB_FILE_NAME, Blob, load_blob

ROOT = pathlib.Path(__file__).resolve().parent.parent

RSEQ_SIG_X86 = 0x53053053      # glibc's RSEQ_SIG for x86 (sysdeps/unix/sysv/linux/x86/bits/rseq.h)
ORIG_RSEQ_SIZE = 32            # kernel's minimum rseq_len (kernel/rseq.c); glibc registers >= this
SYS_ARCH_PRCTL = 158           # asm/unistd_64.h
ARCH_GET_FS = 0x1003           # asm/prctl.h


@pytest.fixture(scope="module")
def blob(tmp_path_factory: pytest.TempPathFactory) -> Blob:
    spec = importlib.util.spec_from_file_location("restorer_blob_build", ROOT / "restorer_blob" / "build.py")
    build_py = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build_py)
    out = tmp_path_factory.mktemp("blob") / BLOB_FILE_NAME
    build_py.build(out)
    return load_blob(out)


def _args(exit_code: int = 0, flags: int = abi.BLOB_F_EXIT) -> abi.BlobArgs:
    args = abi.BlobArgs.new()
    args.flags = flags
    args.exit_code = exit_code
    return args


def _exit_code(outcome: ChildExit) -> int:
    assert outcome.signal is None, outcome.describe()
    return outcome.exit_code


@pytest.mark.parametrize("code", [7, 42])
def test_blob_exits_with_the_code_from_its_args(blob: Blob, code: int) -> None:
    assert _exit_code(run_in_child(blob, _args(code))) == code


def test_exit_code_zero(blob: Blob) -> None:
    assert _exit_code(run_in_child(blob, _args(0))) == 0


def test_bad_magic_gives_its_own_status(blob: Blob) -> None:
    args = _args(7)
    args.magic ^= 1
    assert _exit_code(run_in_child(blob, args)) == abi.BLOB_EXIT_BAD_MAGIC


def test_other_abi_version_is_refused(blob: Blob) -> None:
    args = _args(7)
    args.abi_version = abi.BLOB_ABI_VERSION + 1
    assert _exit_code(run_in_child(blob, args)) == abi.BLOB_EXIT_BAD_VERSION


def test_other_args_size_is_refused(blob: Blob) -> None:
    args = _args(7)
    args.args_size -= 8
    assert _exit_code(run_in_child(blob, args)) == abi.BLOB_EXIT_BAD_SIZE


@pytest.mark.parametrize("field, value", [("exit_code", abi.BLOB_EXIT_RESERVED), ("flags", 1 << 31)])
def test_out_of_range_fields_are_bad_args(blob: Blob, field: str, value: int) -> None:
    args = _args(7, abi.BLOB_F_EXIT)
    setattr(args, field, getattr(args, field) | value)
    assert _exit_code(run_in_child(blob, args)) == abi.BLOB_EXIT_BAD_ARGS


@pytest.mark.parametrize("field", [None, "nr_vmas", "nr_threads", "mm"])
def test_work_the_blob_cannot_do_yet_is_refused(blob: Blob, field: str | None) -> None:
    args = _args(7, flags=0 if field is None else abi.BLOB_F_EXIT)   # None: no exit ending
    if field == "mm":
        args.mm.brk = 0x1000
    elif field is not None:
        setattr(args, field, 1)
    assert _exit_code(run_in_child(blob, args)) == abi.BLOB_EXIT_UNSUPPORTED


def _glibc_rseq() -> abi.BlobRseq:
    """This thread's glibc rseq registration: thread pointer + __rseq_offset (glibc >= 2.35)."""
    libc = ctypes.CDLL(None, use_errno=True)
    size = ctypes.c_uint.in_dll(libc, "__rseq_size").value
    assert size > 0, "glibc did not register rseq (glibc.pthread.rseq=0?): nothing to test"
    offset = ctypes.c_long.in_dll(libc, "__rseq_offset").value
    fs_base = ctypes.c_uint64()
    libc.syscall.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p]
    assert libc.syscall(SYS_ARCH_PRCTL, ARCH_GET_FS, ctypes.byref(fs_base)) == 0
    return abi.BlobRseq(addr=fs_base.value + offset, len=max(size, ORIG_RSEQ_SIZE), sig=RSEQ_SIG_X86)


def test_blob_unregisters_glibc_rseq(blob: Blob) -> None:
    """The kernel accepts the unregistration (a fork keeps the parent's rseq registration)."""
    args = _args(33)
    args.self_rseq = _glibc_rseq()
    assert _exit_code(run_in_child(blob, args)) == 33


def test_failed_step_gives_step_failed(blob: Blob) -> None:
    """A wrong signature: the kernel refuses (EPERM) and the blob reports the failed step."""
    args = _args(33)
    args.self_rseq = _glibc_rseq()
    args.self_rseq.sig ^= 0xFF
    assert _exit_code(run_in_child(blob, args)) == abi.BLOB_EXIT_STEP_FAILED


def test_unrelocated_blob_crashes(blob: Blob) -> None:
    """The step table needs its RELATIVE relocations: without them the first call faults."""
    unrelocated = dataclasses.replace(blob, relocations=())
    outcome = run_in_child(unrelocated, _args(7))
    assert outcome.signal == signal.SIGSEGV, outcome.describe()
