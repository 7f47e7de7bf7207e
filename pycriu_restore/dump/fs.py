"""fs-PID.img: the task's cwd, root and umask (images/fs.proto).

cwd and root are FileEntry ids (directories, REG entries in files.img, added after the
fds as CRIU does); umask is /proc/PID/status "Umask:" (octal).
"""

from __future__ import annotations

from pycriu_restore.dump.files import FileTable
from pycriu_restore.dump.procfs import read_status, status_ints
from pycriu_restore.images.schemas import fs_pb2


def fs_entry(pid: int, files: FileTable) -> fs_pb2.FsEntry:
    """The FsEntry of ``pid``: cwd first, then root, each added to ``files``."""
    cwd_id = files.special(f"/proc/{pid}/cwd", pid)
    root_id = files.special(f"/proc/{pid}/root", pid)
    (umask,) = status_ints(read_status(pid), "Umask", pid, base=8)
    return fs_pb2.FsEntry(cwd_id=cwd_id, root_id=root_id, umask=umask)
