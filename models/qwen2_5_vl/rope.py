"""Rotary tables, always in float32 (bf16 tables visibly shift long-context logits)."""
from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp


def inverse_frequencies(dim: int, theta: float) -> jax.Array:
    return 1.0 / (theta ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim))


def mrope_tables(positions: jax.Array, head_dim: int, theta: float,
                 mrope_section: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
    """cos/sin [B, T, head_dim] for M-RoPE positions [3, B, T] (temporal, height, width).

    The head_dim/2 frequencies are split *in chunks* by `mrope_section` (e.g. 16/24/24): the
    first chunk rotates with the temporal position, the next with height, the last with width.
    """
    inv_freq = inverse_frequencies(head_dim, theta)
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq  # [3, B, T, head_dim/2]
    bounds = [0, *itertools.accumulate(mrope_section)]
    chosen = jnp.concatenate([freqs[i % 3, ..., lo:hi] for i, (lo, hi) in enumerate(zip(bounds, bounds[1:]))],
                             axis=-1)
    emb = jnp.concatenate([chosen, chosen], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def vision_tables(rope_hw: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """cos/sin [S, head_dim] for patch (row, col) positions [S, 2]: head_dim/4 frequencies per
    axis, row frequencies first, the pair duplicated to cover the whole head."""
    inv_freq = inverse_frequencies(head_dim // 2, theta)
    freqs = rope_hw.astype(jnp.float32)[..., None] * inv_freq  # [S, 2, head_dim/4]
    hw = freqs.reshape(freqs.shape[0], -1)
    emb = jnp.concatenate([hw, hw], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)
