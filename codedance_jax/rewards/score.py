"""One response scored: accuracy, format error and the base score (SPEC section 4).

base = 1.0 * acc - 0.2 * format_error (general), 1.2 * acc - 0.4 * format_error (math). An answer
of MAX_ANSWER_CHARS or more is a format error and scores acc 0 whatever it says. With a judge, the
free-form answers the rules call wrong ("string" and "math_verify" verdicts; choices and numbers
are left to the rules) go to the judge, whose verdict then decides (rule "judge"); a judge that
fell back leaves the rules' verdict standing.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from codedance_jax.rewards.extract import GENERAL, MATH, check_task, extract_answer, response_text
from codedance_jax.rewards.format import ANSWER_TOO_LONG, format_errors
from codedance_jax.rewards.match import MATH_VERIFY, NO_ANSWER, STRING, ground_truths, match_answer

# (accuracy weight, format penalty) per task.
BASE_WEIGHTS = {GENERAL: (1.0, 0.2), MATH: (1.2, 0.4)}
JUDGE = "judge"
# Verdicts a judge may overturn: free-form text the rules found different (choices and numbers stay).
JUDGED_RULES = (STRING, MATH_VERIFY)


@dataclasses.dataclass(frozen=True)
class Score:
    acc: int                       # 0 or 1
    format_error: bool
    base: float
    answer: str | None             # the extracted answer
    rule: str                      # the matching rule or "judge" that decided acc; "no_answer"
    format_reasons: tuple[str, ...] = ()
    task: str = GENERAL


def base_score(acc: int, format_error: bool, task: str = GENERAL) -> float:
    weight, penalty = BASE_WEIGHTS[check_task(task)]
    return weight * acc - penalty * float(format_error)


def _scored(acc: int, answer, rule: str, reasons: tuple[str, ...], task: str) -> Score:
    return Score(acc=acc, format_error=bool(reasons), base=base_score(acc, bool(reasons), task),
                 answer=answer, rule=rule, format_reasons=reasons, task=task)


def score_by_rules(response: str | Sequence[str], ground_truth, task: str = GENERAL,
                   options: Sequence[str] | None = None) -> Score:
    ground_truths(ground_truth, options)  # a bad ground truth is refused even when the response has no answer
    text = response_text(response)
    answer = extract_answer(text, task)
    reasons = format_errors(text, answer, task)
    if ANSWER_TOO_LONG in reasons:
        return _scored(0, answer, NO_ANSWER, reasons, task)
    match = match_answer(answer, ground_truth, options, task)
    return _scored(int(match.correct), answer, match.rule, reasons, task)


def needs_judge(score: Score) -> bool:
    """Whether a judge may overturn this score: a free-form answer the rules called wrong."""
    return not score.acc and score.answer is not None and score.rule in JUDGED_RULES \
        and ANSWER_TOO_LONG not in score.format_reasons


def with_judge_verdict(score: Score, verdict: bool | None) -> Score:
    """The score after the judge's verdict; None (the judge fell back) keeps the rules' verdict."""
    if verdict is None:
        return score
    return _scored(int(verdict), score.answer, JUDGE, score.format_reasons, score.task)


def score_response(response: str | Sequence[str], ground_truth, task: str = GENERAL,
                   options: Sequence[str] | None = None, judge=None, question: str = "") -> Score:
    """Score what the model generated (a str, or its generated segments in order) against the
    ground truth. `judge` (optional, `rewards.judge.Judge`) sees `question` with the answers."""
    score = score_by_rules(response, ground_truth, task, options)
    if judge is not None and needs_judge(score):
        score = with_judge_verdict(score, judge.verdict(question, score.answer, ground_truth))
    return score
