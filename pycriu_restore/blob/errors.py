"""Errors of the blob layer: the restorer blob is missing, malformed, or could not be run.

A missing or malformed ``restorer.elf`` is a packaging problem, not a problem with the
images, so :class:`BlobError` exits with ``EXIT_BUILD``. Each error names the file and says
what was found versus what was expected::

    .../blob/restorer.elf: restorer blob not found: run pip install . to build it
    bad.elf: relocation R_X86_64_64 at offset 0x3010 (symbol 'foo'): only
        R_X86_64_RELATIVE can be applied

pyelftools' ``ELFError`` and ``OSError`` are wrapped in ``loader.py`` with ``from err``.

:class:`BootstrapError` and its subclasses come from building a task's bootstrap region
(``bootstrap.py``, ``xsave.py``, ``sigframe.py``): the plan asks for something this machine
or this blob cannot give. They are raised before anything is written into the task::

    task 31100: image [vdso] at 0x7f3de717d000 is 8192 bytes, this kernel's is 12288
    thread 31600: xsave component 2 (ymmh_space) holds 128 bytes, this CPU's is 256
"""

from __future__ import annotations

import pathlib

from pycriu_restore.errors import (EXIT_BAD_IMAGE, EXIT_BUILD, EXIT_ENVIRONMENT, EXIT_RESTORE,
                                   EXIT_UNSUPPORTED, PycrestoreError)


class BlobError(PycrestoreError):
    """The restorer blob's ELF file cannot be used."""

    exit_code = EXIT_BUILD

    def __init__(self, path: pathlib.Path | str, cause: str) -> None:
        self.path = pathlib.Path(path)
        self.cause = cause
        super().__init__(f"{path}: {cause}")


class BlobMissing(BlobError):
    """restorer.elf is not where the package expects it (the package was not built)."""


class BlobMalformed(BlobError):
    """restorer.elf is not an ELF the loader can place at any address."""


class UnsupportedRelocation(BlobMalformed):
    """A relocation other than R_X86_64_RELATIVE (or NONE): the blob is not self-contained."""

    def __init__(self, path: pathlib.Path | str, type_name: str, offset: int,
                 symbol: str | None = None) -> None:
        self.type_name = type_name
        self.offset = offset
        self.symbol = symbol
        against = f" (symbol {symbol!r})" if symbol else ""
        super().__init__(
            path,
            f"relocation {type_name} at offset {offset:#x}{against}: only R_X86_64_RELATIVE "
            "can be applied (build the blob with -fpie -fvisibility=hidden and no libc)")


class BlobRunError(PycrestoreError):
    """Running the blob in a forked child failed before the blob could report (fork, timeout)."""

    exit_code = EXIT_RESTORE


class BootstrapError(PycrestoreError):
    """A task's bootstrap region cannot be built from its plan on this machine."""

    exit_code = EXIT_ENVIRONMENT


class VdsoMismatch(BootstrapError):
    """The image's [vdso]/[vvar] do not fit this kernel's: sizes or relative placement differ
    (the blob moves the running kernel's areas into place, it does not rebuild them)."""


class FpuStateMismatch(BootstrapError):
    """The thread's FPU/XSAVE state does not fit this CPU's XSAVE layout."""


class BadThreadState(BootstrapError):
    """A thread's registers or FPU fields are malformed (a register missing, a wrong length)."""

    exit_code = EXIT_BAD_IMAGE


class BlobUnsupported(BootstrapError):
    """The plan needs something this blob version does not do (e.g. several threads)."""

    exit_code = EXIT_UNSUPPORTED
