"""HR-Bench 4K / 8K: one TSV (index, question, A-D, answer letter, category, cycle_category,
image as base64). Each question appears under four option orders (cycles); the official score is
the accuracy of each cycle, averaged over cycles, overall and per category (single / cross).
As in VLMEvalKit's TSVs, a short image cell may name the `index` of the row holding the image."""
from __future__ import annotations

import collections

from codedance_jax.eval import prompts, scoring
from codedance_jax.eval.items import Dataset, ImageSource, Item, SkipRow, check_exists, collect, require
from codedance_jax.eval.registry import Benchmark, register
from codedance_jax.eval.tables import read_rows

LETTERS = "ABCD"
IMAGE_REFERENCE_MAX = 64  # a cell this short is a row index, not base64


class _HRBench(Benchmark):
    data_help = "the benchmark's .tsv file"
    breakdowns = ("category", "cycle_category")

    def read(self, path):
        rows = read_rows(check_exists(path, self.name, self.data_help), (".tsv",))
        images = {str(row.get("index")): row.get("image") for _, row in rows}

        def item(key, row):
            index = str(require(row, "index"))
            image = require(row, "image")
            if len(image) <= IMAGE_REFERENCE_MAX:
                if not images.get(image) or len(images[image]) <= IMAGE_REFERENCE_MAX:
                    raise SkipRow("image", f"refers to row index {image!r}, which holds no image")
                image = images[image]
            options = tuple(str(row[k]) for k in LETTERS if row.get(k))
            answer = str(require(row, "answer")).strip()
            if answer not in LETTERS[: len(options)]:
                raise SkipRow("answer", f"{answer!r} is not one of the option letters {LETTERS[:len(options)]}")
            return Item(id=index, question=prompts.multiple_choice(require(row, "question"), options),
                        image=ImageSource(image, f"{path}, row {key}, field 'image'", base64=True),
                        gold=answer, options=options,
                        fields={"category": row.get("category"), "cycle_category": row.get("cycle_category")})

        items, skipped = collect(rows, path, item)
        return Dataset(items, skipped, path)

    def summarize(self, items, correct):
        cycles = collections.defaultdict(list)
        for item in items:
            cycles[str(item.fields.get("cycle_category"))].append(item)
        per_cycle = {cycle: {"overall": scoring.accuracy(correct[i.id] for i in members)["accuracy"],
                             **{c: v["accuracy"] for c, v in scoring.breakdown(
                                 members, correct, lambda i: i.fields.get("category")).items()}}
                     for cycle, members in sorted(cycles.items())}
        keys = sorted({key for scores in per_cycle.values() for key in scores})
        averaged = {key: sum(s.get(key, 0.0) for s in per_cycle.values()) / len(per_cycle) for key in keys}
        return {"overall": averaged.pop("overall"), "by_category_cycle_averaged": averaged,
                "by_cycle": per_cycle,
                "by_category_pooled": scoring.breakdown(items, correct, lambda i: i.fields.get("category"))}


@register
class HRBench4K(_HRBench):
    name = "hrbench_4k"


@register
class HRBench8K(_HRBench):
    name = "hrbench_8k"
