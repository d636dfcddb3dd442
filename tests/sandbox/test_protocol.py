"""Framing and validation of what sandboxed processes send (pure functions, no sandbox)."""
import struct

import pytest

from sandbox import Limits, protocol
from sandbox.protocol import FrameDecoder, FrameError

PNG_1x1 = (protocol.PNG_SIGNATURE + struct.pack(">I", 13) + b"IHDR"
           + struct.pack(">IIBBBBB", 3, 2, 8, 2, 0, 0, 0) + b"\0" * 4)


def decoder():
    return FrameDecoder(max_header_bytes=1024, max_blob_bytes=100, max_blobs=2)


def test_frames_round_trip_byte_by_byte():
    data = protocol.encode_frame({"op": "x", "text": "é\ud800"}, [b"ab", b""]) * 2
    d, frames = decoder(), []
    for i in range(len(data)):
        frames += d.feed(data[i:i + 1])
    assert frames == [({"op": "x", "text": "é\ud800", "blobs": [2, 0]}, [b"ab", b""])] * 2
    assert not d.pending()


@pytest.mark.parametrize("data, message", [
    (b"ZZZZ\0\0\0\2{}", "magic"),
    (b"CDSB\0\1\0\0", "exceeds"),
    (b"CDSB\0\0\0\3[1]", "object"),
    (b"CDSB\0\0\0\2{]", "JSON"),
    (b"CDSB\0\0\0\2\xff\xfe", "JSON"),
], ids=["magic", "too-big", "not-object", "not-json", "not-utf8"])
def test_malformed_frames(data, message):
    with pytest.raises(FrameError, match=message):
        decoder().feed(data)


def test_incomplete_frames_wait_for_more_bytes():
    data = protocol.encode_frame({"op": "x"}, [b"abc"])
    d = decoder()
    assert d.feed(data[:-1]) == [] and d.pending()
    assert d.feed(data[-1:]) == [({"op": "x", "blobs": [3]}, [b"abc"])]


@pytest.mark.parametrize("blobs", [[101], [1, 1, 1], [-1], [True], ["1"], "12", [1.5]])
def test_blob_lists_over_limits_or_mistyped(blobs):
    body = protocol.json_bytes({"blobs": blobs})
    with pytest.raises(FrameError, match="blob"):
        decoder().feed(protocol.MAGIC + struct.pack(">I", len(body)) + body)


def test_deeply_nested_json_is_rejected_not_crashing():
    body = b"[" * 100_000
    d = FrameDecoder(max_header_bytes=200_000, max_blob_bytes=1, max_blobs=1)
    with pytest.raises(FrameError):
        d.feed(protocol.MAGIC + struct.pack(">I", len(body)) + body)


def test_png_size_reads_only_the_header():
    assert protocol.png_size(PNG_1x1) == (3, 2)
    assert protocol.png_size(b"GIF89a" + b"\0" * 40) is None
    assert protocol.png_size(PNG_1x1[:20]) is None
    kept, notes = protocol.check_images([PNG_1x1, b"junk"], max_pixels=6, max_bytes=1000)
    assert kept == [PNG_1x1] and notes == ["[image 1 dropped: not a PNG]"]
    kept, notes = protocol.check_images([PNG_1x1], max_pixels=5, max_bytes=1000)
    assert kept == [] and "exceeds" in notes[0]


def test_field_checks_types():
    header = {"n": 1, "b": True, "s": "x" * 10}
    assert protocol.field(header, "n", int) == 1
    with pytest.raises(FrameError):
        protocol.field(header, "b", int)  # bool is not an int here
    with pytest.raises(FrameError):
        protocol.field(header, "s", str, max_len=5)
    assert protocol.field(header, "missing", str) is None


def test_bounded_stream_keeps_head_and_tail():
    stream = protocol.BoundedStream(10)
    for chunk in (b"abc", b"defgh", b"ijklmnop", b"qrst"):
        stream.write(chunk)
    assert stream.text() == "abcde\n... [10 bytes cut] ...\npqrst"
    small = protocol.BoundedStream(10)
    small.write(b"hello")
    assert small.text() == "hello"
    assert protocol.cut_middle("abcdefghij", 4) == "ab\n... [6 characters cut] ...\nij"


def test_limits_validate_and_round_trip():
    limits = Limits(timeout_s=3, memory_mb=100)
    assert Limits.from_json(limits.to_json()) == limits
    with pytest.raises(ValueError, match="max_images"):
        Limits(max_images=0)
    with pytest.raises(ValueError, match="memory_mb"):
        Limits(memory_mb=1.5)
