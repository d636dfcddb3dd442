"""Stop strings that span tokens.

`</code>` is three Qwen tokens (`</`, `code`, `>`), and other tokenizations of it exist, so no
fixed token sequence identifies it. But a stop string always ends inside one token, and that
token's text up to the stop's last character either ends with the whole stop or is a suffix of
it (`>`, `e>`, `code>`; not `->` or ` >`). A slot of the jitted decode loop stops as soon as it
samples such a *trigger* token, and the host then decodes the turn's tail to see whether a stop
string really ended there. Single-token stops (`<|im_end|>`) are just triggers whose check always succeeds. Vision
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
            mask = np.zeros(self.vocab_size, bool)
            for token_id, token_text in enumerate(self._token_text):
                mask[token_id] = any(_may_end(token_text, stop) for stop in stop_strings if stop)
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


def _may_end(token_text: str, stop: str) -> bool:
    """Whether `stop` can end inside a token with this text, whatever came before the token."""
    end = token_text.find(stop[-1])
    while end >= 0:
        head = token_text[: end + 1]
        if head.endswith(stop) or stop.endswith(head):
            return True
        end = token_text.find(stop[-1], end + 1)
    return False
