"""The tool turn: what a code call's result looks like to the model, in SFT data and in rollout.

A tool turn is a ChatML user turn `<tool_response>\\n...\\n</tool_response>` rendered by
`render_chat` (images included), followed by the generation prompt for the next assistant turn.
All wording is in `ToolTurnFormat`. The rollout engine renders the calls it runs with
`render_tool_turn`; data builders write `tool_message` into their records, so a model is trained
on the same tokens it later sees in rollout.
"""
from __future__ import annotations

import dataclasses
import re

from transformers import PreTrainedTokenizerBase

from codedance_jax.processing.chat import RenderedChat, render_chat
from codedance_jax.processing.image import ImageProcessingConfig

# Outcome of one tool call; everything but OK counts as a failed call for rewards.
TOOL_OK, TOOL_ERROR, TOOL_TIMEOUT, TOOL_PARSE_ERROR = "ok", "error", "timeout", "parse_error"

# Added tokens of the Qwen vocabulary (`<|...|>`, `<tool_call>`, `</tool_response>`, ...) and the
# `<image>` placeholder of string content. Code output containing them would forge chat structure
# or image pads, so a space is put after the `<`.
SPECIAL_TOKEN_TEXT = re.compile(r"<(?=/?(?:\|[a-z_]+\||tool_call|tool_response|think|image)>)")


@dataclasses.dataclass
class ToolCall:
    code: str | None           # None when the call could not be parsed
    outcome: str               # TOOL_OK / TOOL_ERROR / TOOL_TIMEOUT / TOOL_PARSE_ERROR
    error: str | None = None
    stdout: str = ""
    stderr: str = ""
    num_images: int = 0        # images shown to the model
    notes: list[str] = dataclasses.field(default_factory=list)  # images dropped and why
    duration_s: float = 0.0

    @property
    def failed(self) -> bool:
        return self.outcome != TOOL_OK


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


def tool_message(call: ToolCall, fmt: ToolTurnFormat = ToolTurnFormat(), last_turn: bool = False) -> dict:
    """The tool turn of an image-free result as a record message. Its content is one string, as in
    the release's records (parquet needs one type per column); `render_chat` tokenizes it exactly
    as it tokenizes the engine's parts, which are all text and merge into one run."""
    content = tool_turn_content(call, [], fmt, last_turn)
    return {"role": "tool", "content": "".join(part["text"] for part in content)}


def render_tool_turn(call: ToolCall, images: list, tokenizer: PreTrainedTokenizerBase, fmt: ToolTurnFormat,
                     image_config: ImageProcessingConfig, last_turn: bool) -> RenderedChat:
    """Tokens of the tool turn and the next assistant header (`<|im_start|>user ... <|im_start|>assistant\\n`)."""
    message = {"role": "tool", "content": tool_turn_content(call, images, fmt, last_turn)}
    return render_chat([message], tokenizer, image_config=image_config, add_generation_prompt=True)
