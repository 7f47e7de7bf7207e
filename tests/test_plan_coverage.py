"""The coverage table (plan/coverage.py) against the schemas, the plan and real images.

(a) Every field the descriptors hold has a line in the table, and every line names a field
    that exists: a schema change forces a decision.
(b) Every REFUSED line: a real fixture image with that field set to a value the restore
    cannot reproduce makes build_plan raise UnsupportedFeature naming the file and field.
(c) Every APPLIED line with a probe: changing the field in the image changes the plan there.
(d) docs/fidelity.md lists every REFUSED field.
No root needed, except the one CLI run, which stops at the plan.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor

from conftest import FIXTURES, REPO
from pycriu_restore.images import ImageSet, dump_image, load_image
from pycriu_restore.plan.build import build_plan
from pycriu_restore.plan.coverage import (
    RECORD_KINDS,
    SHARED,
    Disposition,
    Field,
    RecordKind,
    covering,
    is_repeated,
    probe,
    render_markdown,
    schema_paths,
)
from pycriu_restore.plan.errors import UnsupportedFeature

IMAGES = FIXTURES / "images"
# Searched in this order for one holding the records a test needs.
FIXTURE_ORDER = ("counter", "pipes", "signals", "shmem", "unixsk", "threads", "fpu")
GLOBS = {
    "inventory": "inventory.img", "pstree": "pstree.img", "core": "core-*.img", "mm": "mm-*.img",
    "pagemap-head": "pagemap-*.img", "pagemap": "pagemap-*.img", "fs": "fs-*.img", "ids": "ids-*.img",
    "fdinfo": "fdinfo-*.img", "files": "files.img", "pipes-data": "pipes-data.img",
    "sk-queues": "sk-queues.img", "timens": "timens-*.img", "seccomp": "seccomp.img", "memfd": "memfd.img",
    "cpuinfo": "cpuinfo.img",
}
# Parents no fixture has, made up so that a check below them can be exercised.
_FOWN = {"uid": 0, "euid": 0, "signum": 0, "pid_type": 0, "pid": 0}
SEEDS = {
    ("files", "ext"): {"id": 99, "fown": _FOWN},
    # fd kinds the pack (criu-4.2) does not hold; criu-4.2-more's evloop has them all.
    ("files", "efd"): {"id": 99, "flags": 2, "fown": _FOWN, "counter": 0},
    ("files", "epfd"): {"id": 99, "flags": 2, "fown": _FOWN},
    ("files", "sgfd"): {"id": 99, "flags": 2, "fown": _FOWN, "sigmask": 0},
    ("files", "tfd"): {"id": 99, "flags": 2, "fown": _FOWN, "clockid": 1, "ticks": 0, "settime_flags": 0,
                       "vsec": 0, "vnsec": 0, "isec": 0, "insec": 0},
    ("files", "ify"): {"id": 99, "flags": 0, "fown": _FOWN,
                       "wd": [{"id": 0, "i_ino": 1, "mask": 2, "ignored_mask": 0, "s_dev": 0, "wd": 1,
                               "f_handle": {"bytes": 8, "type": 1, "path": "/"}}]},
    # criu-4.2-more's tcpecho and memcached hold inet sockets.
    ("files", "isk"): {"id": 99, "ino": 1, "family": 2, "type": 1, "proto": 6, "state": 10, "src_port": 1,
                       "dst_port": 0, "flags": 2, "backlog": 1, "fown": _FOWN, "ip_opts": {"ttl": 64},
                       "opts": {"so_sndbuf": 0, "so_rcvbuf": 0, "so_snd_tmo_sec": 0, "so_snd_tmo_usec": 0,
                                "so_rcv_tmo_sec": 0, "so_rcv_tmo_usec": 0}},
}

pytestmark = pytest.mark.skipif(not IMAGES.is_dir(), reason=f"fixture pack not found at {FIXTURES}")


def _records(kind: RecordKind, image) -> list:
    if kind.name == "pagemap-head":
        return image.entries[:1]
    if kind.name == "pagemap":
        return image.entries[1:]
    return image.entries


def _targets(kind: RecordKind, parent: list[str], records: list) -> list:
    """Every message at ``parent`` below the records (each element of a repeated one)."""
    out = list(records)
    for part in parent:
        nxt = []
        for msg in out:
            fd = msg.DESCRIPTOR.fields_by_name[part]
            if is_repeated(fd):
                nxt.extend(getattr(msg, part))
            elif msg.HasField(part):
                nxt.append(getattr(msg, part))
        out = nxt
    return out


class Copy:
    """A fixture copied to tmp_path, with its images of one kind loaded for editing."""

    def __init__(self, tmp_path: Path, name: str, kind: RecordKind) -> None:
        self.dir = tmp_path / name
        shutil.copytree(IMAGES / name, self.dir)
        self.kind = kind
        self.images = {p.name: load_image(p) for p in sorted(self.dir.glob(GLOBS[kind.name]))}

    def targets(self, parent: list[str]) -> list:
        return [t for image in self.images.values() for t in _targets(self.kind, parent, _records(self.kind, image))]

    def save(self) -> None:
        for name, image in self.images.items():
            (self.dir / name).write_bytes(dump_image(image))


def _copy_with(tmp_path: Path, kind: RecordKind, parent: list[str], min_records: int = 1) -> Copy:
    """The first fixture (FIXTURE_ORDER) where ``parent`` exists in at least ``min_records``
    records of ``kind``; else the first with the kind, with the parent seeded (SEEDS)."""
    for name in FIXTURE_ORDER:
        if not list((IMAGES / name).glob(GLOBS[kind.name])):
            continue
        copy = Copy(tmp_path, name, kind)
        if len(copy.targets(parent)) >= min_records:
            return copy
        shutil.rmtree(copy.dir)
    seeds = [(path.split("."), seed) for (name, path), seed in SEEDS.items()
             if name == kind.name and parent[:len(path.split("."))] == path.split(".")]
    assert seeds, f"no fixture holds {kind.name} {'.'.join(parent)}: add a SEEDS entry"
    seed_path, seed = seeds[0]
    copy = Copy(tmp_path, FIXTURE_ORDER[0], kind)
    for record in _records(kind, next(iter(copy.images.values()))):
        json_format.ParseDict({seed_path[-1]: seed}, _targets(kind, seed_path[:-1], [record])[0])
    return copy


def _set(msg, name: str, value: object) -> None:
    """Set field ``name`` of ``msg``: a scalar, a list, a message (dict) or messages (list of dicts)."""
    fd = msg.DESCRIPTOR.fields_by_name[name]
    if fd.type == FieldDescriptor.TYPE_MESSAGE:
        msg.ClearField(name)
        json_format.ParseDict({name: value}, msg)
    elif is_repeated(fd):
        del getattr(msg, name)[:]
        getattr(msg, name).extend(value)  # type: ignore[arg-type]
    else:
        setattr(msg, name, value)


def _bad_value(field: Field, fd: FieldDescriptor) -> object:
    """A value the REFUSED check must reject: the table's ``bad``, else one derived from the type."""
    if field.bad is not None:
        return field.bad
    assert fd.type != FieldDescriptor.TYPE_MESSAGE, f"{field.path}: a message field needs a bad= in the table"
    if is_repeated(fd):
        return ["x"] if fd.type == FieldDescriptor.TYPE_STRING else [1]
    if fd.type == FieldDescriptor.TYPE_BOOL:
        return not fd.default_value
    if fd.type == FieldDescriptor.TYPE_STRING:
        return "x"
    if fd.type == FieldDescriptor.TYPE_BYTES:
        return b"x"
    return fd.default_value + 1


def _field_desc(kind: RecordKind, path: str) -> FieldDescriptor:
    return dict(schema_paths(kind.message.DESCRIPTOR))[path]


def _all_lines(disposition: Disposition, with_probe: bool = False) -> list:
    return [pytest.param(k, f, id=f"{k.name}:{f.path}") for k in RECORD_KINDS for f in k.fields
            if f.disposition is disposition and (f.probe is not None or not with_probe)]


# --- (a) the table and the schemas --------------------------------------------------------

@pytest.mark.parametrize("kind", RECORD_KINDS, ids=lambda k: k.name)
def test_every_schema_field_has_a_decision(kind: RecordKind) -> None:
    undecided = [path for path, _ in schema_paths(kind.message.DESCRIPTOR) if not covering(kind, path)]
    assert not undecided, f"{kind.name}: no line in plan/coverage.py for {undecided}"


@pytest.mark.parametrize("kind", RECORD_KINDS, ids=lambda k: k.name)
def test_every_table_line_names_a_field(kind: RecordKind) -> None:
    paths = {path for path, _ in schema_paths(kind.message.DESCRIPTOR)}
    assert not [f.path for f in kind.fields if f.path not in paths]


@pytest.mark.parametrize("kind", RECORD_KINDS, ids=lambda k: k.name)
def test_table_lines_are_consistent(kind: RecordKind) -> None:
    for f in kind.fields:
        assert f.where, f"{kind.name}:{f.path}: say where it is applied, what is refused or why it is safe"
        if f.disposition is not Disposition.REFUSED:
            assert f.accepts is None and f.bad is None and not f.final, f"{kind.name}:{f.path}"
        if f.probe is not None:
            assert f.disposition is Disposition.APPLIED, f"{kind.name}:{f.path}"


# --- (b) every REFUSED field is refused -------------------------------------------------

@pytest.mark.parametrize("kind, field", _all_lines(Disposition.REFUSED))
def test_refused_field_is_refused(tmp_path: Path, kind: RecordKind, field: Field) -> None:
    parts = field.path.split(".")
    fd = _field_desc(kind, field.path)
    if field.bad == SHARED:  # two tasks with one id: CLONE_VM and friends
        copy = _copy_with(tmp_path, kind, parts[:-1], min_records=2)
        targets = copy.targets(parts[:-1])
        for t in targets[1:]:
            setattr(t, parts[-1], getattr(targets[0], parts[-1]))
    else:
        copy = _copy_with(tmp_path, kind, parts[:-1])
        for target in copy.targets(parts[:-1]):
            _set(target, parts[-1], _bad_value(field, fd))
    copy.save()
    with pytest.raises(UnsupportedFeature) as caught:
        build_plan(ImageSet.open(copy.dir))
    message = str(caught.value)
    assert caught.value.image in copy.images, message
    assert re.sub(r"\[\d+\]", "", message).find(field.path) >= 0, message
    assert "\n" not in message


def test_refusals_are_collected_in_one_line(tmp_path: Path) -> None:
    images = tmp_path / "threads"
    shutil.copytree(IMAGES / "threads", images)
    for path in sorted(images.glob("core-*.img")):
        core = load_image(path)
        core.entries[0].thread_core.timerslack_ns = 50_000
        path.write_bytes(dump_image(core))
    mm = load_image(images / "mm-31200.img")
    mm.entries[0].aios.add(id=1, nr_req=1, ring_len=4096)
    (images / "mm-31200.img").write_bytes(dump_image(mm))
    with pytest.raises(UnsupportedFeature) as caught:
        build_plan(ImageSet.open(images))
    message = str(caught.value)
    assert message.startswith("core-31200.img: unsupported: thread_core.timerslack_ns = 50000: not restored")
    assert "(also in 4 other file(s))" in message
    assert "mm-31200.img: aios = 1 entries" in message


def test_unknown_field_is_refused(tmp_path: Path) -> None:
    """A field the project's schema does not know (a newer CRIU's) is state nobody decided on."""
    images = tmp_path / "counter"
    shutil.copytree(IMAGES / "counter", images)
    core = load_image(images / "core-31100.img")
    core.entries[0].thread_core.MergeFromString(bytes([0xF8, 0x06, 7]))  # field 111, varint 7
    (images / "core-31100.img").write_bytes(dump_image(core))
    with pytest.raises(UnsupportedFeature, match=r"core-31100.img: unsupported: thread_core.field #111: "
                                                 r"not in pycrestore's schema"):
        build_plan(ImageSet.open(images))


def test_cli_exits_3_with_one_line(tmp_path: Path) -> None:
    images = tmp_path / "counter"
    shutil.copytree(IMAGES / "counter", images)
    core = load_image(images / "core-31100.img")
    core.entries[0].thread_core.timerslack_ns = 50_000
    (images / "core-31100.img").write_bytes(dump_image(core))
    result = subprocess.run([sys.executable, "-m", "pycriu_restore", "restore", "-D", str(images), "-d"],
                            capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == 3, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "core-31100.img: unsupported: thread_core.timerslack_ns = 50000: not restored" in lines[0]


# --- (c) every probed APPLIED field reaches the plan ------------------------------------------

def _changed_values(fd: FieldDescriptor, value: object) -> list:
    if fd.type == FieldDescriptor.TYPE_BOOL:
        return [not value]
    if fd.type == FieldDescriptor.TYPE_STRING:
        return [value + "x"]  # type: ignore[operator]
    if fd.type == FieldDescriptor.TYPE_BYTES:
        return [value + b"x"]  # type: ignore[operator]
    return [value + 1, value - 1]  # type: ignore[operator]


@pytest.mark.parametrize("kind, field", _all_lines(Disposition.APPLIED, with_probe=True))
def test_applied_field_reaches_the_plan(tmp_path: Path, kind: RecordKind, field: Field) -> None:
    parts = field.path.split(".")
    fd = _field_desc(kind, field.path)
    tried = []
    for attempt in range(2):  # the second tries each value the other way (-1 before +1)
        copy = _copy_with(tmp_path / f"try{attempt}", kind, parts[:-1])
        before = probe(build_plan(ImageSet.open(copy.dir)), field.probe)
        targets = [t for t in copy.targets(parts[:-1]) if t.HasField(parts[-1])]
        assert targets, f"{copy.dir.name}: no record sets {field.path}"
        for t in targets:
            candidates = _changed_values(fd, getattr(t, parts[-1]))
            for value in candidates[::-1] if attempt else candidates:
                try:
                    setattr(t, parts[-1], value)
                    break
                except ValueError:  # out of the field's range (a u64 at its maximum)
                    continue
        copy.save()
        try:
            after = probe(build_plan(ImageSet.open(copy.dir)), field.probe)
        except UnsupportedFeature as err:  # e.g. dumpable 2 is refused: try the other way
            tried.append(str(err))
            continue
        assert after != before, f"{field.path} changed in the image, {field.probe} stayed {before!r}"
        return
    pytest.fail(f"{field.path}: no changed value builds: {tried}")


# --- (d) the documentation --------------------------------------------------------------

def test_fidelity_doc_lists_every_refused_field() -> None:
    doc = (REPO / "docs" / "fidelity.md").read_text()
    missing = [f"{k.name}:{f.path}" for k in RECORD_KINDS for f in k.fields
               if f.disposition is Disposition.REFUSED and f"`{f.path}`" not in doc]
    assert not missing, f"docs/fidelity.md does not list {missing} (python -m pycriu_restore.plan.coverage)"


def test_fidelity_doc_embeds_the_table() -> None:
    doc = (REPO / "docs" / "fidelity.md").read_text()
    assert render_markdown() in doc, "docs/fidelity.md is stale: regenerate its table with python -m pycriu_restore.plan.coverage"
