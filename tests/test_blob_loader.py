"""The blob's build (restorer_blob/build.py) and its loader (pycriu_restore/blob/loader.py).

The blob is built fresh from restorer_blob/ for these tests, so they check the sources as
they are, not a stale restorer.elf. binutils' readelf is the independent oracle for symbols
and relocations; small ELFs made with gcc are the inputs the loader must refuse.
"""

from __future__ import annotations

import importlib.util
import pathlib
import re
import subprocess
import types

import pytest

from pycriu_restore.blob import abi
from pycriu_restore.blob.errors import BlobMalformed, BlobMissing, UnsupportedRelocation
from pycriu_restore.blob.loader import BLOB_FILE_NAME, Blob, blob_path, load_blob
from pycriu_restore.errors import EXIT_BUILD

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _build_module() -> types.ModuleType:
    """restorer_blob/build.py, loaded by path as setup.py does."""
    spec = importlib.util.spec_from_file_location("restorer_blob_build", ROOT / "restorer_blob" / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build_py = _build_module()


@pytest.fixture(scope="module")
def blob_file(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("blob") / BLOB_FILE_NAME
    build_py.build(out)
    return out


@pytest.fixture(scope="module")
def blob(blob_file: pathlib.Path) -> Blob:
    return load_blob(blob_file)


def _readelf(*args: str) -> str:
    return subprocess.run(["readelf", "-W", *args], check=True, capture_output=True, text=True).stdout


def _gcc_shared(tmp_path: pathlib.Path, source: str) -> pathlib.Path:
    """A shared object from C source: an ELF at vaddr 0 that needs symbol relocations."""
    src, out = tmp_path / "lib.c", tmp_path / "lib.elf"
    src.write_text(source)
    subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-nostdlib", "-o", str(out), str(src)],
                   check=True, capture_output=True)
    return out


# --- build -------------------------------------------------------------------------------


def test_build_writes_a_readable_x86_64_pie(blob_file: pathlib.Path) -> None:
    header = _readelf("-h", str(blob_file))
    assert re.search(r"Type:\s+DYN", header) and "X86-64" in header
    assert blob_file.stat().st_mode & 0o444 == 0o444
    loads = [line for line in _readelf("-l", str(blob_file)).splitlines() if line.strip().startswith("LOAD")]
    assert len(loads) == 1 and loads[0].split()[2] == "0x0000000000000000" and "RWE" in loads[0]


def test_blob_sources_build_without_warnings(tmp_path: pathlib.Path) -> None:
    """-Wall -Wextra clean (the build itself does not use -Werror, for newer compilers' sake)."""
    build_py.link(build_py.sources(), tmp_path / "strict.elf", extra_flags=("-Werror",))
    assert (tmp_path / "strict.elf").stat().st_size > 0


def test_build_without_gcc_says_how_to_get_it(tmp_path: pathlib.Path) -> None:
    out = tmp_path / BLOB_FILE_NAME
    with pytest.raises(build_py.BuildError, match=r"gcc-does-not-exist not found: install it "
                       r"\(apt-get install gcc\) to build the restorer blob"):
        build_py.build(out, cc="gcc-does-not-exist")
    assert not out.exists()


def test_build_failure_carries_gcc_stderr_and_leaves_no_file(tmp_path: pathlib.Path) -> None:
    src = tmp_path / "broken.c"
    src.write_text("int broken(void) { return undeclared_thing; }\n")
    out = tmp_path / "broken.elf"
    with pytest.raises(build_py.BuildError) as info:
        build_py.link([src], out)
    assert "exit status 1" in str(info.value) and "undeclared_thing" in str(info.value)
    assert list(tmp_path.iterdir()) == [src]    # no output, no temporary left behind


def test_build_refuses_a_libc_call(tmp_path: pathlib.Path) -> None:
    """-z defs: code that calls libc cannot link into a blob."""
    src = tmp_path / "libc_call.c"
    src.write_text("int puts(const char *s);\nvoid restore_task(void) { puts(\"hi\"); }\n")
    with pytest.raises(build_py.BuildError, match="undefined reference to `puts'"):
        build_py.link([src], tmp_path / "libc_call.elf")


# --- loading the real blob ---------------------------------------------------------------


def test_symbols_match_readelf(blob: Blob, blob_file: pathlib.Path) -> None:
    oracle = {}
    for line in _readelf("-s", str(blob_file)).splitlines():
        cols = line.split()
        if len(cols) == 8 and cols[3] in ("FUNC", "OBJECT"):
            oracle[cols[7]] = int(cols[1], 16)
    assert {"restore_task", "restore_task_main", "blob_steps", "memcpy", "memset"} <= set(oracle)
    assert dict(blob.symbols) == oracle
    assert blob.entry_offset(abi.BLOB_ENTRY_RESTORE_TASK) == oracle["restore_task"]


def test_image_is_the_segment_page_rounded(blob: Blob, blob_file: pathlib.Path) -> None:
    assert blob.size_bytes % abi.BLOB_PAGE_SIZE == 0 and blob.size_bytes > 0
    data = blob_file.read_bytes()
    load = next(l for l in _readelf("-l", str(blob_file)).splitlines() if l.strip().startswith("LOAD"))
    file_off, filesz = int(load.split()[1], 16), int(load.split()[4], 16)
    assert blob.image[:filesz] == data[file_off:file_off + filesz]
    assert blob.image[filesz:] == bytes(blob.size_bytes - filesz)


def test_relocations_match_readelf(blob: Blob, blob_file: pathlib.Path) -> None:
    oracle = []
    for line in _readelf("-r", str(blob_file)).splitlines():
        if "R_X86_64_RELATIVE" in line:
            cols = line.split()
            oracle.append((int(cols[0], 16), int(cols[-1], 16)))
    # blob_steps[]: a name and a function pointer per step, three steps so far.
    assert len(oracle) >= 6
    assert [(r.offset, r.addend) for r in blob.relocations] == oracle


def test_two_bases_differ_exactly_at_the_relocated_slots(blob: Blob) -> None:
    base_a, base_b = 0x10000, 0x7F12_3456_7000
    image_a, image_b = blob.image_at(base_a), blob.image_at(base_b)
    assert len(image_a) == len(image_b) == blob.size_bytes
    slots = {r.offset + i for r in blob.relocations for i in range(8)}
    differing = {i for i in range(blob.size_bytes) if image_a[i] != image_b[i]}
    assert differing and differing <= slots
    for reloc in blob.relocations:
        assert int.from_bytes(image_a[reloc.offset:reloc.offset + 8], "little") == base_a + reloc.addend
        assert int.from_bytes(image_b[reloc.offset:reloc.offset + 8], "little") == base_b + reloc.addend
    for i in set(range(blob.size_bytes)) - slots:   # everything else is the plain image
        assert image_a[i] == blob.image[i]


def test_image_at_requires_a_page_aligned_base(blob: Blob) -> None:
    with pytest.raises(AssertionError, match="Blob.image_at: base 0x10008"):
        blob.image_at(0x10008)


def test_unknown_entry_names_the_symbol(blob: Blob) -> None:
    with pytest.raises(BlobMalformed, match="no symbol 'restore_thread'"):
        blob.entry_offset("restore_thread")


# --- refusing what cannot be placed ------------------------------------------------------


@pytest.mark.parametrize(("source", "reloc_type"), [
    ("extern int foo;\nint *foo_ptr = &foo;\n", "R_X86_64_64"),
    ("extern int foo;\nint get_foo(void) { return foo; }\n", "R_X86_64_GLOB_DAT"),
])
def test_symbol_relocation_is_refused(tmp_path: pathlib.Path, source: str, reloc_type: str) -> None:
    elf = _gcc_shared(tmp_path, source + "void restore_task(void) {}\n")
    line = next(l for l in _readelf("-r", str(elf)).splitlines() if reloc_type in l)
    with pytest.raises(UnsupportedRelocation) as info:
        load_blob(elf)
    err = info.value
    assert (err.type_name, err.offset, err.symbol) == (reloc_type, int(line.split()[0], 16), "foo")
    assert f"relocation {reloc_type} at offset {err.offset:#x} (symbol 'foo')" in str(err)
    assert err.exit_code == EXIT_BUILD


def test_bss_is_zeroed_and_counted(tmp_path: pathlib.Path) -> None:
    src = tmp_path / "bss.c"
    src.write_text("unsigned char big_bss[10000];\nint data_word = 0x5a5a5a5a;\n"
                   "void restore_task(void) { big_bss[1] = 1; }\n")
    out = tmp_path / "bss.elf"
    build_py.link([src], out)
    loaded = load_blob(out)
    start = loaded.symbols["big_bss"]
    assert loaded.size_bytes >= start + 10000 and loaded.size_bytes % abi.BLOB_PAGE_SIZE == 0
    assert loaded.image[start:start + 10000] == bytes(10000)
    word = loaded.symbols["data_word"]
    assert loaded.image[word:word + 4] == b"\x5a" * 4


def test_missing_entry_point_is_refused(tmp_path: pathlib.Path) -> None:
    src = tmp_path / "noentry.c"
    src.write_text("int something_else(void) { return 1; }\n")
    out = tmp_path / "noentry.elf"
    build_py.link([src], out, extra_flags=("-Wl,-e,something_else",))
    with pytest.raises(BlobMalformed, match="no symbol 'restore_task'"):
        load_blob(out)
    assert "something_else" in load_blob(out, required_symbols=()).symbols


def test_stripped_blob_is_refused(tmp_path: pathlib.Path, blob_file: pathlib.Path) -> None:
    stripped = tmp_path / "stripped.elf"
    subprocess.run(["strip", "-o", str(stripped), str(blob_file)], check=True)
    with pytest.raises(BlobMalformed, match="no .symtab"):
        load_blob(stripped)


def test_relocatable_object_is_refused(tmp_path: pathlib.Path) -> None:
    src, obj = tmp_path / "obj.c", tmp_path / "obj.o"
    src.write_text("void restore_task(void) {}\n")
    subprocess.run(["gcc", "-c", "-fpie", "-o", str(obj), str(src)], check=True)
    with pytest.raises(BlobMalformed, match="ET_REL.*expected.*ET_DYN"):
        load_blob(obj)


@pytest.mark.parametrize("keep_bytes", [0, 16, 200, 5000])
def test_garbage_and_truncated_files_are_refused(tmp_path: pathlib.Path, blob_file: pathlib.Path,
                                                 keep_bytes: int) -> None:
    bad = tmp_path / "bad.elf"
    bad.write_bytes(blob_file.read_bytes()[:keep_bytes] if keep_bytes else b"not an elf at all")
    with pytest.raises(BlobMalformed) as info:
        load_blob(bad)
    assert str(info.value).startswith(f"{bad}: ")
    assert info.value.exit_code == EXIT_BUILD


# --- finding the blob --------------------------------------------------------------------


def test_missing_blob_file_says_how_to_build_it(tmp_path: pathlib.Path) -> None:
    with pytest.raises(BlobMissing, match=r"restorer blob not found: run pip install \. to build it") as info:
        blob_path(tmp_path)
    assert info.value.path == tmp_path / BLOB_FILE_NAME
    assert info.value.exit_code == EXIT_BUILD
    with pytest.raises(BlobMissing, match="pip install"):
        load_blob(tmp_path / "nowhere.elf")


def test_blob_path_finds_restorer_elf_in_a_directory(tmp_path: pathlib.Path, blob_file: pathlib.Path) -> None:
    (tmp_path / BLOB_FILE_NAME).write_bytes(blob_file.read_bytes())
    assert blob_path(tmp_path) == tmp_path / BLOB_FILE_NAME


def test_package_blob_is_found_when_built() -> None:
    """The default location is the package directory (where setup.py puts the blob)."""
    package_file = ROOT / "pycriu_restore" / "blob" / BLOB_FILE_NAME
    if package_file.is_file():
        assert blob_path() == package_file
        assert abi.BLOB_ENTRY_RESTORE_TASK in load_blob().symbols
    else:
        with pytest.raises(BlobMissing, match=str(package_file)):
            blob_path()
