"""pycriu_restore/blob/sigframe_layout.py mirrors the kernel's uapi signal-frame structs.

A C program generated from the mirror's ``_fields_`` is compiled against <asm/sigcontext.h>,
<asm/signal.h>, <asm/ucontext.h>, <asm/siginfo.h> and <linux/signal.h> (linux-libc-dev, no glibc) and
prints every size and offset; each must equal the mirror's. ``struct rt_sigframe`` is
kernel-internal: its documented layout (pretcode, ucontext, siginfo) is checked against the
sizes of its uapi parts.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess

import pytest

from pycriu_restore.blob import sigframe_layout as layout
from pycriu_restore.linux import xstate

HEADERS = ("asm/sigcontext.h", "asm/signal.h", "asm/ucontext.h", "asm/siginfo.h", "linux/signal.h")
CONSTANTS = ("FP_XSTATE_MAGIC1", "FP_XSTATE_MAGIC2", "FP_XSTATE_MAGIC2_SIZE", "UC_FP_XSTATE",
             "UC_SIGCONTEXT_SS", "UC_STRICT_RESTORE_SS", "SS_DISABLE")


def _public_fields(cls: type[ctypes.Structure]) -> list[str]:
    """Fields named as in the header (ours start with _ where the header has a hole)."""
    return [name for name, _ in cls._fields_ if not name.startswith("_")]


def _c_program() -> str:
    lines = ["#include <stdio.h>", "#include <stddef.h>",
             *(f"#include <{h}>" for h in HEADERS), "int main(void) {"]

    def out(key: str, expr: str) -> None:
        lines.append(f'    printf("{key} %llu\\n", (unsigned long long)({expr}));')

    for c_type, cls in layout.UAPI_STRUCTS.items():
        out(f"sizeof {c_type}", f"sizeof({c_type})")
        for field in _public_fields(cls):
            out(f"offsetof {c_type}.{field}", f"offsetof({c_type}, {field})")
            out(f"size {c_type}.{field}", f"sizeof((({c_type} *)0)->{field})")
    out("sizeof siginfo_t", "sizeof(siginfo_t)")
    out("SI_MAX_SIZE", "SI_MAX_SIZE")
    for name in CONSTANTS:
        out(name, name)
    lines += ["    return 0;", "}"]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def c_facts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    assert shutil.which("gcc"), "gcc is needed to check the sigframe layout"
    work = tmp_path_factory.mktemp("sigframe")
    src, exe = work / "sigframe_check.c", work / "sigframe_check"
    src.write_text(_c_program())
    subprocess.run(["gcc", "-Wall", "-Werror", "-o", str(exe), str(src)],
                   check=True, capture_output=True, text=True)
    output = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    return {key: int(value) for key, value in (line.rsplit(" ", 1) for line in output.splitlines())}


@pytest.mark.parametrize("c_type", sorted(layout.UAPI_STRUCTS))
def test_uapi_struct_layout_matches(c_facts: dict[str, int], c_type: str) -> None:
    cls = layout.UAPI_STRUCTS[c_type]
    assert c_facts[f"sizeof {c_type}"] == ctypes.sizeof(cls)
    for field in _public_fields(cls):
        descr = getattr(cls, field)
        assert c_facts[f"offsetof {c_type}.{field}"] == descr.offset, field
        assert c_facts[f"size {c_type}.{field}"] == descr.size, field


def test_every_field_is_accounted_for() -> None:
    """No implicit holes: the mirror's fields add up to each struct's size."""
    for c_type, cls in [*layout.UAPI_STRUCTS.items(), ("struct rt_sigframe", layout.RtSigframe)]:
        assert sum(getattr(cls, f).size for f, _ in cls._fields_) == ctypes.sizeof(cls), c_type


def test_constants_match(c_facts: dict[str, int]) -> None:
    for name in CONSTANTS:
        assert c_facts[name] == getattr(layout, name), name
    assert c_facts["SI_MAX_SIZE"] == c_facts["sizeof siginfo_t"] == layout.SIGINFO_BYTES


def test_rt_sigframe_is_pretcode_ucontext_siginfo(c_facts: dict[str, int]) -> None:
    """arch/x86/include/asm/sigframe.h: char *pretcode; struct ucontext uc; struct siginfo info."""
    ucontext = c_facts["sizeof struct ucontext"]
    assert layout.RtSigframe.pretcode.offset == 0
    assert layout.RtSigframe.uc.offset == 8
    assert layout.RtSigframe.info.offset == 8 + ucontext
    assert ctypes.sizeof(layout.RtSigframe) == 8 + ucontext + c_facts["sizeof siginfo_t"] == 440


def test_xstate_offsets_agree_with_the_regset_module() -> None:
    """linux/xstate.py (another layer) spells the same facts: sw_reserved and header offsets."""
    assert layout.Fpstate64.sw_reserved.offset == xstate.XSAVE_SW_RESERVED_OFFSET
    assert ctypes.sizeof(layout.Fpstate64) == xstate.FXSAVE_SIZE == xstate.XSAVE_HEADER_OFFSET
    assert ctypes.sizeof(layout.XsaveHeader) == xstate.XSAVE_HEADER_SIZE
