"""Reading tool calls out of an assistant turn and writing the tool turn that answers them.

Call formats (SPEC section 2): `<code>\\n```python\\n...\\n```\\n</code>`, the Hermes form
`<tool_call>{"name": "execute_python_code", "arguments": {"code": "..."}}</tool_call>`, and as a
fallback the first ```python fenced block. The tool turn is a ChatML user turn
`<tool_response>\\n...\\n</tool_response>` (rendered by `render_chat`, images included), followed
by the generation prompt for the next assistant turn. All wording is in `ToolTurnFormat`.
"""
from __future__ import annotations

import dataclasses
import json
import re

from transformers import PreTrainedTokenizerBase

from codedance_jax.processing.chat import RenderedChat, render_chat
from codedance_jax.processing.image import ImageProcessingConfig
from rollout.trajectory import TOOL_ERROR, TOOL_OK, TOOL_PARSE_ERROR, TOOL_TIMEOUT, ToolCall

TOOL_NAME = "execute_python_code"
CODE_TAG = re.compile(r"<code>(.*?)</code>", re.DOTALL)
HERMES_TAG = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)
FENCED_BLOCK = re.compile(r"```[ \t]*(?:python|py)?[ \t]*\n(.*?)```", re.DOTALL)
PYTHON_BLOCK = re.compile(r"```[ \t]*python[ \t]*\n(.*?)```", re.DOTALL)
ANSWER = re.compile(r"<answer>.*?</answer>", re.DOTALL)
# Added tokens of the Qwen vocabulary (`<|...|>`, `<tool_call>`, `</tool_response>`, ...). Code output
# containing them would forge chat structure or image pads, so a space is put after the `<`.
SPECIAL_TOKEN_TEXT = re.compile(r"<(?=/?(?:\|[a-z_]+\||tool_call|tool_response|think)>)")

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


@dataclasses.dataclass(frozen=True)
class ToolTurnFormat:
    """Wording of tool turns. `{error}`, `{index}`, `{width}`, `{height}` are filled in."""
    success: str = "The code ran without errors."
    failure: str = "The code failed with {error}"
    timeout: str = "The code was stopped because it ran past the time limit."
    parse_error: str = "The tool call could not be run: {error}"
    stdout_label: str = "Printed output:"
    stderr_label: str = "Messages on stderr:"
    image_caption: str = "Image {index} ({width}x{height} px):"
    nudge: str = ("Consider what this result shows. If it is not enough to answer, change your approach "
                  "and try again.")
    final_turn: str = ("This is your last turn: do not write more code. Give your final answer now, "
                       "inside <answer></answer>.")
    max_text_chars: int = 4000  # per stream; longer output keeps its head and tail


def _clip(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n[... {len(text) - 2 * half} characters cut ...]\n{text[-half:]}"


def _safe(text: str, limit: int) -> str:
    return SPECIAL_TOKEN_TEXT.sub("< ", _clip(text, limit)).rstrip("\n")


def tool_turn_content(call: ToolCall, images: list, fmt: ToolTurnFormat, last_turn: bool) -> list[dict]:
    """Message parts of the tool response: outcome, output, captioned images, notes, nudge."""
    if call.outcome == TOOL_PARSE_ERROR:
        lines = [fmt.parse_error.format(error=_safe(call.error or "", fmt.max_text_chars))]
    elif call.outcome == TOOL_TIMEOUT:
        lines = [fmt.timeout]
    elif call.outcome == TOOL_ERROR:
        lines = [fmt.failure.format(error=_safe(call.error or "", fmt.max_text_chars))]
    else:
        lines = [fmt.success]
    if call.stdout.strip():
        lines += [fmt.stdout_label, _safe(call.stdout, fmt.max_text_chars)]
    if call.stderr.strip():
        lines += [fmt.stderr_label, _safe(call.stderr, fmt.max_text_chars)]
    parts = [{"type": "text", "text": "\n".join(lines)}]
    for index, image in enumerate(images, start=1):
        caption = fmt.image_caption.format(index=index, width=image.width, height=image.height)
        parts += [{"type": "text", "text": "\n" + caption}, {"type": "image", "image": image}]
    closing = [*call.notes, fmt.final_turn if last_turn else fmt.nudge]
    parts.append({"type": "text", "text": "\n" + "\n".join(closing)})
    return parts


def render_tool_turn(call: ToolCall, images: list, tokenizer: PreTrainedTokenizerBase, fmt: ToolTurnFormat,
                     image_config: ImageProcessingConfig, last_turn: bool) -> RenderedChat:
    """Tokens of the tool turn and the next assistant header (`<|im_start|>user ... <|im_start|>assistant\\n`)."""
    message = {"role": "tool", "content": tool_turn_content(call, images, fmt, last_turn)}
    return render_chat([message], tokenizer, image_config=image_config, add_generation_prompt=True)


def outcome_of(error: str | None, timed_out: bool) -> str:
    if timed_out:
        return TOOL_TIMEOUT
    return TOOL_OK if error is None else TOOL_ERROR
