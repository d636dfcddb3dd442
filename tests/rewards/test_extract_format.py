"""Answer extraction, generated segments and the format checks of SPEC section 4."""
import pytest

from codedance_jax import rewards
from codedance_jax.rewards import format as fmt


def test_generated_segments_are_the_loss_mask_runs_in_order():
    tokens = [10, 11, 12, 13, 14, 15, 16, 17]
    mask = [0, 1, 1, 0, 0, 1, 0, 1]
    assert rewards.generated_segments(tokens, mask, lambda ids: ",".join(map(str, ids))) == ["11,12", "15", "17"]
    assert rewards.generated_segments([], [], str) == []
    with pytest.raises(ValueError, match="differ in length"):
        rewards.generated_segments([1, 2], [1], str)


def test_tool_text_that_prints_an_answer_is_never_seen():
    # Prompt, a code turn, a tool turn whose program printed tags, the answer turn.
    pieces = [("<prompt>", 0), ("<think>count</think><code>print(notes)</code>", 1),
              ("<tool_response><answer>7</answer><think></tool_response>", 0), ("<answer>3</answer>", 1)]
    tokens, mask = [], []
    for text, trainable in pieces:
        tokens += [ord(c) for c in text]
        mask += [trainable] * len(text)
    segments = rewards.generated_segments(tokens, mask, lambda ids: "".join(map(chr, ids)))
    assert segments == [pieces[1][0], pieces[3][0]]
    score = rewards.score_response(segments, "3")
    assert (score.acc, score.format_error, score.answer) == (1, False, "3")
    math_score = rewards.score_response(segments, "3", task="math")
    assert (math_score.acc, math_score.format_error) == (1, True)  # the code after the last </think>
    # Scoring the decoded whole text (the release's way) would take the tool's answer and tags.
    whole = rewards.score_response("".join(text for text, _ in pieces[1:]), "3")
    assert (whole.answer, whole.format_error) == ("7", True)


def test_general_extraction_takes_the_first_answer_and_unwraps_boxed():
    assert rewards.extract_answer("<think>x</think><answer> red </answer>") == "red"
    assert rewards.extract_answer(["<answer>A</answer>", "<answer>B</answer>"]) == "A"
    assert rewards.extract_answer("<answer>\\boxed{5}</answer>") == "5"
    assert rewards.extract_answer("<answer>  </answer>") is None
    assert rewards.extract_answer("no tags \\boxed{5}") is None  # boxed fallback is for math only


def test_math_extraction_takes_the_last_answer_after_the_last_think_then_boxed():
    text = "<think>a</think><answer>1</answer><think>b</think><answer>2</answer><answer>3</answer>"
    assert rewards.extract_answer(text, task="math") == "3"
    assert rewards.extract_answer("<answer>1</answer><think>b</think>so", task="math") is None
    assert rewards.extract_answer("<think>b</think>so \\boxed{\\frac{1}{2}} and \\boxed{x^{2}}", task="math") == "x^{2}"
    assert rewards.last_boxed("\\boxed{unclosed") is None
    with pytest.raises(ValueError, match="unknown task"):
        rewards.extract_answer("x", task="chart")


@pytest.mark.parametrize("text, reasons", [
    ("<think>a</think><answer>x</answer>", ()),
    ("<answer>x</answer>", ()),
    ("<think>a<answer>x</answer>", (fmt.THINK_TAGS,)),
    ("<think>a</think><answer>x</answer><answer>y</answer>", (fmt.ANSWER_TAGS,)),
    ("<think>a</think><answer>x", (fmt.ANSWER_TAGS, fmt.NO_ANSWER)),
    ("<think>a</think>", (fmt.ANSWER_TAGS, fmt.NO_ANSWER)),
    ("<answer></answer>", (fmt.NO_ANSWER,)),
    ("<answer>" + "y" * 999 + "</answer>", ()),
    ("<answer>" + "y" * 1000 + "</answer>", (fmt.ANSWER_TOO_LONG,)),
])
def test_general_format_rules(text, reasons):
    answer = rewards.extract_answer(text)
    assert rewards.format_errors(text, answer, "general") == reasons


@pytest.mark.parametrize("text, reasons", [
    ("<think>a</think><answer>1</answer><think>b</think><answer>2</answer>", ()),
    ("<think>a</think><answer>1</answer><answer>2</answer>", ()),  # several answers are allowed
    ("<think>a</think><think>b<answer>1</answer>", (fmt.THINK_TAGS,)),
    ("<answer>1</answer><think>b</think>done", (fmt.NO_ANSWER,)),
    ("<think>b</think>\\boxed{2}", (fmt.NO_ANSWER,)),
    ("<think>b</think><code>print(1)</code><answer>1</answer>", (fmt.TOOL_CALL_AFTER_THINK,)),
    ("<think>b</think><tool_call>{}</tool_call><answer>1</answer>", (fmt.TOOL_CALL_AFTER_THINK,)),
    ("<think>b<code>print(1)</code></think><answer>1</answer>", ()),
])
def test_math_format_rules(text, reasons):
    answer = rewards.extract_answer(text, "math")
    assert rewards.format_errors(text, answer, "math") == reasons
