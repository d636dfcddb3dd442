"""Scoring one response: extract the answer (rewards' extractor), apply the benchmark's rule,
and optionally ask the judge about free-form answers the rules call wrong. Plus the accuracy
tables every summary is made of."""
from __future__ import annotations

import collections
import dataclasses
from typing import Callable, Iterable, Mapping

from codedance_jax import rewards
from codedance_jax.eval.items import DataError
from codedance_jax.rewards.match import NO_ANSWER
from codedance_jax.rewards.score import JUDGE, JUDGED_RULES

ANSWER_TAG = "<answer>"


@dataclasses.dataclass(frozen=True)
class Verdict:
    answer: str | None   # the extracted answer
    correct: bool
    rule: str            # the rule (or "judge") that decided


def extract(response: str, task: str, bare_answers: bool = False) -> str | None:
    """The answer in a response. With bare_answers (predictions of other systems), a response
    with no answer tag and no reasoning tags is itself the answer."""
    answer = rewards.extract_answer(response, task)
    if answer is None and bare_answers and ANSWER_TAG not in response and "</think>" not in response:
        answer = response.strip() or None
    return answer


def score(benchmark, item, response: str, judge=None, bare_answers: bool = False) -> Verdict:
    answer = extract(response, benchmark.task_of(item), bare_answers)
    if answer is None:
        return Verdict(None, False, NO_ANSWER)
    match = benchmark.check(item, answer)
    # The judge may overturn only free-form text the rules found different; choices and numbers
    # are decided by the rules alone.
    if judge is not None and not match.correct and match.rule in JUDGED_RULES and not item.options:
        verdict = judge.verdict(item.question, answer, item.gold)
        if verdict is not None:  # None: the judge fell back, the rules' verdict stands
            return Verdict(answer, bool(verdict), JUDGE)
    return Verdict(answer, match.correct, match.rule)


def accuracy(flags: Iterable[bool]) -> dict:
    flags = list(flags)
    correct = sum(bool(f) for f in flags)
    return {"accuracy": 100.0 * correct / len(flags) if flags else 0.0, "correct": correct, "total": len(flags)}


def breakdown(items, correct: Mapping[str, bool], key: Callable) -> dict:
    """Accuracy per value of key(item); a key that returns a list counts the item under each value."""
    groups = collections.defaultdict(list)
    for item in items:
        values = key(item)
        for value in values if isinstance(values, (list, tuple)) else [values]:
            if value is not None and value != "":
                groups[str(value)].append(correct[item.id])
    return {value: accuracy(flags) for value, flags in sorted(groups.items())}


def rescore(benchmark, dataset, lines: list[dict], path: str, judge=None) -> list[dict]:
    """Scored records for prediction lines; unknown or repeated ids and lines without a response
    are errors."""
    items = {item.id: item for item in dataset.items}
    unknown = [(n, line["id"]) for n, line in enumerate(lines, start=1) if line["id"] not in items]
    if unknown:
        shown = ", ".join(f"line {n}: {item_id!r}" for n, item_id in unknown[:5])
        raise DataError(f"{path}: {len(unknown)} predictions for ids that {benchmark.name} ({dataset.source}) "
                        f"does not have ({shown})")
    first_line: dict = {}
    for n, line in enumerate(lines, start=1):
        if line["id"] in first_line:
            raise DataError(f"{path}: id {line['id']!r} is predicted twice (lines {first_line[line['id']]} and {n})")
        first_line[line["id"]] = n
    records = []
    for number, line in enumerate(lines, start=1):
        if "skipped" in line:
            records.append(line)
            continue
        response = line.get("response")
        if not isinstance(response, str):
            raise DataError(f"{path}: line {number} (id {line['id']!r}) has no string 'response'")
        verdict = score(benchmark, items[line["id"]], response, judge, bare_answers=True)
        records.append({"id": line["id"], "response": response, "extracted": verdict.answer,
                        "correct": verdict.correct, "decided_by": verdict.rule})
    return records
