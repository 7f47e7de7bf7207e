"""The restorer blob runs: in a forked child, relocated for wherever mmap put it.

Each test builds bare args (no VMAs, no thread: BLOB_F_EXIT ends with exit_group), runs the
freshly built blob through pycriu_restore.blob.forkrun and checks how the child ended and
the status record the blob left in the shared region. Even with nothing to restore, the
blob unmaps all of the child's old memory (Python included) and runs every step on its own
stack, so a clean exit shows that the region, the stack switch and the relocations work.
The glibc rseq tests make the kernel itself check the blob's rseq(RSEQ_FLAG_UNREGISTER).
"""

from __future__ import annotations

import dataclasses
import errno
import importlib.util
import pathlib
import signal

import pytest

from pycriu_restore.blob import abi
from pycriu_restore.blob.forkrun import ChildExit, run_in_child, this_thread_rseq
from pycriu_restore.blob.loader import BLOB_FILE_NAME, Blob, load_blob
from conftest import seized_fork

ROOT = pathlib.Path(__file__).resolve().parent.parent



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


def _failed(outcome: ChildExit, step: int, err: int) -> None:
    """The child ended with BLOB_EXIT_STEP_FAILED and the status names step and errno."""
    assert _exit_code(outcome) == abi.BLOB_EXIT_STEP_FAILED
    status = outcome.status
    assert status.failed, status.describe()
    assert (status.step, status.err) == (step, err), status.describe()


@pytest.mark.parametrize("code", [0, 7, 42])
def test_blob_exits_with_the_code_from_its_args(blob: Blob, code: int) -> None:
    outcome = run_in_child(blob, _args(code))
    assert _exit_code(outcome) == code
    assert outcome.status.ok and outcome.status.describe() == "ok"


def test_bad_magic_gives_its_own_status_and_writes_nothing(blob: Blob) -> None:
    args = _args(7)
    args.magic ^= 1
    outcome = run_in_child(blob, args)
    assert _exit_code(outcome) == abi.BLOB_EXIT_BAD_MAGIC
    assert not outcome.status.started
    assert outcome.status.describe() == "the blob did not start (no status record)"


def test_other_abi_version_is_reported(blob: Blob) -> None:
    args = _args(7)
    args.abi_version = abi.BLOB_ABI_VERSION + 1
    outcome = run_in_child(blob, args)
    _failed(outcome, abi.BLOB_STEP_CHECK_ARGS, errno.EPROTO)
    assert "another ABI version" in outcome.status.describe()


def test_other_args_size_is_reported(blob: Blob) -> None:
    args = _args(7)
    args.args_size -= 8
    _failed(run_in_child(blob, args), abi.BLOB_STEP_CHECK_ARGS, errno.EBADMSG)


@pytest.mark.parametrize("field, value, index", [("exit_code", abi.BLOB_EXIT_RESERVED, 1),
                                                 ("flags", 1 << 31, 0)])
def test_out_of_range_fields_are_bad_args(blob: Blob, field: str, value: int, index: int) -> None:
    args = _args(7)
    setattr(args, field, getattr(args, field) | value)
    outcome = run_in_child(blob, args)
    _failed(outcome, abi.BLOB_STEP_CHECK_ARGS, errno.EINVAL)
    assert outcome.status.index == index


def test_sigreturn_ending_needs_a_thread(blob: Blob) -> None:
    """Without BLOB_F_EXIT the blob ends in rt_sigreturn, which needs threads[0]'s frame."""
    outcome = run_in_child(blob, _args(0, flags=abi.BLOB_F_NO_TRAP))
    _failed(outcome, abi.BLOB_STEP_CHECK_ARGS, errno.EINVAL)
    assert outcome.status.describe() == "check arguments (thread count): EINVAL"


def test_thread_descriptors_outside_the_region_are_refused(blob: Blob) -> None:
    """nr_threads with no array in the region: EINVAL before any thread is made."""
    args = _args(7)
    args.nr_threads = 2
    outcome = run_in_child(blob, args)
    _failed(outcome, abi.BLOB_STEP_CHECK_ARGS, errno.EINVAL)
    assert outcome.status.describe() == "check arguments (thread count): EINVAL"


def _glibc_rseq() -> abi.BlobRseq:
    rseq = this_thread_rseq()
    assert rseq.addr, "glibc did not register rseq (glibc.pthread.rseq=0?): nothing to test"
    return rseq


def test_rseq_of_the_forked_child_matches_the_kernel_view(blob: Blob) -> None:
    """this_thread_rseq() (used for every run_in_child) is what ptrace reports for a fork."""
    from pycriu_restore.linux import ptrace

    with seized_fork() as pid:
        conf = ptrace.get_rseq_configuration(pid)
    mine = this_thread_rseq()
    assert (mine.addr, mine.len, mine.sig) == (conf.abi_pointer, conf.abi_size, conf.signature)


def test_blob_unregisters_glibc_rseq(blob: Blob) -> None:
    """The kernel accepts the unregistration (a fork keeps the parent's rseq registration),
    and the child survives the unmap of everything that follows it."""
    args = _args(33)
    args.self_rseq = _glibc_rseq()
    outcome = run_in_child(blob, args)
    assert _exit_code(outcome) == 33 and outcome.status.ok


def test_failed_step_is_reported_with_its_object(blob: Blob) -> None:
    """A wrong signature: the kernel refuses (EPERM) and the status names the area."""
    args = _args(33)
    args.self_rseq = _glibc_rseq()
    args.self_rseq.sig ^= 0xFF
    outcome = run_in_child(blob, args)
    _failed(outcome, abi.BLOB_STEP_UNREGISTER_RSEQ, errno.EPERM)
    assert outcome.status.addr == args.self_rseq.addr
    assert outcome.status.describe() == (
        f"unregister the old rseq area at {args.self_rseq.addr:#x}: EPERM")


def test_unrelocated_blob_crashes(blob: Blob) -> None:
    """The step table needs its RELATIVE relocations: without them the first call faults."""
    unrelocated = dataclasses.replace(blob, relocations=())
    outcome = run_in_child(unrelocated, _args(7))
    assert outcome.signal == signal.SIGSEGV, outcome.describe()
    # The blob had started: it wrote its status before calling through the table.
    assert outcome.status.started and outcome.status.step == abi.BLOB_STEP_CHECK_ARGS
