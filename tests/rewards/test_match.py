"""The one answer matcher: choices, numbers, strings, math-verify, ground-truth forms."""
import threading

import pytest

from codedance_jax import rewards
from codedance_jax.rewards.match import CHOICE_LETTER, CHOICE_TEXT, MATH_VERIFY, NO_ANSWER, NUMERIC, STRING, YES_NO

OPTIONS = ["red", "blue", "12", "the green one"]


@pytest.mark.parametrize("prediction, letter", [
    ("A", "A"), ("(B)", "B"), ("C.", "C"), ("D)", "D"), ("Answer: A", "A"), ("answer:(B)", "B"),
    ("The answer is (C)", "C"), ("Option D", "D"), ("B. blue", "B"), ("(A) red", "A"),
    ("a", None), ("A cat", None), ("AB", None), ("I think B", None),
])
def test_choice_letter_forms(prediction, letter):
    assert rewards.choice_letter(prediction) == letter


@pytest.mark.parametrize("prediction, truth, correct, rule", [
    ("B", "B", True, CHOICE_LETTER),
    ("(B)", "blue", True, CHOICE_LETTER),         # ground truth given as the option text
    ("Answer: A", "B", False, CHOICE_LETTER),
    ("Blue.", "B", True, CHOICE_TEXT),
    ("green one", "D", True, CHOICE_TEXT),        # articles and punctuation normalised
    ("12 cm", "C", True, CHOICE_TEXT),            # the same number as the option
    ("E", "A", False, STRING),                    # no such option: compared with "red" as text
    ("crimson", "A", False, STRING),
])
def test_multiple_choice_by_letter_or_option_text(prediction, truth, correct, rule):
    assert rewards.match_answer(prediction, truth, options=OPTIONS) == rewards.Match(correct, rule)


def test_options_carrying_their_own_labels():
    options = ["A. 3 cm", "B. 5 cm"]
    assert rewards.option_text(options[1], 1) == "5 cm"
    assert rewards.choice_index("5 cm", options) == 1
    assert rewards.match_answer("5", "B", options=options) == rewards.Match(True, CHOICE_TEXT)
    assert rewards.choice_index("7 cm", options) is None


def test_letter_ground_truth_without_options():
    assert rewards.match_answer("The answer is (C)", "C") == rewards.Match(True, CHOICE_LETTER)
    assert rewards.match_answer("(D)", "C") == rewards.Match(False, CHOICE_LETTER)


@pytest.mark.parametrize("prediction, truth, correct", [
    ("1", "10", False), ("10", "1", False), ("10", "10", True), ("10.0", "10", True),
    ("1,234", "1234", True), ("1,234", "1.234", False), ("$1,234.50", "1234.5", True),
    ("45%", "0.45", True), ("45%", "45", True), ("0.45", "45%", True), ("4.5%", "45%", False),
    ("12 cm", "12", True), ("12 cm", "13 cm", False), ("-3", "3", False), ("3/4", "0.75", True),
    ("9998", "9999", False), ("0.30000000000000004", "0.3", True), ("3.1416", "3.14159", True),
    ("3.14", "3.14159", False),
])
def test_numbers(prediction, truth, correct):
    assert rewards.match_answer(prediction, truth) == rewards.Match(correct, NUMERIC)


def test_relative_tolerance_is_configurable():
    # ChartQA relaxed accuracy: within 5% of the ground truth.
    assert rewards.match_answer("104.9", "100", rel_tol=0.05).correct
    assert not rewards.match_answer("105.1", "100", rel_tol=0.05).correct
    assert not rewards.match_answer("100.01", "100", rel_tol=0.0).correct
    assert rewards.numbers_match("7", 7, 0.0)


@pytest.mark.parametrize("prediction, truth, correct", [
    ("The Red car.", "red car", True), ("a dog", "Dog", True), ("dogs", "dog", False),
    ("  New   York ", "new york", True), ("the", "The", True), ("left", "right", False),
])
def test_normalised_strings(prediction, truth, correct):
    assert rewards.match_answer(prediction, truth) == rewards.Match(correct, STRING)


@pytest.mark.parametrize("prediction, truth, correct, rule", [
    ("Yes", "yes", True, YES_NO), ("Yes, the kite is brown.", "yes", True, YES_NO), ("no.", "Yes", False, YES_NO),
    ("No, not yes", "no", False, STRING),  # says both: left to the string rule
    ("I think yes", "yes", False, STRING),
])
def test_yes_no(prediction, truth, correct, rule):
    assert rewards.match_answer(prediction, truth) == rewards.Match(correct, rule)


def test_normalize_text_and_parse_number_helpers():
    assert rewards.normalize_text("The  3.5 kg, box!") == "3.5 kg box"
    assert rewards.normalize_text("A") == "a"  # an article alone is kept
    assert [rewards.parse_number(s) for s in ["1,234", "45%", "12 cm", "−2", "2 or 3", "1,23", "abc", 7]] == \
        [1234.0, 45.0, 12.0, -2.0, None, None, None, 7.0]


@pytest.mark.parametrize("prediction, truth", [
    ("0.5", "\\frac{1}{2}"), ("\\frac{1}{2}", "0.5"), ("\\dfrac12", "1/2"), ("1+x", "x+1"),
    ("\\sqrt{2}/2", "\\frac{\\sqrt{2}}{2}"), ("x = 3", "3"), ("\\{2,1\\}", "\\{1,2\\}"), ("2\\pi", "6.283185307"),
])
def test_math_verify_equivalences(prediction, truth):
    assert rewards.match_answer(prediction, truth, task="math") == rewards.Match(True, MATH_VERIFY)


def test_math_tasks_fall_back_to_numbers_and_strings():
    assert rewards.match_answer("1", "10", task="math") == rewards.Match(False, NUMERIC)
    assert rewards.match_answer("x^2", "x^3", task="math") == rewards.Match(False, MATH_VERIFY)
    assert rewards.match_answer("B", "B", options=["1", "2"], task="math") == rewards.Match(True, CHOICE_LETTER)


def test_overlong_math_answers_skip_math_verify():
    from codedance_jax.rewards.mathverify import MAX_CHARS
    padded = "1+x" + "+0" * MAX_CHARS  # equal to x+1, but too long to hand to sympy
    assert rewards.match_answer(padded, "x+1", task="math") == rewards.Match(False, MATH_VERIFY)
    assert rewards.match_answer("1+x+0", "x+1", task="math") == rewards.Match(True, MATH_VERIFY)


def test_math_verify_runs_outside_the_main_thread():
    # math-verify's SIGALRM timeouts only work in the main thread; the matcher turns them off there.
    results = []
    worker = threading.Thread(target=lambda: results.append(rewards.match_answer("0.5", "\\frac{1}{2}", task="math")))
    worker.start()
    worker.join(60)
    assert results == [rewards.Match(True, MATH_VERIFY)]


def test_ground_truth_forms():
    assert rewards.match_answer("7", 7) == rewards.Match(True, NUMERIC)
    assert rewards.match_answer("0.5", 0.5) == rewards.Match(True, NUMERIC)
    assert rewards.match_answer("dog", ["cat", "dog"]) == rewards.Match(True, STRING)
    assert rewards.match_answer("cow", ["cat", 3]) == rewards.Match(False, STRING)  # the first one's rule
    assert rewards.match_answer(None, "x") == rewards.Match(False, NO_ANSWER)
    assert rewards.match_answer("  ", "x") == rewards.Match(False, NO_ANSWER)


@pytest.mark.parametrize("truth, message", [
    (None, "NoneType"), ("", "empty"), ("   ", "empty"), ([], "empty list"), (float("nan"), "nan"),
    ({"answer": 1}, "dict"), (True, "bool"), (["a", None], "NoneType"),
])
def test_unusable_ground_truth_is_refused(truth, message):
    with pytest.raises(rewards.GroundTruthError, match=message):
        rewards.match_answer("x", truth)


def test_a_letter_naming_no_option_is_refused():
    with pytest.raises(rewards.GroundTruthError, match="'E' names none of the 4 options"):
        rewards.match_answer("A", "E", options=OPTIONS)
    with pytest.raises(rewards.GroundTruthError, match="'E'"):
        rewards.score_response("<think>no answer</think>", "E", options=OPTIONS)
    assert rewards.match_answer("B", "E", options=["D", "E"]) == rewards.Match(True, CHOICE_LETTER)  # "E" is a text
