"""ChartQA test: the official folder (test_human.json and test_augmented.json, lists of
{imgname, query, label}, images in png/) or the Hugging Face parquet (image, query, label as a
list, human_or_machine 0 = human / 1 = augmented). Ids are `human/N` and `augmented/N`, N
counting the rows of that split in file order, so both forms give the same ids.

Relaxed accuracy (pix2struct's rule, the official one): when answer and label parse as floats
(`official_float`) and the label is not 0, the answer may be off by up to 5% of the label;
otherwise it must equal the label ignoring case. An item is right when any label accepts it. Reported per split and as their average."""
from __future__ import annotations

import os

from codedance_jax import rewards
from codedance_jax.eval import prompts, scoring
from codedance_jax.eval.items import (DataError, Dataset, Item, SkipRow, check_exists, collect,
                                      image_field, require)
from codedance_jax.eval.registry import Benchmark, register
from codedance_jax.eval.tables import read_rows

SPLITS = ("human", "augmented")
RELAXED_TOLERANCE = 0.05
RELAXED, EXACT = "relaxed_5pct", "exact_case_insensitive"


def official_float(text: str) -> float | None:
    """pix2struct's number parsing: Python's float(), a trailing "%" dividing by 100; nothing
    else ("1,234", "$12" and "12 million" are text)."""
    text = text.strip()
    try:
        return float(text[:-1]) / 100.0 if text.endswith("%") else float(text)
    except ValueError:
        return None


def relaxed_match(answer: str, label: str) -> rewards.Match:
    value, target = official_float(answer), official_float(label)
    if value is not None and target:  # a label of 0 is compared as text, as in pix2struct
        return rewards.Match(abs(value - target) / abs(target) <= RELAXED_TOLERANCE, RELAXED)
    return rewards.Match(answer.strip().lower() == label.strip().lower(), EXACT)


@register
class ChartQA(Benchmark):
    name = "chartqa"
    data_help = "the official test/ folder (test_human.json, test_augmented.json, png/) or the HF .parquet"
    breakdowns = ("split",)

    def read(self, path):
        check_exists(path, self.name, self.data_help)
        if os.path.isdir(path):
            items, skipped = [], []
            for split in SPLITS:
                file = os.path.join(path, f"test_{split}.json")
                if not os.path.isfile(file):
                    raise DataError(f"{self.name}: {path} has no test_{split}.json ({self.data_help})")
                png = os.path.join(path, "png")
                more, skips = collect(read_rows(file, (".json",)), file,
                                      lambda key, row, split=split, file=file: self._item(
                                          f"{split}/{key}", split, row, "imgname", file, key, png))
                items, skipped = items + more, skipped + skips
            return Dataset(items, skipped, path)
        counters = {split: 0 for split in SPLITS}

        def parquet_item(key, row):
            kind = row.get("human_or_machine")
            split = {0: "human", 1: "augmented", "human": "human", "machine": "augmented",
                     "augmented": "augmented"}.get(kind)
            if split is None:
                raise SkipRow("human_or_machine", f"expected 0 (human) or 1 (augmented), got {kind!r}")
            number, counters[split] = counters[split], counters[split] + 1
            return self._item(f"{split}/{number}", split, row, "image", path, key, os.path.dirname(path))

        items, skipped = collect(read_rows(path, (".parquet",)), path, parquet_item)
        return Dataset(items, skipped, path)

    def _item(self, item_id, split, row, image_key, file, key, image_dir) -> Item:
        labels = require(row, "label")
        labels = [str(label) for label in (labels if isinstance(labels, list) else [labels])]
        if not any(label.strip() for label in labels):
            raise SkipRow("label", "empty")
        image = image_field(row, image_key, f"{file}, row {key}", image_dir)
        return Item(id=item_id, question=prompts.free_form(require(row, "query")), image=image,
                    gold=labels, fields={"split": split})

    def check(self, item, answer):
        matches = [relaxed_match(answer, label) for label in item.gold]
        return next((m for m in matches if m.correct), matches[0])

    def summarize(self, items, correct):
        splits = scoring.breakdown(items, correct, lambda item: item.fields["split"])
        present = [splits[s]["accuracy"] for s in SPLITS if s in splits]
        return {"overall": sum(present) / len(present), "human": splits.get("human", {}).get("accuracy"),
                "augmented": splits.get("augmented", {}).get("accuracy"),
                "average": sum(present) / len(present), "by_split": splits}
