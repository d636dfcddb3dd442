"""What a rollout produces: the whole token sequence with its loss mask and sampling
log-probabilities, the images in order, per-call tool outcomes and why it ended."""
from __future__ import annotations

import dataclasses

import numpy as np
from transformers import PreTrainedTokenizerBase

# Re-exported: a tool call and its outcomes are shared with the SFT data, which renders tool turns too.
from codedance_jax.processing.tool_turns import (TOOL_ERROR, TOOL_OK, TOOL_PARSE_ERROR,  # noqa: F401
                                                 TOOL_TIMEOUT, ToolCall)

# Why a trajectory ended.
FINISH_STOP = "stop"                          # the model ended its turn without a tool call
FINISH_MAX_TURNS = "max_turns"                # a tool call on the last allowed assistant turn
FINISH_TURN_TOKENS = "turn_token_limit"       # one assistant turn reached its token limit
FINISH_RESPONSE_TOKENS = "response_token_limit"  # generated + tool tokens reached their limit
FINISH_CONTEXT_FULL = "context_full"          # the slot's KV cache is full
FINISH_TOOL_BUDGET = "tool_output_over_budget"  # a tool turn did not fit; stopped rather than cut
FINISH_VISION_TOKEN = "model_emitted_vision_token"  # dropped; the model may not write image tokens
FINISH_PROMPT_TOO_LONG = "prompt_too_long"
FINISH_BAD_PROMPT = "bad_prompt"              # the prompt could not be rendered (detail says why)
FINISH_NO_SANDBOX = "no_sandbox"              # a tool call but the engine has no interpreter pool
FINISH_TOOL_UNRENDERABLE = "tool_turn_unrenderable"  # the tool result could not be tokenised


@dataclasses.dataclass
class Trajectory:
    """One rollout. `tokens`, `loss_mask` and `log_probs` are aligned; image pads are expanded and
    `images` / `image_grid_thw` list the images in order of appearance, so
    `model(tokens, preprocess_images(images))` re-scores the trajectory."""
    request_id: object
    tokens: list[int] = dataclasses.field(default_factory=list)
    loss_mask: list[int] = dataclasses.field(default_factory=list)   # 1 only on model-generated tokens
    log_probs: list[float] = dataclasses.field(default_factory=list)  # sampling log-probs; 0 where mask 0
    images: list = dataclasses.field(default_factory=list)           # PIL images
    image_grid_thw: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 3), np.int64))
    prompt_length: int = 0
    num_turns: int = 0         # assistant turns begun (the last may be cut by a limit)
    tool_calls: list[ToolCall] = dataclasses.field(default_factory=list)
    finish_reason: str | None = None
    finish_detail: str = ""

    def add(self, tokens, trainable: bool, log_probs=None) -> None:
        tokens = [int(t) for t in tokens]
        self.tokens += tokens
        self.loss_mask += [int(trainable)] * len(tokens)
        self.log_probs += [float(x) for x in log_probs] if log_probs is not None else [0.0] * len(tokens)

    def add_images(self, images, grids) -> None:
        self.images += list(images)
        self.image_grid_thw = np.concatenate([self.image_grid_thw, np.asarray(grids, np.int64).reshape(-1, 3)])

    def finish(self, reason: str, detail: str = "") -> None:
        self.finish_reason, self.finish_detail = reason, detail

    @property
    def response_length(self) -> int:
        return len(self.tokens) - self.prompt_length

    def text(self, tokenizer: PreTrainedTokenizerBase) -> str:
        return tokenizer.decode(self.tokens, skip_special_tokens=False)

    def response_text(self, tokenizer: PreTrainedTokenizerBase) -> str:
        return tokenizer.decode(self.tokens[self.prompt_length:], skip_special_tokens=False)
