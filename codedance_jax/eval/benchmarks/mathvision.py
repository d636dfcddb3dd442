"""MATH-Vision (test 3,040 / testmini 304): JSONL, JSON or the HF parquet with id, question
(with <image1>), options (empty for free form), image / decoded_image, answer, level, subject.
Ids are `id`. `split` picks the file when --data is a folder holding both splits.

Official comparison: multiple choice is right by the letter or by the option's text; a
free-form answer is right when equal as lower-case text, or equal as numbers rounded to two
decimals (either side may be an expression with a value, e.g. a gold "\\sqrt{2}" and "1.41"), or
(standing in for the official sympy evaluation) equal to math-verify. A bare response that names
no option otherwise is read by its final option letter ("... so (C).")."""
from __future__ import annotations

import os
import re

from codedance_jax import rewards
from codedance_jax.eval import prompts
from codedance_jax.eval.items import DataError, Dataset, Item, check_exists, collect, image_field, require
from codedance_jax.eval.registry import Benchmark, register
from codedance_jax.eval.tables import READERS, read_rows
from codedance_jax.rewards.mathverify import numeric_value

SPLITS = ("testmini", "test")
NUMERIC_2DP = "numeric_2dp"
_TRAILING_LETTER = re.compile(r"(?:^|[\s(:])\(?([A-E])\)?\.?\s*$")  # the official fallback: a final option letter


def _value(text: str) -> float | None:
    number = rewards.parse_number(text)
    return number if number is not None else numeric_value(text)


def free_form_match(answer: str, gold: str) -> rewards.Match:
    if answer.strip().lower() == gold.strip().lower():
        return rewards.Match(True, rewards.match.STRING)
    a, b = _value(answer), _value(gold)
    if a is not None and b is not None:
        return rewards.Match(round(a, 2) == round(b, 2), NUMERIC_2DP)
    return rewards.match_answer(answer, gold, task=rewards.MATH)


@register
class MathVision(Benchmark):
    name = "mathvision"
    task = rewards.MATH
    data_help = "a .jsonl / .json / .parquet of one split, or a folder holding files named after the splits"
    defaults = {"split": "testmini"}
    breakdowns = ("subject", "level", "subject_level")

    def _file(self, path: str) -> str:
        if not os.path.isdir(path):
            return path
        split = self.options["split"]
        if split not in SPLITS:
            raise DataError(f"{self.name}: unknown split {split!r}; expected one of {SPLITS}")
        # "test" is a prefix of "testmini": a test file is one whose name does not go on with "mini".
        names = [n for n in sorted(os.listdir(path)) if os.path.splitext(n)[1] in READERS and n.startswith(split)
                 and (split == "testmini" or not n.startswith("testmini"))]
        if len(names) != 1:
            raise DataError(f"{self.name}: expected one {split}* data file in {path}, found {names or 'none'}")
        return os.path.join(path, names[0])

    def read(self, path):
        file = self._file(check_exists(path, self.name, self.data_help))
        rows = read_rows(file, (".json", ".jsonl", ".parquet"))

        def item(key, row):
            options = tuple(str(o) for o in (row.get("options") or ()))
            question = str(require(row, "question")).replace("<image1>", "").strip()
            image_key = "decoded_image" if row.get("decoded_image") else "image"
            subject, level = row.get("subject"), row.get("level")
            return Item(id=str(require(row, "id")),
                        question=prompts.multiple_choice(question, options) if options else prompts.free_form(question),
                        image=image_field(row, image_key, f"{file}, row {key}", os.path.dirname(file)),
                        gold=str(require(row, "answer")).strip(), options=options,
                        fields={"subject": subject, "level": level, "subject_level": f"{subject} / level {level}"})

        items, skipped = collect(rows, file, item)
        return Dataset(items, skipped, file)

    def check(self, item, answer):
        if item.options:
            trailing = _TRAILING_LETTER.search(answer)
            if rewards.choice_index(answer, item.options) is None and trailing:  # "... so (C)."
                answer = trailing.group(1)
            return rewards.match_answer(answer, item.gold, item.options)
        return free_form_match(answer, item.gold)
