"""The turns of a synthetic SFT record: a direct answer, or code, its tool turn and the answer.

Tool turns are written by `tool_message`, the renderer the rollout engine uses, so SFT trains on
the tokens rollout produces. A failed first call is a syntax error (an unclosed parenthesis, a
common slip): its error text is what the sandbox reports for a session's first cell, derived here
with the same parser and traceback formatting, without running anything.
"""
from __future__ import annotations

import ast
import dataclasses
import traceback

from PIL import Image

from codedance_jax.processing.tool_turns import TOOL_ERROR, TOOL_OK, ToolCall, tool_message

EASY, HARD = "easy", "hard"
FIRST_CELL = "<cell 1>"  # the sandbox's name for a session's first call (sandbox/worker.py)


@dataclasses.dataclass(frozen=True)
class Task:
    """One item of the suite before it becomes a record."""
    kind: str              # e.g. "count_many"; the eval breaks accuracy down by it
    difficulty: str        # EASY (answered directly) or HARD (answered with code)
    image: Image.Image
    question: str
    answer: str
    replies: list[dict]    # the assistant and tool turns after the question


def direct_answer(thought: str, answer: str) -> list[dict]:
    return [{"role": "assistant", "content": f"<think>{thought}</think>\n<answer>{answer}</answer>"}]


def _code_turn(thought: str, code: str) -> dict:
    return {"role": "assistant", "content": f"<think>{thought}</think>\n<code>\n```python\n{code}\n```\n</code>"}


def syntax_error_call(code: str) -> ToolCall:
    """The call the engine records when the sandbox runs ``code`` (a syntax error) as a first cell."""
    try:
        ast.parse(code, FIRST_CELL, "exec")
    except SyntaxError as exc:
        return ToolCall(code=code, outcome=TOOL_ERROR, error=f"{type(exc).__name__}: {exc}",
                        stderr="".join(traceback.format_exception_only(type(exc), exc)))
    raise ValueError(f"code meant to fail parses fine:\n{code}")


def broken(code: str) -> str:
    """``code`` with the closing parenthesis of its final print dropped."""
    if not code.endswith(")"):
        raise ValueError(f"code does not end with a call to break:\n{code}")
    return code[:-1]


def code_answer(plan: str, code: str, conclusion: str, answer: str, fail_first: bool = False) -> list[dict]:
    """A code turn, the tool turn with what the code prints (the answer), and the final answer;
    with ``fail_first``, a first attempt with a syntax error, its failed tool turn and the fix."""
    turns = []
    if fail_first:
        first = broken(code)
        turns += [_code_turn(plan, first), tool_message(syntax_error_call(first)),
                  _code_turn("I left a parenthesis unclosed; the same code with it closed.", code)]
    else:
        turns.append(_code_turn(plan, code))
    return turns + [tool_message(ToolCall(code=code, outcome=TOOL_OK, stdout=answer + "\n")),
                    {"role": "assistant", "content": f"<think>{conclusion}</think>\n<answer>{answer}</answer>"}]
