"""What a benchmark reader produces: items with stable ids, rows it skipped and why, and the
errors that stop a run (a missing file, an unknown benchmark)."""
from __future__ import annotations

import base64
import binascii
import dataclasses
import os
from typing import Any, Mapping

from PIL import Image

from codedance_jax.data.records import RecordError, decode_image


class DataError(ValueError):
    """Benchmark data that cannot be used at all; the message names the file and what is wrong."""


@dataclasses.dataclass(frozen=True)
class Skip:
    """A row left out, counted in the summary: where it is and which field is wrong."""
    file: str
    row: object
    field: str
    reason: str

    def __str__(self) -> str:
        return f"{self.file}, row {self.row}, field {self.field!r}: {self.reason}"


class SkipRow(Exception):
    """Raised by a row reader for a row that cannot become an item; becomes a `Skip`."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field, self.reason = field, reason


@dataclasses.dataclass(frozen=True)
class ImageSource:
    """An item's image as the file gives it, decoded only when the item runs (a benchmark of
    8K images does not fit in memory at once). `data`: encoded bytes, a path, a
    {"bytes", "path"} dict, or base64 text when `base64` is set."""
    data: Any
    where: str          # "file, row N, field F" for errors
    base64: bool = False

    def load(self) -> Image.Image:
        data = self.data
        if self.base64:
            try:
                data = base64.b64decode(data, validate=False)
            except (binascii.Error, ValueError, TypeError) as err:
                raise RecordError(f"{self.where}: not valid base64 ({err})") from err
        return decode_image(data, self.where).convert("RGB")


@dataclasses.dataclass(frozen=True)
class Item:
    """One benchmark question.

    question: the text put to the model (options included); gold: what the scorer compares
    with (a string, or a list of acceptable strings); options: option texts in the order shown
    (multiple choice), else empty; fields: breakdown values and the facts the scorer needs;
    task: "general" or "math" answer extraction and matching (None: the benchmark's).
    """
    id: str
    question: str
    image: ImageSource | None
    gold: Any
    options: tuple[str, ...] = ()
    fields: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    task: str | None = None


@dataclasses.dataclass
class Dataset:
    items: list[Item]
    skipped: list[Skip]
    source: str  # the data path, for messages


def require(row: Mapping, field: str):
    """row[field], or SkipRow when it is missing or empty."""
    value = row.get(field)
    if value is None or (isinstance(value, (str, bytes, list, tuple, dict)) and len(value) == 0):
        raise SkipRow(field, "missing or empty")
    return value


def image_field(row: Mapping, field: str, where: str, base_dir: str) -> ImageSource:
    """The image in row[field]: bytes, a {"bytes", "path"} dict, or a path relative to base_dir."""
    value = require(row, field)
    if isinstance(value, dict):
        if value.get("bytes") is None and not value.get("path"):
            raise SkipRow(field, "image has neither bytes nor a path")
        if value.get("bytes") is None:
            value = {**value, "path": os.path.join(base_dir, value["path"])}
    elif isinstance(value, str):
        value = os.path.join(base_dir, value)
    elif not isinstance(value, (bytes, bytearray)):
        raise SkipRow(field, f"expected image bytes, a path or a {{bytes, path}} dict, got {type(value).__name__}")
    return ImageSource(value, f"{where}, field {field!r}")


def collect(rows, file: str, make_item) -> tuple[list[Item], list[Skip]]:
    """Items from (row key, row) pairs via make_item(row key, row); SkipRow rows become skips.
    Duplicate ids are a DataError: ids must name one item."""
    items, skipped, seen = [], [], {}
    for key, row in rows:
        try:
            item = make_item(key, row)
        except SkipRow as skip:
            skipped.append(Skip(file, key, skip.field, skip.reason))
            continue
        if item.id in seen:
            raise DataError(f"{file}: rows {seen[item.id]} and {key} have the same id {item.id!r}")
        seen[item.id] = key
        items.append(item)
    return items, skipped


def check_exists(path: str | None, benchmark: str, expected: str) -> str:
    if not path:
        raise DataError(f"{benchmark}: --data is required ({expected})")
    if not os.path.exists(path):
        raise DataError(f"{benchmark}: {path} does not exist ({expected})")
    return path
