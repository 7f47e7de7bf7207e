"""x86_64 general-purpose registers: ``struct user_regs_struct`` from <sys/user.h>.

This is the NT_PRSTATUS regset that ``PTRACE_GETREGSET``/``SETREGSET`` move (216 bytes,
27 unsigned longs, ``r15`` first). python-ptrace already defines exactly this struct
(``ptrace.binding.linux_struct.user_regs_struct``) with the kernel's field names and order,
so we reuse it rather than keep a second copy; a test compiles C and checks its size and
every field offset, and the import below refuses any other layout (another CPU).

Fields hold unsigned 64-bit values as ctypes sees them; :func:`signed` reads ``rax`` /
``orig_rax`` as the kernel means them (``orig_rax == -1``: not in a syscall).
"""

from __future__ import annotations

import ctypes

from ptrace.binding.linux_struct import user_regs_struct as UserRegs

# <sys/user.h>: sizeof(struct user_regs_struct) on x86_64.
USER_REGS_SIZE = 216

if ctypes.sizeof(UserRegs) != USER_REGS_SIZE or UserRegs._fields_[0][0] != "r15":
    raise AssertionError(
        f"regs: python-ptrace's user_regs_struct is {ctypes.sizeof(UserRegs)} bytes starting "
        f"with {UserRegs._fields_[0][0]!r}, expected the x86_64 layout ({USER_REGS_SIZE} "
        "bytes, r15 first); pycrestore supports x86_64 only")

REG_NAMES: tuple[str, ...] = tuple(name for name, _ctype in UserRegs._fields_)

_U64 = 1 << 64


def signed(value: int) -> int:
    """Read an unsigned 64-bit register value as the signed number the kernel put there."""
    value &= _U64 - 1
    return value - _U64 if value >= 1 << 63 else value


def unsigned(value: int) -> int:
    """Turn a (possibly negative) Python int into the 64-bit pattern a register holds."""
    return value & (_U64 - 1)


def copy_regs(regs: UserRegs) -> UserRegs:
    """Return an independent copy of ``regs`` (ctypes structs are mutable and shared)."""
    return UserRegs.from_buffer_copy(bytes(regs))


def regs_equal(a: UserRegs, b: UserRegs) -> bool:
    """True when every one of the 27 registers is the same."""
    return bytes(a) == bytes(b)


def regs_dict(regs: UserRegs) -> dict[str, int]:
    """Return ``{"r15": ..., "rip": ...}``, for logs and test failures."""
    return {name: getattr(regs, name) for name in REG_NAMES}
