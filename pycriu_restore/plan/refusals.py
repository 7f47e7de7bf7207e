"""Refuse, before anything is forked, every image field that holds state pycrestore cannot restore.

``check_refusals(images)`` reads every record the plan reads and, for each REFUSED line of the
coverage table (plan/coverage.py), checks the value against what the restore can reproduce;
it also refuses any field the project's schemas do not know (a newer CRIU's), because an
unknown field is state nobody decided about. All refusals are collected and raised together
as one UnsupportedFeature (exit 3) that names the image file and the field path of the first,
then the others in brief:

    core-40200.img: unsupported: thread_core.timerslack_ns = 50000: not restored: a timer
    slack (PR_SET_TIMERSLACK); and 1 more: mm-40200.img: aios = 1 entries: ...

It has no side effects; build_plan calls it first, so these refusals come before any other
plan error.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Iterator

from google.protobuf import unknown_fields
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from pycriu_restore.images import ImageSet
from pycriu_restore.images.kinds import kind_by_name
from pycriu_restore.images.pagemap import PagemapImage
from pycriu_restore.plan.coverage import (
    CORE,
    FDINFO,
    FILES,
    FS,
    IDS,
    INVENTORY,
    MEMFD,
    MM,
    PAGEMAP,
    PIPES_DATA,
    PSTREE,
    SECCOMP,
    SK_QUEUES,
    TIMENS,
    Disposition,
    is_repeated,
    Field,
    RecordKind,
    RefusalContext,
)
from pycriu_restore.plan.errors import UnsupportedFeature
from pycriu_restore.plan.netns import restored_net_namespaces

TASK_STATE_DEAD = 2  # task_core_entry.task_state of a zombie (plan/model.py TaskState)
_SHARED_IDS = ("vm_id", "files_id", "fs_id", "sighand_id")
_MAX_LISTED = 4  # refusals spelled out in the one-line message after the first


@dataclass(frozen=True)
class Refusal:
    """One field whose value cannot be restored: ``image`` names the file, ``text`` the rest."""

    image: str
    text: str


def check_refusals(images: ImageSet) -> None:
    """Raise UnsupportedFeature listing every refused field of the checkpoint, if there is one."""
    found = list(find_refusals(images))
    if found:
        raise UnsupportedFeature(found[0].image, summarize(found))


def summarize(found: list[Refusal]) -> str:
    """One line: the first refusal in full, then the others (same text in several files once)."""
    groups: dict[str, list[str]] = {}
    for r in found:
        groups.setdefault(r.text, []).append(r.image)
    items = list(groups.items())
    first_text, first_images = items[0]
    line = first_text + _more_files(first_images)
    rest = items[1:]
    if rest:
        listed, previous = [], found[0].image
        for text, images in rest[:_MAX_LISTED]:  # the file is named when it changes
            named = "" if images[0] == previous and len(images) == 1 else f"{images[0]}{_more_files(images)}: "
            listed.append(named + text)
            previous = images[-1]
        line += f"; and {len(rest)} more: " + "; ".join(listed)
        if len(rest) > _MAX_LISTED:
            line += f"; ... ({len(rest) - _MAX_LISTED} not shown)"
    return line


def _more_files(images: list[str]) -> str:
    return f" (also in {len(images) - 1} other file(s))" if len(images) > 1 else ""


def find_refusals(images: ImageSet) -> Iterator[Refusal]:
    """Every refusal, image by image in the order the plan reads them."""
    inventory = images.inventory
    tasks = list(images.pstree())
    # Running and stopped tasks have every image; a zombie only its core (plan/build.py).
    dead = [t for t in tasks if images.core(t.pid).tc.task_state == TASK_STATE_DEAD]
    alive = [t for t in tasks if t.threads and t not in dead]
    task_ids = {t.pid: images.ids(t.pid) for t in alive}
    holders = {name: dict(Counter(getattr(i, name) for i in task_ids.values())) for name in _SHARED_IDS}
    ctx = RefusalContext(inventory=inventory, id_holders=holders, net_namespaces=restored_net_namespaces(images))

    yield from _scan("inventory.img", INVENTORY, [inventory], ctx)
    yield from _scan("pstree.img", PSTREE, tasks, ctx, lambda e, i: f"pid {e.pid}: ")
    for task in dead:
        yield from _scan(f"core-{task.pid}.img", CORE, [images.core(task.pid)], ctx)
    fd_tables = []
    for task in alive:  # plan/build.py refuses the others itself; a dead one has no more images
        pid = task.pid
        for tid in task.threads:
            yield from _scan(f"core-{tid}.img", CORE, [images.core(tid)], ctx)
        yield from _scan(f"mm-{pid}.img", MM, [images.mm(pid)], ctx)
        yield from _scan(f"fs-{pid}.img", FS, [images.fs(pid)], ctx)
        yield from _scan(f"ids-{pid}.img", IDS, [task_ids[pid]], ctx)
        yield from _pagemap(images, f"pagemap-{pid}.img", ctx)
        if task_ids[pid].files_id not in fd_tables:
            fd_tables.append(task_ids[pid].files_id)
    for files_id in fd_tables:
        yield from _scan(f"fdinfo-{files_id}.img", FDINFO, images.fdinfo(files_id), ctx, lambda e, i: f"fd {e.fd}: ")
    yield from _scan("files.img", FILES, images.files(), ctx, lambda e, i: f"file id {e.id}: ")
    yield from _scan("pipes-data.img", PIPES_DATA, [e for e, _ in images.pipes_data()], ctx,
                     lambda e, i: f"pipe {e.pipe_id}: ")
    yield from _scan("sk-queues.img", SK_QUEUES, [e for e, _ in images.sk_queues()], ctx,
                     lambda e, i: f"packet {i} (socket {e.id_for}): ")
    timens = images.timens()
    yield from _scan("timens-0.img", TIMENS, [timens] if timens is not None else [], ctx)
    seccomp = images.seccomp()
    yield from _scan("seccomp.img", SECCOMP, [seccomp] if seccomp is not None else [], ctx)
    inodes = images.memfd_inodes()
    yield from _scan("memfd.img", MEMFD, inodes, ctx, lambda e, i: f"memfd inode {e.inode_id}: ")
    for inode in inodes:
        yield from _pagemap(images, f"pagemap-shmem-{inode.shmid}.img", ctx)


def _pagemap(images: ImageSet, name: str, ctx: RefusalContext) -> Iterator[Refusal]:
    """The entries of one pagemap image, if it exists (plan/build.py reports a missing one)."""
    if not images.exists(name):
        return
    kind = kind_by_name("PAGEMAP")
    assert kind is not None, "_pagemap: no PAGEMAP kind"
    yield from _scan(name, PAGEMAP, PagemapImage(images.path(name), kind).iter_entries(), ctx,
                     lambda e, i: f"entry {i}: ")


def _scan(image: str, kind: RecordKind, records: Iterable[Message], ctx: RefusalContext,
          label=lambda e, i: "") -> Iterator[Refusal]:
    """Check every record of one image against the REFUSED lines of its kind's table."""
    refused = [f for f in kind.fields if f.disposition is Disposition.REFUSED]
    for index, record in enumerate(records):
        prefix = label(record, index)
        found = False
        for field in refused:
            for where, fd, value in _values(record, field.path.split("."), ""):
                if not _accepted(field, fd, value, ctx):
                    found = True
                    yield Refusal(image, f"{prefix}{where} = {_shown(field, fd, value)}: not restored: {field.where}")
            if found and field.final:
                break
        if not found:  # a kind the plan refuses carries fields of its own that nobody knows
            for where in _unknown_fields(record, ""):
                yield Refusal(image, f"{prefix}{where}: not in pycrestore's schema (a newer CRIU?): not restored")


def _values(msg: Message, parts: list[str], where: str) -> Iterator[tuple[str, FieldDescriptor, object]]:
    """(path with indexes, descriptor, value) of the field at ``parts`` below ``msg``, for every
    element of a repeated message on the way; nothing where a singular field is absent."""
    fd = msg.DESCRIPTOR.fields_by_name[parts[0]]
    here = where + parts[0]
    repeated = is_repeated(fd)
    if len(parts) == 1:
        if repeated:
            yield here, fd, list(getattr(msg, parts[0]))
        elif msg.HasField(parts[0]):
            yield here, fd, getattr(msg, parts[0])
        return
    if repeated:
        for i, sub in enumerate(getattr(msg, parts[0])):
            yield from _values(sub, parts[1:], f"{here}[{i}].")
    elif msg.HasField(parts[0]):
        yield from _values(getattr(msg, parts[0]), parts[1:], here + ".")


def _accepted(field: Field, fd: FieldDescriptor, value: object, ctx: RefusalContext) -> bool:
    if field.accepts is not None:
        return field.accepts(value, ctx)
    if is_repeated(fd):
        return not value
    if fd.type == FieldDescriptor.TYPE_MESSAGE:
        return False  # present at all
    return value == fd.default_value


def _shown(field: Field, fd: FieldDescriptor, value: object) -> str:
    if is_repeated(fd):
        return f"{len(value)} entries"  # type: ignore[arg-type]
    if fd.type == FieldDescriptor.TYPE_MESSAGE:
        return "present"
    if isinstance(value, (bytes, str)):
        return repr(value[:40])
    if field.names and value in field.names:
        return f"{value} ({field.names[value]})"  # type: ignore[index]
    return str(value)


def _unknown_fields(msg: Message, where: str) -> Iterator[str]:
    """Field numbers of ``msg`` and its sub-messages that the schema does not declare."""
    for unknown in unknown_fields.UnknownFieldSet(msg):
        yield f"{where}field #{unknown.field_number}"
    for fd, value in msg.ListFields():
        if fd.type != FieldDescriptor.TYPE_MESSAGE:
            continue
        if is_repeated(fd):
            for i, sub in enumerate(value):
                yield from _unknown_fields(sub, f"{where}{fd.name}[{i}].")
        else:
            yield from _unknown_fields(value, f"{where}{fd.name}.")
