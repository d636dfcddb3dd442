"""Rows of the public file forms: JSON (a list, or a dict keyed by id), JSONL, parquet, TSV.
Each reader yields (row key, row dict); the key is the row number, or the dict key of a keyed
JSON file."""
from __future__ import annotations

import csv
import json
import os
import sys
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from codedance_jax.data.records import RecordError, read_jsonl
from codedance_jax.eval.items import DataError


def _json(path: str) -> Iterator[tuple[object, dict]]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON: {err}") from err
    pairs = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else None
    if pairs is None:
        raise DataError(f"{path}: expected a JSON list or object of rows, got {type(data).__name__}")
    for key, row in pairs:
        if not isinstance(row, dict):
            raise DataError(f"{path}: row {key} is a {type(row).__name__}, expected an object")
        yield key, row


def _jsonl(path: str) -> Iterator[tuple[object, dict]]:
    try:
        yield from read_jsonl(path)
    except RecordError as err:  # the same file errors, as benchmark data errors
        raise DataError(str(err)) from err


def _parquet(path: str) -> Iterator[tuple[object, dict]]:
    index = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=64):
        for row in batch.to_pylist():
            yield index, row
            index += 1


def _tsv(path: str) -> Iterator[tuple[object, dict]]:
    csv.field_size_limit(sys.maxsize)  # base64 images fill whole cells
    with open(path, encoding="utf-8", newline="") as f:
        for index, row in enumerate(csv.DictReader(f, delimiter="\t")):
            yield index, row


READERS = {".json": _json, ".jsonl": _jsonl, ".parquet": _parquet, ".tsv": _tsv}


def read_rows(path: str, allowed: tuple[str, ...] = tuple(READERS)) -> list[tuple[object, dict]]:
    extension = os.path.splitext(path)[1].lower()
    if extension not in allowed:
        raise DataError(f"{path}: unsupported file type {extension!r} (expected one of {', '.join(allowed)})")
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file")
    try:
        return list(READERS[extension](path))
    except DataError:
        raise
    except (ValueError, OSError, csv.Error, pa.ArrowException) as err:  # a corrupt or mis-encoded file
        raise DataError(f"{path}: cannot be read as {extension}: {type(err).__name__}: {err}") from err
