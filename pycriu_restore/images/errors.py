"""Errors of the image layer: everything that can be wrong with an image file.

Each error names the file and, where it applies, the byte offset at which the problem was
found, and says what was found versus what was expected. A protobuf ``DecodeError`` or an
``OSError`` never leaves ``images/``: it is wrapped here with ``from err``.
"""

from __future__ import annotations

from pycriu_restore.errors import EXIT_BAD_IMAGE, PycrestoreError


class ImageError(PycrestoreError):
    """A checkpoint image is missing, truncated, corrupt or inconsistent."""

    exit_code = EXIT_BAD_IMAGE

    def __init__(self, path: str, cause: str, offset: int | None = None) -> None:
        self.path = path
        self.offset = offset
        self.cause = cause
        where = path if offset is None else f"{path}: offset {offset}"
        super().__init__(f"{where}: {cause}")


class ImageTruncated(ImageError):
    """The file ends inside a header or a record."""


class BadMagic(ImageError):
    """The magic words at the start of the file are not the ones expected for its name."""


class BadRecord(ImageError):
    """A record's bytes do not decode as the message the image kind holds."""


class MissingImage(ImageError):
    """An image that the checkpoint must contain is not there."""


class NotACheckpoint(ImageError):
    """The directory holds no CRIU checkpoint (no inventory.img)."""


class UnknownImage(ImageError):
    """A file name that matches no image kind pycrestore knows."""


class UnsupportedVersion(ImageError):
    """The checkpoint uses an image format version pycrestore does not read."""
