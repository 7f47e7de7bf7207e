"""The CRIU image layer: read, write and show the files of a CRIU checkpoint.

    images = ImageSet.open("/path/to/dump")      # reads inventory.img only
    for task in images.pstree():
        core = images.core(task.pid)              # decoded on first use

    image = load_image("core-31100.img")          # any one file, kind from its name
    d = image_to_dict(image)                      # exactly what `crit show` prints
    assert dump_image(dict_to_image(d)) == open("core-31100.img", "rb").read()

Every failure is an :class:`ImageError` that names the file, the byte offset and the cause;
protobuf and OS errors never leave this package. Layout of the files: framing.py.
"""

from pycriu_restore.images.crit_json import dict_to_image, image_to_dict
from pycriu_restore.images.errors import (
    BadMagic,
    BadRecord,
    ImageError,
    ImageTruncated,
    MissingImage,
    NotACheckpoint,
    UnknownImage,
    UnsupportedVersion,
)
from pycriu_restore.images.image import Image, dump_image, kind_of, load_image
from pycriu_restore.images.imageset import ImageSet
from pycriu_restore.images.kinds import Framing, ImageKind, register_kind
from pycriu_restore.images.pagemap import PagemapImage

__all__ = [
    "BadMagic", "BadRecord", "Framing", "Image", "ImageError", "ImageKind", "ImageSet",
    "ImageTruncated", "MissingImage", "NotACheckpoint", "PagemapImage", "UnknownImage",
    "UnsupportedVersion", "dict_to_image", "dump_image", "image_to_dict", "kind_of",
    "load_image", "register_kind",
]
