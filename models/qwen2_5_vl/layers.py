"""Pure-function building blocks shared by the vision tower and the text decoder."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

# Finite, so a fully masked row (padding) gives a uniform softmax instead of NaN.
MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)

ACTIVATIONS = {
    "silu": jax.nn.silu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
}


def activation(name: str):
    if name not in ACTIVATIONS:
        raise ValueError(f"unsupported hidden_act {name!r}; supported: {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def param(rngs: nnx.Rngs | None, shape, axes: tuple[str | None, ...], dtype, init: str = "normal",
          std: float = 0.02) -> nnx.Param:
    """A parameter tagged with logical axis names (read by codedance_jax.mesh for sharding)."""
    if len(axes) != len(shape):
        raise ValueError(f"axes {axes} do not match shape {shape}")
    if init == "ones":
        value = jnp.ones(shape, dtype)
    elif init == "zeros":
        value = jnp.zeros(shape, dtype)
    else:
        value = (std * jax.random.normal(rngs.params(), shape, jnp.float32)).astype(dtype)
    return nnx.Param(value, axes=axes)


def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    """RMSNorm computed in float32, scaled in the input dtype (as the reference does)."""
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return weight.astype(x.dtype) * normed.astype(x.dtype)


def rotate_half(x: jax.Array) -> jax.Array:
    x1, x2 = jnp.split(x, 2, axis=-1)
    return jnp.concatenate([-x2, x1], axis=-1)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotates x [..., T, N, H] by float32 tables cos/sin [..., T, H]; result in x's dtype."""
    x32 = x.astype(jnp.float32)
    out = x32 * cos[..., None, :] + rotate_half(x32) * sin[..., None, :]
    return out.astype(x.dtype)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """Grouped-query attention with an explicit boolean mask.

    q [B, T, N, H], k/v [B, S, K, H] with N a multiple of K, mask broadcastable to [B, T, S].
    Softmax in float32. Returns [B, T, N, H].
    """
    b, t, n, h = q.shape
    kv_heads = k.shape[2]
    q = q.reshape(b, t, kv_heads, n // kv_heads, h)
    logits = jnp.einsum("BTKGH,BSKH->BKGTS", q, k, preferred_element_type=jnp.float32) * (h ** -0.5)
    logits = jnp.where(mask[:, None, None, :, :], logits, MASK_VALUE)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = jnp.einsum("BKGTS,BSKH->BTKGH", probs, v)
    return out.reshape(b, t, n, h)


def causal_attention(q: jax.Array, k: jax.Array, v: jax.Array, key_valid: jax.Array,
                     query_chunk: int = 1024) -> jax.Array:
    """Causal self-attention over a whole sequence, `query_chunk` queries at a time.

    Each chunk is rematerialised in the backward pass, so memory holds [chunk, L] scores rather
    than [L, L] (at L = 8192 the dense float32 scores are 7.5 GB per sequence for 28 heads).
    q/k/v [B, L, *, H]; key_valid [B, L] (False for padding).
    """
    b, length = q.shape[:2]
    chunk = min(query_chunk, length)
    while length % chunk:  # the largest chunk dividing the (bucketed) length
        chunk -= 1
    key_pos = jnp.arange(length)

    @jax.checkpoint
    def one_chunk(args):
        q_chunk, start = args
        query_pos = start + jnp.arange(chunk)
        mask = (key_pos[None, :] <= query_pos[:, None])[None] & key_valid[:, None, :]
        return attention(q_chunk, k, v, mask)

    chunks = q.reshape(b, length // chunk, chunk, *q.shape[2:]).swapaxes(0, 1)
    out = jax.lax.map(one_chunk, (chunks, jnp.arange(length // chunk) * chunk))
    return out.swapaxes(0, 1).reshape(q.shape)
