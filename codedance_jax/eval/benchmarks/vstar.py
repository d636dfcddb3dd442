"""V* Bench: folders `direct_attributes/` and `relative_position/`, each image beside a JSON of
the same name ({target_object, bbox, question, options}). The first option is always the right
one, so options are shown in a per-item shuffled order (seeded by the id: the same on every run);
a model answering "A" everywhere scores what chance gives, not 100%."""
from __future__ import annotations

import hashlib
import json
import os
import random

from codedance_jax.eval import prompts
from codedance_jax.eval.items import DataError, Dataset, ImageSource, Item, SkipRow, check_exists, collect, require
from codedance_jax.eval.registry import Benchmark, register

CATEGORIES = ("direct_attributes", "relative_position")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")


def option_order(item_id: str, count: int) -> list[int]:
    """A permutation of range(count) that depends only on the id."""
    seed = int.from_bytes(hashlib.sha256(item_id.encode()).digest()[:8], "big")
    return random.Random(seed).sample(range(count), count)


@register
class VStar(Benchmark):
    name = "vstar"
    data_help = "a folder holding direct_attributes/ and relative_position/ (image + same-name .json each)"

    def read(self, path):
        check_exists(path, self.name, self.data_help)
        rows = []
        for category in CATEGORIES:
            folder = os.path.join(path, category)
            if not os.path.isdir(folder):
                raise DataError(f"{self.name}: {path} has no {category}/ folder ({self.data_help})")
            rows += [(f"{category}/{name[:-5]}", os.path.join(folder, name))
                     for name in sorted(os.listdir(folder)) if name.endswith(".json")]
        items, skipped = collect(rows, path, self._item)
        return Dataset(items, skipped, path)

    def _item(self, item_id: str, json_path: str) -> Item:
        try:
            with open(json_path, encoding="utf-8") as f:
                row = json.load(f)
        except (OSError, json.JSONDecodeError) as err:
            raise SkipRow("json", f"cannot read {json_path}: {err}") from err
        stem = json_path[:-5]
        image = next((stem + ext for ext in IMAGE_EXTENSIONS if os.path.isfile(stem + ext)), None)
        if image is None:
            raise SkipRow("image", f"no image file beside {json_path} ({'/'.join(IMAGE_EXTENSIONS)})")
        options = require(row, "options")
        if not isinstance(options, list) or len(options) < 2:
            raise SkipRow("options", "expected a list of at least two options")
        order = option_order(item_id, len(options))
        shown = tuple(str(options[k]) for k in order)
        return Item(id=item_id, question=prompts.multiple_choice(require(row, "question"), shown),
                    image=ImageSource(image, f"{json_path}, field 'image'"),
                    gold=prompts.letter(order.index(0)), options=shown,
                    fields={"category": item_id.split("/")[0]})
