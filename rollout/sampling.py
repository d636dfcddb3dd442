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


def first_argmax(x: jax.Array) -> jax.Array:
    """argmax over the last axis (first index of the maximum) as two plain reductions, which
    XLA:CPU vectorises; its variadic argmax reduce is several times slower over a vocabulary."""
    top = jnp.max(x, axis=-1, keepdims=True)
    return jnp.min(jnp.where(x == top, jnp.arange(x.shape[-1]), x.shape[-1]), axis=-1)


def _draw(keys: jax.Array, log_probs: jax.Array, block: int = 512) -> jax.Array:
    """One token per row from exp(log_probs) (-inf excluded, renormalised) by inversion of the
    CDF, blocks first, then within the chosen block: one uniform per row instead of the
    categorical's random number per vocabulary entry, which costs ten times more on CPU."""
    rows, vocab = log_probs.shape
    probs = jnp.exp(log_probs - jnp.max(log_probs, axis=-1, keepdims=True))
    probs = jnp.pad(probs, ((0, 0), (0, -vocab % block))).reshape(rows, -1, block)
    block_mass = probs.sum(-1)
    block_cdf = jnp.cumsum(block_mass, axis=-1)
    tiny = jnp.finfo(jnp.float32).tiny
    target = jax.vmap(lambda key: jax.random.uniform(key, minval=tiny))(keys) * block_cdf[:, -1]
    chosen = jnp.minimum(jnp.sum(block_cdf < target[:, None], axis=-1), block_cdf.shape[1] - 1)
    pick = lambda a: jnp.take_along_axis(a, chosen[:, None], axis=1)[:, 0]  # noqa: E731
    inner = jnp.take_along_axis(probs, chosen[:, None, None], axis=1)[:, 0]  # [B, block]
    remaining = target - (pick(block_cdf) - pick(block_mass))
    offset = jnp.minimum(jnp.sum(jnp.cumsum(inner, axis=-1) < remaining[:, None], axis=-1), block - 1)
    token = chosen * block + offset
    # Rounding at a block edge could land on an excluded token; fall back to the mode there.
    allowed = jnp.take_along_axis(log_probs, jnp.minimum(token, vocab - 1)[:, None], axis=-1)[:, 0] > -jnp.inf
    return jnp.where(allowed & (token < vocab), token, first_argmax(log_probs))


def choose_tokens(logits: jax.Array, keys: jax.Array, temperature: jax.Array, top_p: jax.Array,
                  top_k: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Samples one token per row of float32 logits [B, V].

    keys [B, 2] (one raw PRNG key per slot); temperature/top_p/top_k [B]. Returns (tokens [B] int32,
    policy log-probabilities [B, V]) so forced tokens can be scored from the same distribution.
    """
    sampling = temperature > 0
    greedy = first_argmax(logits)

    def sample():
        # Only when a slot samples: the filters' sort only when a sampling slot filters.
        log_probs = policy_log_probs(logits, temperature)
        filtering = jnp.any(sampling & ((top_k > 0) | (top_p < 1)))
        filtered = jax.lax.cond(filtering, _filter_top_k_top_p, lambda lp, *_: lp, log_probs, top_k, top_p)
        return jnp.where(sampling, _draw(keys, filtered), greedy)

    tokens = jax.lax.cond(jnp.any(sampling), sample, lambda: greedy)
    return tokens.astype(jnp.int32), policy_log_probs(logits, temperature)
