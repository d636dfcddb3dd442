"""score_response: accuracy, format error and base score on hand-computed cases (SPEC section 4)."""
import pytest

from codedance_jax import rewards


@pytest.mark.parametrize("response, truth, task, acc, fmt, base", [
    ("<think>a</think><answer>5</answer>", "5", "general", 1, False, 1.0),
    ("<think>a</think><answer>6</answer>", "5", "general", 0, False, 0.0),
    ("<think>a<answer>5</answer>", "5", "general", 1, True, 0.8),
    ("<think>a</think>5", "5", "general", 0, True, -0.2),
    ("<think>a</think><answer>5</answer><answer>5</answer>", "5", "general", 1, True, 0.8),
    ("<think>a</think><answer>5</answer>", "5", "math", 1, False, 1.2),
    ("<think>a</think><answer>6</answer>", "5", "math", 0, False, 0.0),
    ("<think>a</think><answer>4</answer><answer>5</answer>", "5", "math", 1, False, 1.2),  # the last counts
    ("<think>a</think>so \\boxed{5}", "5", "math", 1, True, 0.8),  # boxed fallback, format still charged
    ("<think>a</think><think>b<answer>5</answer>", "5", "math", 1, True, 0.8),
    ("<think>a</think>no answer", "5", "math", 0, True, -0.4),
])
def test_base_score(response, truth, task, acc, fmt, base):
    score = rewards.score_response(response, truth, task=task)
    assert (score.acc, score.format_error) == (acc, fmt)
    assert score.base == pytest.approx(base)


def test_an_answer_of_1000_characters_is_a_format_error_and_wrong_even_when_right():
    answer = "5" + " " * 998 + "."
    assert len(answer) == 1000
    score = rewards.score_response(f"<answer>{answer}</answer>", "5")
    assert (score.acc, score.format_error, score.base) == (0, True, pytest.approx(-0.2))
    assert rewards.score_response(f"<answer>5{' ' * 997}.</answer>", "5").acc == 1


def test_segments_are_scored_as_one_response():
    segments = ["<think>look</think><code>\n```python\nprint(1)\n```\n</code>", "<think>ok</think><answer>B</answer>"]
    score = rewards.score_response(segments, "blue", options=["red", "blue"])
    assert (score.acc, score.format_error, score.answer, score.rule) == (1, False, "B", "choice_letter")


def test_no_answer_rule_and_a_bad_ground_truth():
    assert rewards.score_response("<think>a</think>", "5").rule == "no_answer"
    with pytest.raises(rewards.GroundTruthError):
        rewards.score_response("<think>a</think>", None)  # refused even when nothing was answered
    with pytest.raises(TypeError):
        rewards.score_response(["<answer>1</answer>", None], "1")
