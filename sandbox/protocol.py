"""Length-prefixed frames of JSON plus raw byte blobs, parsed defensively.

Everything a sandboxed process sends is untrusted: frames are size-checked before any
allocation, the header is plain JSON (never pickle), and every field is type-checked by the
receiver. A frame is

    MAGIC (4 bytes) | header length (u32, big endian) | header JSON | blob bytes...

where the header's "blobs" list gives the size of each blob that follows.
"""
from __future__ import annotations

import json
import os
import struct

MAGIC = b"CDSB"
_PREFIX = struct.Struct(">4sI")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class FrameError(Exception):
    """The peer sent something that is not a well-formed frame within the limits."""


def json_bytes(value) -> bytes:
    # ASCII-only: lone surrogates in user strings cannot break the encoding.
    return json.dumps(value, separators=(",", ":")).encode()


def json_object(raw: bytes) -> dict:
    try:
        value = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise FrameError(f"not JSON: {type(exc).__name__}") from None
    if not isinstance(value, dict):
        raise FrameError("not a JSON object")
    return value


def header_limit(max_text_bytes: int) -> int:
    """Room for a JSON header carrying text of that many bytes (escapes take up to 6x)."""
    return 6 * max_text_bytes + 65536


def encode_frame(header: dict, blobs=()) -> bytes:
    body = json_bytes(dict(header, blobs=[len(b) for b in blobs]))
    return b"".join([_PREFIX.pack(MAGIC, len(body)), body, *blobs])


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class FrameDecoder:
    """Incremental decoder: feed() bytes as they arrive, get complete frames back."""

    def __init__(self, max_header_bytes: int, max_blob_bytes: int, max_blobs: int):
        self.max_header_bytes = max_header_bytes
        self.max_blob_bytes = max_blob_bytes
        self.max_blobs = max_blobs
        self._buffer = bytearray()
        self._header = None
        self._blob_sizes = None

    def pending(self) -> bool:
        return bool(self._buffer) or self._header is not None

    def feed(self, data: bytes) -> list:
        self._buffer += data
        frames = []
        while True:
            frame = self._next()
            if frame is None:
                return frames
            frames.append(frame)

    def _next(self):
        if self._header is None:
            if len(self._buffer) < _PREFIX.size:
                return None
            magic, header_len = _PREFIX.unpack_from(self._buffer)
            if magic != MAGIC:
                raise FrameError("bad frame magic")
            if header_len > self.max_header_bytes:
                raise FrameError(f"frame header of {header_len} bytes exceeds the limit")
            if len(self._buffer) < _PREFIX.size + header_len:
                return None
            header = json_object(bytes(self._buffer[_PREFIX.size:_PREFIX.size + header_len]))
            del self._buffer[:_PREFIX.size + header_len]
            sizes = header.get("blobs", [])
            if (not isinstance(sizes, list) or len(sizes) > self.max_blobs
                    or not all(type(s) is int and 0 <= s <= self.max_blob_bytes for s in sizes)):
                raise FrameError("frame blob list is malformed or over the limits")
            self._header, self._blob_sizes = header, sizes
        total = sum(self._blob_sizes)
        if len(self._buffer) < total:
            return None
        blobs, offset = [], 0
        for size in self._blob_sizes:
            blobs.append(bytes(self._buffer[offset:offset + size]))
            offset += size
        del self._buffer[:total]
        header, self._header, self._blob_sizes = self._header, None, None
        return header, blobs


def png_size(blob: bytes):
    """(width, height) from a PNG's IHDR chunk, or None; never decompresses anything."""
    if len(blob) < 33 or not blob.startswith(PNG_SIGNATURE) or blob[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", blob[16:24])
    if width == 0 or height == 0:
        return None
    return width, height


def check_images(blobs, max_pixels: int, max_bytes: int):
    """Keep the blobs that are PNGs within the limits; say why the others were dropped."""
    kept, notes = [], []
    for index, blob in enumerate(blobs):
        size = png_size(blob)
        if size is None:
            notes.append(f"[image {index} dropped: not a PNG]")
        elif size[0] * size[1] > max_pixels or len(blob) > max_bytes:
            notes.append(f"[image {index} dropped: {size[0]}x{size[1]} exceeds the size limits]")
        else:
            kept.append(blob)
    return kept, notes


def field(header: dict, name: str, kind, default=None, max_len: int | None = None):
    """A header field of the expected type (bool is not accepted as int), else FrameError."""
    value = header.get(name, default)
    if value is None and default is None:
        return None
    if kind is int and type(value) is not int:
        raise FrameError(f"field {name!r} must be an int")
    if kind is not int and not isinstance(value, kind):
        raise FrameError(f"field {name!r} must be {kind.__name__}")
    if max_len is not None and len(value) > max_len:
        raise FrameError(f"field {name!r} is longer than {max_len}")
    return value


def cut_middle(text: str, limit: int) -> str:
    """Keep the head and the tail of text within limit characters and say what was cut."""
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n... [{len(text) - 2 * half} characters cut] ...\n{text[-half:]}"


class BoundedStream:
    """Collects a byte stream keeping only its first and last `limit // 2` bytes."""

    def __init__(self, limit: int):
        self.half = max(limit // 2, 1)
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def write(self, data: bytes) -> None:
        self.total += len(data)
        room = self.half - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        if data:
            self.tail += data[-self.half:]
            del self.tail[:-self.half]

    def text(self) -> str:
        cut = self.total - len(self.head) - len(self.tail)
        head = self.head.decode("utf-8", "replace")
        tail = self.tail.decode("utf-8", "replace")
        if cut > 0:
            return f"{head}\n... [{cut} bytes cut] ...\n{tail}"
        return head + tail
