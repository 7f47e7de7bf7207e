"""restorer_blob/abi.h and its ctypes mirror pycriu_restore/blob/abi.py describe the same ABI.

A C program generated from the mirror's own ``_fields_`` is compiled against abi.h with gcc
and prints, for every struct and every field, sizeof/offsetof/field size/signedness, and the
value of every ``#define`` of abi.h; each number must equal the mirror's.
"""

from __future__ import annotations

import ctypes
import pathlib
import re
import shutil
import subprocess

import pytest

from pycriu_restore.blob import abi

ROOT = pathlib.Path(__file__).resolve().parent.parent
ABI_H = ROOT / "restorer_blob" / "abi.h"

_SCALARS = (ctypes.c_int8, ctypes.c_uint8, ctypes.c_int16, ctypes.c_uint16, ctypes.c_int32,
            ctypes.c_uint32, ctypes.c_int64, ctypes.c_uint64)
_SIGNED = (ctypes.c_int8, ctypes.c_int16, ctypes.c_int32, ctypes.c_int64)


def _defines() -> dict[str, str]:
    """Every ``#define BLOB_...`` of abi.h: name -> the text of its value."""
    found = re.findall(r"^#define\s+(BLOB_\w+)\s+(.+?)(?:\s*/\*.*)?$", ABI_H.read_text(), re.M)
    return dict(found)


def _c_program() -> str:
    """C source printing one ``key value`` line per fact the mirror claims."""
    lines = ["#include <stdio.h>", "#include <stddef.h>", "#include <linux/prctl.h>",
             "#include <linux/sched.h>",
             '#include "abi.h"', "int main(void) {"]

    def out(key: str, fmt: str, expr: str) -> None:
        lines.append(f'    printf("{key} {fmt}\\n", {expr});')

    for c_name, cls in abi.STRUCTS.items():
        out(f"sizeof {c_name}", "%zu", f"sizeof(struct {c_name})")
        out(f"alignof {c_name}", "%zu", f"_Alignof(struct {c_name})")
        for field, ctype in cls._fields_:
            member = f"((struct {c_name} *)0)->{field}"
            out(f"offsetof {c_name}.{field}", "%zu", f"offsetof(struct {c_name}, {field})")
            out(f"size {c_name}.{field}", "%zu", f"sizeof({member})")
            if ctype in _SCALARS:
                out(f"signed {c_name}.{field}", "%d", f"(__typeof__({member}))-1 < 0")
    for name, value in _defines().items():
        if value.startswith('"'):
            out(f"define {name}", "%s", name)
        else:
            out(f"define {name}", "%llu", f"(unsigned long long)({name})")
    # The thread clone flags are the kernel's (linux/sched.h).
    out("clone_thread_flags", "%llu", "(unsigned long long)(CLONE_VM | CLONE_FS | CLONE_FILES | "
        "CLONE_SIGHAND | CLONE_THREAD | CLONE_SYSVSEM)")
    out("clone_fill_flags", "%llu", "(unsigned long long)(CLONE_VM | CLONE_FS | CLONE_FILES | "
        "CLONE_SIGHAND | CLONE_THREAD | CLONE_UNTRACED | CLONE_PARENT_SETTID | CLONE_CHILD_CLEARTID)")
    # struct blob_mm is passed to prctl(PR_SET_MM_MAP) as is: same layout as the kernel's.
    out("sizeof prctl_mm_map", "%zu", "sizeof(struct prctl_mm_map)")
    for field, _ in abi.BlobMm._fields_:
        out(f"offsetof prctl_mm_map.{field}", "%zu", f"offsetof(struct prctl_mm_map, {field})")
    lines += ["    return 0;", "}"]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def c_facts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Compile and run the generated program; return its ``key -> value`` lines."""
    assert shutil.which("gcc"), "gcc is needed to check abi.h"
    work = tmp_path_factory.mktemp("abi")
    src, exe = work / "abi_check.c", work / "abi_check"
    src.write_text(_c_program())
    subprocess.run(["gcc", "-Wall", "-Werror", f"-I{ABI_H.parent}", "-o", str(exe), str(src)],
                   check=True, capture_output=True, text=True)
    output = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    return dict(line.rsplit(" ", 1) for line in output.splitlines())


def test_every_struct_of_abi_h_is_mirrored() -> None:
    in_header = set(re.findall(r"^struct\s+(\w+)\s*\{", ABI_H.read_text(), re.M))
    assert in_header == set(abi.STRUCTS)


@pytest.mark.parametrize("c_name", sorted(abi.STRUCTS))
def test_struct_layout_matches(c_facts: dict[str, str], c_name: str) -> None:
    cls = abi.STRUCTS[c_name]
    assert int(c_facts[f"sizeof {c_name}"]) == ctypes.sizeof(cls)
    assert int(c_facts[f"alignof {c_name}"]) == ctypes.alignment(cls)
    for field, ctype in cls._fields_:
        descr = getattr(cls, field)
        assert int(c_facts[f"offsetof {c_name}.{field}"]) == descr.offset, field
        assert int(c_facts[f"size {c_name}.{field}"]) == descr.size, field
        if ctype in _SCALARS:
            assert c_facts[f"signed {c_name}.{field}"] == str(int(ctype in _SIGNED)), field


def test_every_struct_is_padded_explicitly() -> None:
    """No implicit holes: the fields' sizes add up to the struct's size (abi.h's rule)."""
    for c_name, cls in abi.STRUCTS.items():
        covered = sum(getattr(cls, field).size for field, _ in cls._fields_)
        assert covered == ctypes.sizeof(cls), c_name
        assert ctypes.sizeof(cls) % 8 == 0, c_name


def test_every_define_matches(c_facts: dict[str, str]) -> None:
    defines = _defines()
    assert len(defines) >= 15
    for name, text in defines.items():
        mirrored = getattr(abi, name)
        if text.startswith('"'):
            assert c_facts[f"define {name}"] == mirrored, name
        else:
            assert int(c_facts[f"define {name}"]) == mirrored, name


def test_mirror_defines_nothing_abi_h_lacks() -> None:
    in_mirror = {name for name in vars(abi) if name.startswith("BLOB_")}
    assert in_mirror == set(_defines())


def test_blob_mm_is_prctl_mm_map(c_facts: dict[str, str]) -> None:
    assert int(c_facts["sizeof prctl_mm_map"]) == ctypes.sizeof(abi.BlobMm)
    for field, _ in abi.BlobMm._fields_:
        assert int(c_facts[f"offsetof prctl_mm_map.{field}"]) == getattr(abi.BlobMm, field).offset


def test_new_args_has_a_valid_header() -> None:
    args = abi.BlobArgs.new()
    assert (args.magic, args.abi_version, args.args_size) == (
        abi.BLOB_ARGS_MAGIC, abi.BLOB_ABI_VERSION, ctypes.sizeof(abi.BlobArgs))
    assert bytes(args)[:4] == b"PYCB"
    assert args.pages_fd == -1 and args.flags == 0 and args.nr_vmas == 0


def test_thread_clone_flags_are_the_kernels(c_facts: dict[str, str]) -> None:
    assert int(c_facts["clone_thread_flags"]) == abi.BLOB_THREAD_CLONE_FLAGS


def test_thread_status_record_leads_blob_thread() -> None:
    """Each thread's record is the first field of its descriptor, a whole struct blob_status
    (Bootstrap.thread_status_addrs points there; decode_status reads it)."""
    assert abi.BlobThread.status.offset == 0
    assert abi.BlobThread.status.size == ctypes.sizeof(abi.BlobStatus)
    assert ctypes.sizeof(abi.BlobThread) % 16 == 0     # every record 8-byte aligned in an array


def test_fill_clone_flags_are_the_kernels(c_facts: dict[str, str]) -> None:
    """A fill worker is a thread the tracer never sees (CLONE_UNTRACED) and that the leader
    joins through its tid word (CLONE_PARENT_SETTID, CLONE_CHILD_CLEARTID)."""
    assert int(c_facts["clone_fill_flags"]) == abi.BLOB_FILL_CLONE_FLAGS
