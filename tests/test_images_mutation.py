"""Images are untrusted input: mutated real images give an ImageError, or decode; nothing else.

Hypothesis flips bytes, truncates, splices two images and lengthens records of real fixture
images. Whatever it makes, reading (and showing as JSON, and re-encoding) must either work or
raise an ImageError subclass that names the file: never a protobuf error, an IndexError,
a MemoryError or a hang.
"""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from conftest import FIXTURES, needs_fixtures
from pycriu_restore.images import ImageError, dump_image, image_to_dict, load_image

pytestmark = needs_fixtures

SOURCES = sorted(
    p for p in (FIXTURES / "images").glob("*/*") if not p.name.startswith("pages-") and p.stat().st_size < 64 * 1024
)
CONTENTS = {p: p.read_bytes() for p in SOURCES}


@st.composite
def mutated(draw):
    """(file name, bytes): one fixture image with one or more mutations."""
    path = draw(st.sampled_from(SOURCES))
    data = bytearray(CONTENTS[path])
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["flip", "truncate", "splice", "lengthen", "overwrite_len"]))
        if op == "flip" and data:
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            del data[draw(st.integers(0, len(data))):]
        elif op == "splice":
            other = CONTENTS[draw(st.sampled_from(SOURCES))]
            i = draw(st.integers(0, len(data)))
            j = draw(st.integers(0, len(other)))
            data[i:] = other[j:]
        elif op == "lengthen":
            i = draw(st.integers(0, len(data)))
            data[i:i] = draw(st.binary(min_size=1, max_size=64))
        elif op == "overwrite_len" and len(data) >= 12:
            # A record length word right after the magic(s): the most dangerous field.
            offset = draw(st.sampled_from([4, 8]))
            data[offset:offset + 4] = struct.pack("<I", draw(st.integers(0, 2**32 - 1)))
    return path.name, bytes(data)


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_images_only_raise_image_errors(tmp_path_factory, case):
    name, data = case
    path = tmp_path_factory.getbasetemp() / name
    path.write_bytes(data)
    try:
        image = load_image(path)
        image_to_dict(image)
        dump_image(image)
        event("decoded")
    except ImageError as err:
        event(type(err).__name__)  # --hypothesis-show-statistics shows the mix
        assert str(path) in str(err), f"error does not name the file: {err}"
        assert "\n" not in str(err), f"error is not one line: {err!r}"
