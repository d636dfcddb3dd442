"""CountBenchQA: a parquet of image, text, question, number (int). Ids are row numbers. The
answer must state exactly the number: "10" never counts for 1 (no substring matching)."""
from __future__ import annotations

import os

from codedance_jax import rewards
from codedance_jax.eval import prompts
from codedance_jax.eval.items import Dataset, Item, SkipRow, check_exists, collect, image_field, require
from codedance_jax.eval.registry import Benchmark, register
from codedance_jax.eval.tables import read_rows


@register
class CountBenchQA(Benchmark):
    name = "countbenchqa"
    data_help = "the benchmark's .parquet file"
    breakdowns = ("number",)

    def read(self, path):
        rows = read_rows(check_exists(path, self.name, self.data_help), (".parquet",))

        def item(key, row):
            number = require(row, "number")
            if isinstance(number, bool) or not isinstance(number, (int, float)) or number != int(number):
                raise SkipRow("number", f"expected an integer, got {number!r}")
            return Item(id=str(key), question=prompts.free_form(require(row, "question"), prompts.NUMBER_INSTRUCTION),
                        image=image_field(row, "image", f"{path}, row {key}", os.path.dirname(path)),
                        gold=int(number), fields={"number": int(number)})

        items, skipped = collect(rows, path, item)
        return Dataset(items, skipped, path)

    def check(self, item, answer):
        return rewards.match_answer(answer, item.gold, rel_tol=0.0)
