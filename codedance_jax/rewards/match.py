"""The one answer matcher, for rewards and for benchmark scoring.

`match_answer(prediction, ground_truth, options=None, task="general", rel_tol=DEFAULT_REL_TOL)`
returns `Match(correct, rule)`. A ground truth is a string, a number, or a list of acceptable
answers (correct if any matches); `ground_truths` validates it. For each acceptable answer the
rules run in this order, and the first that applies decides:

1. choice: with `options`, a ground truth that names an option (by letter or by its text) makes the
   item multiple choice; the prediction picks an option by letter ("A", "(A)", "A.", "A) red",
   "Answer: A", "The answer is (B)") -> rule "choice_letter", or by the option's text
   (normalised, or the same number) -> "choice_text". A prediction that picks no option is compared
   with the correct option's text by the rules below. Without options, a ground truth that is a
   bare letter ("B", "(B)") is matched against the prediction's letter when it states one.
   Option letters are upper case ("a" is a word, not option A).
2. yes/no: a ground truth "yes" or "no" is matched by the prediction's first word when the
   prediction says only one of the two ("Yes, the kite is brown.") -> "yes_no".
3. numeric: both are whole-string numbers (`parse_number`: "1,234", "45%", "3/4", "12 cm") ->
   equal within `rel_tol` -> "numeric".
4. math (task "math" only): math-verify equality ("\\frac{1}{2}" = "0.5", "x+1" = "1+x")
   -> "math_verify"; when it says no, the string rule still runs.
5. string: equal after `normalize_text` -> "string".

An incorrect result names the rule that decided it ("choice_*", "yes_no", "numeric" when both
were numbers, "math_verify" for other math answers, else "string"); a missing prediction gives "no_answer".
Lower-level helpers: `choice_letter(text)` (the option letter a text states, unchecked),
`option_text(option, index)` (an option without its own "A." prefix), `choice_index(prediction,
options)` (the option a prediction picks), plus `normalize_text`, `parse_number` and
`numbers_match` from `normalize`.
"""
from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence

from codedance_jax.rewards.extract import GENERAL, MATH, check_task
from codedance_jax.rewards.mathverify import math_equal
from codedance_jax.rewards.normalize import DEFAULT_REL_TOL, normalize_text, numbers_match, parse_number

CHOICE_LETTER, CHOICE_TEXT = "choice_letter", "choice_text"
MATH_VERIFY, NUMERIC, STRING, NO_ANSWER = "math_verify", "numeric", "string", "no_answer"
YES_NO = "yes_no"

_YES_NO = {"yes", "no"}
_LETTER = r"\(?([A-Z])\)?"
_BARE_LETTER = r"\(?[A-Z]\)?\.?"
_LETTER_FORMS = (
    re.compile(rf"^{_LETTER}[.:)]?$"),                                  # A  (A)  A.  A)
    re.compile(rf"^(?i:(?:the\s+)?(?:final\s+)?(?:answer|option|choice)(?:\s+is)?\s*[:：]?)\s*{_LETTER}[.)]?$"),
    re.compile(rf"^{_LETTER}[.:)]\s+\S"),                              # A. red  (A) red
)


class GroundTruthError(ValueError):
    """A ground truth that cannot be matched against: missing, empty, NaN, of another type, or a
    letter that names none of the options."""


@dataclasses.dataclass(frozen=True)
class Match:
    correct: bool
    rule: str


def ground_truths(ground_truth, options: Sequence[str] | None = None) -> list[str]:
    """The acceptable answers of a ground truth (str, int/float, or a list of those) as strings;
    with `options`, a bare letter must name one of them."""
    if isinstance(ground_truth, (list, tuple)):
        if not ground_truth:
            raise GroundTruthError("ground truth is an empty list")
        return [answer for item in ground_truth for answer in ground_truths(item, options)]
    if isinstance(ground_truth, bool) or not isinstance(ground_truth, (str, int, float)):
        raise GroundTruthError(f"ground truth of type {type(ground_truth).__name__} "
                               "(expected str, int, float or a list of those)")
    if isinstance(ground_truth, float) and not math.isfinite(ground_truth):
        raise GroundTruthError(f"ground truth is {ground_truth}")
    text = str(ground_truth).strip()
    if not text:
        raise GroundTruthError("ground truth is empty")
    if options and re.fullmatch(_BARE_LETTER, text) and choice_index(text, options) is None:
        raise GroundTruthError(f"ground truth {text!r} names none of the {len(options)} options")
    return [text]


def choice_letter(text: str) -> str | None:
    """The option letter `text` states ("A", "(B)", "C.", "Answer: D", "E) red"), else None."""
    text = text.strip()
    for form in _LETTER_FORMS:
        m = form.match(text)
        if m:
            return m.group(1)
    return None


def option_text(option: str, index: int) -> str:
    """An option's text without a leading label of its own letter ("B. red" at index 1 -> "red")."""
    m = re.match(rf"^\(?{chr(ord('A') + index)}\)?[.:)]\s*(.*)$", option.strip(), re.DOTALL)
    return m.group(1) if m else option.strip()


def _text_choice(text: str, options: Sequence[str]) -> int | None:
    """The single option whose text equals `text` (normalised, or as the same number)."""
    norm = normalize_text(text)
    hits = [i for i, option in enumerate(options)
            if normalize_text(option_text(option, i)) == norm or numbers_match(text, option_text(option, i), 0.0)]
    return hits[0] if len(hits) == 1 else None


def _letter_choice(text: str, options: Sequence[str]) -> int | None:
    letter = choice_letter(text)
    index = None if letter is None else ord(letter) - ord("A")
    return index if index is not None and index < len(options) else None


def choice_index(prediction: str, options: Sequence[str]) -> int | None:
    """The index of the option `prediction` picks, by letter first, then by text; None if none."""
    index = _letter_choice(prediction, options)
    return index if index is not None else _text_choice(prediction, options)


def _match_one(prediction: str, truth: str, options, task: str, rel_tol: float) -> Match:
    if options:
        gold = choice_index(truth, options)
        if gold is not None:
            picked = _letter_choice(prediction, options)
            if picked is not None:
                return Match(picked == gold, CHOICE_LETTER)
            picked = _text_choice(prediction, options)
            if picked is not None:
                return Match(picked == gold, CHOICE_TEXT)
            truth = option_text(options[gold], gold)
    elif re.fullmatch(_BARE_LETTER, truth):
        letter = choice_letter(prediction)
        if letter is not None:
            return Match(letter == choice_letter(truth), CHOICE_LETTER)
    if normalize_text(truth) in _YES_NO:
        words = normalize_text(prediction).split()
        if words and words[0] in _YES_NO and len(_YES_NO.intersection(words)) == 1:
            return Match(words[0] == normalize_text(truth), YES_NO)
    if parse_number(prediction) is not None and parse_number(truth) is not None:
        return Match(numbers_match(prediction, truth, rel_tol), NUMERIC)
    if task == MATH and math_equal(prediction, truth):
        return Match(True, MATH_VERIFY)
    if normalize_text(prediction) == normalize_text(truth):
        return Match(True, STRING)
    return Match(False, MATH_VERIFY if task == MATH else STRING)


def match_answer(prediction: str | None, ground_truth, options: Sequence[str] | None = None,
                 task: str = GENERAL, rel_tol: float = DEFAULT_REL_TOL) -> Match:
    """Whether `prediction` answers `ground_truth`, and which rule decided (see the module doc)."""
    check_task(task)
    truths = ground_truths(ground_truth, options)
    if prediction is None or not prediction.strip():
        return Match(False, NO_ANSWER)
    first = None
    for truth in truths:
        result = _match_one(prediction.strip(), truth, options, task, rel_tol)
        if result.correct:
            return result
        first = first or result
    return first
