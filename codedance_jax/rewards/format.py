"""Format checks of a generated response (SPEC section 4), as named reasons so metrics can count them.

General tasks: `<think>` / `</think>` counts differ; not exactly one `<answer>` and one `</answer>`;
no answer extracted; an answer of MAX_ANSWER_CHARS or more (which also forces acc 0).
Math tasks: `<think>` / `</think>` counts differ; no `<answer>...</answer>` after the last
`</think>`; a tool call (`<code>` or `<tool_call>`) after the last `</think>`.
"""
from __future__ import annotations

import re

from codedance_jax.rewards.extract import GENERAL, THINK_CLOSE, THINK_OPEN, after_last_think, answer_tags, check_task

MAX_ANSWER_CHARS = 1000

THINK_TAGS = "think_tags_unbalanced"
ANSWER_TAGS = "not_one_answer_tag"
NO_ANSWER = "no_answer"
ANSWER_TOO_LONG = "answer_too_long"
TOOL_CALL_AFTER_THINK = "tool_call_after_think"

# The release checks the Hermes form only; our model also writes `<code>` blocks (SPEC section 2).
TOOL_CALL_TAG = re.compile(r"<tool_call>|<code>")


def format_errors(text: str, answer: str | None, task: str = GENERAL) -> tuple[str, ...]:
    """Reasons the generated `text` (with its extracted `answer`) breaks the task's format; () if none."""
    reasons = []
    if text.count(THINK_OPEN) != text.count(THINK_CLOSE):
        reasons.append(THINK_TAGS)
    if check_task(task) == GENERAL:
        if text.count("<answer>") != 1 or text.count("</answer>") != 1:
            reasons.append(ANSWER_TAGS)
        if answer is None:
            reasons.append(NO_ANSWER)
        elif len(answer) >= MAX_ANSWER_CHARS:
            reasons.append(ANSWER_TOO_LONG)
    else:
        if not answer_tags(text, task):
            reasons.append(NO_ANSWER)
        if TOOL_CALL_TAG.search(after_last_think(text)):
            reasons.append(TOOL_CALL_AFTER_THINK)
    return tuple(reasons)
