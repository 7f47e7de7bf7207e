"""files.img and fdinfo-N.img: every file the task refers to, and its fd table.

Each file is one FileEntry of type REG (images/regfile.proto), as CRIU's
``dump_one_reg_file`` (criu/files-reg.c) writes it:

    name      the path (readlink of /proc/PID/fd/N, /proc/PID/map_files/A-B, exe, cwd, root)
    flags     open(2) flags from /proc/PID/fdinfo/N without O_CLOEXEC (that one is an fd
              flag: FdinfoEntry.flags = FD_CLOEXEC); 0 for mappings, exe, cwd and root
    pos       the file offset (fdinfo "pos:")
    mode      st_mode: a restore checks the type and permissions
    size      for regular files, unless opened O_WRONLY|O_APPEND (a log: it may grow
              legitimately; criu/files-reg.c should_check_size)
    build_id  with size, for an ELF file that has a GNU build-id note: CRIU's default
              file validation; little-endian u32 words
    fown      all zero: no F_SETOWN (fcntl from inside the task would tell; /proc cannot)

/dev/null and other character devices are REG entries too; pipes, sockets, ttys, anon
inodes and deleted files have kinds of their own in CRIU and raise CannotDump here.
"""

from __future__ import annotations

import os
import stat

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from pycriu_restore.dump.errors import CannotDump, DumpError
from pycriu_restore.dump.ids import FileIds
from pycriu_restore.dump.procfs import list_fds, read_fdinfo
from pycriu_restore.images.flags import RFILE_FLAGS
from pycriu_restore.images.schemas import fdinfo_pb2, fown_pb2, regfile_pb2
from pycriu_restore.linux.taskinfo import same_file_description

_OPEN_FLAGS = dict(RFILE_FLAGS)
O_WRONLY = _OPEN_FLAGS["O_WRONLY"]
O_APPEND = _OPEN_FLAGS["O_APPEND"]
O_CLOEXEC = _OPEN_FLAGS["O_CLOEXEC"]
O_ACCMODE = 0o3
# <asm-generic/fcntl.h>: the fd flag.
FD_CLOEXEC = 1
# <linux/major.h>: tty majors (TTY_MAJOR 4, TTYAUX_MAJOR 5, UNIX98_PTY_SLAVE_MAJOR 136..143).
TTY_MAJORS = frozenset({4, 5, *range(136, 144)})
_DELETED_SUFFIX = " (deleted)"


def should_check_size(flags: int) -> bool:
    """False for a file opened write-only for appending: a log may grow after the dump."""
    return not ((flags & O_ACCMODE) == O_WRONLY and flags & O_APPEND)


def build_id_words(path: str) -> list[int]:
    """The GNU build-id of an ELF file as little-endian u32 words; [] if it has none."""
    try:
        with open(path, "rb") as f:
            if f.read(4) != b"\x7fELF":
                return []
            f.seek(0)
            for segment in ELFFile(f).iter_segments():
                if segment.header.p_type != "PT_NOTE":
                    continue
                for note in segment.iter_notes():
                    if note.n_type == "NT_GNU_BUILD_ID":
                        raw = bytes.fromhex(note.n_desc)
                        return [int.from_bytes(raw[i:i + 4], "little") for i in range(0, len(raw) - 3, 4)]
    except (OSError, ELFError) as err:
        raise DumpError(f"{path}: cannot read its build-id: {err}") from err
    return []


def _link(path: str, pid: int) -> str:
    """readlink of a /proc link, refusing what is not a path of a live file."""
    try:
        target = os.readlink(path)
    except OSError as err:
        raise DumpError(f"{path}: cannot read the link: {err.strerror or err}", pid=pid) from err
    if not target.startswith("/"):
        raise CannotDump(f"{path} is {target!r}: only files with a path are dumped", pid=pid)
    if target.endswith(_DELETED_SUFFIX):
        raise CannotDump(f"{path} is {target!r}: deleted files are not dumped", pid=pid)
    return target


def _stat(path: str, pid: int) -> os.stat_result:
    try:
        return os.stat(path)
    except OSError as err:
        raise DumpError(f"{path}: cannot stat: {err.strerror or err}", pid=pid) from err


class FileTable:
    """The FileEntry records of one dump, in the order met, and their ids (dump/ids.py)."""

    def __init__(self) -> None:
        self.ids = FileIds()
        self.entries: list[fdinfo_pb2.FileEntry] = []

    def _add(self, file_id: int, name: str, st: os.stat_result, flags: int, pos: int,
             real_path: str) -> None:
        reg = regfile_pb2.RegFileEntry(id=file_id, flags=flags, pos=pos, name=name, mode=st.st_mode)
        reg.fown.CopyFrom(fown_pb2.FownEntry(uid=0, euid=0, signum=0, pid_type=0, pid=0))
        if stat.S_ISREG(st.st_mode) and should_check_size(flags):
            reg.size = st.st_size
            reg.build_id.extend(build_id_words(real_path))
        if stat.S_ISCHR(st.st_mode) and os.major(st.st_rdev) in TTY_MAJORS:
            raise CannotDump(f"{name} is a terminal: ttys are not dumped")
        self.entries.append(fdinfo_pb2.FileEntry(type=fdinfo_pb2.REG, id=file_id, reg=reg))

    def special(self, proc_link: str, pid: int) -> int:
        """The id of a mapped file, the exe, cwd or root, given its /proc link (one per inode)."""
        name = _link(proc_link, pid)
        st = _stat(proc_link, pid)
        file_id, new = self.ids.for_inode(st.st_dev, st.st_ino)
        if new:
            self._add(file_id, name, st, flags=0, pos=0, real_path=proc_link)
        return file_id

    def fd_table(self, pid: int) -> list[fdinfo_pb2.FdinfoEntry]:
        """The FdinfoEntry of every open fd, ascending; a description shared by fds is one entry."""
        out: list[fdinfo_pb2.FdinfoEntry] = []
        seen: list[tuple[int, int]] = []   # (fd, file id) of each description met
        for fd in list_fds(pid):
            file_id = next((fid for other, fid in seen if same_file_description(pid, other, fd)), None)
            info = read_fdinfo(pid, fd)
            if file_id is None:
                proc_link = f"/proc/{pid}/fd/{fd}"
                name = _link(proc_link, pid)
                file_id = self.ids.new()
                self._add(file_id, name, _stat(proc_link, pid), flags=info.flags & ~O_CLOEXEC,
                          pos=info.pos, real_path=proc_link)
                seen.append((fd, file_id))
            out.append(fdinfo_pb2.FdinfoEntry(id=file_id, fd=fd, type=fdinfo_pb2.REG,
                                              flags=FD_CLOEXEC if info.flags & O_CLOEXEC else 0))
        return out
