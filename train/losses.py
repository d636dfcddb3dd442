"""Per-token quantities over the tokens the model generated, without materialising the full
[B, L, vocab] logits (vocab is 152k: one 8k-token sequence would need 5 GB of float32)."""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from models.qwen2_5_vl.text import lm_logits


def next_token(x: jax.Array) -> jax.Array:
    """Shifts a per-token array [B, L, ...] left by one: position t holds token t+1's value (0 at
    the end), the alignment of next-token prediction."""
    return jnp.concatenate([x[:, 1:], jnp.zeros_like(x[:, :1])], axis=1)


def shifted_targets(input_ids: jax.Array, loss_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Targets for position t are token t+1; the mask says whether token t+1 is one the model
    generated (assistant content), so prompts, tool turns and image pads carry no loss."""
    return next_token(input_ids), next_token(loss_mask).astype(jnp.float32)


def _map_chunks(fn: Callable, hidden: jax.Array, per_token: tuple, chunk_tokens: int):
    """Applies `fn(hidden_chunk, *per_token_chunks)` over sequence chunks of about `chunk_tokens`
    tokens (whole batch), each rematerialised in the backward pass, so only one chunk's logits are
    alive at a time. Returns fn's outputs stacked on a leading chunk axis: [n, B, chunk, ...]."""
    b, length, _ = hidden.shape
    chunk = max(1, min(length, chunk_tokens // b))
    while length % chunk:  # the largest chunk that divides the (bucketed) length
        chunk -= 1
    n = length // chunk
    split = lambda x: x.reshape(b, n, chunk, *x.shape[2:]).swapaxes(0, 1)  # noqa: E731
    return jax.lax.map(jax.checkpoint(lambda args: fn(*args)), (split(hidden), *(split(x) for x in per_token)))


def _unsplit(x: jax.Array) -> jax.Array:
    """[n, B, chunk] -> [B, n * chunk], inverting `_map_chunks`' split."""
    n, b, chunk = x.shape
    return x.swapaxes(0, 1).reshape(b, n * chunk)


def cross_entropy_sum(text_params: dict, hidden: jax.Array, targets: jax.Array, mask: jax.Array,
                      chunk_tokens: int = 2048) -> tuple[jax.Array, jax.Array]:
    """Sum of masked token losses and of correct greedy predictions."""
    def one_chunk(h, t, m):
        logits = lm_logits(text_params, h)
        log_z = jax.nn.logsumexp(logits, axis=-1)
        target_logit = jnp.take_along_axis(logits, t[..., None], axis=-1)[..., 0]
        correct = (jnp.argmax(logits, axis=-1) == t).astype(jnp.float32)
        return ((log_z - target_logit) * m).sum(), (correct * m).sum()

    losses, correct = _map_chunks(one_chunk, hidden, (targets, mask), chunk_tokens)
    return losses.sum(), correct.sum()


def token_log_probs(text_params: dict, hidden: jax.Array, targets: jax.Array, temperature: float = 1.0,
                    chunk_tokens: int = 2048) -> tuple[jax.Array, jax.Array]:
    """Log-probabilities [B, L] of `targets` under the temperature-scaled policy (the distribution
    the sampler drew from, before top-k/top-p) and its entropy [B, L] (no gradient: a metric)."""
    def one_chunk(h, t):
        log_probs = jax.nn.log_softmax(lm_logits(text_params, h) / temperature, axis=-1)
        chosen = jnp.take_along_axis(log_probs, t[..., None], axis=-1)[..., 0]
        entropy = -jnp.sum(jnp.exp(log_probs) * log_probs, axis=-1)
        return chosen, jax.lax.stop_gradient(entropy)

    chosen, entropy = _map_chunks(one_chunk, hidden, (targets,), chunk_tokens)
    return _unsplit(chosen), _unsplit(entropy)
