"""One image file in memory: its kind, its records, and the raw payload after each record.

``load_image(path)`` picks the kind from the file name (CRIU names every image for what it
holds: ``core-31100.img``), checks the magic words, and decodes every record; ``dump_image``
writes the same bytes back. Both are the edge of the image layer: errors are ImageError
subclasses that name the file and the byte offset.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from google.protobuf.message import Message

from pycriu_restore.images.errors import UnknownImage
from pycriu_restore.images.framing import encode_records, iter_records
from pycriu_restore.images.kinds import ImageKind, kind_for_file


@dataclass
class Image:
    """The decoded records of one image file.

    ``entries[i]`` is record i (for a pagemap: the PagemapHead, then PagemapEntry records);
    ``extras[i]`` is the raw payload that follows it in the file (pipes-data, sk-queues), or
    None for kinds without payloads. ``path`` is where it was read from, if anywhere.
    """

    kind: ImageKind
    entries: list[Message] = field(default_factory=list)
    extras: list[bytes | None] = field(default_factory=list)
    path: str | None = None

    def __post_init__(self) -> None:
        if not self.extras and self.entries:
            self.extras = [None] * len(self.entries)
        assert len(self.extras) == len(self.entries), \
            f"Image: {len(self.entries)} entries but {len(self.extras)} extras"

    @property
    def source(self) -> str:
        """How errors name this image: its path, or its kind when it was built in memory."""
        return self.path if self.path is not None else f"<{self.kind.name} image>"


def kind_of(path: str | os.PathLike[str]) -> tuple[ImageKind, tuple[str, ...]]:
    """The kind of an image file from its base name, and the name's arguments.

    Raises UnknownImage if no kind has that file name.
    """
    path = os.fspath(path)
    found = kind_for_file(os.path.basename(path))
    if found is None:
        raise UnknownImage(path, f"file name {os.path.basename(path)!r} matches no CRIU image kind")
    return found


def load_image(path: str | os.PathLike[str], kind: ImageKind | None = None) -> Image:
    """Read and decode a whole image file.

    The kind comes from the file name unless given. Raw images (pages-N.img) have no records
    and raise ImageError. Raises UnknownImage, MissingImage, BadMagic, ImageTruncated, BadRecord.
    """
    path = os.fspath(path)
    if kind is None:
        kind, _ = kind_of(path)
    image = Image(kind, path=path)
    for record in iter_records(path, kind):
        image.entries.append(record.message)
        image.extras.append(record.payload)
    return image


def dump_image(image: Image) -> bytes:
    """The bytes of an image file holding ``image``'s records (what load_image read).

    Raises BadRecord for an entry of the wrong message type, a missing required field, or a
    payload whose length disagrees with its record.
    """
    return encode_records(image.kind, image.entries, image.extras, image.source)
