"""Render a conversation in Qwen ChatML into token ids, loss mask and token types.

Turns are ``<|im_start|>{role}\\n{content}<|im_end|>\\n``. A ``tool`` message becomes a user turn
wrapping its content in ``<tool_response>\\n...\\n</tool_response>`` (consecutive tool messages
share one user turn, as in the Qwen chat templates). An image becomes
``<|vision_start|>`` + ``<|image_pad|>`` x (t*h*w/4) + ``<|vision_end|>``.

Text is tokenized in maximal runs that share a loss-mask value, split at images. So the
``<|im_start|>assistant\\n`` header is tokenized apart from the assistant's content, which is
where generation starts at inference; everywhere else the ids equal tokenizing the whole
rendered string at once.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np
from PIL import Image
from transformers import PreTrainedTokenizerBase

from codedance_jax.processing.image import ImageProcessingConfig, image_grid, image_token_count

IMAGE_PLACEHOLDER = "<image>"
ROLES = ("system", "user", "assistant", "tool")
VISION_TOKENS = ("<|vision_start|>", "<|image_pad|>", "<|vision_end|>")


@dataclasses.dataclass
class RenderedChat:
    """One tokenized conversation; all arrays have length L except the image fields."""
    input_ids: np.ndarray          # int32 [L]
    loss_mask: np.ndarray          # int32 [L]: 1 on tokens the model generated (assistant turns)
    mm_token_type_ids: np.ndarray  # int32 [L]: 0 text, 1 image pad
    images: list                   # PIL images in order of appearance
    image_grid_thw: np.ndarray     # int64 [n_images, 3]


@dataclasses.dataclass(frozen=True)
class _Piece:
    """Text or an image, with whether its tokens get loss."""
    content: str | Image.Image
    trainable: bool


def _parse_message(message: Any, index: int) -> tuple[str, list]:
    """(role, parts): parts are text strings and images; None marks a placeholder that takes
    the next image from the conversation's ``images`` list."""
    role = message.get("role") if isinstance(message, dict) else None
    if role not in ROLES:
        raise ValueError(f"message {index}: unknown role {role!r} (expected one of {ROLES})")
    content = message.get("content")
    if isinstance(content, str):
        texts = content.split(IMAGE_PLACEHOLDER)
        parts: list = [texts[0]]
        for text in texts[1:]:
            parts += [None, text]
    elif isinstance(content, list):
        parts = []
        for part_index, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                parts.append(part["text"])
            elif kind == "image":
                parts.append(part.get("image"))
            else:
                raise ValueError(f"message {index}, part {part_index}: unknown part type {kind!r} "
                                 "(expected 'text' or 'image')")
    else:
        raise ValueError(f"message {index}: content must be a string or a list of parts, "
                         f"got {type(content).__name__}")
    for part in parts:
        if isinstance(part, str) and any(token in part for token in VISION_TOKENS):
            raise ValueError(f"message {index}: text contains a literal vision token {VISION_TOKENS}; "
                             f"give images as {IMAGE_PLACEHOLDER!r} placeholders or image parts")
        if not isinstance(part, str) and role == "assistant":
            raise ValueError(f"message {index}: assistant messages cannot contain images")
        if part is not None and not isinstance(part, (str, Image.Image)):
            raise ValueError(f"message {index}: image is a {type(part).__name__}, expected a PIL image")
    return role, parts


def _pieces(messages: Sequence[dict], images: Sequence, add_generation_prompt: bool) -> list[_Piece]:
    """The conversation as ChatML pieces; placeholders are resolved against ``images``."""
    parsed = [_parse_message(message, index) for index, message in enumerate(messages)]
    placeholders = sum(part is None for _, parts in parsed for part in parts)
    if placeholders != len(images):
        raise ValueError(f"the conversation has {placeholders} image placeholders but {len(images)} images")
    for index, image in enumerate(images):
        if not isinstance(image, Image.Image):
            raise ValueError(f"images[{index}] is a {type(image).__name__}, expected a PIL image")
    unused_images = iter(images)
    roles = [role for role, _ in parsed]
    pieces: list[_Piece] = []
    for index, (role, parts) in enumerate(parsed):
        trainable = role == "assistant"
        if role == "tool":
            opening = "" if index > 0 and roles[index - 1] == "tool" else "<|im_start|>user"
            pieces.append(_Piece(opening + "\n<tool_response>\n", False))
        else:
            pieces.append(_Piece(f"<|im_start|>{role}\n", False))
        for part in parts:
            if isinstance(part, str):
                pieces.append(_Piece(part, trainable))
            else:
                pieces.append(_Piece(next(unused_images) if part is None else part, False))
        if role == "tool":
            closing = "" if index + 1 < len(roles) and roles[index + 1] == "tool" else "<|im_end|>\n"
            pieces.append(_Piece("\n</tool_response>" + closing, False))
        else:
            pieces += [_Piece("<|im_end|>", trainable), _Piece("\n", False)]
    if add_generation_prompt:
        pieces.append(_Piece("<|im_start|>assistant\n", False))
    return pieces


def _merge_text(pieces: list[_Piece]) -> list[_Piece]:
    """Joins neighbouring text pieces with the same loss value so they tokenize as one string."""
    merged: list[_Piece] = []
    for piece in pieces:
        if (merged and isinstance(piece.content, str) and isinstance(merged[-1].content, str)
                and merged[-1].trainable == piece.trainable):
            merged[-1] = _Piece(merged[-1].content + piece.content, piece.trainable)
        elif not (isinstance(piece.content, str) and piece.content == ""):
            merged.append(piece)
    return merged


def _special_id(tokenizer: PreTrainedTokenizerBase, token: str) -> int:
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or token_id == tokenizer.unk_token_id:
        raise ValueError(f"the tokenizer has no {token} token")
    return token_id


def render_chat(messages: Sequence[dict], tokenizer: PreTrainedTokenizerBase, images: Sequence = (), *,
                image_config: ImageProcessingConfig = ImageProcessingConfig(),
                add_generation_prompt: bool = False, system_prompt: str | None = None) -> RenderedChat:
    """Tokenizes ``messages`` (dicts with ``role`` in system/user/assistant/tool and ``content``).

    Content is a string with ``<image>`` placeholders or a list of parts ``{"type": "text",
    "text": ...}`` / ``{"type": "image"}``; placeholders take ``images`` in order, and an image part
    may instead carry its own PIL image as ``"image"``. ``system_prompt`` adds a system turn unless
    the first message is one. ``add_generation_prompt`` ends with ``<|im_start|>assistant\\n``.

    Raises ValueError naming the message for an unknown role or part type, literal vision
    tokens in text, or images in assistant turns, and naming the counts when placeholders and
    images disagree.
    """
    messages = list(messages)
    if system_prompt is not None and not (messages and messages[0].get("role") == "system"):
        messages.insert(0, {"role": "system", "content": system_prompt})
    pad_id = _special_id(tokenizer, "<|image_pad|>")
    start_id = _special_id(tokenizer, "<|vision_start|>")
    end_id = _special_id(tokenizer, "<|vision_end|>")

    ids: list[int] = []
    loss: list[int] = []
    types: list[int] = []
    found_images, grids = [], []
    for piece in _merge_text(_pieces(messages, images, add_generation_prompt)):
        if isinstance(piece.content, Image.Image):
            try:
                grid = image_grid(piece.content, image_config)
            except ValueError as err:
                raise ValueError(f"image {len(found_images)} of the conversation: {err}") from err
            run = [start_id] + [pad_id] * image_token_count(grid, image_config.merge_size) + [end_id]
            found_images.append(piece.content)
            grids.append(grid)
            ids += run
            loss += [0] * len(run)
            types += [0] + [1] * (len(run) - 2) + [0]
            continue
        token_ids = tokenizer(piece.content, add_special_tokens=False)["input_ids"]
        ids += token_ids
        loss += [int(piece.trainable)] * len(token_ids)
        types += [0] * len(token_ids)
    return RenderedChat(
        input_ids=np.array(ids, np.int32), loss_mask=np.array(loss, np.int32),
        mm_token_type_ids=np.array(types, np.int32), images=found_images,
        image_grid_thw=np.array(grids, np.int64).reshape(-1, 3))
