"""WeMath testmini: testmini.json rows {ID, split, knowledge concept, question, option
("A. ...;B. ..."), answer (letter), image_path, key, question number}. Rows sharing an `ID` form
one composite problem: its one-step sub-questions (key `2steps_1`, `3steps_2`, ...) and the
composite question (`2steps_multi` / `3steps_multi`). Item ids are `ID/key`.

Four-dimensional metrics over composite problems (the official definitions): IK = a step wrong
and the composite wrong; IG = every step right, the composite wrong; CM = every step right and
the composite right (loose: any step right); RM = a step wrong and the composite right (loose:
every step wrong). Score = (problems - 0.5 IG - RM - IK) / problems, strict and loose; IK, IG and
CM rates are shares of all problems, the RM rate is RM / (RM + CM). Row accuracy and the official
one-, two- and three-step accuracies come with it. Problems missing a row are left out and counted."""
from __future__ import annotations

import collections
import os
import re

from codedance_jax import rewards
from codedance_jax.eval import prompts, scoring
from codedance_jax.eval.items import Dataset, Item, SkipRow, check_exists, collect, image_field, require
from codedance_jax.eval.registry import Benchmark, register
from codedance_jax.eval.tables import read_rows

KEY = re.compile(r"^([23])steps_(\d+|multi)$")


def parse_options(text: str) -> tuple[str, ...]:
    parts = [part.strip() for part in text.split(";") if part.strip()]
    return tuple(rewards.option_text(part, k) for k, part in enumerate(parts))


def four_dimensions(problems: list[tuple[list[bool], bool]]) -> dict:
    """Counts, rates and scores from (step verdicts, composite verdict) per composite problem."""
    n = len(problems)
    ig = sum(all(steps) and not multi for steps, multi in problems)
    ik = sum(not all(steps) and not multi for steps, multi in problems)
    cm = {"strict": sum(all(steps) and multi for steps, multi in problems),
          "loose": sum(any(steps) and multi for steps, multi in problems)}
    rm = {"strict": sum(not all(steps) and multi for steps, multi in problems),
          "loose": sum(not any(steps) and multi for steps, multi in problems)}
    result = {"problems": n, "IK": ik, "IG": ig}
    for mode in ("strict", "loose"):
        result[mode] = {
            "score": 100.0 * (n - 0.5 * ig - rm[mode] - ik) / n if n else 0.0,
            "CM": cm[mode], "RM": rm[mode],
            "IK_rate": 100.0 * ik / n if n else 0.0, "IG_rate": 100.0 * ig / n if n else 0.0,
            "CM_rate": 100.0 * cm[mode] / n if n else 0.0,
            "RM_rate": 100.0 * rm[mode] / (rm[mode] + cm[mode]) if rm[mode] + cm[mode] else 0.0}
    return result


@register
class WeMath(Benchmark):
    name = "wemath_testmini"
    data_help = "testmini.json (image_path relative to it), a .jsonl, or a .parquet"
    breakdowns = ("key", "knowledge_concept")

    def read(self, path):
        rows = read_rows(check_exists(path, self.name, self.data_help), (".json", ".jsonl", ".parquet"))

        def item(key, row):
            group, step_key = str(require(row, "ID")), str(require(row, "key"))
            if not KEY.match(step_key):
                raise SkipRow("key", f"{step_key!r} is not NSteps_i or NSteps_multi (N = 2 or 3)")
            options = parse_options(str(require(row, "option")))
            answer = str(require(row, "answer")).strip()
            if rewards.choice_index(answer, options) is None:
                raise SkipRow("answer", f"{answer!r} names none of the {len(options)} options")
            return Item(id=f"{group}/{step_key}", question=prompts.multiple_choice(require(row, "question"), options),
                        image=image_field(row, "image_path", f"{path}, row {key}", os.path.dirname(path)),
                        gold=answer, options=options,
                        fields={"group": group, "key": step_key, "knowledge_concept": row.get("knowledge concept")})

        items, skipped = collect(rows, path, item)
        return Dataset(items, skipped, path)

    def summarize(self, items, correct):
        groups = collections.defaultdict(dict)
        for item in items:
            groups[item.fields["group"]][item.fields["key"]] = correct[item.id]
        problems = {2: [], 3: []}
        incomplete = 0
        for keys in groups.values():
            steps = int(next(iter(keys))[0])
            wanted = [f"{steps}steps_{k}" for k in range(1, steps + 1)]
            if set(keys) != set(wanted) | {f"{steps}steps_multi"}:
                incomplete += 1
                continue
            problems[steps].append(([keys[k] for k in wanted], keys[f"{steps}steps_multi"]))
        metrics = four_dimensions(problems[2] + problems[3])
        summary = {"overall": metrics["strict"]["score"], "strict": metrics["strict"], "loose": metrics["loose"],
                   "IK": metrics["IK"], "IG": metrics["IG"], "problems": metrics["problems"],
                   "incomplete_problems": incomplete,
                   "row_accuracy": scoring.accuracy(correct[item.id] for item in items)["accuracy"],
                   "one_step": scoring.accuracy(s for steps, _ in problems[2] + problems[3] for s in steps),
                   "two_step": scoring.accuracy(multi for _, multi in problems[2]),
                   "three_step": scoring.accuracy(multi for _, multi in problems[3])}
        for field in self.breakdowns:
            summary[f"by_{field}"] = scoring.breakdown(items, correct, lambda item: item.fields.get(field))
        return summary
