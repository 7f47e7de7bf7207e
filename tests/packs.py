"""The fixture packs as the tests drive them: install a workload, restore it from the command
line, run its verify.py (from inside a pid namespace when the restore made one).

    PACK.install("counter"); restore_cli(PACK.images / "counter", pidfile, "--cpu-cap", "none")
    MORE.verify("evloop", pid_for_ns=outer)

Every restore goes through ``python -m pycriu_restore``, as a user's would.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import FIXTURES, FIXTURES_MORE, REPO


class Pack:
    """One fixture pack: ``images/NAME``, ``install.sh NAME``, ``verify.py NAME``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.images = root / "images"

    def install(self, name: str) -> None:
        """(Re)create the workload's files; needed before every restore (sizes, build-ids)."""
        subprocess.run([str(self.root / "install.sh"), name], check=True, capture_output=True)

    def verify(self, name: str, pid_for_ns: int | None = None) -> subprocess.CompletedProcess:
        """The pack's verify.py; with ``pid_for_ns``, run in that task's pid and mount
        namespaces, where the restored pids are the dumped ones."""
        cmd = [sys.executable, str(self.root.resolve() / "verify.py"), name]
        if pid_for_ns is not None:
            cmd = ["nsenter", "-t", str(pid_for_ns), "-p", "-m", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


PACK = Pack(FIXTURES)
MORE = Pack(FIXTURES_MORE)


def pycrestore(*args: str) -> subprocess.CompletedProcess:
    """``python -m pycriu_restore ARGS`` from the repository, output captured."""
    return subprocess.run([sys.executable, "-m", "pycriu_restore", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=120)


def restore_cli(images: Path, pidfile: Path, *extra: str) -> subprocess.CompletedProcess:
    """``pycrestore -v restore -D IMAGES -d EXTRA --pidfile PIDFILE``."""
    return pycrestore("-v", "restore", "-D", str(images), "-d", *extra, "--pidfile", str(pidfile))
