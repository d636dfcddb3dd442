"""Vision tower: patch embed, 2-D RoPE, window/full attention blocks (stacked, scanned), merger.

Runs on the static slot layout of `vision_layout.VisionLayout` (see there for why). Under a
mesh (`jax.set_mesh`) the slots, windows and their activations are split over the data-parallel
axes and the heads / MLP width over "tensor" (logical constraints, no-ops without a mesh):
otherwise the gather of patch rows leaves every chip holding the whole micro-batch's tower.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from models.qwen2_5_vl.config import VisionConfig
from models.qwen2_5_vl.layers import activation, apply_rope, attention, param, rms_norm
from models.qwen2_5_vl.rope import vision_tables
from models.qwen2_5_vl.sharding import constrain

# Logical layouts of the tower's activations (slots and windows are rows of the micro-batch).
_ROWS = ("batch", None)                            # [S, D], [S, patch_dim], rope tables [S, H]
_HEADS = ("batch", "vision_heads", None)           # [S, N, H]
_WINDOW_HEADS = ("batch", None, "vision_heads", None)  # [W, keys, N, H]


class VisionTower(nnx.Module):
    """Parameters of the vision tower; blocks are stacked on a leading 'layers' axis."""

    def __init__(self, cfg: VisionConfig, *, rngs: nnx.Rngs,
                 param_dtype=jnp.float32):
        d, f, n, h, depth = cfg.hidden_size, cfg.intermediate_size, cfg.num_heads, cfg.head_dim, cfg.depth
        merged = d * cfg.merge_unit
        mk = lambda shape, axes, init="normal": param(rngs, shape, axes, param_dtype, init)  # noqa: E731
        self.patch_embed = mk((cfg.patch_dim, d), ("patch", "vision_embed"))
        self.blocks = nnx.Dict(
            norm1=mk((depth, d), ("layers", "norm"), "ones"),
            qkv_kernel=mk((depth, d, 3, n, h), ("layers", "vision_embed", "qkv", "vision_heads", "head_dim")),
            qkv_bias=mk((depth, 3, n, h), ("layers", "qkv", "vision_heads", "head_dim"), "zeros"),
            proj_kernel=mk((depth, n, h, d), ("layers", "vision_heads", "head_dim", "vision_embed")),
            proj_bias=mk((depth, d), ("layers", "norm"), "zeros"),
            norm2=mk((depth, d), ("layers", "norm"), "ones"),
            gate_kernel=mk((depth, d, f), ("layers", "vision_embed", "vision_mlp")),
            gate_bias=mk((depth, f), ("layers", "vision_mlp"), "zeros"),
            up_kernel=mk((depth, d, f), ("layers", "vision_embed", "vision_mlp")),
            up_bias=mk((depth, f), ("layers", "vision_mlp"), "zeros"),
            down_kernel=mk((depth, f, d), ("layers", "vision_mlp", "vision_embed")),
            down_bias=mk((depth, d), ("layers", "norm"), "zeros"),
        )
        self.merger = nnx.Dict(
            norm=mk((d,), ("norm",), "ones"),
            fc1_kernel=mk((merged, merged), ("vision_merged", "vision_mlp")),
            fc1_bias=mk((merged,), ("vision_mlp",), "zeros"),
            fc2_kernel=mk((merged, cfg.out_hidden_size), ("vision_mlp", "embed")),
            fc2_bias=mk((cfg.out_hidden_size,), ("norm",), "zeros"),
        )


def _block(cfg: VisionConfig, x, bp, is_full, cos, sin, window_mask, frame_windows, dtype):
    bp = jax.tree.map(lambda a: a.astype(dtype), bp)
    s = x.shape[0]
    x = constrain(x, _ROWS)
    y = rms_norm(x, bp["norm1"], cfg.norm_eps)
    qkv = jnp.einsum("SD,DKNH->KSNH", y, bp["qkv_kernel"]) + bp["qkv_bias"][:, None]
    qkv = constrain(qkv, (None, *_HEADS))
    wp = cfg.window_patches
    per_window = lambda a: constrain(a.reshape(s // wp, wp, *a.shape[1:]), _WINDOW_HEADS)  # noqa: E731
    q, k = per_window(apply_rope(qkv[0], cos, sin)), per_window(apply_rope(qkv[1], cos, sin))
    v = per_window(qkv[2])

    def windowed(q, k, v):
        return attention(q, k, v, window_mask)

    def full(q, k, v):
        # Each window's queries attend to every window of their frame (gathered), not the batch.
        gather = lambda a: jnp.take(a, jnp.maximum(frame_windows, 0), axis=0).reshape(  # noqa: E731
            a.shape[0], -1, *a.shape[2:])
        key_valid = gather(window_mask[:, 0, :]) & jnp.repeat(frame_windows >= 0, wp, axis=1)
        k, v = (constrain(gather(a), _WINDOW_HEADS) for a in (k, v))
        return attention(q, k, v, key_valid[:, None, :])

    attn = constrain(jax.lax.cond(is_full, full, windowed, q, k, v).reshape(s, *q.shape[2:]), _HEADS)
    x = x + jnp.einsum("SNH,NHD->SD", attn, bp["proj_kernel"]) + bp["proj_bias"]
    y = rms_norm(x, bp["norm2"], cfg.norm_eps)
    act = activation(cfg.hidden_act)
    hidden = act(y @ bp["gate_kernel"] + bp["gate_bias"]) * (y @ bp["up_kernel"] + bp["up_bias"])
    hidden = constrain(hidden, ("batch", "vision_mlp"))
    return constrain(x + hidden @ bp["down_kernel"] + bp["down_bias"], _ROWS)


def vision_hidden(cfg: VisionConfig, params: dict, pixel_values: jax.Array, layout: dict,
                  dtype=jnp.float32, remat: bool = False) -> jax.Array:
    """Output of the last vision block, one row per slot [S, hidden] (empty slots hold garbage).

    pixel_values: [P, patch_dim] rows as the image processor lays them out (P may be padded).
    layout: the arrays of a VisionLayout (patch_index, rope_hw, frame_windows, merged_order).
    remat: recompute each block in the backward pass (training keeps one [S, hidden] per block).
    """
    patch_index = layout["patch_index"]
    valid = patch_index >= 0
    rows = jnp.take(pixel_values, jnp.maximum(patch_index, 0), axis=0)
    rows = constrain(jnp.where(valid[:, None], rows, 0).astype(dtype), _ROWS)
    x = rows @ params["patch_embed"].astype(dtype)

    cos, sin = (constrain(t, _ROWS) for t in vision_tables(layout["rope_hw"], cfg.head_dim, cfg.rope_theta))
    wp = cfg.window_patches
    window_mask = jnp.broadcast_to(valid.reshape(-1, 1, wp), (valid.shape[0] // wp, wp, wp))
    window_mask = constrain(window_mask, ("batch", None, None))
    is_full = np.isin(np.arange(cfg.depth), cfg.fullatt_block_indexes)
    block = functools.partial(_block, cfg, dtype=dtype)
    if remat:
        block = jax.checkpoint(block, policy=jax.checkpoint_policies.nothing_saveable)

    def body(x, xs):
        bp, full_flag = xs
        return block(x, bp, full_flag, cos, sin, window_mask, layout["frame_windows"]), None

    x, _ = jax.lax.scan(body, x, (params["blocks"], jnp.asarray(is_full)))
    return x


def encode_images(cfg: VisionConfig, params: dict, pixel_values: jax.Array, layout: dict,
                  dtype=jnp.float32, remat: bool = False) -> jax.Array:
    """Merged image features [M, out_hidden] in image order (rows past the real count are padding)."""
    x = vision_hidden(cfg, params, pixel_values, layout, dtype, remat)
    mp = jax.tree.map(lambda a: a.astype(dtype), params["merger"])
    y = rms_norm(x, mp["norm"], cfg.norm_eps).reshape(-1, cfg.hidden_size * cfg.merge_unit)
    y = jax.nn.gelu(y @ mp["fc1_kernel"] + mp["fc1_bias"], approximate=False)
    merged = y @ mp["fc2_kernel"] + mp["fc2_bias"]
    return jnp.take(merged, layout["merged_order"], axis=0)
