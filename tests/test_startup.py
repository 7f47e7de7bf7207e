"""Start-up: the restore command imports only what the images in front of it need.

A small restore takes tens of milliseconds; importing pyroute2, pyelftools, the installed
distributions' metadata or a plugin took longer than that (issue 13). These tests hold the
line by what a real `pycrestore restore` leaves in ``sys.modules`` (never by timing), and
check the pieces that make it so: the rule for looking up plugins, the blob's build-time
prepared form, the stdlib build-id reader and the tracer's own syscall names.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import zlib

import pytest

from conftest import FIXTURES, PACK_CPU_CAP, REPO, kill_and_wait, needs_fixtures
from pycriu_restore.blob import abi
from pycriu_restore.blob.errors import BlobMalformed
from pycriu_restore.blob.loader import _parse_elf, blob_path, load_blob, prepared_path, write_prepared
from pycriu_restore.images import ImageSet, dump_image, load_image
from pycriu_restore.images.image import Image
from pycriu_restore.plan.build import build_plan
from pycriu_restore.plugins.api import plugins_apply

# What `python -m pycriu_restore ARGS` runs, plus a note of sys.modules as the process ends.
PROBE = """
import atexit, json, runpy, sys
out = sys.argv.pop(1)
atexit.register(lambda: open(out, "w").write(json.dumps(sorted(sys.modules))))
sys.argv[0] = "pycrestore"
runpy.run_module("pycriu_restore", run_name="__main__", alter_sys=True)
"""

# Never needed by a checkpoint without a network namespace, an EXT file or a plugin in its
# inventory (the counter): each of these cost 10-100 ms to import.
NOT_FOR_COUNTER = (
    "pyroute2",                        # netns/: only for a tree with a network namespace of its own
    "pycriu_restore.netns.namespace",
    "pycriu_restore.plugins.amdgpu",   # a plugin: only where the images hold its files
    "importlib.metadata",              # the entry point scan that finds plugins
    "elftools",                        # the blob is loaded prepared; build-ids are read with struct
    "ptrace.syscall",                  # python-ptrace's syscall table: only for unusual names
    "pycriu_restore.images.proto.amdgpu_pb2",  # schemas are imported as their images are read
    "pycriu_restore.images.proto.net_pb2",
)


def _modules_of(args: list[str], tmp_path: pathlib.Path) -> tuple[subprocess.CompletedProcess, list[str]]:
    out = tmp_path / "modules.json"
    run = subprocess.run([sys.executable, "-c", PROBE, str(out), *args], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    return run, json.loads(out.read_text()) if out.exists() else []


def _loaded(modules: list[str], prefix: str) -> list[str]:
    return [m for m in modules if m == prefix or m.startswith(prefix + ".")]


@needs_fixtures
def test_restore_command_imports_nothing_the_counter_does_not_need(tmp_path):
    subprocess.run([str(FIXTURES / "install.sh"), "counter"], check=True, capture_output=True)
    pidfile = tmp_path / "pid"
    run, modules = _modules_of(["restore", "-D", str(FIXTURES / "images" / "counter"), "-d",
                                "--cpu-cap", PACK_CPU_CAP, "--pidfile", str(pidfile)], tmp_path)
    pid = int(pidfile.read_text()) if pidfile.exists() else None
    try:
        assert run.returncode == 0, run.stderr
        assert pid == 31100
        verify = subprocess.run([str(FIXTURES / "verify.py"), "counter"], capture_output=True, text=True)
        assert verify.returncode == 0 and verify.stdout.startswith("PASS"), verify.stdout + verify.stderr
    finally:
        if pid is not None:
            kill_and_wait(pid)
    assert not os.path.exists("/proc/31100")
    assert "pycriu_restore.restore.orchestrator" in modules  # the probe saw a real restore
    unwanted = {prefix: _loaded(modules, prefix) for prefix in NOT_FOR_COUNTER}
    assert {k: v for k, v in unwanted.items() if v} == {}


def test_help_imports_no_restore_code(tmp_path):
    run, modules = _modules_of(["restore", "--help"], tmp_path)
    assert run.returncode == 0, run.stderr
    assert "--images-dir" in run.stdout
    assert _loaded(modules, "pycriu_restore.restore.orchestrator") == []
    assert _loaded(modules, "google.protobuf") == []


@needs_fixtures
def test_plugins_apply_only_where_the_images_hold_plugin_state(tmp_path):
    from test_plugins import counter_with_ext_file

    counter = FIXTURES / "images" / "counter"
    images = ImageSet.open(counter)
    assert not plugins_apply(images, build_plan(images))

    with_ext = ImageSet.open(counter_with_ext_file(tmp_path / "ext"))
    assert plugins_apply(with_ext, build_plan(with_ext))

    # CRIU >= 4.1 names the plugins that dumped state in the inventory (criu/image.c).
    listed = tmp_path / "listed"
    shutil.copytree(counter, listed)
    inventory = load_image(listed / "inventory.img")
    inventory.entries[0].plugins_entry.plugins.append("amdgpu_plugin")
    (listed / "inventory.img").write_bytes(dump_image(Image(kind=inventory.kind, entries=inventory.entries)))
    images = ImageSet.open(listed)
    assert plugins_apply(images, build_plan(images))


def _same(a, b) -> bool:
    return (a.image, dict(a.symbols), a.relocations) == (b.image, dict(b.symbols), b.relocations)


def test_the_build_writes_the_blob_prepared_and_it_equals_the_parsed_elf():
    elf = blob_path()
    assert prepared_path(elf).is_file(), "the build (setup.py, tools/build_inplace.py) writes it"
    doc = json.loads(prepared_path(elf).read_text())
    data = elf.read_bytes()
    assert (doc["elf_bytes"], doc["elf_crc32"]) == (len(data), zlib.crc32(data)), \
        "restorer.elf was rebuilt without its prepared form: run python tools/build_inplace.py blob"
    prepared = load_blob(required_symbols=(abi.BLOB_ENTRY_RESTORE_TASK, abi.BLOB_SYSCALL_GADGET))
    assert _same(prepared, _parse_elf(elf, data))


def test_prepared_blob_is_used_only_for_the_elf_bytes_it_was_made_from(tmp_path):
    elf = tmp_path / "restorer.elf"
    shutil.copy(blob_path(), elf)
    parsed = _parse_elf(elf, elf.read_bytes())
    write_prepared(elf)
    doc = json.loads(prepared_path(elf).read_text())

    doc["symbols"]["only_in_the_prepared_file"] = 0  # proves which of the two was read
    prepared_path(elf).write_text(json.dumps(doc))
    assert "only_in_the_prepared_file" in load_blob(elf).symbols

    doc["elf_crc32"] ^= 1  # made from other bytes: the ELF is parsed instead
    prepared_path(elf).write_text(json.dumps(doc))
    assert _same(load_blob(elf), parsed)

    prepared_path(elf).write_text("{not json")
    with pytest.raises(BlobMalformed, match="prepared"):
        load_blob(elf)

    write_prepared(elf)
    doc = json.loads(prepared_path(elf).read_text())
    doc["relocations"].append([len(parsed.image), 0])  # a slot outside the image
    prepared_path(elf).write_text(json.dumps(doc))
    with pytest.raises(BlobMalformed, match="outside the"):
        load_blob(elf)


def test_relocation_types_match_elf_h():
    from elftools.elf.enums import ENUM_RELOC_TYPE_x64

    from pycriu_restore.blob import loader

    assert loader.R_X86_64_NONE == ENUM_RELOC_TYPE_x64["R_X86_64_NONE"]
    assert loader.R_X86_64_RELATIVE == ENUM_RELOC_TYPE_x64["R_X86_64_RELATIVE"]


def _build_id_by_pyelftools(path: str) -> bytes | None:
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile

    try:
        with open(path, "rb") as f:
            for segment in ELFFile(f).iter_segments():
                if segment.header.p_type == "PT_NOTE":
                    for note in segment.iter_notes():
                        if note["n_type"] == "NT_GNU_BUILD_ID":
                            return bytes.fromhex(note["n_desc"])
    except (ELFError, OSError):
        return None
    return None


def test_build_id_reader_agrees_with_pyelftools(tmp_path):
    from pycriu_restore.restore.build_id import elf_build_id

    libdir = pathlib.Path("/usr/lib/x86_64-linux-gnu")
    candidates = [sys.executable, "/bin/true", str(libdir / "libc.so.6"), str(blob_path()),
                  *map(str, sorted(libdir.glob("*.so*"))[:40]), *map(str, sorted(pathlib.Path("/usr/lib32").glob("*.so*"))[:5])]
    ids = {path: elf_build_id(path) for path in candidates if os.path.isfile(path)}
    assert {p: i for p, i in ids.items() if i != _build_id_by_pyelftools(p)} == {}
    assert ids["/bin/true"] is not None and len(ids["/bin/true"]) == 20
    not_elf = tmp_path / "not-elf"
    not_elf.write_bytes(b"\x7fELF" + b"\xff" * 60)
    assert elf_build_id(str(not_elf)) is None
    assert elf_build_id(str(tmp_path / "missing")) is None


def test_own_syscall_names_match_python_ptrace():
    from ptrace.syscall.linux.x86_64 import SYSCALL_NAMES

    from pycriu_restore.linux import syscalls

    assert syscalls._OWN_NAMES
    assert {nr: name for nr, name in syscalls._OWN_NAMES.items() if SYSCALL_NAMES.get(nr) != name} == {}
    assert syscalls.syscall_name(syscalls.NR_MMAP) == "mmap"
    assert syscalls.syscall_name(62) == "kill"  # not one of ours: python-ptrace's table
