"""The ids that link the images: kernel-object ids (ids-PID.img, inventory.img) and file ids.

Kernel objects (criu/kerndat.c, criu/kcmp-ids.c). CRIU numbers the mm, fd table, fs and
signal handlers of the tasks it meets, starting with its *own* (recorded as the
inventory's ``root_ids``): its own get 1, the first dumped task's get 2. Namespaces get
ids in the order CRIU 4.2 looks at them (pid 1, net 2, ipc 3, uts 4, time 5, mnt 6,
user 7, cgroup 8). A task whose namespace id equals the inventory's lives in the
dumper's namespace, and a restore leaves that namespace alone. This dumper checks that
the task shares every namespace with it (else CannotDump), so the numbers are those.

File ids (files.img). One counter for every FileEntry, in the order the dump meets them:
the task's mapped files and exe, then its fds, then cwd and root. As in CRIU
(``fd_id_generate_special``), a mapped file, the exe, cwd and root are one entry per
inode; an fd gets one entry per open file description (fds that share one, like 1 and 2
after ``2>&1``, share the id: ``kcmp(KCMP_FILE)`` decides).
"""

from __future__ import annotations

import os

from pycriu_restore.dump.errors import CannotDump
from pycriu_restore.images.schemas import ids_pb2

# criu/kcmp-ids.c: CRIU's own objects are met first.
DUMPER_KOBJ_ID = 1
TASK_KOBJ_ID = 2

# Namespace -> id, in CRIU 4.2's order (criu/namespaces.c ns_desc list as dump meets them).
NAMESPACE_IDS: dict[str, int] = {
    "pid": 1, "net": 2, "ipc": 3, "uts": 4, "time": 5, "mnt": 6, "user": 7, "cgroup": 8,
}


def check_same_namespaces(pid: int) -> None:
    """Raise CannotDump unless ``pid`` is in every namespace this process is in.

    /proc/PID/ns/NAME links name the namespace (``net:[4026531840]``); equal links, equal
    namespace. A task in its own namespaces needs them dumped, which this dumper does not.
    """
    for name in NAMESPACE_IDS:
        try:
            theirs = os.readlink(f"/proc/{pid}/ns/{name}")
            ours = os.readlink(f"/proc/self/ns/{name}")
        except OSError as err:
            raise CannotDump(f"/proc/{pid}/ns/{name}: cannot read: {err.strerror or err}",
                             pid=pid) from err
        if theirs != ours:
            raise CannotDump(f"task is in {theirs}, the dumper in {ours}: namespaces are not dumped",
                             pid=pid)


def kobj_ids(kobj_id: int) -> ids_pb2.TaskKobjIdsEntry:
    """A TaskKobjIdsEntry with vm/files/fs/sighand ids ``kobj_id`` and the dumper's namespaces."""
    entry = ids_pb2.TaskKobjIdsEntry(vm_id=kobj_id, files_id=kobj_id, fs_id=kobj_id,
                                     sighand_id=kobj_id)
    for name, ns_id in NAMESPACE_IDS.items():
        setattr(entry, f"{name}_ns_id", ns_id)
    return entry


class FileIds:
    """Hands out FileEntry ids: one per inode for "special" files, one per description for fds."""

    def __init__(self) -> None:
        self._next = 1
        self._by_inode: dict[tuple[int, int], int] = {}

    def new(self) -> int:
        """A fresh id (an fd's open file description met for the first time)."""
        file_id, self._next = self._next, self._next + 1
        return file_id

    def for_inode(self, dev: int, ino: int) -> tuple[int, bool]:
        """The id of a mapped file, exe, cwd or root; True when the inode is new (write an entry)."""
        key = (dev, ino)
        if key in self._by_inode:
            return self._by_inode[key], False
        self._by_inode[key] = self.new()
        return self._by_inode[key], True
