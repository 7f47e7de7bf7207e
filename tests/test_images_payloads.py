"""Records followed by raw data in two parts (tcp-stream: receive queue, then send queue), and
the kinds known by name whose data layout pycrestore does not decode."""

from __future__ import annotations

import pytest

from pycriu_restore.images import ImageError, dict_to_image, dump_image, image_to_dict, load_image
from pycriu_restore.images.errors import BadRecord
from pycriu_restore.images.image import Image
from pycriu_restore.images.kinds import kind_by_name
from pycriu_restore.images.schemas import tcp_stream_pb2


def _stream(inq: bytes, outq: bytes) -> Image:
    entry = tcp_stream_pb2.TcpStreamEntry(inq_len=len(inq), inq_seq=100, outq_len=len(outq), outq_seq=200,
                                          opt_mask=7, snd_wscale=7, mss_clamp=1460)
    return Image(kind_by_name("TCP_STREAM"), [entry], [inq + outq])


def test_tcp_stream_queues_print_as_crit_does_and_round_trip(tmp_path) -> None:
    inq, outq = b"hello from the peer\n" * 5, b"not yet acked"
    data = dump_image(_stream(inq, outq))
    path = tmp_path / "tcp-stream-3612e.img"
    path.write_bytes(data)
    image = load_image(path)
    d = image_to_dict(image)
    extra = d["entries"][0]["extra"]
    # crit: {"inq": base64.encodebytes(inq), "outq": base64.encodebytes(outq)}
    assert set(extra) == {"inq", "outq"}
    assert dict_to_image(d).extras == [inq + outq]
    assert dump_image(dict_to_image(d)) == data
    assert d["entries"][0]["opt_mask"] == "0x7"


def test_tcp_stream_payload_must_match_the_lengths() -> None:
    image = _stream(b"abc", b"de")
    image.extras[0] = b"abcd"
    with pytest.raises(BadRecord, match="inq_len\\+outq_len"):
        dump_image(image)
    d = image_to_dict(_stream(b"abc", b"de"))
    d["entries"][0]["extra"] = "YWJj\n"  # crit's tcp-stream extra is an object, not a string
    with pytest.raises(BadRecord, match="inq, outq"):
        dict_to_image(d)


def test_truncated_send_queue_is_reported(tmp_path) -> None:
    path = tmp_path / "tcp-stream-1.img"
    path.write_bytes(dump_image(_stream(b"abc", b"defgh"))[:-2])
    with pytest.raises(ImageError, match="inq_len\\+outq_len"):
        load_image(path)


@pytest.mark.parametrize("name", ["ghost-file-1f.img", "ipcns-shm-11.img", "ipcns-sem-11.img", "ipcns-msg-11.img"])
def test_known_but_undecoded_kinds_say_why(tmp_path, name) -> None:
    path = tmp_path / name
    path.write_bytes(b"\0" * 16)
    with pytest.raises(ImageError, match="not decoded by pycrestore"):
        load_image(path)
