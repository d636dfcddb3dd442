"""Choosing the next token inside the jitted decode loop: greedy, temperature, top-k, top-p,
per-slot parameters and RNG, and the log-probability of the chosen token."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """temperature 0 is greedy; top_k 0 and top_p 1 disable those filters."""
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")


def policy_log_probs(logits: jax.Array, temperature: jax.Array) -> jax.Array:
    """Log-probabilities [B, V] of the temperature-scaled policy (temperature 0 counts as 1), the
    quantity GRPO's ratio is taken against; the top-k/top-p filters are not part of it."""
    scale = jnp.where(temperature > 0, temperature, 1.0)[:, None]
    return jax.nn.log_softmax(logits / scale, axis=-1)


def _filter_top_k_top_p(log_probs: jax.Array, top_k: jax.Array, top_p: jax.Array) -> jax.Array:
    """Masks (to -inf) tokens outside each row's top-k, then outside the smallest set whose
    renormalised mass reaches top_p. Ties at a threshold are kept."""
    vocab = log_probs.shape[-1]
    ordered = -jnp.sort(-log_probs, axis=-1)
    k = jnp.where(top_k > 0, jnp.minimum(top_k, vocab), vocab)
    rank = jnp.arange(vocab)[None, :]
    ordered = jnp.where(rank < k[:, None], ordered, -jnp.inf)
    probs = jax.nn.softmax(ordered, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    kept = jnp.sum(mass_before < top_p[:, None], axis=-1)  # >= 1: the first token has mass_before 0
    threshold = jnp.take_along_axis(ordered, (kept - 1)[:, None], axis=-1)
    return jnp.where(log_probs >= threshold, log_probs, -jnp.inf)


def choose_tokens(logits: jax.Array, keys: jax.Array, temperature: jax.Array, top_p: jax.Array,
                  top_k: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Samples one token per row of float32 logits [B, V].

    keys [B, 2] (one raw PRNG key per slot); temperature/top_p/top_k [B]. Returns (tokens [B] int32,
    policy log-probabilities [B, V]) so forced tokens can be scored from the same distribution.
    """
    log_probs = policy_log_probs(logits, temperature)
    sampling = temperature > 0
    # The draw (a random number per vocabulary entry) and the filters' sort are the costly passes
    # over the vocabulary: skip the sort unless a sampling slot filters, the draw unless one samples.
    filtering = jnp.any(sampling & ((top_k > 0) | (top_p < 1)))
    filtered = jax.lax.cond(filtering, _filter_top_k_top_p, lambda lp, *_: lp, log_probs, top_k, top_p)
    greedy = jnp.argmax(logits, axis=-1)
    tokens = jax.lax.cond(jnp.any(sampling), lambda: jnp.where(
        sampling, jax.vmap(jax.random.categorical)(keys, filtered), greedy), lambda: greedy)
    return tokens.astype(jnp.int32), log_probs
