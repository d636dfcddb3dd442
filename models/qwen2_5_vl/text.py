"""Text decoder: embeddings, stacked/scanned decoder layers (GQA with qkv bias, M-RoPE, SwiGLU),
final norm and LM head; with and without a KV cache."""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from flax import nnx

from models.qwen2_5_vl import attention_kernels
from models.qwen2_5_vl.config import TextConfig
from models.qwen2_5_vl.layers import activation, apply_rope, attention, causal_attention, param, rms_norm
from models.qwen2_5_vl.rope import mrope_tables


class TextDecoder(nnx.Module):
    """Parameters of the language model; layers are stacked on a leading 'layers' axis."""

    def __init__(self, cfg: TextConfig, tie_word_embeddings: bool, *, rngs: nnx.Rngs,
                 param_dtype=jnp.float32):
        d, f, n, k, h, L = (cfg.hidden_size, cfg.intermediate_size, cfg.num_heads, cfg.num_kv_heads,
                            cfg.head_dim, cfg.num_layers)
        mk = lambda shape, axes, init="normal": param(rngs, shape, axes, param_dtype, init)  # noqa: E731
        self.embed = mk((cfg.vocab_size, d), ("vocab", "embed"))
        self.layers = nnx.Dict(
            input_norm=mk((L, d), ("layers", "norm"), "ones"),
            q_kernel=mk((L, d, n, h), ("layers", "embed", "heads", "head_dim")),
            q_bias=mk((L, n, h), ("layers", "heads", "head_dim"), "zeros"),
            k_kernel=mk((L, d, k, h), ("layers", "embed", "kv_heads", "head_dim")),
            k_bias=mk((L, k, h), ("layers", "kv_heads", "head_dim"), "zeros"),
            v_kernel=mk((L, d, k, h), ("layers", "embed", "kv_heads", "head_dim")),
            v_bias=mk((L, k, h), ("layers", "kv_heads", "head_dim"), "zeros"),
            o_kernel=mk((L, n, h, d), ("layers", "heads", "head_dim", "embed")),
            post_norm=mk((L, d), ("layers", "norm"), "ones"),
            gate_kernel=mk((L, d, f), ("layers", "embed", "mlp")),
            up_kernel=mk((L, d, f), ("layers", "embed", "mlp")),
            down_kernel=mk((L, f, d), ("layers", "mlp", "embed")),
        )
        self.final_norm = mk((d,), ("norm",), "ones")
        if not tie_word_embeddings:
            self.lm_head = mk((d, cfg.vocab_size), ("embed", "vocab"))


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class KVCache:
    """Per-slot KV cache. k/v: [kv_heads, layers, B, max_len, head_dim]; lengths: [B] tokens
    already written for each slot (new tokens are written at `lengths`). Head-major so that the
    paged decode kernel sees the whole cache as one page pool (see attention_kernels)."""
    k: jax.Array
    v: jax.Array
    lengths: jax.Array

    @classmethod
    def zeros(cls, cfg: TextConfig, batch: int, max_len: int, dtype=jnp.float32) -> "KVCache":
        shape = (cfg.num_kv_heads, cfg.num_layers, batch, max_len, cfg.head_dim)
        return cls(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), jnp.zeros((batch,), jnp.int32))

    @property
    def max_len(self) -> int:
        return self.k.shape[3]

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes + self.lengths.nbytes


def embed_tokens(params: dict, input_ids: jax.Array, dtype) -> jax.Array:
    return jnp.take(params["embed"], input_ids, axis=0).astype(dtype)


def merge_image_features(embeds: jax.Array, input_ids: jax.Array, image_token_id: int,
                         features: jax.Array) -> jax.Array:
    """Replaces image-pad embeddings with image features, in row-major order over the batch."""
    is_image = input_ids == image_token_id
    feature_index = jnp.cumsum(is_image.reshape(-1)).reshape(is_image.shape) - 1
    gathered = jnp.take(features, jnp.clip(feature_index, 0, features.shape[0] - 1), axis=0)
    return jnp.where(is_image[..., None], gathered.astype(embeds.dtype), embeds)


def _layer(cfg: TextConfig, lp: dict, h, cos, sin, attend, dtype):
    """One decoder layer; `attend(q, k, v) -> (output, aux)` is the attention (causal over the
    sequence, or writing k/v into a cache and attending over it, aux being the updated cache)."""
    lp = jax.tree.map(lambda a: a.astype(dtype), lp)
    x = rms_norm(h, lp["input_norm"], cfg.rms_norm_eps)
    q = jnp.einsum("BTD,DNH->BTNH", x, lp["q_kernel"]) + lp["q_bias"]
    k = jnp.einsum("BTD,DKH->BTKH", x, lp["k_kernel"]) + lp["k_bias"]
    v = jnp.einsum("BTD,DKH->BTKH", x, lp["v_kernel"]) + lp["v_bias"]
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    attn, aux = attend(q, k, v)
    h = h + jnp.einsum("BTNH,NHD->BTD", attn, lp["o_kernel"])
    x = rms_norm(h, lp["post_norm"], cfg.rms_norm_eps)
    gated = activation(cfg.hidden_act)(x @ lp["gate_kernel"]) * (x @ lp["up_kernel"])
    return h + gated @ lp["down_kernel"], aux


def forward_hidden(cfg: TextConfig, params: dict, embeds: jax.Array, positions: jax.Array,
                   attention_mask: jax.Array, dtype, remat: bool = False, attention_impl: str = "auto"
                   ) -> jax.Array:
    """Full causal forward. embeds [B, L, D], positions [3, B, L], attention_mask [B, L] (1 = real).
    Returns final-normed hidden states [B, L, D]. attention_impl: see config.ATTENTION_IMPLS."""
    cos, sin = mrope_tables(positions, cfg.head_dim, cfg.rope_theta, cfg.mrope_section)
    key_valid = attention_mask.astype(bool)
    splash = attention_kernels.use_pallas(attention_impl, attention_kernels.splash_fits(embeds.shape[1]))
    causal = attention_kernels.splash_causal_attention if splash else causal_attention
    attend = lambda q, k, v: (causal(q, k, v, key_valid), None)  # noqa: E731
    layer = functools.partial(_layer, cfg, cos=cos, sin=sin, attend=attend, dtype=dtype)
    if remat:
        layer = jax.checkpoint(layer, policy=jax.checkpoint_policies.nothing_saveable)

    def body(h, lp):
        return layer(lp, h)[0], None

    h, _ = jax.lax.scan(body, embeds, params["layers"])
    return rms_norm(h, params["final_norm"].astype(dtype), cfg.rms_norm_eps)


def forward_with_cache(cfg: TextConfig, params: dict, embeds: jax.Array, positions: jax.Array,
                       num_new: jax.Array, cache: KVCache, dtype, kv_window: int | None = None,
                       attention_impl: str = "auto") -> tuple[jax.Array, KVCache]:
    """Appends a chunk of T tokens per slot to the cache and returns their hidden states.

    embeds [B, T, D]; positions [3, B, T]; num_new [B] how many of the T tokens are real for each
    slot (the rest is right padding, written but never attended to; 0 leaves a slot untouched).
    Prefill (empty cache), one-token decode and tool-turn appends are all this call.
    kv_window (static): attend to the first kv_window cache positions only, which must hold
    every attending slot's `lengths + T`; default the whole cache. Decode reads only the filled
    part of a long cache this way.
    attention_impl: one-token decode (T == 1) may take the paged kernel, which reads each slot's
    filled pages whatever the window; chunk appends keep the dense path (compute-bound, short).
    """
    cos, sin = mrope_tables(positions, cfg.head_dim, cfg.rope_theta, cfg.mrope_section)
    batch, t = embeds.shape[:2]
    window = cache.max_len if kv_window is None else min(kv_window, cache.max_len)
    rows = cache.lengths[:, None] + jnp.arange(t)[None, :]  # [B, T] cache positions of the new tokens
    mask = jnp.arange(window)[None, None, :] <= rows[:, :, None]  # causal over the cache
    slots = jnp.arange(batch)[:, None]
    paged = t == 1 and attention_kernels.use_pallas(
        attention_impl, attention_kernels.paged_fits(cache.max_len, cache.k.dtype))

    def body(carry, lp):
        # The cache is carried whole and updated in place; a layer reads only its window.
        h, k_cache, v_cache, index = carry

        def attend(q, k, v):
            # [K, layers, B, S, H] indexed at (layer, slot, row): the update is [K, B, T, H].
            write = lambda c, x: c.at[:, index, slots, rows].set(x.transpose(2, 0, 1, 3).astype(c.dtype))  # noqa: E731
            k_all, v_all = write(k_cache, k), write(v_cache, v)
            if paged:
                out = attention_kernels.paged_decode_attention(q, k_all, v_all, index, rows[:, 0] + 1)
                return out, (k_all, v_all)
            read = lambda a: jax.lax.dynamic_slice(  # noqa: E731
                a, (0, index, 0, 0, 0), (a.shape[0], 1, batch, window, a.shape[4]))[:, 0].transpose(
                    1, 2, 0, 3).astype(dtype)  # [B, window, K, H]
            return attention(q, read(k_all), read(v_all), mask), (k_all, v_all)

        h, (k_cache, v_cache) = _layer(cfg, lp, h, cos, sin, attend, dtype)
        return (h, k_cache, v_cache, index + 1), None

    (h, k, v, _), _ = jax.lax.scan(body, (embeds, cache.k, cache.v, jnp.int32(0)), params["layers"])
    h = rms_norm(h, params["final_norm"].astype(dtype), cfg.rms_norm_eps)
    return h, KVCache(k, v, cache.lengths + num_new.astype(jnp.int32))


def lm_logits(params: dict, hidden: jax.Array) -> jax.Array:
    """Float32 logits from final hidden states; a tied head reuses the embedding matrix."""
    if "lm_head" in params:
        return jnp.einsum("BTD,DV->BTV", hidden, params["lm_head"].astype(hidden.dtype),
                          preferred_element_type=jnp.float32)
    return jnp.einsum("BTD,VD->BTV", hidden, params["embed"].astype(hidden.dtype),
                      preferred_element_type=jnp.float32)
