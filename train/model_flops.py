"""Model FLOPs of a train step, for a modelled MFU (train/compile_check.py prints it).

Counted from the model's shapes, not from `compiled.cost_analysis()`: XLA's cost analysis counts
the body of a while loop once, and the step runs its micro-batches, decoder layers, vision
blocks and loss chunks in loops (a scan of 4 iterations reports the FLOPs of one), so it reports
a small fraction of the step. The count here is MFU's usual numerator: 2 FLOPs per weight per
token (per patch for the vision tower) per forward pass, plus attention's two products over the
keys each query sees; a backward pass is two forward passes; rematerialisation's recomputation
is hardware work, not model work, and is not counted.
"""
from __future__ import annotations

import dataclasses
import math

import jax

from models.qwen2_5_vl import ModelConfig, Qwen2_5_VL

# Peak dense bf16 FLOP/s of one chip (one JAX device; a v5p chip's two TensorCores are one device).
PEAK_BF16_FLOPS = {"TPU v5": 459e12, "TPU v5p": 459e12, "TPU v6 lite": 918e12, "TPU v6e": 918e12}


def _count(tree) -> int:
    return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


@dataclasses.dataclass(frozen=True)
class StepFlops:
    model: float     # model FLOPs of one optimizer step (all chips)
    six_n_d: float   # 6 x parameters x tokens, the usual shorthand, for comparison

    def step_time_at(self, mfu: float, chips: int, peak: float) -> float:
        """Seconds per step at which the step would run at `mfu` of the chips' peak."""
        return self.model / (mfu * chips * peak)


def forward_flops(cfg: ModelConfig, *, rows: int, seq_len: int, patches_per_row: int) -> float:
    """One forward pass over `rows` sequences of `seq_len` tokens (all real), each with one image
    of `patches_per_row` patches."""
    params = Qwen2_5_VL.abstract(cfg).params()
    text, vision = cfg.text, cfg.vision
    # The LM head is a matmul over every position; the embedding is a lookup.
    text_weights = _count(params["text"]["layers"]) + text.vocab_size * text.hidden_size
    causal_keys = (seq_len + 1) / 2  # keys a query sees on average
    text_attention = text.num_layers * 4 * causal_keys * text.num_heads * text.head_dim
    tokens = rows * seq_len
    flops = tokens * (2 * text_weights + text_attention)
    if patches_per_row:
        vision_weights = (_count(params["vision"]["blocks"]) + _count(params["vision"]["patch_embed"])
                          + _count(params["vision"]["merger"]) / vision.merge_unit)
        full_blocks = len(vision.fullatt_block_indexes)
        # Window blocks see their window; full blocks see the whole image (one frame).
        vision_keys = (vision.depth - full_blocks) * vision.window_patches + full_blocks * patches_per_row
        vision_attention = 4 * vision_keys * vision.hidden_size
        flops += rows * patches_per_row * (2 * vision_weights + vision_attention)
    return flops


def step_flops(cfg: ModelConfig, *, rows: int, seq_len: int, patches_per_row: int, forward_passes: int = 3
               ) -> StepFlops:
    """A step over `rows` sequences (all micro-batches): forward_passes 3 for forward + backward,
    4 for GRPO with a KL reference's extra forward."""
    model = forward_passes * forward_flops(cfg, rows=rows, seq_len=seq_len, patches_per_row=patches_per_row)
    return StepFlops(model=model, six_n_d=6 * _count(Qwen2_5_VL.abstract(cfg).params()) * rows * seq_len)
