"""A checkpoint, summarised for a person: ``pycrestore info DIR``.

The ``ps``, ``fds`` and ``mems`` sections print the same listings as CRIU's ``crit x DIR
ps|fds|mems`` (the fixture pack's ``decoded/*/crit-x-*.txt`` are the reference), so a reader
used to crit sees what they expect. The overview adds what crit leaves out: threads, sizes
and the number of pages the images hold.
"""

from __future__ import annotations

import quopri

from pycriu_restore.images import ImageSet
from pycriu_restore.images.flags import MMAP_FLAGS, MMAP_STATUS, PMAP_FLAGS
from pycriu_restore.images.pagemap import entry_nr_pages

_STATUS = dict(MMAP_STATUS)
_MAP = dict(MMAP_FLAGS)
_PE_PRESENT = dict(PMAP_FLAGS)["PE_PRESENT"]
PAGE_SIZE = 4096
TASK_STATE_DEAD = 2  # core tc.task_state of a zombie (plan/model.py TaskState)


def render(images: ImageSet, section: str = "all") -> str:
    """The text of one section (``ps``, ``fds``, ``mems``) or of all of them (``all``)."""
    if section == "ps":
        return render_ps(images)
    if section == "fds":
        return render_fds(images)
    if section == "mems":
        return render_mems(images)
    parts = [render_overview(images), "Process tree:\n" + render_ps(images), "Open files:\n" + render_fds(images),
             "Memory:\n" + render_mems(images)]
    return "\n".join(parts)


def render_overview(images: ImageSet) -> str:
    """One paragraph per task: pid, threads, VMAs, mapped and dumped sizes."""
    lines = [f"Checkpoint {images.directory}"]
    for entry in images.pstree():
        tc = images.core(entry.pid).tc
        if tc.task_state == TASK_STATE_DEAD:  # a zombie has its core image alone
            lines.append(f"  task {entry.pid} ({tc.comm}): a zombie, wait status {tc.exit_code:#x}")
            continue
        mm = images.mm(entry.pid)
        vmas = [v for v in mm.vmas if v.status & _STATUS["VMA_AREA_REGULAR"]]
        mapped = sum(v.end - v.start for v in vmas)
        present = sum(entry_nr_pages(e) for e in images.pagemap(entry.pid).iter_entries() if e.flags & _PE_PRESENT)
        comm = images.core(entry.pid).tc.comm
        threads = ", ".join(str(t) for t in entry.threads)
        lines.append(
            f"  task {entry.pid} ({comm}): {len(entry.threads)} thread(s) [{threads}], {len(vmas)} VMAs, "
            f"{_size(mapped)} mapped, {present} pages ({_size(present * PAGE_SIZE)}) in the images"
        )
    return "\n".join(lines) + "\n"


def render_ps(images: ImageSet) -> str:
    """``crit x ps``: pid, pgid, sid and comm, children indented under their parent."""
    entries = list(images.pstree())
    children: dict[int, list] = {}
    for e in entries:
        children.setdefault(e.ppid, []).append(e)
    out = ["{:>7}{:>7}{:>7}   {}".format("PID", "PGID", "SID", "COMM")]
    pids = {e.pid for e in entries}

    def walk(entry, depth: int) -> None:
        comm = images.core(entry.pid).tc.comm
        out.append("%7d%7d%7d   %s%s" % (entry.pid, entry.pgid, entry.sid, " " * (4 * depth), comm))
        for child in children.get(entry.pid, []):
            walk(child, depth + 1)

    for root in [e for e in entries if e.ppid not in pids]:
        walk(root, 0)
    return "\n".join(out) + "\n"


def _file_name(files: dict, file_id: int) -> str:
    """How crit names an open file: its path, pipe[id] or unix[ino (peer) name], else TYPE.id."""
    f = files.get(file_id)
    if f is None:
        return "unknown"
    if f.HasField("reg"):
        return f.reg.name
    if f.HasField("pipe"):
        return f"pipe[{f.pipe.pipe_id}]"
    if f.HasField("usk"):
        name = quopri.encodestring(f.usk.name).decode(errors="replace")  # as crit shows unix names
        return f"unix[{f.usk.ino} ({f.usk.peer}){' ' + name if name else ''}]"
    # crit's ftype_gen: every other kind is its fd_types name and the file id.
    return f"{f.DESCRIPTOR.fields_by_name['type'].enum_type.values_by_number[f.type].name}.{file_id}"


def render_fds(images: ImageSet) -> str:
    """``crit x fds``: each task's fds, then its cwd and root."""
    files = {f.id: f for f in images.files()}
    out = []
    for entry in _not_dead(images):
        out.append(f"{entry.pid}")
        for fd in images.fdinfo(images.ids(entry.pid).files_id):
            out.append("\t%7s: %s" % (fd.fd, _file_name(files, fd.id)))
        fs = images.fs(entry.pid)
        out.append("\t%7s: %s" % ("cwd", _file_name(files, fs.cwd_id)))
        out.append("\t%7s: %s" % ("root", _file_name(files, fs.root_id)))
    return "\n".join(out) + "\n"


def _vma_name(vma, files: dict) -> str:
    status = vma.status
    if status & _STATUS["VMA_AREA_VSYSCALL"]:
        name = " [vsyscall]"
    elif status & _STATUS["VMA_AREA_VDSO"]:
        name = " [vdso]"
    elif vma.flags & _MAP["MAP_GROWSDOWN"]:
        name = " [stack?]"
    elif status & (_STATUS["VMA_FILE_PRIVATE"] | _STATUS["VMA_FILE_SHARED"]):
        f = files.get(vma.shmid)
        name = " " + (f.reg.name if f is not None and f.HasField("reg") else "unknown path")
        if vma.pgoff:
            name += " + %#x" % vma.pgoff
        if status & _STATUS["VMA_FILE_SHARED"]:
            name += " (s)"
    else:
        name = ""
    if not status & _STATUS["VMA_AREA_REGULAR"]:
        name += " *"
    return name


def render_mems(images: ImageSet) -> str:
    """``crit x mems``: each task's exe and VMAs with protections and backing files."""
    files = {f.id: f for f in images.files()}
    out = []
    for entry in _not_dead(images):
        mm = images.mm(entry.pid)
        out.append(f"{entry.pid}")
        out.append("\t%-36s    %s" % ("exe", _file_name(files, mm.exe_file_id)))
        for vma in mm.vmas:
            prot = "".join(c if vma.prot & bit else "-" for c, bit in (("r", 1), ("w", 2), ("x", 4)))
            out.append("\t%-36s%s%s" % ("%08x-%08x" % (vma.start, vma.end), prot, _vma_name(vma, files)))
    return "\n".join(out) + "\n"


def _not_dead(images: ImageSet) -> list:
    """The pstree entries of tasks that have files and memory: all but zombies (where
    ``crit x fds/mems`` stop with an error, these leave them out)."""
    return [e for e in images.pstree() if images.core(e.pid).tc.task_state != TASK_STATE_DEAD]


def _size(n_bytes: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n_bytes < 1024 or unit == "GiB":
            return f"{n_bytes:.0f} {unit}" if unit == "B" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1024  # type: ignore[assignment]
    raise AssertionError("unreachable")
