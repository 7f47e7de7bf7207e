"""Structured mutations of a real checkpoint, for the fuzz suite (issue 11).

Not byte flips (tests/test_images_mutation.py does those): each mutation is something a
broken dump, a bad copy or a hostile user could make of a checkpoint directory, expressed on
its records: a field of a record in pstree, core, mm, pagemap, fdinfo, files, ids, fs or
pipes-data set to a boundary value; a record dropped or duplicated; a file deleted,
truncated, swapped with another of its kind, or a pages image grown or cut. ``apply`` takes
a list of ``Op`` (drawn by hypothesis in tests/test_fuzz_plan.py, or by a seeded
``random.Random`` in tools/fuzz_restore.py) and edits a copy of the images in place.

``STRUCTURAL`` fields are the ones whose value the plan can check against the rest of the
images (ids, addresses, sizes, counts, flags); the real-restore sample mutates only those,
since a register or a page's content changed to another valid value restores "correctly"
into a program that then fails, and no check can know. For the same reason they do not swap
two tasks' images or move an fd to a free number (both make another valid checkpoint).
"""

from __future__ import annotations

import random
import shutil
from dataclasses import dataclass
from pathlib import Path

from google.protobuf.descriptor import FieldDescriptor

from pycriu_restore.images import dump_image, load_image

# Kinds of image files mutated, by file-name prefix.
PREFIXES = ("pstree", "core-", "mm-", "pagemap-", "fdinfo-", "files", "ids-", "fs-", "pipes-data")
# Field names whose values are checked against other images (the rest are data).
STRUCTURAL = {
    "pid", "ppid", "pgid", "sid", "threads", "task_state", "exit_code", "mtype",
    "vaddr", "nr_pages", "compat_nr_pages", "flags", "pages_id",
    "start", "end", "pgoff", "shmid", "prot", "status", "fd", "fdflags", "exe_file_id",
    "id", "type", "pipe_id", "files_id", "vm_id", "fs_id", "sighand_id", "cwd_id", "root_id",
    "bytes", "size", "tid_address", "seccomp_mode", "seccomp_filter",
}
_INT_TYPES = {FieldDescriptor.TYPE_UINT32: 32, FieldDescriptor.TYPE_UINT64: 64, FieldDescriptor.TYPE_INT32: -32,
              FieldDescriptor.TYPE_INT64: -64, FieldDescriptor.TYPE_SINT32: -32, FieldDescriptor.TYPE_SINT64: -64,
              FieldDescriptor.TYPE_FIXED32: 32, FieldDescriptor.TYPE_FIXED64: 64, FieldDescriptor.TYPE_ENUM: -32,
              FieldDescriptor.TYPE_SFIXED32: -32, FieldDescriptor.TYPE_SFIXED64: -64}


@dataclass(frozen=True)
class Op:
    """One mutation. ``kind`` is field, drop, dup, delete, truncate, swap, pages; the
    numbers pick the file, record, field and value among those that exist (modulo)."""

    kind: str
    file: int
    record: int = 0
    field: int = 0
    value: int = 0
    raw: int = 0


def copy_fixture(src: Path, dst: Path) -> Path:
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    return dst


def _files(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.name.startswith(PREFIXES) and p.suffix == ".img")


def _scalar_fields(msg, structural_only: bool, prefix: str = "") -> list[tuple[object, FieldDescriptor, int | None, str]]:
    """(message, field, index in a repeated field or None, dotted path) of every int field set."""
    out = []
    for fd, value in msg.ListFields():
        path = f"{prefix}{fd.name}"
        if fd.type == FieldDescriptor.TYPE_MESSAGE:
            children = value if fd.is_repeated else [value]
            for i, child in enumerate(children[:64]):
                out += _scalar_fields(child, structural_only, f"{path}[{i}].")
        elif fd.type in _INT_TYPES and (not structural_only or fd.name in STRUCTURAL):
            if fd.is_repeated:
                out += [(msg, fd, i, f"{path}[{i}]") for i in range(min(len(value), 64))]
            else:
                out.append((msg, fd, None, path))
    return out


def _value(old: int, choice: int, raw: int, bits: int) -> int:
    width = abs(bits)
    lo, hi = (-(1 << (width - 1)), (1 << (width - 1)) - 1) if bits < 0 else (0, (1 << width) - 1)
    candidates = [0, 1, hi, lo, old + 1, old - 1, old + 4096, old - 4096, old * 2, old // 2, 1 << 31,
                  (1 << 31) - 1, 4096, old ^ (1 << (raw % width)), raw, old + raw % 4096]
    v = candidates[choice % len(candidates)]
    return min(max(v, lo), hi)


def apply(d: Path, ops: list[Op], structural_only: bool = False) -> list[str]:
    """Apply ``ops`` to the checkpoint copy ``d``; returns a description of each."""
    done = []
    for op in ops:
        files = _files(d)
        if not files:
            break
        path = files[op.file % len(files)]
        if op.kind == "delete":
            path.unlink()
            done.append(f"delete {path.name}")
        elif op.kind == "truncate":
            data = path.read_bytes()
            cut = op.raw % (len(data) + 1)
            path.write_bytes(data[:cut])
            done.append(f"truncate {path.name} to {cut}")
        elif op.kind == "swap" and structural_only:
            # Two tasks' images of one kind swapped (the parent's and the child's core, mm
            # or fd table) make a plausible checkpoint of other processes: no image names
            # its own pid, so the restore does what they say. Plan level only.
            continue
        elif op.kind == "swap":
            stem = path.name.split("-")[0]
            same = [p for p in files if p.name.split("-")[0] == stem and p != path]
            if same:
                other = same[op.raw % len(same)]
                a, b = path.read_bytes(), other.read_bytes()
                path.write_bytes(b)
                other.write_bytes(a)
                done.append(f"swap {path.name} {other.name}")
        elif op.kind == "pages":
            pages = sorted(d.glob("pages-*.img"))
            if pages:
                p = pages[op.file % len(pages)]
                data = p.read_bytes()
                delta = [1, 4096, -1, -4096, 3 * 4096][op.raw % 5]
                p.write_bytes(data + b"\0" * delta if delta > 0 else data[:max(0, len(data) + delta)])
                done.append(f"pages {p.name} {delta:+d}")
        else:
            try:
                image = load_image(path)
            except Exception:  # noqa: BLE001 - an earlier op broke it; leave it broken
                continue
            if not image.entries:
                continue
            i = op.record % len(image.entries)
            if op.kind == "drop":
                del image.entries[i]
                del image.extras[i]
                done.append(f"drop {path.name}[{i}]")
            elif op.kind == "dup":
                image.entries.insert(i, image.entries[i])
                image.extras.insert(i, image.extras[i])
                done.append(f"dup {path.name}[{i}]")
            else:  # field
                fields = _scalar_fields(image.entries[i], structural_only)
                if not fields:
                    continue
                msg, fd, index, name = fields[op.field % len(fields)]
                bits = _INT_TYPES[fd.type]
                if fd.type == FieldDescriptor.TYPE_ENUM:
                    values = [v.number for v in fd.enum_type.values]
                    new = values[op.value % len(values)] if op.value % 3 else op.raw % 64
                    old = getattr(msg, fd.name)[index] if index is not None else getattr(msg, fd.name)
                elif structural_only and path.name.startswith("fdinfo-") and name in ("fd", "id"):
                    # A task's fd moved to a free number, or pointed at another file of the
                    # tree, is another valid checkpoint (the program then finds the wrong
                    # file, or none, at its number), which no check can tell from the real
                    # one, as with a register. For real restores the number moves only onto
                    # one the task already uses or out of range, and the file id only to one
                    # files.img does not have.
                    old = getattr(msg, name)
                    if name == "fd":
                        taken = [e.fd for j, e in enumerate(image.entries) if j != i]
                        choices = taken + [1 << 20, (1 << 31) - 1, (1 << 32) - 1]
                    else:
                        known = {e.id for e in load_image(d / "files.img").entries} if (d / "files.img").exists() else set()
                        choices = [v for v in (0, max(known, default=0) + 1, (1 << 32) - 1) if v not in known]
                    new = choices[op.value % len(choices)]
                elif structural_only and path.name.startswith("mm-") and name.endswith("prot"):
                    # A VMA's prot changed to other r/w/x bits is another valid checkpoint
                    # (the program then faults on, or may write, that memory): found by the
                    # fuzz run as a restore that "succeeded" into a process that stalled.
                    # For real restores prot takes only bits no dump writes.
                    old = getattr(msg, fd.name)
                    new = [old | 0x8, old | 0x80, 1 << 31, (1 << 32) - 1][op.value % 4]
                elif structural_only and path.name.startswith("pagemap-") and name == "vaddr":
                    # A page run moved by whole pages into a hole of its VMA is, again,
                    # another valid checkpoint (other bytes at those addresses, as if a
                    # page's content had changed). For real restores the address becomes
                    # one a check must catch: not page-aligned, outside every VMA (0, the
                    # top page), or another run's (overlap).
                    old = msg.vaddr
                    others = [e.vaddr for j, e in enumerate(image.entries) if j and j != i]
                    choices = [old + 1, old - 1, 0, (1 << 64) - 4096] + others
                    new = choices[op.value % len(choices)]
                else:
                    old = getattr(msg, fd.name)[index] if index is not None else getattr(msg, fd.name)
                    new = _value(old, op.value, op.raw, bits)
                try:
                    if index is not None:
                        getattr(msg, fd.name)[index] = new
                    else:
                        setattr(msg, fd.name, new)
                except (ValueError, TypeError):
                    continue
                done.append(f"{path.name}[{i}].{name}: {old} -> {new}")
            try:
                path.write_bytes(dump_image(image))
            except Exception as err:  # noqa: BLE001 - an unencodable edit (e.g. a payload length) is skipped
                done.append(f"(not written: {type(err).__name__})")
    return done


KINDS = ("field", "field", "field", "field", "drop", "dup", "delete", "truncate", "swap", "pages")


def random_ops(rng: random.Random, max_ops: int = 3) -> list[Op]:
    """A seeded draw of the same shape as the hypothesis strategy."""
    return [Op(kind=rng.choice(KINDS), file=rng.randrange(1 << 16), record=rng.randrange(1 << 16),
               field=rng.randrange(1 << 16), value=rng.randrange(1 << 16), raw=rng.randrange(1 << 32))
            for _ in range(rng.randint(1, max_ops))]
