"""Host side of a train step: processing batches -> fixed-shape model inputs -> global arrays.

A step takes `grad_accum_steps` micro-batches stacked on a leading axis. Micro-batches may have
come out of the data pipeline in different buckets, so they are padded to a common shape first;
the shapes a step sees stay within the bucket products, which bounds compilations.
"""
from __future__ import annotations

from typing import Sequence

import jax
import numpy as np

from codedance_jax.mesh import BATCH_AXES
from codedance_jax.processing.batching import Batch
from models.qwen2_5_vl.config import ModelConfig
from models.qwen2_5_vl.model import window_bucket_for
from models.qwen2_5_vl.vision_layout import build_layout, num_windows

# GRPO's per-token arrays, aligned with input_ids like loss_mask (0 on padding): the advantage of
# each token, the sampler's log-prob of it and, when one rollout batch feeds several updates, the
# old policy's log-prob of it.
TOKEN_FLOATS = ("advantages", "sampler_log_probs", "old_log_probs")
# Padding value of each input, when micro-batches are brought to one shape.
_PAD = {"input_ids": 0, "attention_mask": 0, "positions": 0, "loss_mask": 0, "pixel_values": 0.0,
        "patch_index": -1, "rope_hw": 0, "frame_windows": -1, "merged_order": 0,
        **{name: 0.0 for name in TOKEN_FLOATS}}
# Rank of each stacked input (leading micro-batch axis included).
_NDIM = {"input_ids": 3, "attention_mask": 3, "positions": 4, "loss_mask": 3, "pixel_values": 3,
         "patch_index": 2, "rope_hw": 3, "frame_windows": 3, "merged_order": 2,
         **{name: 3 for name in TOKEN_FLOATS}}


def model_inputs(cfg: ModelConfig, batch: Batch) -> dict[str, np.ndarray]:
    """One micro-batch as flat numpy arrays: token arrays [B, L] (positions [3, B, L]) and, when
    the batch has images, pixel rows and the vision layout (see models/qwen2_5_vl/vision_layout)."""
    # An id past the embedding table is gathered as NaN on device, not as an error: catch it here
    # (a tokenizer or pad id that does not belong to the model).
    largest = int(batch.input_ids.max(initial=0))
    if largest >= cfg.text.vocab_size:
        raise ValueError(f"token id {largest} is outside the model's vocabulary of {cfg.text.vocab_size} "
                         f"ids: the tokenizer or the pad id does not belong to this model")
    inputs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask,
              "positions": batch.position_ids, "loss_mask": batch.loss_mask}
    grids = batch.image_grid_thw
    if len(grids):
        windows = num_windows(grids, cfg.vision)
        layout = build_layout(grids, cfg.vision, window_bucket=window_bucket_for(windows))
        inputs.update(pixel_values=batch.pixel_values, patch_index=layout.patch_index, rope_hw=layout.rope_hw,
                      frame_windows=layout.frame_windows, merged_order=layout.merged_order)
    return inputs


def token_floats(rows: Sequence[Sequence[float]], shape: tuple[int, int]) -> np.ndarray:
    """Per-token float rows (one per sequence, each as long as its tokens) as a float32 [B, L]
    array padded with 0, the layout of the batch's token arrays."""
    out = np.zeros(shape, np.float32)
    for row, values in enumerate(rows):
        out[row, : len(values)] = values
    return out


def stack_micro_batches(micro: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Pads micro-batches to a common shape and stacks them on a new leading axis. A text-only
    micro-batch next to ones with images gets an empty (all padding) vision layout."""
    keys = set().union(*micro)
    stacked = {}
    for key in keys:
        arrays = [m.get(key, _empty(key, stacked_rank=False)) for m in micro]
        shape = np.max([a.shape for a in arrays], axis=0)
        stacked[key] = np.stack([_pad_to(key, a, shape) for a in arrays])
    return stacked


def _empty(key: str, stacked_rank: bool) -> np.ndarray:
    rank = _NDIM[key] - (0 if stacked_rank else 1)
    return np.zeros((0,) * rank, np.float32 if isinstance(_PAD[key], float) else np.int32)


def _pad_to(key: str, array: np.ndarray, shape) -> np.ndarray:
    return np.pad(array, [(0, n - d) for n, d in zip(shape, array.shape)], constant_values=_PAD[key])


def agree_across_processes(stacked: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Pads each process's stacked inputs to the largest shape any process has.

    Every process must run the same compiled step, but each picks its buckets from its own data;
    one small all-gather of the shapes per step makes them agree. No-op on one process.
    """
    if jax.process_count() == 1:
        return stacked
    from jax.experimental import multihost_utils

    keys = sorted(_NDIM)
    shapes = np.zeros((len(keys), max(_NDIM.values())), np.int64)
    for i, key in enumerate(keys):
        if key in stacked:
            shapes[i, : stacked[key].ndim] = stacked[key].shape
    target = np.asarray(multihost_utils.process_allgather(shapes)).max(axis=0)
    agreed = {}
    for i, key in enumerate(keys):
        shape = tuple(target[i, : _NDIM[key]])
        if not all(shape):
            continue  # no process has images this step: nobody runs the vision tower
        agreed[key] = _pad_to(key, stacked.get(key, _empty(key, stacked_rank=True)), shape)
    return agreed


def global_batch(stacked: dict[str, np.ndarray], mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
    """Process-local stacked inputs -> global arrays sharded over the data-parallel axes.

    Token arrays split their batch axis; vision arrays split their slot/row axis, so each
    process's rows form one contiguous block (the step re-bases the layout's indices per block).
    """
    from jax.sharding import NamedSharding, PartitionSpec

    def sharding(key: str, ndim: int) -> NamedSharding:
        spec = [None] * ndim
        spec[2 if key == "positions" else 1] = BATCH_AXES  # axis 0 is the micro-batch index
        return NamedSharding(mesh, PartitionSpec(*spec))

    return {k: jax.make_array_from_process_local_data(sharding(k, v.ndim), v) for k, v in stacked.items()}
