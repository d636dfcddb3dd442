"""Reading tool calls out of an assistant turn and writing the tool turn that answers them.

Call formats (SPEC section 2): `<code>\\n```python\\n...\\n```\\n</code>`, the Hermes form
`<tool_call>{"name": "execute_python_code", "arguments": {"code": "..."}}</tool_call>`, and as a
fallback the first ```python fenced block. The tool turn is a ChatML user turn
`<tool_response>\\n...\\n</tool_response>` (rendered by `render_chat`, images included), followed
by the generation prompt for the next assistant turn. All wording is in `ToolTurnFormat`. The
format and the renderer live in `codedance_jax.processing.tool_turns`, shared with the SFT data.
"""
from __future__ import annotations

import dataclasses
import json
import re

# Re-exported: the engine, eval and benchmarks import the renderer from here.
from codedance_jax.processing.tool_turns import (ToolTurnFormat, render_tool_turn,  # noqa: F401
                                                 tool_turn_content)
from rollout.trajectory import TOOL_ERROR, TOOL_OK, TOOL_TIMEOUT

TOOL_NAME = "execute_python_code"
CODE_TAG = re.compile(r"<code>(.*?)</code>", re.DOTALL)
HERMES_TAG = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)
FENCED_BLOCK = re.compile(r"```[ \t]*(?:python|py)?[ \t]*\n(.*?)```", re.DOTALL)
PYTHON_BLOCK = re.compile(r"```[ \t]*python[ \t]*\n(.*?)```", re.DOTALL)
ANSWER = re.compile(r"<answer>.*?</answer>", re.DOTALL)

DEFAULT_SYSTEM_PROMPT = (
    "You answer questions about images. Think step by step inside <think></think>. When it helps, "
    "write Python inside <code>\n```python\n...\n```\n</code>; it runs in a persistent interpreter where "
    "`input_image` is the image as a PIL image (also saved as input_image.jpg). Printed text and shown "
    "images (plt.show(), image.show(), or a PIL image as the last expression) come back to you. "
    "Give the final answer inside <answer></answer>.")


@dataclasses.dataclass(frozen=True)
class ParsedCall:
    code: str | None
    error: str | None = None  # why the call could not be read


def has_final_answer(turn_text: str) -> bool:
    return ANSWER.search(turn_text) is not None


def _code_in_tag(body: str) -> ParsedCall:
    fenced = FENCED_BLOCK.search(body)
    code = fenced.group(1) if fenced else body
    if not code.strip():
        return ParsedCall(None, "the <code> block holds no code")
    return ParsedCall(code)


def _code_in_hermes(body: str) -> ParsedCall:
    try:
        call = json.loads(body)
        if not isinstance(call, dict) or call.get("name") != TOOL_NAME:
            raise ValueError(f"expected a JSON object with \"name\": \"{TOOL_NAME}\"")
        arguments = call.get("arguments")
        if isinstance(arguments, str):  # some writers double-encode the arguments
            arguments = json.loads(arguments)
        code = arguments.get("code") if isinstance(arguments, dict) else None
        if not isinstance(code, str) or not code.strip():
            raise ValueError("\"arguments\" must hold a non-empty string \"code\"")
    except ValueError as err:  # json.JSONDecodeError is a ValueError
        return ParsedCall(None, f"invalid <tool_call>: {err}")
    return ParsedCall(code)


def parse_tool_call(turn_text: str) -> ParsedCall | None:
    """The tool call of an assistant turn; None when the turn makes no call."""
    tagged = CODE_TAG.search(turn_text)
    if tagged:
        return _code_in_tag(tagged.group(1))
    hermes = HERMES_TAG.search(turn_text)
    if hermes:
        return _code_in_hermes(hermes.group(1).strip())
    fenced = PYTHON_BLOCK.search(turn_text)
    return ParsedCall(fenced.group(1)) if fenced else None


def outcome_of(error: str | None, timed_out: bool) -> str:
    if timed_out:
        return TOOL_TIMEOUT
    return TOOL_OK if error is None else TOOL_ERROR
