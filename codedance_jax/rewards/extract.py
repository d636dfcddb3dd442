"""What the model generated, and the answer in it.

A response is what the model wrote: one string, or the generated assistant segments in order
(the loss-mask runs of a trajectory, see `generated_segments`). Tool output is never part of it, so
a program that prints `<answer>` or `<think>` neither answers nor breaks the format.

Extraction (SPEC section 4): general tasks take the first `<answer>...</answer>`; math tasks take
the last `<answer>` after the last `</think>`, and when there is none, the last `\\boxed{...}`
after the last `</think>` (the format check still charges the missing `<answer>`). An answer that
is empty after stripping counts as no answer. A `\\boxed{...}` inside an answer is unwrapped, so
`<answer>\\boxed{5}</answer>` answers "5".
"""
from __future__ import annotations

import re
from collections.abc import Callable, Sequence

GENERAL, MATH = "general", "math"
TASKS = (GENERAL, MATH)

ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
# Segments are joined with a newline so tags from two turns can never fuse into one.
SEGMENT_JOIN = "\n"


def check_task(task: str) -> str:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    return task


def response_text(response: str | Sequence[str]) -> str:
    """The generated text of a response given as one string or as its generated segments."""
    if isinstance(response, str):
        return response
    segments = list(response)
    if not all(isinstance(s, str) for s in segments):
        raise TypeError("a response must be a str or a sequence of str (the generated segments)")
    return SEGMENT_JOIN.join(segments)


def generated_segments(tokens: Sequence[int], loss_mask: Sequence[int],
                       decode: Callable[[list[int]], str]) -> list[str]:
    """The text of each contiguous run of loss_mask == 1, decoded with `decode`, in order."""
    if len(tokens) != len(loss_mask):
        raise ValueError(f"tokens ({len(tokens)}) and loss_mask ({len(loss_mask)}) differ in length")
    segments, run = [], []
    for token, mask in zip(tokens, loss_mask):
        if mask:
            run.append(int(token))
        elif run:
            segments.append(decode(run))
            run = []
    if run:
        segments.append(decode(run))
    return segments


def after_last_think(text: str) -> str:
    return text.rsplit(THINK_CLOSE, 1)[-1]


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` (or `\\fbox{...}`), braces balanced; None if absent or open."""
    starts = [m.end() for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text)]
    if not starts:
        return None
    start = starts[-1]
    depth = 1
    for i in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[start:i]
    return None


def _clean(answer: str | None) -> str | None:
    if answer is None:
        return None
    boxed = last_boxed(answer)
    answer = (boxed if boxed is not None else answer).strip()
    return answer or None


def answer_tags(text: str, task: str) -> list[str]:
    """The `<answer>` contents that count for `task`, in order."""
    scope = after_last_think(text) if check_task(task) == MATH else text
    return ANSWER.findall(scope)


def extract_answer(response: str | Sequence[str], task: str = GENERAL) -> str | None:
    """The answer the model gave (stripped), or None when it gave none."""
    text = response_text(response)
    answers = answer_tags(text, task)
    if task == GENERAL:
        return _clean(answers[0]) if answers else None
    if answers:
        return _clean(answers[-1])
    return _clean(last_boxed(after_last_think(text)))
