"""Trajectory records in the CodeDance release's form, and their JSONL / parquet files.

A raw record is a dict with ``messages`` (a list of ``{"role", "content"}``; content is a string
with ``<image>`` placeholders or a list of ``{"type": "text" | "image"}`` parts) and ``images``
(in placeholder order). An image is given as encoded bytes, as a path, or as a dict
``{"bytes": ..., "path": ...}`` (how Hugging Face datasets export images to parquet; the bytes win
when both are set). Optional fields: ``id`` and ``ground_truth`` (the release's RL records keep it
under ``reward_model``).

In a JSONL file images are paths relative to the file (``write_jsonl`` stores the bytes as image
files in a folder beside it); in a parquet file they are bytes or such dicts.

Reading is lazy: ``read_raw_records`` only parses the file, and images are decoded by
``decode_record`` when a record is used.
"""
from __future__ import annotations

import dataclasses
import io
import json
import os
from typing import Any, Iterable, Iterator, Mapping

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from codedance_jax.processing.chat import IMAGE_PLACEHOLDER, ROLES

# What PIL raises for bytes that are not a whole, decodable image (UnidentifiedImageError and
# truncated files are OSErrors; some corrupt headers raise SyntaxError or ValueError).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


class RecordError(ValueError):
    """A record that cannot be used; the message names the record and, for images, the file."""


@dataclasses.dataclass(frozen=True)
class Record:
    """A decoded trajectory: ``messages`` as in the file, ``images`` as PIL images."""
    id: str
    messages: list[dict]
    images: list[Image.Image]
    ground_truth: Any = None


def read_jsonl(path: str) -> Iterator[tuple[int, dict]]:
    """(line index, raw record) for each non-blank line of a JSONL file."""
    with open(path, encoding="utf-8") as lines:
        for index, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as err:
                raise RecordError(f"{path}: line {index + 1} is not valid JSON: {err}") from err
            if not isinstance(raw, dict):
                raise RecordError(f"{path}: line {index + 1} is a {type(raw).__name__}, expected an object")
            yield index, raw


def read_parquet(path: str, batch_rows: int = 256) -> Iterator[tuple[int, dict]]:
    """(row index, raw record) for each row of a parquet file, read ``batch_rows`` at a time."""
    index = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows):
        for raw in batch.to_pylist():
            yield index, raw
            index += 1


_READERS = {".jsonl": read_jsonl, ".parquet": read_parquet}


def _resolve_image_path(image: Any, base_dir: str) -> Any:
    """The image with a relative path made relative to ``base_dir``; bytes are left alone."""
    if isinstance(image, str):
        return os.path.join(base_dir, image)
    if isinstance(image, dict) and image.get("bytes") is None and isinstance(image.get("path"), str):
        return {**image, "path": os.path.join(base_dir, image["path"])}
    return image


def read_raw_records(path: str) -> Iterator[dict]:
    """Raw records of a ``.jsonl`` or ``.parquet`` file, each with an ``id`` (its own, else
    ``"{path}:{index}"``) and image paths resolved against the file's folder."""
    extension = os.path.splitext(path)[1].lower()
    if extension not in _READERS:
        raise ValueError(f"{path}: unknown record file type {extension!r} (expected one of {sorted(_READERS)})")
    base_dir = os.path.dirname(os.path.abspath(path))
    for index, raw in _READERS[extension](path):
        images = [_resolve_image_path(image, base_dir) for image in raw.get("images") or ()]
        record_id = raw.get("id")
        yield {**raw, "id": f"{path}:{index}" if record_id is None else str(record_id), "images": images}


def load_records(path: str) -> Iterator[Record]:
    """Decoded records of a file, decoding each one's images only when it is reached."""
    for raw in read_raw_records(path):
        yield decode_record(raw, raw["id"])


def image_bytes(image: Any, where: str) -> bytes:
    """The encoded bytes of a record's image (read from disk when given as a path)."""
    if isinstance(image, (bytes, bytearray)):
        return bytes(image)
    if isinstance(image, dict) and image.get("bytes") is not None:
        return bytes(image["bytes"])
    path = image.get("path") if isinstance(image, dict) else image
    if not isinstance(path, str):
        raise RecordError(f"{where}: expected encoded bytes, a path or a {{'bytes', 'path'}} dict, "
                          f"got {type(image).__name__}")
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as err:
        raise RecordError(f"{where}: cannot read image file {path}: {err.strerror}") from err


def decode_image(image: Any, where: str) -> Image.Image:
    """A record's image as a fully loaded PIL image; RecordError naming ``where`` and the file."""
    data = image_bytes(image, where)
    path = image.get("path") if isinstance(image, dict) else image
    source = path if isinstance(path, str) else "inline bytes"
    try:
        decoded = Image.open(io.BytesIO(data))
        decoded.load()  # PIL decodes lazily; force it so corrupt data fails here
    except _DECODE_ERRORS as err:
        raise RecordError(f"{where}: image ({source}) cannot be decoded: {err}") from err
    return decoded


def _placeholder_count(messages: list, record_id: str) -> int:
    """Images the messages refer to: ``<image>`` in string content plus image parts."""
    count = 0
    for index, message in enumerate(messages):
        content = message.get("content")
        if isinstance(content, str):
            count += content.count(IMAGE_PLACEHOLDER)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and part.get("type") == "image":
                    if part.get("image") is not None:
                        raise RecordError(f"record {record_id}: message {index} has an image part with its own "
                                          "image; image parts must refer to the record's images list")
                    count += 1
        else:
            raise RecordError(f"record {record_id}: message {index} content is a {type(content).__name__}, "
                              "expected a string or a list of parts")
    return count


def decode_record(raw: Mapping[str, Any], record_id: str) -> Record:
    """Validates a raw record and decodes its images.

    Raises RecordError naming ``record_id`` when the messages are malformed, no turn is the
    assistant's (nothing to train on), placeholders and images disagree in number, or an image
    is missing or corrupt (then the message also names the image file).
    """
    messages = raw.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RecordError(f"record {record_id}: 'messages' must be a non-empty list")
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise RecordError(f"record {record_id}: message {index} must be a dict with a role in {ROLES}")
    if not any(message["role"] == "assistant" for message in messages):
        raise RecordError(f"record {record_id}: no assistant turn")
    raw_images = list(raw.get("images") or ())
    placeholders = _placeholder_count(messages, record_id)
    if placeholders != len(raw_images):
        raise RecordError(f"record {record_id}: {placeholders} image placeholders but {len(raw_images)} images")
    images = [decode_image(image, f"record {record_id}, image {k}") for k, image in enumerate(raw_images)]
    ground_truth = raw.get("ground_truth")
    if ground_truth is None and isinstance(raw.get("reward_model"), Mapping):
        ground_truth = raw["reward_model"].get("ground_truth")
    return Record(id=record_id, messages=messages, images=images, ground_truth=ground_truth)


def _image_extension(data: bytes) -> str:
    """File extension for encoded image bytes, from their format (read from the header only)."""
    try:
        image_format = Image.open(io.BytesIO(data)).format
    except _DECODE_ERRORS:
        image_format = None
    if image_format is None:
        return ".bin"
    return ".jpg" if image_format == "JPEG" else f".{image_format.lower()}"


def write_jsonl(records: Iterable[Mapping[str, Any]], path: str) -> None:
    """Writes raw records with encoded-bytes images as JSONL; the images go to files in
    ``{stem}_images/`` beside it, referenced by paths relative to the JSONL file."""
    base_dir = os.path.dirname(os.path.abspath(path))
    image_dir = os.path.splitext(os.path.basename(path))[0] + "_images"
    os.makedirs(os.path.join(base_dir, image_dir), exist_ok=True)
    with open(path, "w", encoding="utf-8") as out:
        for index, record in enumerate(records):
            paths = []
            for k, image in enumerate(record.get("images") or ()):
                data = image_bytes(image, f"record {index}, image {k}")
                relative = os.path.join(image_dir, f"{index:06d}_{k}{_image_extension(data)}")
                with open(os.path.join(base_dir, relative), "wb") as image_file:
                    image_file.write(data)
                paths.append(relative)
            out.write(json.dumps({**record, "images": paths}, ensure_ascii=False) + "\n")


def write_parquet(records: Iterable[Mapping[str, Any]], path: str) -> None:
    """Writes raw records as parquet, images as a list of encoded-bytes cells."""
    rows = [{**record, "images": [image_bytes(image, f"record {index}, image {k}")
                                  for k, image in enumerate(record.get("images") or ())]}
            for index, record in enumerate(records)]
    pq.write_table(pa.Table.from_pylist(rows), path)
