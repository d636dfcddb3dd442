"""predictions.jsonl: one JSON record per finished item, appended and flushed as each item
finishes, so a crash loses no finished item; a re-run skips the ids already written.

Several processes write one shard file each (`predictions.I-of-N.jsonl`) and a done marker;
process 0 waits for every marker, then merges the shards into predictions.jsonl in item order."""
from __future__ import annotations

import glob
import json
import os
import time
from typing import Iterable

from codedance_jax.eval.items import DataError

PREDICTIONS = "predictions.jsonl"


def shard_path(out_dir: str, index: int, count: int) -> str:
    return os.path.join(out_dir, PREDICTIONS if count == 1 else f"predictions.{index}-of-{count}.jsonl")


def done_marker(out_dir: str, index: int, count: int) -> str:
    return os.path.join(out_dir, f".done.{index}-of-{count}")


class PredictionWriter:
    """Appends records to a JSONL file, each flushed to disk before the next item's."""

    def __init__(self, path: str):
        _drop_torn_tail(path)
        self.path = path
        self._file = open(path, "a", encoding="utf-8")

    def write(self, record: dict) -> None:
        self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _drop_torn_tail(path: str) -> None:
    """A crash while writing can leave a last line without its newline; it is cut off so the
    next append starts a fresh line (that item runs again)."""
    if not os.path.exists(path):
        return
    with open(path, "rb+") as f:
        data = f.read()
        if data and not data.endswith(b"\n"):
            f.truncate(data.rfind(b"\n") + 1)


def read_predictions(path: str, torn_tail: bool = True) -> list[dict]:
    """Records of a predictions file. With torn_tail (files this package appends to), a last line
    without its newline is a write a crash cut short and is ignored; other files are read whole."""
    if not os.path.exists(path):
        if torn_tail:
            return []
        raise DataError(f"{path}: no such file")
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    if torn_tail:
        lines = lines[:-1]  # the part after the last newline: torn or empty
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}: line {number} is not valid JSON: {err}") from err
        if not isinstance(record, dict) or "id" not in record:
            raise DataError(f"{path}: line {number} must be a JSON object with an 'id'")
        record["id"] = str(record["id"])
        records.append(record)
    return records


def _all_files(out_dir: str) -> list[str]:
    return [os.path.join(out_dir, PREDICTIONS)] + sorted(glob.glob(os.path.join(out_dir, "predictions.*-of-*.jsonl")))


def finished_ids(out_dir: str) -> set[str]:
    """Ids with a record in predictions.jsonl or any shard (a run with another process count included)."""
    return {record["id"] for path in _all_files(out_dir) for record in read_predictions(path)}


def wait_for_shards(out_dir: str, count: int, expected_ids: Iterable[str], timeout_s: float,
                    poll_s: float = 2.0) -> None:
    """Until every process has marked its shard done and every expected id has a record: a
    marker alone could be a stale one of an earlier run whose process has not restarted yet."""
    expected = set(expected_ids)
    deadline = time.monotonic() + timeout_s
    while True:
        missing = [i for i in range(count) if not os.path.exists(done_marker(out_dir, i, count))]
        if not missing:
            missing_ids = expected - finished_ids(out_dir)
            if not missing_ids:
                return
        if time.monotonic() > deadline:
            waiting = (f"processes {missing} of {count} did not finish" if missing else
                       f"{len(missing_ids)} items have no record (e.g. {sorted(missing_ids)[:3]})")
            raise TimeoutError(f"{out_dir}: {waiting} within {timeout_s:.0f} s")
        time.sleep(poll_s)


def in_order(records: Iterable[dict], order: Iterable[str]) -> list[dict]:
    """Records sorted by the position of their id in `order` (items finish out of order); ids not in it last."""
    rank = {item_id: k for k, item_id in enumerate(order)}
    return sorted(records, key=lambda r: rank.get(r["id"], len(rank)))


def merge(out_dir: str, order: Iterable[str]) -> list[dict]:
    """predictions.jsonl from itself plus every shard, one record per id, in `order`; shards and
    done markers are removed once the merged file is in place."""
    files = _all_files(out_dir)
    records = {}
    for path in files:
        for record in read_predictions(path):
            records.setdefault(record["id"], record)
    merged = in_order(records.values(), order)
    target = os.path.join(out_dir, PREDICTIONS)
    with open(target + ".tmp", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(record, ensure_ascii=False) + "\n" for record in merged)
    os.replace(target + ".tmp", target)
    for path in files[1:] + glob.glob(os.path.join(out_dir, ".done.*-of-*")):
        os.remove(path)
    return merged
