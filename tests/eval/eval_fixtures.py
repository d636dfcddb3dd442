"""Small benchmark files in each benchmark's public form, written by the tests (images made
with PIL). Imported by name: tests/ is on the path."""
from __future__ import annotations

import base64
import io
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image


def png(seed: int, size=(64, 48)) -> bytes:
    image = Image.new("RGB", size, ((37 * seed) % 256, (91 * seed) % 256, (53 * seed) % 256))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def write_json(path: str, data) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f)
    return path


def write_parquet(path: str, rows: list[dict]) -> str:
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def vstar(root: str, questions: dict[str, list[tuple[str, list[str]]]]) -> str:
    """questions: category -> [(question, options with the right one first)]."""
    for category, entries in questions.items():
        os.makedirs(os.path.join(root, category))
        for k, (question, options) in enumerate(entries):
            stem = os.path.join(root, category, f"sa_{k}")
            with open(stem + ".jpg", "wb") as f:
                f.write(png(k))
            write_json(stem + ".json", {"target_object": ["cup"], "bbox": [[1, 2, 3, 4]], "question": question,
                                        "options": options})
    return root


def hrbench_tsv(path: str, rows: list[dict]) -> str:
    columns = ["index", "question", "A", "B", "C", "D", "answer", "category", "cycle_category", "image"]
    with open(path, "w", encoding="utf-8") as f:
        f.write("\t".join(columns) + "\n")
        for row in rows:
            f.write("\t".join(str(row.get(c, "")) for c in columns) + "\n")
    return path


def b64png(seed: int) -> str:
    return base64.b64encode(png(seed)).decode()


def chartqa_official(root: str, splits: dict[str, list[tuple[str, str]]]) -> str:
    """splits: "human"/"augmented" -> [(query, label)]; one PNG per row in png/."""
    os.makedirs(os.path.join(root, "png"))
    for split, rows in splits.items():
        entries = []
        for k, (query, label) in enumerate(rows):
            name = f"{split}_{k}.png"
            with open(os.path.join(root, "png", name), "wb") as f:
                f.write(png(k))
            entries.append({"imgname": name, "query": query, "label": label})
        write_json(os.path.join(root, f"test_{split}.json"), entries)
    return root


def chartqa_parquet(path: str, splits: dict[str, list[tuple[str, str]]]) -> str:
    rows = [{"image": {"bytes": png(k), "path": None}, "query": query, "label": [label],
             "human_or_machine": 0 if split == "human" else 1}
            for split, entries in splits.items() for k, (query, label) in enumerate(entries)]
    return write_parquet(path, rows)
