"""The python workloads of benchmarks/criu_bench.py: a python process (or a tree of them)
holding MIB MiB of random bytes each.

    memhold.py MIB [CHILD_PID...]

The root forks one child per CHILD_PID (pid chosen through /proc/sys/kernel/ns_last_pid;
root only), then every process fills its own buffer, writes expected-PID.txt (sha256 of the
buffer) and ready-PID, and sleeps. On SIGUSR1 a process hashes its buffer again and writes
sum-PID.txt: a restored copy proves its bytes. No file stays open.
"""

import hashlib
import os
import signal
import sys
import time

NS_LAST_PID = "/proc/sys/kernel/ns_last_pid"


def write_file(name: str, text: str) -> None:
    with open(name + ".tmp", "w") as f:
        f.write(text)
    os.rename(name + ".tmp", name)  # the reader never sees half a line


def hold(mib: int) -> None:
    buf = bytearray(os.urandom(mib << 20))
    pid = os.getpid()

    def on_usr1(signo, frame):
        write_file(f"sum-{pid}.txt", hashlib.sha256(buf).hexdigest() + "\n")

    signal.signal(signal.SIGUSR1, on_usr1)
    write_file(f"expected-{pid}.txt", hashlib.sha256(buf).hexdigest() + "\n")
    write_file(f"ready-{pid}", "")
    while True:
        time.sleep(3600)


def main() -> None:
    mib = int(sys.argv[1])
    for child in (int(p) for p in sys.argv[2:]):
        with open(NS_LAST_PID, "w") as f:
            f.write(str(child - 1))
        if os.fork() == 0:
            hold(mib)
    hold(mib)


main()
