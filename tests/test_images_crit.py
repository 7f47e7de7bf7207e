"""The image layer against real CRIU 4.2 images and crit's own JSON of them.

For every file crit decoded (fixtures/criu-4.2/decoded/NAME/X.json <-> images/NAME/X.img):
our JSON equals crit's, our JSON re-encodes to the original bytes, and every non-pages image
re-encodes byte for byte.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pycriu_restore.images import dict_to_image, dump_image, image_to_dict, load_image

from conftest import FIXTURES, skip_module_without_fixtures

skip_module_without_fixtures(FIXTURES)  # before the pack is read below


def _fixtures() -> Path:
    """The CRIU 4.2 fixture pack: $PYCRESTORE_FIXTURES, else the shared copy."""
    path = FIXTURES
    assert (path / "images").is_dir(), f"fixture pack not found at {path} (set PYCRESTORE_FIXTURES)"
    return path


FIXTURES = _fixtures()
JSON_FILES = sorted(FIXTURES.glob("decoded/*/*.json"))
IMAGE_FILES = sorted(p for p in FIXTURES.glob("images/*/*") if not p.name.startswith("pages-"))


def _image_for(json_file: Path) -> Path:
    """X.json -> X.img in the images dir (stats-dump has no .img suffix)."""
    stem = json_file.name[: -len(".json")]
    name = stem if stem.startswith("stats-") else stem + ".img"
    return FIXTURES / "images" / json_file.parent.name / name


def _id(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"


def test_fixture_pack_is_complete() -> None:
    # Guards the parametrized tests below against an empty or partial pack.
    assert len(JSON_FILES) == 123
    assert len(IMAGE_FILES) == 123
    assert all(_image_for(j).is_file() for j in JSON_FILES)


@pytest.mark.parametrize("json_file", JSON_FILES, ids=_id)
def test_json_equals_crit(json_file: Path) -> None:
    expected = json.loads(json_file.read_text())
    got = image_to_dict(load_image(_image_for(json_file)))
    assert got == expected
    # Same key order as well, so that `show` prints what crit prints.
    assert json.dumps(got, indent=4) == json.dumps(expected, indent=4)


@pytest.mark.parametrize("json_file", JSON_FILES, ids=_id)
def test_crit_json_encodes_to_original_bytes(json_file: Path) -> None:
    image = dict_to_image(json.loads(json_file.read_text()), str(json_file))
    assert dump_image(image) == _image_for(json_file).read_bytes()


@pytest.mark.parametrize("image_file", IMAGE_FILES, ids=_id)
def test_dump_reproduces_file(image_file: Path) -> None:
    assert dump_image(load_image(image_file)) == image_file.read_bytes()


def test_payload_entries_carry_their_bytes() -> None:
    image = load_image(FIXTURES / "images/unixsk/sk-queues.img")
    assert [(e.id_for, e.length) for e in image.entries] == [(7, 160), (12, 56)]
    assert image.extras[1] == b"".join(b"ping %d\n" % n for n in range(56, 63))
    pipes = load_image(FIXTURES / "images/pipes/pipes-data.img")
    assert pipes.extras == [b"".join(b"%d\n" % n for n in range(51, 64))]


def test_edited_json_changes_the_bytes(tmp_path: Path) -> None:
    # The inverse is not a replay of the original bytes: an edit must show up in the file.
    d = image_to_dict(load_image(FIXTURES / "images/counter/core-31100.img"))
    d["entries"][0]["thread_info"]["gpregs"]["r12"] = "0x1234"
    d["entries"][0]["tc"]["comm"] = "renamed"
    d["entries"][0]["tc"]["sigactions"][0]["flags"] = "0x4000004"
    path = tmp_path / "core-1.img"
    path.write_bytes(dump_image(dict_to_image(d)))
    core = load_image(path).entries[0]
    assert core.thread_info.gpregs.r12 == 0x1234
    assert core.tc.comm == "renamed"
    assert core.tc.sigactions[0].flags == 0x4000004
    assert path.read_bytes() != (FIXTURES / "images/counter/core-31100.img").read_bytes()
