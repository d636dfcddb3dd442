"""The project's embedded task suite (`codedance_jax.data.synthetic`): shapes, bar charts and visual
search, each item easy or hard, so an eval runs with no download. No --data; options `num`
(items, default 64) and `seed` (default: the suite's held-out eval seed). Ids are the records';
accuracy is broken down by task kind (`category`) and by `difficulty`."""
from __future__ import annotations

from codedance_jax.data.synthetic import SPLIT_SEEDS, synthetic_record
from codedance_jax.eval.items import DataError, Dataset, ImageSource, Item
from codedance_jax.eval.registry import Benchmark, register
from codedance_jax.processing.chat import IMAGE_PLACEHOLDER


@register
class Synthetic(Benchmark):
    name = "synthetic"
    data_help = "nothing (the items are generated); options num and seed"
    defaults = {"num": "64", "seed": str(SPLIT_SEEDS["eval"])}
    breakdowns = ("category", "difficulty")

    def read(self, path):
        if path:
            raise DataError(f"{self.name}: takes no --data (got {path!r}); use {self.name}:num=N:seed=S")
        try:
            num, seed = int(self.options["num"]), int(self.options["seed"])
        except ValueError as err:
            raise DataError(f"{self.name}: num and seed must be integers ({err})") from err
        items = []
        for index in range(num):
            record = synthetic_record(seed, index)
            question = record["messages"][0]["content"].replace(IMAGE_PLACEHOLDER, "").strip()
            items.append(Item(id=record["id"], question=question,
                              image=ImageSource(record["images"][0], f"synthetic record {record['id']}"),
                              gold=record["ground_truth"],
                              fields={"category": record["kind"], "difficulty": record["difficulty"]}))
        return Dataset(items, [], f"synthetic:seed={seed}")
