"""MathVista testmini: testmini.json (a dict keyed by pid, or a list), JSONL, or the HF parquet
(decoded_image holds the image bytes). Ids are `pid`; the prompt is the dataset's `query`.

Official normalisation before an exact string comparison with `answer`: multiple choice maps a
letter to its choice text, otherwise takes the choice nearest by edit distance; integer answers
become str(int(x)); float answers str(round(x, precision)); lists their text. Breakdowns are
the official ones (question and answer type, and the metadata fields; skills count per skill)."""
from __future__ import annotations

import math
import os

from codedance_jax import rewards
from codedance_jax.eval import prompts
from codedance_jax.eval.items import Dataset, Item, SkipRow, check_exists, collect, image_field, require
from codedance_jax.eval.registry import Benchmark, register
from codedance_jax.eval.tables import read_rows

METADATA_FIELDS = ("language", "source", "category", "task", "context", "grade", "skills")
CHOICE_NEAREST, INTEGER, FLOAT, LIST, NO_NUMBER = "choice_nearest", "integer", "float_precision", "list", "no_number"


def edit_distance(a: str, b: str) -> int:
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        current = [i]
        for j, cb in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def normalized_answer(answer: str, item: Item) -> tuple[str | None, str]:
    """(the answer in the form of the gold answer, the rule that made it)."""
    fields = item.fields
    if fields["question_type"] == "multi_choice":
        choices = list(item.options)
        index = rewards.choice_index(answer, choices)
        if index is not None:
            return choices[index], rewards.match.CHOICE_LETTER if rewards.choice_letter(answer) else rewards.match.CHOICE_TEXT
        distances = [edit_distance(answer, choice) for choice in choices]
        return choices[distances.index(min(distances))], CHOICE_NEAREST
    if fields["answer_type"] in ("integer", "float"):
        value = rewards.parse_number(answer)
        if value is None:
            return None, NO_NUMBER
        if fields["answer_type"] == "integer":
            return str(int(value)), INTEGER
        return str(round(value, int(fields["precision"]))), FLOAT
    return answer.strip(), LIST if fields["answer_type"] == "list" else rewards.match.STRING


@register
class MathVista(Benchmark):
    name = "mathvista_testmini"
    task = rewards.MATH
    data_help = "testmini.json (images/ beside it), a .jsonl, or the HF .parquet"
    breakdowns = ("question_type", "answer_type") + METADATA_FIELDS

    def read(self, path):
        rows = read_rows(check_exists(path, self.name, self.data_help), (".json", ".jsonl", ".parquet"))
        base = os.path.dirname(path)

        def item(key, row):
            question_type, answer_type = require(row, "question_type"), require(row, "answer_type")
            choices = tuple(str(c) for c in (row.get("choices") or ()))
            if question_type == "multi_choice" and not choices:
                raise SkipRow("choices", "a multi_choice question without choices")
            precision = row.get("precision")
            if answer_type == "float" and (precision is None or (isinstance(precision, float) and math.isnan(precision))):
                raise SkipRow("precision", "a float answer without a precision")
            image_key = "decoded_image" if row.get("decoded_image") else "image"
            metadata = row.get("metadata") or {}
            fields = {"question_type": question_type, "answer_type": answer_type, "precision": precision,
                      **{k: metadata.get(k) for k in METADATA_FIELDS}}
            question = row.get("query") or (prompts.multiple_choice(require(row, "question"), choices)
                                           if choices else prompts.free_form(require(row, "question")))
            return Item(id=str(row.get("pid") or key), question=question,
                        image=image_field(row, image_key, f"{path}, row {key}", base),
                        gold=str(require(row, "answer")).strip(), options=choices, fields=fields)

        items, skipped = collect(rows, path, item)
        return Dataset(items, skipped, path)

    def check(self, item, answer):
        normalized, rule = normalized_answer(answer, item)
        return rewards.Match(normalized is not None and normalized == item.gold, rule)
