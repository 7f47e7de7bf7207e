"""The amdgpu command channel: exact framing over a real socketpair, and every malformed stream refused.

Each test sends real bytes (and real fds) from one end of a socketpair, from this process or
a forked child, and asserts what the receiving end makes of them.
"""

from __future__ import annotations

import fcntl
import os
import socket
import struct
import time

import pytest

from pycriu_restore.plugins.amdgpu import channel
from pycriu_restore.plugins.amdgpu.channel import (
    CHANNEL_FD_BASE,
    ENTRY,
    FDS_PER_BATCH,
    GPU_RECORD,
    HEADER,
    MAGIC,
    VERSION,
    ChannelError,
    Command,
    Entry,
    GpuRecord,
    encode,
    make_channel,
    receive_command,
    send_command,
    send_done,
)


def open_fds() -> set[int]:
    return {int(n) for n in os.listdir("/proc/self/fd")}


@pytest.fixture
def pair():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    yield a, b
    a.close()
    b.close()


def memfds(n: int) -> list[int]:
    fds = []
    for i in range(n):
        fd = os.memfd_create(f"chan-test-{i}", os.MFD_CLOEXEC)
        os.ftruncate(fd, 4096 * (i % 3 + 1))
        fds.append(fd)
    return fds


def sample_command(fds: list[int]) -> Command:
    gpus = [GpuRecord(0x1A2B, 0x7777, 128), GpuRecord(0x3C4D, 0x8888, 129)]
    entries = [Entry(gpus[i % 2].gpu_id, i, 10 + i, 8 + (i // 2) * (5 << 30), 4096 * (i % 3 + 1)) for i in range(len(fds))]
    return Command(kfd_id=9, gpus=gpus, entries=entries, fds=fds, sender_pid=os.getpid())


def raw_header(*, magic=MAGIC, version=VERSION, kind=channel.KIND_COMMAND, kfd_id=9, n_gpus=0, n_entries=0,
               n_fds=0, flags=0, pid=1) -> bytes:
    return HEADER.pack(magic, version, kind, kfd_id, n_gpus, n_entries, n_fds, flags, pid)


def receive(sock, **kw):
    kw.setdefault("idle_timeout_s", 5.0)
    kw.setdefault("message_timeout_s", 2.0)
    return receive_command(sock, **kw)


def test_wire_layout_is_little_endian_with_64_bit_offsets():
    cmd = Command(kfd_id=0x01020304, gpus=[GpuRecord(0xAABB, 0xCCDD, 130)],
                  entries=[Entry(0xAABB, 0, 7, 5 << 32, 6 << 32, 0)], fds=[3], reply_fd=4, sender_pid=42)
    data = encode(cmd)
    assert len(data) == HEADER.size + GPU_RECORD.size + ENTRY.size == 32 + 16 + 40
    assert data[0:4] == b"PCGC"
    assert data[4:6] == b"\x02\x00" and data[6:8] == b"\x01\x00"  # version 2, kind COMMAND
    assert data[8:12] == b"\x04\x03\x02\x01"  # kfd id, little-endian
    assert struct.unpack_from("<III", data, 12) == (1, 1, 2)  # gpus, entries, fds (the BO's and the reply pipe)
    assert struct.unpack_from("<II", data, 24) == (channel.FLAG_WAIT, 42)
    assert struct.unpack_from("<III", data, 32) == (0xAABB, 0xCCDD, 130)
    assert struct.unpack_from("<IIIIQQQ", data, 48) == (0xAABB, 0, 7, 0, 5 << 32, 6 << 32, 0)


def test_round_trip_with_more_than_one_batch_of_fds(pair):
    a, b = pair
    fds = memfds(2 * FDS_PER_BATCH + 37)  # three SCM_RIGHTS batches
    cmd = sample_command(fds)
    try:
        send_command(a, cmd)
        got = receive(b)
        try:
            assert got is not None
            assert (got.kfd_id, got.gpus, got.entries, got.reply_fd) == (9, cmd.gpus, cmd.entries, -1)
            assert got.sender_pid == os.getpid()
            assert len(got.fds) == len(fds)
            # The same files, in order: fd_index i names the sender's fd i.
            assert [os.fstat(f).st_ino for f in got.fds] == [os.fstat(f).st_ino for f in fds]
            assert max(e.file_offset for e in got.entries) > 1 << 32  # 64-bit offsets survive
        finally:
            got.close_fds()
        send_done(a)
        assert receive(b) is None
    finally:
        for fd in fds:
            os.close(fd)


def test_round_trip_from_a_forked_child(pair):
    a, b = pair
    pid = os.fork()
    if pid == 0:  # the "task": sends two commands and exits (EOF ends the stream)
        code = 0
        try:
            b.close()
            for n in (3, 300):
                fds = memfds(n)
                send_command(a, sample_command(fds))
        except BaseException:
            code = 1
        os._exit(code)
    a.close()
    try:
        first, second = receive(b), receive(b)
        assert [len(first.fds), len(second.fds)] == [3, 300]
        assert receive(b) is None  # EOF after the child's exit
        first.close_fds()
        second.close_fds()
    finally:
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


@pytest.mark.parametrize("header, message", [
    (raw_header(magic=b"XXXX"), "magic is b'XXXX', expected b'PCGC'"),
    (raw_header(version=1), "version is 1, this end speaks 2"),
    (raw_header(kind=7), "message kind is 7"),
    (raw_header(n_gpus=65), "65 GPUs, more than the limit of 64"),
    (raw_header(n_entries=channel.MAX_ENTRIES + 1), f"{channel.MAX_ENTRIES + 1} entries, more than the limit"),
    (raw_header(n_fds=channel.MAX_FDS + 1, n_entries=1), f"{channel.MAX_FDS + 1} fds, more than the limit"),
    (raw_header(flags=0x10), "unknown flags 0x10"),
    (raw_header(n_entries=1, n_fds=0), "1 entries but no BO fds"),
    (raw_header(n_entries=1, n_fds=1, flags=channel.FLAG_WAIT), "1 entries but no BO fds"),
    (raw_header(flags=channel.FLAG_WAIT), "waits for its fill but sends no reply pipe"),
    (raw_header(n_fds=channel.MAX_FDS + 2, n_entries=1, flags=channel.FLAG_WAIT),
     f"{channel.MAX_FDS + 2} fds, more than the limit of {channel.MAX_FDS + 1}"),
    (raw_header(kind=channel.KIND_DONE, kfd_id=3), "done message: carries kfd_id 3"),
])
def test_bad_headers_are_refused(pair, header, message):
    a, b = pair
    a.sendall(header)
    with pytest.raises(ChannelError) as info:
        receive(b)
    assert message in str(info.value)


def _command_bytes(entries: list[tuple], n_fds: int, gpus=((0x10, 0x20, 128, 0),)) -> bytes:
    out = raw_header(n_gpus=len(gpus), n_entries=len(entries), n_fds=n_fds)
    out += b"".join(GPU_RECORD.pack(*g) for g in gpus)
    return out + b"".join(ENTRY.pack(*e) for e in entries)


@pytest.mark.parametrize("entry, gpus, message", [
    ((0x10, 2, 5, 0, 8, 4096, 0), ((0x10, 0x20, 128, 0),), "entry 1 (BO 5): fd_index 2 points past the 2 fds"),
    ((0x11, 0, 5, 0, 8, 4096, 0), ((0x10, 0x20, 128, 0),), "gpu_id 0x11 is not one of the command's GPUs"),
    ((0x10, 0, 5, 0, 8, 0, 0), ((0x10, 0x20, 128, 0),), "copies 0 bytes"),
    ((0x10, 0, 5, 9, 8, 4096, 0), ((0x10, 0x20, 128, 0),), "reserved word is 0x9"),
    ((0x10, 0, 5, 0, (1 << 63) - 10, 4096, 0), ((0x10, 0x20, 128, 0),), "range overflows"),
    ((0x10, 0, 5, 0, 8, 4096, 0), ((0x10, 0x20, 128, 0), (0x10, 0x21, 129, 0)), "gpu_id 0x10 appears twice"),
    ((0x10, 0, 5, 0, 8, 4096, 0), ((0x10, 0x20, 128, 1),), "GPU record 0: reserved word is 0x1"),
])
def test_bad_entries_and_gpu_records_are_refused(pair, entry, gpus, message):
    a, b = pair
    a.sendall(_command_bytes([(0x10, 0, 4, 0, 8, 4096, 0), entry], n_fds=2, gpus=gpus))
    with pytest.raises(ChannelError) as info:
        receive(b)
    assert message in str(info.value)
    assert "kfd_id=9" in str(info.value)


@pytest.mark.parametrize("cut", [0, 5, HEADER.size, HEADER.size + 7, HEADER.size + GPU_RECORD.size + 39])
def test_eof_inside_a_message_from_a_child_is_an_error_not_a_hang(pair, cut):
    a, b = pair
    data = _command_bytes([(0x10, 0, 4, 0, 8, 4096, 0)], n_fds=1)
    pid = os.fork()
    if pid == 0:
        b.close()
        a.sendall(data[:cut])
        os._exit(0)  # EOF right after the cut
    a.close()
    start = time.monotonic()
    try:
        if cut == 0:
            assert receive(b) is None  # EOF between messages: the stream simply ended
        else:
            with pytest.raises(ChannelError) as info:
                receive(b)
            assert "stream ended after" in str(info.value) or "stream ended before the fds" in str(info.value)
    finally:
        os.waitpid(pid, 0)
    assert time.monotonic() - start < 2.0


def test_eof_before_the_fds_is_an_error(pair):
    a, b = pair
    a.sendall(_command_bytes([(0x10, 0, 4, 0, 8, 4096, 0)], n_fds=1))
    a.shutdown(socket.SHUT_WR)
    with pytest.raises(ChannelError, match="stream ended before the fds"):
        receive(b)


def test_a_stalled_message_times_out(pair):
    a, b = pair
    a.sendall(raw_header(n_gpus=1)[:20])
    start = time.monotonic()
    with pytest.raises(ChannelError, match="header: stalled after 20 of 32 bytes within 0.3 s"):
        receive(b, message_timeout_s=0.3)
    assert time.monotonic() - start < 1.5


def test_no_message_at_all_times_out_after_the_idle_timeout(pair):
    _, b = pair
    start = time.monotonic()
    with pytest.raises(ChannelError, match="no message began within 0.2 s"):
        receive(b, idle_timeout_s=0.2)
    assert 0.15 < time.monotonic() - start < 1.5


def test_a_trickling_sender_cannot_stretch_the_message_deadline(pair):
    a, b = pair
    data = raw_header(n_gpus=1) + GPU_RECORD.pack(0x10, 0x20, 128, 0)
    pid = os.fork()
    if pid == 0:
        b.close()
        try:
            for i in range(len(data)):  # one byte every 50 ms: each read is fast, the message is not
                a.sendall(data[i:i + 1])
                time.sleep(0.05)
        except OSError:
            pass
        os._exit(0)
    a.close()
    start = time.monotonic()
    try:
        with pytest.raises(ChannelError, match="within 0.5 s"):
            receive(b, message_timeout_s=0.5)
        assert time.monotonic() - start < 1.2
    finally:
        b.close()
        os.waitpid(pid, 0)


def test_fewer_fds_than_announced_closes_what_came(pair):
    a, b = pair
    fds = memfds(2)
    before = open_fds()
    a.sendall(_command_bytes([(0x10, 0, 4, 0, 8, 4096, 0)], n_fds=3))
    socket.send_fds(a, [b"F"], fds)  # 2 fds where the batch must carry 3
    with pytest.raises(ChannelError, match="batch carries 2 fds on byte b'F', expected 3"):
        receive(b)
    assert open_fds() == before  # the 2 received fds were closed
    for fd in fds:
        os.close(fd)


def test_a_batch_larger_than_the_limit_is_refused_without_leaks(pair):
    a, b = pair
    fds = memfds(FDS_PER_BATCH + 3)
    before = open_fds()
    a.sendall(_command_bytes([(0x10, 0, 4, 0, 8, 4096, 0)], n_fds=FDS_PER_BATCH + 3))
    socket.send_fds(a, [b"F"], fds)  # all in one batch: the receiver's control buffer is too small
    with pytest.raises(ChannelError, match="more than 250 fds in one batch"):
        receive(b)
    assert open_fds() == before
    for fd in fds:
        os.close(fd)


def test_fds_on_the_wrong_byte_are_refused(pair):
    a, b = pair
    fds = memfds(1)
    a.sendall(_command_bytes([(0x10, 0, 4, 0, 8, 4096, 0)], n_fds=1))
    socket.send_fds(a, [b"X"], fds)
    with pytest.raises(ChannelError, match="on byte b'X'"):
        receive(b)
    os.close(fds[0])


def test_sending_to_a_closed_orchestrator_end_is_a_channel_error(pair):
    a, b = pair
    b.close()
    fds = memfds(1)
    with pytest.raises(ChannelError, match="send failed"):
        send_command(a, sample_command(fds))
    os.close(fds[0])


def test_make_channel_puts_both_ends_high_and_close_on_exec():
    orch, task = make_channel()
    try:
        for sock in (orch, task):
            assert sock.fileno() >= CHANNEL_FD_BASE
            assert fcntl.fcntl(sock.fileno(), fcntl.F_GETFD) & fcntl.FD_CLOEXEC
            assert sock.type == socket.SOCK_STREAM and sock.family == socket.AF_UNIX
        fds = memfds(1)
        send_command(task, sample_command(fds))
        got = receive(orch)
        assert len(got.fds) == 1
        got.close_fds()
        os.close(fds[0])
    finally:
        orch.close()
        task.close()


def test_a_waiting_sender_gets_the_orchestrators_answer_on_its_reply_pipe(pair):
    """Serial mode: the reply pipe travels last, entries never name it, the answer ends the wait."""
    a, b = pair
    fds = memfds(2)
    for failure, expect in [(None, None), ("amdgpu fill: gpu_id 0x10, BO 3: ENOSPC", "the orchestrator's fill failed: "
                                           "amdgpu fill: gpu_id 0x10, BO 3: ENOSPC")]:
        read_end, write_end = channel.open_reply_pipe()
        cmd = sample_command(fds)
        cmd.reply_fd = write_end
        send_command(a, cmd)
        os.close(write_end)  # as the plugin does: the orchestrator's copy is the only one left
        got = receive(b)
        try:
            assert len(got.fds) == 2 and got.reply_fd >= 0 and got.reply_fd not in got.fds
            assert os.fstat(got.reply_fd).st_ino == os.fstat(read_end).st_ino
            got.reply(failure)
            got.reply("a second answer is never written")
        finally:
            got.close_fds()
        if expect is None:
            channel.wait_reply(read_end, "fill of amdgpu-kfd-9.img")
        else:
            with pytest.raises(ChannelError, match=expect):
                channel.wait_reply(read_end, "fill of amdgpu-kfd-9.img")
    # the orchestrator closed it unanswered (stopped, or dead): EOF is an error, not a hang
    read_end, write_end = channel.open_reply_pipe()
    os.close(write_end)
    with pytest.raises(ChannelError, match="fill of x: the orchestrator ended the fill without an answer"):
        channel.wait_reply(read_end, "fill of x")
    for fd in fds:
        os.close(fd)


def test_a_reply_fd_that_is_not_a_pipe_is_refused_and_nothing_leaks(pair):
    """Answering into a BO would corrupt it: the last fd of a WAIT command must be a pipe."""
    a, b = pair
    fds = memfds(2)
    cmd = sample_command(fds[:1])
    cmd.reply_fd = fds[1]
    before = open_fds()
    send_command(a, cmd)
    with pytest.raises(ChannelError, match="the reply pipe, is not a pipe"):
        receive(b)
    assert open_fds() == before
    for fd in fds:
        os.close(fd)


def test_the_idle_wait_counts_from_the_receivers_last_progress():
    """A serial task sends nothing while the pool fills for it: the pool's own copying keeps
    the wait alive (idle_since), and silence after the copies end is still an error."""
    import threading

    orch, task = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    last = [time.monotonic()]
    stop = threading.Event()

    def copying():  # the pool: a chunk every 0.1 s for 0.8 s
        while not stop.wait(0.1) and time.monotonic() - start < 0.8:
            last[0] = time.monotonic()

    try:
        start = time.monotonic()
        copier = threading.Thread(target=copying)
        copier.start()
        with pytest.raises(ChannelError, match="no message began within 0.3 s"):
            channel.receive_command(orch, idle_timeout_s=0.3, message_timeout_s=1.0, idle_since=lambda: last[0])
        waited = time.monotonic() - start
        assert 0.8 + 0.3 - 0.15 < waited, waited  # not before the copying had stopped for 0.3 s
        stop.set()
        copier.join()
        send_done(task)
        assert channel.receive_command(orch, idle_timeout_s=0.3, idle_since=lambda: last[0]) is None
    finally:
        orch.close()
        task.close()
