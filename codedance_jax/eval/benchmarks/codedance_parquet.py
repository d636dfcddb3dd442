"""The release's generic eval parquet: images (list of {bytes, path}), extra_info {question,
answer, index?}, data_source. Ids are `data_source/extra_info.index` when the row has an index,
else the row number. The task (general or math) follows rewards' data_source table; unknown
sources are scored as general questions. The release scores these with an LLM judge: pass
--judge_url to do the same for free-form answers the rules call wrong."""
from __future__ import annotations

import os

from codedance_jax import rewards
from codedance_jax.eval.items import Dataset, Item, SkipRow, check_exists, collect, image_field, require
from codedance_jax.eval.registry import Benchmark, register
from codedance_jax.eval.tables import read_rows
from codedance_jax.processing.chat import IMAGE_PLACEHOLDER


@register
class CodeDanceParquet(Benchmark):
    name = "codedance_parquet"
    data_help = "a .parquet (or .jsonl) in the release's eval form"
    breakdowns = ("data_source",)

    def read(self, path):
        rows = read_rows(check_exists(path, self.name, self.data_help), (".parquet", ".jsonl"))

        def item(key, row):
            extra = require(row, "extra_info")
            images = require(row, "images")
            source = str(row.get("data_source") or "")
            question = str(require(extra, "question")).replace(IMAGE_PLACEHOLDER, "").strip()
            try:
                task = rewards.task_for_record(source, extra, default=rewards.GENERAL, record_id=key)
            except ValueError as err:
                raise SkipRow("extra_info.task", str(err)) from err
            index = extra.get("index")
            return Item(id=f"{source}/{index}" if index is not None else str(key),
                        question=question,
                        image=image_field({"image": images[0]}, "image", f"{path}, row {key}, images[0]",
                                          os.path.dirname(path)),
                        gold=require(extra, "answer"), fields={"data_source": source}, task=task)

        items, skipped = collect(rows, path, item)
        return Dataset(items, skipped, path)
