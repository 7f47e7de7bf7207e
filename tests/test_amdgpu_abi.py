"""The amdgpu plugin's ctypes mirrors against the C headers, and device-access errors.

A C program generated from the mirrors themselves (every ``STRUCTS`` entry of kfd.py,
drm.py and dmabuf.py, walked field by field, nested unions included, and every integer
constant of those modules) is compiled with gcc against:

* <linux/kfd_ioctl.h> and <linux/dma-buf.h>           (Debian package linux-libc-dev)
* /usr/include/libdrm/{drm.h,amdgpu_drm.h,amdgpu.h}    (Debian package libdrm-dev)

kfd_ioctl.h includes <drm/drm.h>, which Debian installs only as libdrm's copy, so the
build gets an include directory whose drm/ links to /usr/include/libdrm.

and prints sizeof/offsetof/field size/signedness and each constant's value; every number
must equal the mirror's. A constant added to those modules without a header to check it
against fails :func:`test_every_constant_is_checked` until it is listed in NOT_IN_HEADERS.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from pycriu_restore.errors import EXIT_ENVIRONMENT
from pycriu_restore.plugins.amdgpu import dmabuf, drm, kfd
from pycriu_restore.plugins.amdgpu.backend import GpuBackend
from pycriu_restore.plugins.amdgpu.ioctl import DeviceUnavailable, GpuIoctlError
from pycriu_restore.plugins.amdgpu.kfd_backend import KfdBackend

LIBDRM_INCLUDE = Path("/usr/include/libdrm")

PRELUDE = """\
#include <stddef.h>
#include <stdio.h>
#include <fcntl.h>
#include <linux/kfd_ioctl.h>
#include <linux/dma-buf.h>
#include <drm.h>
#include <amdgpu_drm.h>
#include <amdgpu.h>
"""

MODULES: tuple[ModuleType, ...] = (kfd, drm, dmabuf)

# Integer constants with no C macro of the same name, and where their value comes from.
NOT_IN_HEADERS = {
    (kfd, "KFD_MIN_CRIU_MINOR_VERSION"),  # CRIU's kernel_supports_criu(): 1.8+
    (kfd, "KFD_INVALID_FD"),              # CRIU's KFD_INVALID_FD; the kernel writes (u32)-1
    (drm, "DRM_IOCTL_GEM_CHANGE_HANDLE"),  # Linux 6.18 drm.h, newer than libdrm 2.4.114:
                                           # test_gem_change_handle_matches_linux_6_18
    # kfd_priv.h, kernel-internal (no installed header): /dev/kfd mmap offsets, compared with
    # the fake KFD's own copy in test_amdgpu_fake.py test_kfd_mmap_offsets_agree_with_the_fakes
    (kfd, "KFD_MMAP_TYPE_SHIFT"), (kfd, "KFD_MMAP_TYPE_DOORBELL"), (kfd, "KFD_MMAP_TYPE_MMIO"),
    (kfd, "KFD_MMAP_GPU_ID_SHIFT"), (kfd, "KFD_GPU_ID_HASH_WIDTH"),
}

# Structs newer than the installed headers, each checked by value in its own test.
STRUCTS_NOT_IN_HEADERS = {drm.DrmGemChangeHandle}  # test_gem_change_handle_matches_linux_6_18

# Python field names that are C keywords, spelled differently in the mirrors.
_C_NAMES = {"in_": "in"}

_SCALARS = (ctypes.c_int8, ctypes.c_uint8, ctypes.c_int16, ctypes.c_uint16, ctypes.c_int32,
            ctypes.c_uint32, ctypes.c_int64, ctypes.c_uint64)
_COMPOSITES = (ctypes.Structure, ctypes.Union)


def _constants() -> list[tuple[ModuleType, str, int]]:
    """Every public integer constant defined (not imported) in the mirror modules."""
    found = []
    for module in MODULES:
        for name, value in vars(module).items():
            if name.startswith("_") or not name.isupper():
                continue
            if isinstance(value, int) and not isinstance(value, bool):
                found.append((module, name, value))
    return found


def _field_checks(c_type: str, cls: Any, c_prefix: str = "", offset: int = 0
                  ) -> list[tuple[str, int, str]]:
    """(label, python value, C expression) for every field of ``cls``, recursively."""
    checks: list[tuple[str, int, str]] = []
    anonymous = set(getattr(cls, "_anonymous_", ()))
    for name, ctype in cls._fields_:
        field_offset = offset + getattr(cls, name).offset
        if name in anonymous:  # members of a C anonymous union appear in the parent
            checks += _field_checks(c_type, ctype, c_prefix, field_offset)
            continue
        c_path = c_prefix + _C_NAMES.get(name, name)
        member = f"((({c_type} *)0)->{c_path})"
        checks.append((f"offsetof {c_type}.{c_path}", field_offset,
                       f"offsetof({c_type}, {c_path})"))
        checks.append((f"sizeof {c_type}.{c_path}", ctypes.sizeof(ctype), f"sizeof{member}"))
        if ctype in _SCALARS:
            signed = int(ctype(-1).value < 0)
            checks.append((f"signed {c_type}.{c_path}", signed, f"(__typeof__{member})-1 < 0"))
        elif isinstance(ctype, type) and issubclass(ctype, _COMPOSITES):
            checks += _field_checks(c_type, ctype, c_path + ".", field_offset)
    return checks


def _all_checks() -> list[tuple[str, int, str]]:
    checks = []
    for module, name, value in _constants():
        if (module, name) not in NOT_IN_HEADERS:
            # A 32-bit flag such as (1 << 31) is a negative int in C: compare its u32 bits.
            expr = f"(unsigned int)({name})" if 0 <= value < (1 << 32) else name
            checks.append((f"{module.__name__}.{name}", value, expr))
    for module in MODULES:
        for c_type, cls in module.STRUCTS.items():
            checks.append((f"sizeof {c_type}", ctypes.sizeof(cls), f"sizeof({c_type})"))
            checks += _field_checks(c_type, cls)
    return checks


@pytest.fixture(scope="module")
def c_values(tmp_path_factory: pytest.TempPathFactory) -> list[int]:
    """Compile and run the generated program; one unsigned 64-bit value per check."""
    assert shutil.which("gcc"), "gcc is needed to check the amdgpu ABI mirrors"
    assert (LIBDRM_INCLUDE / "amdgpu_drm.h").is_file(), \
        "libdrm's headers are missing: apt-get install -y libdrm-dev"
    body = "\n".join(f'    printf("%llu\\n", (unsigned long long)({expr}));'
                     for _, _, expr in _all_checks())
    work = tmp_path_factory.mktemp("amdgpu_abi")
    (work / "include").mkdir()
    (work / "include" / "drm").symlink_to(LIBDRM_INCLUDE)  # for kfd_ioctl.h's <drm/drm.h>
    src, exe = work / "amdgpu_abi.c", work / "amdgpu_abi"
    src.write_text(f"{PRELUDE}\nint main(void)\n{{\n{body}\n    return 0;\n}}\n")
    build = subprocess.run(["gcc", "-Wall", "-Werror", f"-I{work / 'include'}",
                            f"-I{LIBDRM_INCLUDE}", "-o", str(exe), str(src)],
                           capture_output=True, text=True)
    assert build.returncode == 0, f"gcc failed on {src}:\n{build.stderr}"
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
    return [int(line) for line in out.split()]


def test_mirrors_match_headers(c_values: list[int]) -> None:
    checks = _all_checks()
    assert len(c_values) == len(checks)
    wrong = [f"{label}: python {py % (1 << 64):#x}, C {expr} = {c:#x}"
             for (label, py, expr), c in zip(checks, c_values) if py % (1 << 64) != c]
    assert not wrong, "mismatches with the C headers:\n" + "\n".join(wrong)


def test_known_ioctl_numbers() -> None:
    """Spot values from research/criu-restore-internals.md §5.3/5.4 (x86-64)."""
    assert kfd.AMDKFD_IOC_GET_VERSION == 0x80084B01
    assert kfd.AMDKFD_IOC_CRIU_OP == 0xC0384B22
    assert drm.DRM_IOCTL_PRIME_HANDLE_TO_FD == 0xC00C642D
    assert drm.DRM_IOCTL_PRIME_FD_TO_HANDLE == 0xC00C642E
    assert drm.DRM_IOCTL_AMDGPU_GEM_CREATE == 0xC0206440
    assert drm.DRM_IOCTL_AMDGPU_GEM_MMAP == 0xC0086441
    assert ctypes.sizeof(kfd.KfdIoctlCriuArgs) == 56
    assert ctypes.sizeof(kfd.KfdCriuDeviceBucket) == 16
    assert ctypes.sizeof(kfd.KfdCriuBoBucket) == 48


def test_every_constant_is_checked() -> None:
    """The C program covers every constant and every public struct of the mirrors."""
    labels = {label for label, _, _ in _all_checks()}
    unchecked = [f"{m.__name__}.{n}" for m, n, _ in _constants()
                 if f"{m.__name__}.{n}" not in labels and (m, n) not in NOT_IN_HEADERS]
    assert not unchecked
    stale = [f"{m.__name__}.{n}" for m, n in NOT_IN_HEADERS if not hasattr(m, n)]
    assert not stale, f"NOT_IN_HEADERS names constants that no longer exist: {stale}"
    for module in MODULES:
        public = {cls for name, cls in vars(module).items()
                  if isinstance(cls, type) and issubclass(cls, _COMPOSITES)
                  and not name.startswith("_") and cls.__module__ == module.__name__}
        missing = public - set(module.STRUCTS.values()) - STRUCTS_NOT_IN_HEADERS
        assert not missing, f"{module.__name__}: structs missing from STRUCTS: {missing}"
    # The big groups were picked up (or the scan above broke).
    names = {n for _, n, _ in _constants()}
    assert {"AMDKFD_IOC_CRIU_OP", "DRM_IOCTL_AMDGPU_CS", "DMA_BUF_IOCTL_SYNC",
            "KFD_CRIU_OP_RESUME", "AMDGPU_FAMILY_AI", "KFD_IOC_ALLOC_MEM_FLAGS_GTT"} <= names


def test_a_wrong_mirror_is_caught(tmp_path: Path) -> None:
    """The generated C really compares: a struct with a shifted field gives another offset."""

    class Shifted(ctypes.Structure):
        _fields_ = [("handle", ctypes.c_uint32), ("flags", ctypes.c_uint64),
                    ("fd", ctypes.c_int32)]

    checks = dict((label, value) for label, value, _ in
                  _field_checks("struct drm_prime_handle", Shifted))
    right = dict((label, value) for label, value, _ in
                 _field_checks("struct drm_prime_handle", drm.DrmPrimeHandle))
    assert checks["offsetof struct drm_prime_handle.fd"] != \
        right["offsetof struct drm_prime_handle.fd"]


# --- device access: what a machine without an AMD GPU sees ---------------------------------

def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_kfd_backend_implements_the_protocol() -> None:
    backend = KfdBackend()
    assert isinstance(backend, GpuBackend) and backend.name == "kfd"


def test_open_device_without_kfd_is_a_clear_environment_error(tmp_path: Path) -> None:
    backend = KfdBackend(dev_dir=str(tmp_path), topology_root=tmp_path / "nodes")
    with pytest.raises(DeviceUnavailable) as caught:
        backend.open_device()
    assert str(tmp_path / "kfd") in str(caught.value)
    assert "does not exist" in str(caught.value)
    assert caught.value.exit_code == EXIT_ENVIRONMENT


def test_resume_without_kfd_is_a_clear_environment_error(tmp_path: Path) -> None:
    with pytest.raises(DeviceUnavailable, match="kfd does not exist"):
        KfdBackend(dev_dir=str(tmp_path)).resume(os.getpid())


def test_open_device_on_a_non_kfd_file_names_the_ioctl_and_closes_it(tmp_path: Path) -> None:
    (tmp_path / "kfd").write_bytes(b"")  # a regular file: the version ioctl says ENOTTY
    before = _open_fds()
    with pytest.raises(GpuIoctlError) as caught:
        KfdBackend(dev_dir=str(tmp_path)).open_device()
    assert caught.value.errno == errno.ENOTTY
    assert str(caught.value).startswith(f"AMDKFD_IOC_GET_VERSION on {tmp_path / 'kfd'} failed: "
                                        "ENOTTY")
    assert _open_fds() == before, "open_device leaked the fd it opened"


def test_render_node_absent_is_a_clear_environment_error(tmp_path: Path) -> None:
    with pytest.raises(DeviceUnavailable, match=r"renderD128 does not exist"):
        drm.open_render_node(128, str(tmp_path))


def test_gem_change_handle_matches_linux_6_18() -> None:
    """DRM_IOCTL_GEM_CHANGE_HANDLE is newer than the installed headers: check it by value.

    Linux 6.18 include/uapi/drm/drm.h (and CRIU's copy, plugins/amdgpu/drm.h):
    ``struct drm_gem_change_handle { __u32 handle; __u32 new_handle; };`` and
    ``#define DRM_IOCTL_GEM_CHANGE_HANDLE DRM_IOWR(0xD2, struct drm_gem_change_handle)``.
    """
    assert ctypes.sizeof(drm.DrmGemChangeHandle) == 8
    assert [(name, drm.DrmGemChangeHandle.__dict__[name].offset) for name, _ in
            drm.DrmGemChangeHandle._fields_] == [("handle", 0), ("new_handle", 4)]
    assert drm.DRM_IOCTL_GEM_CHANGE_HANDLE == 0xC00864D2
