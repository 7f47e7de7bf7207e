"""unshare / setns / time-namespace offsets, each run in a forked child so that the test
process itself never changes namespace. Needs root."""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable

import pytest

from pycriu_restore.linux.errors import LinuxError, SyscallFailed
from pycriu_restore.linux.namespaces import (CLONE_NEWNET, CLONE_NEWTIME, CLONE_NEWUTS,
                                             set_timens_offsets, setns, timens_offsets_text,
                                             unshare)



def run_in_child(body: Callable[[], dict]) -> dict:
    """Run ``body`` in a forked child and return the dict it produced (as JSON)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.close(r)
            try:
                result = body()
            except BaseException as err:   # report, do not lose, the child's failure
                result = {"error": f"{type(err).__name__}: {err}"}
            os.write(w, json.dumps(result).encode())
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    chunks = []
    while chunk := os.read(r, 65536):
        chunks.append(chunk)
    os.close(r)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return json.loads(b"".join(chunks))


def test_offsets_text_uses_floor_seconds_and_positive_nanoseconds() -> None:
    assert timens_offsets_text(1_500_000_000, 0) == "monotonic 1 500000000\nboottime 0 0\n"
    assert timens_offsets_text(-1_500_000_000, 7) == ("monotonic -2 500000000\n"
                                                      "boottime 0 7\n")


def test_time_namespace_offsets_apply_to_the_next_child() -> None:
    def body() -> dict:
        unshare(CLONE_NEWTIME)
        set_timens_offsets(1000 * 10**9, 2000 * 10**9)
        r, w = os.pipe()
        before = (time.clock_gettime(time.CLOCK_MONOTONIC),
                  time.clock_gettime(time.CLOCK_BOOTTIME))
        grandchild = os.fork()
        if grandchild == 0:
            now = (time.clock_gettime(time.CLOCK_MONOTONIC),
                   time.clock_gettime(time.CLOCK_BOOTTIME))
            os.write(w, json.dumps(now).encode())
            os._exit(0)
        os.close(w)
        inside = json.loads(os.read(r, 4096))
        os.waitpid(grandchild, 0)
        try:
            set_timens_offsets(0, 0)           # a task has lived in it: too late
            late = "accepted"
        except LinuxError as err:
            late = str(err)
        return {"mono": inside[0] - before[0], "boot": inside[1] - before[1], "late": late}

    result = run_in_child(body)
    assert "error" not in result, result
    assert 1000 <= result["mono"] < 1005
    assert 2000 <= result["boot"] < 2005
    assert "a task already lives in the new time namespace" in result["late"]


def test_setns_joins_another_tasks_uts_namespace() -> None:
    ready_r, ready_w = os.pipe()
    hold_r, hold_w = os.pipe()
    holder = os.fork()
    if holder == 0:
        code = 0
        try:
            os.close(hold_w)
            unshare(CLONE_NEWUTS)
            socket.sethostname("pycrestore-uts-test")
            os.write(ready_w, b"1")
            os.read(hold_r, 1)
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(hold_r)
    try:
        assert os.read(ready_r, 1) == b"1"

        def join() -> dict:
            fd = os.open(f"/proc/{holder}/ns/uts", os.O_RDONLY)
            try:
                try:
                    setns(fd, CLONE_NEWNET)       # wrong kind: the kernel says EINVAL
                    wrong = "accepted"
                except SyscallFailed as err:
                    wrong = str(err)
                setns(fd, CLONE_NEWUTS)
            finally:
                os.close(fd)
            return {"hostname": socket.gethostname(), "wrong": wrong}

        result = run_in_child(join)
    finally:
        os.close(hold_w)
        os.close(ready_r)
        os.close(ready_w)
        os.waitpid(holder, 0)
    assert result.get("hostname") == "pycrestore-uts-test", result
    assert "EINVAL" in result["wrong"]
    assert socket.gethostname() != "pycrestore-uts-test"   # we never left our namespace


def test_unknown_flags_are_a_caller_bug() -> None:
    with pytest.raises(AssertionError, match="unshare: flags"):
        unshare(0x100)   # CLONE_VM is no namespace
