"""The fill pool: real commands over a socketpair, real copies into memfd BOs, checked by checksum.

The pool runs here as in the orchestrator; the "task" end is driven by the test (or a forked
child). simgpu's backend does the copies; a wrapping backend injects failures.
"""

from __future__ import annotations

import os
import socket
import time
import zlib

import pytest

from pycriu_restore.plugins.amdgpu.channel import (
    ChannelError,
    Command,
    Entry,
    GpuRecord,
    open_reply_pipe,
    send_command,
    send_done,
    wait_reply,
)
from pycriu_restore.plugins.amdgpu.fillpool import FillError, FillPool, Throttle
from pycriu_restore.plugins.amdgpu.sim import SimBackend

HEADER_BYTES = 8


def make_pages_file(path, sizes: list[int], seed: int) -> list[bytes]:
    """A pages file: u64 total, then one random blob per BO. Returns the blobs."""
    blobs = [zlib.crc32(bytes([seed, i])).to_bytes(4, "little") * (size // 4) for i, size in enumerate(sizes)]
    blobs = [bytes((b + i * 7 + seed) & 0xFF for b in blob[:64]) + blob[64:] for i, blob in enumerate(blobs)]
    with open(path, "wb") as f:
        f.write(sum(sizes).to_bytes(8, "little"))
        for blob in blobs:
            f.write(blob)
    return blobs


class Gpus:
    """Two GPUs' pages files and a command that fills one memfd BO per blob."""

    def __init__(self, tmp_path, sizes_by_gpu: dict[int, list[int]]):
        self.paths = {}
        self.blobs = {}
        self.bo_fds: dict[tuple[int, int], int] = {}
        gpus, entries, fds = [], [], []
        index = 0
        for n, (gpu_id, sizes) in enumerate(sizes_by_gpu.items()):
            path = tmp_path / f"pages-{gpu_id:04x}.img"
            self.paths[gpu_id] = path
            blobs = make_pages_file(path, sizes, n + 1)
            gpus.append(GpuRecord(gpu_id, gpu_id + 1, 128 + n))
            offset = HEADER_BYTES  # each GPU's offsets start at its own file's header
            for size, blob in zip(sizes, blobs):
                fd = os.memfd_create(f"bo-{gpu_id:x}-{index}", os.MFD_CLOEXEC)
                os.ftruncate(fd, size)
                entries.append(Entry(gpu_id, len(fds), index, offset, size))
                self.bo_fds[(gpu_id, index)] = fd
                self.blobs[(gpu_id, index)] = blob
                fds.append(fd)
                offset += size
                index += 1
        self.command = Command(kfd_id=1, gpus=gpus, entries=entries, fds=fds, sender_pid=os.getpid())

    def pages_path(self, kfd_id: int, gpu_id: int):
        return self.paths[gpu_id]

    def contents(self, key) -> bytes:
        fd = self.bo_fds[key]
        return os.pread(fd, os.fstat(fd).st_size, 0)

    def close(self):
        for fd in self.bo_fds.values():
            os.close(fd)


@pytest.fixture
def pair():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    yield a, b
    a.close()
    b.close()


def test_fills_every_bo_of_every_gpu_from_its_own_file(tmp_path, pair):
    task_end, orch_end = pair
    gpus = Gpus(tmp_path, {0x1111: [8192, 3 * 4096 + 4096, 4096], 0x2222: [4096 * 5, 4096]})
    pool = FillPool(SimBackend(), orch_end, gpus.pages_path, expected_commands=1, chunk_bytes=4096 * 2)
    pool.start()
    send_command(task_end, gpus.command)
    stats = pool.join(timeout_s=10)
    try:
        for key, blob in gpus.blobs.items():
            assert zlib.crc32(gpus.contents(key)) == zlib.crc32(blob), f"BO {key}"
        assert stats.bytes_by_gpu == {0x1111: 8192 + 16384 + 4096, 0x2222: 20480 + 4096}
        assert stats.commands == 1 and stats.bos == 5
    finally:
        gpus.close()


def test_commands_from_a_forked_task_then_eof(tmp_path, pair):
    task_end, orch_end = pair
    gpus = Gpus(tmp_path, {0x1111: [4096] * 3, 0x2222: [8192] * 2})
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            orch_end.close()
            send_command(task_end, gpus.command)
        except BaseException:
            code = 1
        os._exit(code)
    task_end.close()
    pool = FillPool(SimBackend(), orch_end, gpus.pages_path)  # no count: reads until EOF
    pool.start()
    try:
        stats = pool.join(timeout_s=10)
        assert stats.commands == 1
        for key, blob in gpus.blobs.items():
            assert gpus.contents(key) == blob
    finally:
        os.waitpid(pid, 0)
        gpus.close()


def test_the_receiver_closes_every_fd_it_was_sent(tmp_path, pair):
    task_end, orch_end = pair
    gpus = Gpus(tmp_path, {0x1111: [4096] * 4})
    before = {int(n) for n in os.listdir("/proc/self/fd")}
    pool = FillPool(SimBackend(), orch_end, gpus.pages_path, expected_commands=1)
    pool.start()
    send_command(task_end, gpus.command)
    pool.join(timeout_s=10)
    assert {int(n) for n in os.listdir("/proc/self/fd")} == before
    gpus.close()


class FailingBackend(SimBackend):
    """simgpu, but the copy into one BO fails; records which BOs were started."""

    def __init__(self, fail_fd: int):
        super().__init__()
        self.fail_fd = fail_fd

    def fill(self, bo_fd, size, src_fd, src_offset, gpu_id, bo_offset=0):
        if os.fstat(bo_fd).st_ino == os.fstat(self.fail_fd).st_ino:
            raise OSError(5, "Input/output error")
        super().fill(bo_fd, size, src_fd, src_offset, gpu_id, bo_offset)


def test_a_copy_error_is_raised_by_join_naming_the_gpu_and_bo(tmp_path, pair):
    task_end, orch_end = pair
    gpus = Gpus(tmp_path, {0x1111: [4096] * 3, 0x2222: [4096] * 2})
    pool = FillPool(FailingBackend(gpus.bo_fds[(0x2222, 4)]), orch_end, gpus.pages_path, expected_commands=1)
    pool.start()
    send_command(task_end, gpus.command)
    with pytest.raises(FillError) as info:
        pool.join(timeout_s=10)
    assert str(info.value) == "amdgpu fill: gpu_id 0x2222, BO 4: Input/output error (kfd_id=1)"
    assert info.value.gpu_id == 0x2222 and info.value.bo_index == 4
    assert isinstance(info.value.__cause__, OSError)
    gpus.close()


def test_an_entry_past_the_end_of_the_pages_file_is_a_fill_error(tmp_path, pair):
    task_end, orch_end = pair
    gpus = Gpus(tmp_path, {0x1111: [4096, 4096]})
    e = gpus.command.entries[1]
    gpus.command.entries[1] = Entry(e.gpu_id, e.fd_index, e.bo_index, e.file_offset + 4096, e.size_bytes)
    pool = FillPool(SimBackend(), orch_end, gpus.pages_path, expected_commands=1)
    pool.start()
    send_command(task_end, gpus.command)
    with pytest.raises(FillError, match=r"gpu_id 0x1111, BO 1: reads 4096 bytes at offset 8200 of a 8200-byte pages file"):
        pool.join(timeout_s=10)
    gpus.close()


def test_a_malformed_stream_fails_join_quickly(tmp_path, pair):
    task_end, orch_end = pair
    pool = FillPool(SimBackend(), orch_end, lambda k, g: tmp_path / "none", expected_commands=1,
                    message_timeout_s=0.5)
    pool.start()
    task_end.sendall(b"GARBAGE!" * 4)
    start = time.monotonic()
    with pytest.raises(ChannelError, match="magic is b'GARB'"):
        pool.join(timeout_s=10)
    assert time.monotonic() - start < 2


def test_a_stream_that_ends_before_every_command_came_is_an_error(tmp_path, pair):
    task_end, orch_end = pair
    gpus = Gpus(tmp_path, {0x1111: [4096]})
    pool = FillPool(SimBackend(), orch_end, gpus.pages_path, expected_commands=2)
    pool.start()
    send_command(task_end, gpus.command)
    task_end.shutdown(socket.SHUT_WR)
    with pytest.raises(ChannelError, match="ended after 1 of 2 commands"):
        pool.join(timeout_s=10)
    gpus.close()


def test_a_done_message_ends_the_stream(tmp_path, pair):
    task_end, orch_end = pair
    pool = FillPool(SimBackend(), orch_end, lambda k, g: tmp_path, expected_commands=None)
    pool.start()
    send_done(task_end)
    stats = pool.join(timeout_s=5)
    assert stats.commands == 0


def test_stop_wakes_a_waiting_receiver_without_an_error(pair):
    _, orch_end = pair
    pool = FillPool(SimBackend(), orch_end, lambda k, g: "/nonexistent", expected_commands=1)
    pool.start()
    time.sleep(0.1)
    start = time.monotonic()
    pool.stop()
    assert time.monotonic() - start < 1.0
    assert not pool._receiver.is_alive()


def _send_waiting(task_end, command: Command) -> int:
    """Send ``command`` as a serial task does (FLAG_WAIT); return the reply pipe's read end."""
    read_end, command.reply_fd = open_reply_pipe()
    try:
        send_command(task_end, command)
    finally:
        os.close(command.reply_fd)
        command.reply_fd = -1
    return read_end


def test_a_waiting_sender_is_answered_once_its_bos_are_filled(tmp_path, pair):
    """Serial mode: the answer comes after every copy and on_filled, never before."""
    task_end, orch_end = pair
    mib = 1 << 20
    gpus = Gpus(tmp_path, {0x1111: [mib, mib], 0x2222: [mib]})
    seen = []
    pool = FillPool(SimBackend(), orch_end, gpus.pages_path, expected_commands=1, bytes_per_s_per_gpu=8 * mib,
                    on_filled=lambda cmd: seen.append(sorted(e.bo_index for e in cmd.entries)))
    pool.start()
    read_end = _send_waiting(task_end, gpus.command)
    wait_reply(read_end, "fill of test")  # returns only with REPLY_OK
    assert seen == [[0, 1, 2]]
    assert all(gpus.contents(key) == blob for key, blob in gpus.blobs.items())
    stats = pool.join(timeout_s=5)
    assert stats.bos == 3 and stats.total_bytes == 3 * mib
    gpus.close()


def test_a_waiting_sender_learns_why_its_fill_failed(tmp_path, pair):
    task_end, orch_end = pair
    gpus = Gpus(tmp_path, {0x1111: [4096] * 3, 0x2222: [4096] * 2})
    pool = FillPool(FailingBackend(gpus.bo_fds[(0x2222, 4)]), orch_end, gpus.pages_path, expected_commands=1)
    pool.start()
    read_end = _send_waiting(task_end, gpus.command)
    with pytest.raises(ChannelError, match=r"fill of test: the orchestrator's fill failed: amdgpu fill: "
                                           r"gpu_id 0x2222, BO 4: Input/output error"):
        wait_reply(read_end, "fill of test")
    with pytest.raises(FillError, match="BO 4: Input/output error"):
        pool.join(timeout_s=10)
    gpus.close()


def test_a_sender_waiting_on_a_long_fill_is_not_idle(tmp_path, pair):
    """The task sends nothing while it waits: the pool's copying, not the task, keeps the
    receiver's idle wait (0.3 s) from running out during a ~1 s fill; silence afterwards
    is idleness again."""
    task_end, orch_end = pair
    mib = 1 << 20
    gpus = Gpus(tmp_path, {0x1111: [mib, mib]})
    pool = FillPool(SimBackend(), orch_end, gpus.pages_path, expected_commands=2, bytes_per_s_per_gpu=2 * mib,
                    idle_timeout_s=0.3)
    pool.start()
    start = time.monotonic()
    wait_reply(_send_waiting(task_end, gpus.command), "fill of test")  # raises if the pool gave up meanwhile
    filled = time.monotonic()
    assert filled - start > 0.6  # the fill outlasted the idle wait
    assert all(gpus.contents(key) == blob for key, blob in gpus.blobs.items())
    with pytest.raises(ChannelError, match="no message began within 0.3 s"):  # the second command never comes
        pool.join(timeout_s=5)
    assert time.monotonic() - filled > 0.25
    gpus.close()


def test_a_bandwidth_cap_limits_each_gpu_and_gpus_run_side_by_side(tmp_path, pair):
    task_end, orch_end = pair
    mib = 1 << 20
    gpus = Gpus(tmp_path, {0x1111: [mib, mib], 0x2222: [mib, mib]})  # 2 MiB per GPU
    rate = 8 * mib  # per GPU: 2 MiB takes 0.25 s; both GPUs at once, still about 0.25 s
    pool = FillPool(SimBackend(), orch_end, gpus.pages_path, expected_commands=1, bytes_per_s_per_gpu=rate)
    start = time.monotonic()
    pool.start()
    send_command(task_end, gpus.command)
    pool.join(timeout_s=10)
    elapsed = time.monotonic() - start
    for key, blob in gpus.blobs.items():
        assert gpus.contents(key) == blob
    # The last chunk's sleep brings the average to the cap: at least ~0.25 s, and the GPUs
    # overlap (serial would be 0.5 s). Loose upper bound: a loaded 2-core machine.
    assert 0.22 < elapsed < 0.48, elapsed
    gpus.close()


def test_throttle_paces_to_its_rate():
    throttle = Throttle(1 << 20)  # 1 MiB/s
    start = time.monotonic()
    for _ in range(4):
        throttle.account(64 << 10)  # 256 KiB in all: 0.25 s
    assert 0.2 < time.monotonic() - start < 0.5
    assert throttle.chunk_bytes(32 << 20) == 64 << 10  # 0.05 s of 1 MiB/s, at least 64 KiB
    assert Throttle(None).chunk_bytes(123) == 123
