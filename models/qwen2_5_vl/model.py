"""Qwen2.5-VL in Flax NNX: the module, jitted pure forward functions, and the host-side call
that takes the same arrays transformers takes."""
from __future__ import annotations

import dataclasses
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from codedance_jax.processing.batching import choose_bucket
from codedance_jax.processing.rope_index import get_rope_index
from models.qwen2_5_vl import text, vision
from models.qwen2_5_vl.config import ModelConfig, load_config
from models.qwen2_5_vl.params_io import load_params
from models.qwen2_5_vl.vision_layout import build_layout, num_windows, validate_grids

PARAMS_SUBDIR = "params"
# Powers of two up to 512, then eight steps per octave (576, 640, ..., 1024, 1152, ...): a length
# just past a power of two pads by at most 1/8 instead of doubling, and at most 8 compilations
# per octave (68 buckets from 64 to 131072).
DEFAULT_LENGTH_BUCKETS = (64, 128, 256) + tuple(
    (2**octave // 8) * step for octave in range(9, 17) for step in range(8, 16)) + (131072,)


def window_bucket_for(windows: int) -> int:
    """Attention windows padded to a power of two, so image sizes share compilations."""
    return 1 << max(windows - 1, 0).bit_length()


@dataclasses.dataclass(frozen=True)
class ModelInputs:
    """Padded, static-shape inputs of one forward pass (all numpy)."""
    input_ids: np.ndarray          # [B, L] int32
    attention_mask: np.ndarray     # [B, L] int32
    positions: np.ndarray          # [3, B, L] int32
    pixel_values: np.ndarray | None  # [S, patch_dim] float32, S = slots of the vision layout
    vision_layout: dict | None     # arrays of a VisionLayout

    def as_jax_tree(self) -> dict:
        tree = {"input_ids": self.input_ids, "attention_mask": self.attention_mask, "positions": self.positions}
        if self.pixel_values is not None:
            tree["pixel_values"] = self.pixel_values
            tree["vision_layout"] = self.vision_layout
        return tree


def vision_inputs(cfg: ModelConfig, pixel_values, image_grid_thw) -> tuple[np.ndarray, dict, int]:
    """Pads pixel rows to the slot count of a bucketed vision layout."""
    pixel_values = np.asarray(pixel_values, np.float32)
    if pixel_values.ndim != 2 or pixel_values.shape[1] != cfg.vision.patch_dim:
        raise ValueError(f"pixel_values must be [num_patches, {cfg.vision.patch_dim}], got {pixel_values.shape}")
    grid = validate_grids(image_grid_thw, cfg.vision, pixel_values.shape[0])
    layout = build_layout(grid, cfg.vision, window_bucket=window_bucket_for(num_windows(grid, cfg.vision)))
    padded = np.zeros((layout.num_slots, pixel_values.shape[1]), np.float32)
    padded[: pixel_values.shape[0]] = pixel_values
    arrays = {"patch_index": layout.patch_index, "rope_hw": layout.rope_hw, "frame_windows": layout.frame_windows,
              "merged_order": layout.merged_order}
    return padded, arrays, layout.num_merged


def prepare_inputs(cfg: ModelConfig, input_ids, pixel_values=None, image_grid_thw=None, attention_mask=None,
                   length_buckets: tuple[int, ...] = DEFAULT_LENGTH_BUCKETS) -> ModelInputs:
    """Host side of a forward: validation, M-RoPE positions, padding to buckets."""
    ids = np.asarray(input_ids)
    if ids.ndim != 2:
        raise ValueError(f"input_ids must be [batch, length], got shape {ids.shape}")
    batch, length = ids.shape
    mask = np.ones_like(ids, np.int32) if attention_mask is None else np.asarray(attention_mask, np.int32)
    if mask.shape != ids.shape:
        raise ValueError(f"attention_mask shape {mask.shape} differs from input_ids shape {ids.shape}")
    n_pads = int(((ids == cfg.image_token_id) & (mask > 0)).sum())
    if (pixel_values is None) != (image_grid_thw is None):
        raise ValueError("pixel_values and image_grid_thw must be given together")
    pixels, layout, n_features = (None, None, 0)
    if pixel_values is not None:
        pixels, layout, n_features = vision_inputs(cfg, pixel_values, image_grid_thw)
    if n_pads != n_features:
        raise ValueError(f"image features and image tokens do not match: input_ids has {n_pads} image pads "
                         f"but the images give {n_features} features")
    positions, _ = get_rope_index(ids, image_grid_thw, mask, spatial_merge_size=cfg.vision.spatial_merge_size,
                                  image_token_id=cfg.image_token_id,
                                  vision_start_token_id=cfg.vision_start_token_id,
                                  video_token_id=cfg.video_token_id)
    padded_len = choose_bucket(length, length_buckets, "sequence length")
    pad = ((0, 0), (0, padded_len - length))
    return ModelInputs(
        input_ids=np.pad(ids.astype(np.int32), pad),
        attention_mask=np.pad(mask, pad),
        positions=np.pad(positions, ((0, 0), *pad)),
        pixel_values=pixels, vision_layout=layout)


def embed_inputs(cfg: ModelConfig, params: dict, inputs: dict, remat: bool = False) -> jax.Array:
    """Token embeddings with image features written over the image pads (remat: recompute the
    vision blocks in the backward pass)."""
    dtype = cfg.compute_dtype
    embeds = text.embed_tokens(params["text"], inputs["input_ids"], dtype)
    if "pixel_values" in inputs:
        features = vision.encode_images(cfg.vision, params["vision"], inputs["pixel_values"],
                                        inputs["vision_layout"], dtype, remat)
        embeds = text.merge_image_features(embeds, inputs["input_ids"], cfg.image_token_id, features)
    return embeds


def forward_hidden(cfg: ModelConfig, params: dict, inputs: dict, remat: bool = False) -> jax.Array:
    """Final hidden states [B, L, D] for padded inputs (see ModelInputs.as_jax_tree)."""
    embeds = embed_inputs(cfg, params, inputs, remat)
    return text.forward_hidden(cfg.text, params["text"], embeds, inputs["positions"], inputs["attention_mask"],
                               cfg.compute_dtype, remat=remat, attention_impl=cfg.attention_impl)


@functools.partial(jax.jit, static_argnames=("cfg",))
def forward_logits(cfg: ModelConfig, params: dict, inputs: dict) -> jax.Array:
    return text.lm_logits(params["text"], forward_hidden(cfg, params, inputs))


@functools.partial(jax.jit, static_argnames=("cfg",))
def image_features(cfg: ModelConfig, params: dict, pixel_values: jax.Array, layout: dict) -> jax.Array:
    return vision.encode_images(cfg.vision, params["vision"], pixel_values, layout, cfg.compute_dtype)


@functools.partial(jax.jit, static_argnames=("cfg", "kv_window"), donate_argnames=("cache",))
def extend_cache(cfg: ModelConfig, params: dict, embeds: jax.Array, positions: jax.Array, num_new: jax.Array,
                 cache: text.KVCache, kv_window: int | None = None) -> tuple[jax.Array, text.KVCache]:
    """Appends a chunk of embedded tokens to the KV cache; returns float32 logits [B, T, V].
    kv_window: see text.forward_with_cache."""
    hidden, cache = text.forward_with_cache(cfg.text, params["text"], embeds.astype(cfg.compute_dtype),
                                            positions, num_new, cache, cfg.compute_dtype, kv_window,
                                            cfg.attention_impl)
    return text.lm_logits(params["text"], hidden), cache


class Qwen2_5_VL(nnx.Module):
    """Qwen2.5-VL for conditional generation.

    `model(input_ids, pixel_values, image_grid_thw, attention_mask)` takes the arrays transformers
    takes (expanded image pads, `pixel_values [N, 1176]`, `image_grid_thw [n, 3]`) and returns float32
    logits [B, L, vocab]. Hot paths (training, rollout) call the jitted pure functions of this module
    on `model.params()` directly.
    """

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs | None = None, param_dtype=jnp.float32):
        rngs = rngs if rngs is not None else nnx.Rngs(0)
        self.config = config
        self.vision = vision.VisionTower(config.vision, rngs=rngs, param_dtype=param_dtype)
        self.text = text.TextDecoder(config.text, config.tie_word_embeddings, rngs=rngs, param_dtype=param_dtype)

    def params(self) -> dict:
        """The parameters as a plain nested dict of arrays (what the jitted functions take)."""
        return nnx.to_pure_dict(nnx.state(self, nnx.Param))

    def load_params(self, params: dict) -> None:
        state = nnx.state(self, nnx.Param)
        nnx.replace_by_pure_dict(state, params)
        nnx.update(self, state)

    def __call__(self, input_ids, pixel_values=None, image_grid_thw=None, attention_mask=None) -> jax.Array:
        inputs = prepare_inputs(self.config, input_ids, pixel_values, image_grid_thw, attention_mask)
        logits = forward_logits(self.config, self.params(), inputs.as_jax_tree())
        return logits[:, : np.asarray(input_ids).shape[1]]

    @classmethod
    def abstract(cls, config: ModelConfig, param_dtype=jnp.float32) -> "Qwen2_5_VL":
        """A model whose parameters are ShapeDtypeStructs (no memory), e.g. for restoring or AOT."""
        return nnx.eval_shape(lambda: cls(config, rngs=nnx.Rngs(0), param_dtype=param_dtype))

    @classmethod
    def from_checkpoint(cls, ckpt_dir: str, dtype: str | None = None, shardings=None) -> "Qwen2_5_VL":
        """Loads a checkpoint written by `codedance_jax.hf.convert` (or exported by training).

        dtype: compute dtype ("float32"/"bfloat16"); parameters keep their stored dtype.
        shardings: optional pytree of jax.sharding.Sharding matching `params()`, to restore sharded.
        """
        config = load_config(ckpt_dir)
        if dtype is not None:
            config = config.replace(dtype=dtype)
        params_dir = os.path.join(ckpt_dir, PARAMS_SUBDIR)
        if not os.path.isdir(params_dir):
            raise FileNotFoundError(f"{ckpt_dir}: no '{PARAMS_SUBDIR}/' directory; is this a converted checkpoint?")
        model = cls.abstract(config)
        model.load_params(load_params(params_dir, model.params(), shardings))  # restored onto devices
        return model
