"""Stop strings that span tokens.

`</code>` is three Qwen tokens (`</`, `code`, `>`), and other tokenizations of it exist, so no
fixed token sequence identifies it. But a stop string always ends inside the token that holds
its last character: the jitted decode loop ends as soon as a slot samples such a *trigger*
token, and the host then decodes the turn's tail to see whether a stop string really ended
there. Single-token stops (`<|im_end|>`) are just triggers whose check always succeeds. Vision
tokens are triggers too, so a model that emits them is stopped at once.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from transformers import PreTrainedTokenizerBase


class StopDetector:
    """Trigger masks and host-side stop checks for one tokenizer and model vocabulary."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, vocab_size: int, always_trigger: Sequence[int] = ()):
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.always_trigger = tuple(always_trigger)
        tokens = tokenizer.convert_ids_to_tokens(list(range(min(len(tokenizer), vocab_size))))
        # Ids the model has but the tokenizer lacks decode to nothing and trigger nothing.
        self._token_text = [tokenizer.convert_tokens_to_string([t]) if t is not None else "" for t in tokens]
        self._masks: dict[tuple[str, ...], np.ndarray] = {}

    def trigger_mask(self, stop_strings: tuple[str, ...]) -> np.ndarray:
        """bool [vocab_size]: tokens that may complete one of `stop_strings`."""
        if stop_strings not in self._masks:
            last_chars = {s[-1] for s in stop_strings if s}
            mask = np.zeros(self.vocab_size, bool)
            for token_id, token_text in enumerate(self._token_text):
                if any(c in token_text for c in last_chars):
                    mask[token_id] = True
            mask[list(self.always_trigger)] = True
            self._masks[stop_strings] = mask
        return self._masks[stop_strings]

    def stop_at_end(self, turn_tokens: Sequence[int], stop_strings: tuple[str, ...]) -> str | None:
        """The stop string that ends in the last token of `turn_tokens`, if any."""
        if not turn_tokens or not stop_strings:
            return None
        window = max(len(s) for s in stop_strings) + 2  # a token holds at least one character, mostly
        tail = self.tokenizer.decode(list(turn_tokens[-window:]), skip_special_tokens=False)
        before = self.tokenizer.decode(list(turn_tokens[-window:-1]), skip_special_tokens=False)
        for stop in stop_strings:
            if stop in tail and stop not in before:
                return stop
        return None
