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

    Laid out for XLA's batched matmul (batch dims leading, the G query heads of a KV head
    stacked as rows): other layouts made XLA:CPU transpose the [T, S] scores. The softmax is
    normalised after the value product, on [T, H] rather than [T, S].
    """
    b, t, n, h = q.shape
    kv_heads = k.shape[2]
    q = (q * h ** -0.5).reshape(b, t, kv_heads, n // kv_heads, h).transpose(0, 2, 3, 1, 4)  # BKGTH
    logits = jnp.einsum("BKGTH,BKHS->BKGTS", q, k.transpose(0, 2, 3, 1), preferred_element_type=jnp.float32)
    logits = jnp.where(mask[:, None, None, :, :], logits, MASK_VALUE)
    probs = jnp.exp(logits - jnp.max(logits, axis=-1, keepdims=True))
    out = jnp.einsum("BKGTS,BKSH->BKGTH", probs.astype(v.dtype), v.transpose(0, 2, 1, 3),
                     preferred_element_type=jnp.float32)
    out = out / jnp.sum(probs, axis=-1, keepdims=True)
    return out.transpose(0, 3, 1, 2, 4).reshape(b, t, n, h).astype(v.dtype)


def causal_attention(q: jax.Array, k: jax.Array, v: jax.Array, key_valid: jax.Array,
                     query_chunk: int | None = None) -> jax.Array:
    """Causal self-attention over a whole sequence, `query_chunk` queries at a time.

    Chunk i attends to keys [0, end of chunk i) only, so about half of the [L, L] scores are never
    computed, and each chunk's scores are small enough to stay in cache. Each chunk is
    rematerialised in the backward pass, so training memory holds [chunk, L] scores rather than
    [L, L]. The chunks are unrolled (static shapes); the default keeps them at most 16.
    q/k/v [B, L, *, H]; key_valid [B, L] (False for padding).
    """
    length = q.shape[1]
    chunk = query_chunk or max(128, -(-length // 16))
    outputs = []
    for start in range(0, length, chunk):
        end = min(start + chunk, length)
        mask = (jnp.arange(end)[None, :] <= jnp.arange(start, end)[:, None])[None] & key_valid[:, None, :end]
        outputs.append(jax.checkpoint(attention)(q[:, start:end], k[:, :end], v[:, :end], mask))
    return jnp.concatenate(outputs, axis=1)
