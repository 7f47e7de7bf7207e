"""Errors of the blob layer: the restorer blob is missing, malformed, or could not be run.

A missing or malformed ``restorer.elf`` is a packaging problem, not a problem with the
images, so :class:`BlobError` exits with ``EXIT_BUILD``. Each error names the file and says
what was found versus what was expected::

    .../blob/restorer.elf: restorer blob not found: run pip install . to build it
    bad.elf: relocation R_X86_64_64 at offset 0x3010 (symbol 'foo'): only
        R_X86_64_RELATIVE can be applied

pyelftools' ``ELFError`` and ``OSError`` are wrapped in ``loader.py`` with ``from err``.
"""

from __future__ import annotations

import pathlib

from pycriu_restore.errors import EXIT_BUILD, EXIT_RESTORE, PycrestoreError


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
