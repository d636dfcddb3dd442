"""Checks a converted checkpoint against transformers on the same inputs and prints a report.

    python -m codedance_jax.hf.verify --hf_dir=DIR --ckpt_dir=CKPT
    python -m codedance_jax.hf.verify            # a fresh random tiny model, converted on the spot

Runs one prompt with text and one image (random pixels) through both models in float32 and
prints the largest logit difference, the greedy-token agreement and the timing of each.
"""
from __future__ import annotations

import os
import tempfile
import time

import numpy as np
from absl import app, flags

from codedance_jax.hf.convert import convert
from codedance_jax.logging_setup import quiet_library_logs
from codedance_jax.processing.image import image_token_count
from models.qwen2_5_vl import ModelConfig, Qwen2_5_VL, get_preset

TOLERANCE = 1e-4


def random_hf_model(config, seed: int = 0, scale: float = 0.5):
    """A float32 transformers Qwen2.5-VL with every weight redrawn so activations are far from
    zero (the default init leaves many near zero, which would hide layout bugs): norm scales
    around 1, biases N(0, 0.2^2), matrices with variance 3 * scale^2 / fan_in."""
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).eval().float()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 and name.endswith(".weight"):  # RMSNorm scales
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif p.ndim == 1:
                p.copy_(0.2 * torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) * scale * (3.0 / p[0].numel()) ** 0.5)
    return model


def random_tiny_hf_dir(out_dir: str, seed: int = 0) -> str:
    """Saves a transformers Qwen2.5-VL with the tiny preset's shapes and random weights."""
    from transformers import Qwen2_5_VLConfig

    random_hf_model(Qwen2_5_VLConfig(**get_preset("tiny").to_hf_dict()), seed).save_pretrained(out_dir)
    return out_dir


def demo_inputs(cfg: ModelConfig, seed: int = 0):
    rng = np.random.default_rng(seed)
    grids = np.array([[1, 12, 16]])
    run = [cfg.vision_start_token_id] + [cfg.image_token_id] * image_token_count(grids[0]) + [cfg.vision_end_token_id]
    ids = np.array([rng.integers(0, 1000, 8).tolist() + run + rng.integers(0, 1000, 24).tolist()])
    pixels = rng.standard_normal((int(grids.prod()), cfg.vision.patch_dim)).astype(np.float32)
    return ids, pixels, grids


def report(hf_dir: str, ckpt_dir: str) -> float:
    """Prints the parity report; returns the largest absolute logit difference."""
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    ours = Qwen2_5_VL.from_checkpoint(ckpt_dir, dtype="float32")
    ids, pixels, grids = demo_inputs(ours.config)
    start = time.perf_counter()
    ours_logits = np.asarray(ours(ids, pixels, grids))
    ours_s = time.perf_counter() - start

    ref = Qwen2_5_VLForConditionalGeneration.from_pretrained(hf_dir, dtype=torch.float32).eval()
    t_ids = torch.tensor(ids)
    start = time.perf_counter()
    with torch.no_grad():
        ref_logits = ref(input_ids=t_ids, pixel_values=torch.tensor(pixels), image_grid_thw=torch.tensor(grids),
                         mm_token_type_ids=(t_ids == ours.config.image_token_id).int()).logits.numpy()
    ref_s = time.perf_counter() - start

    diff = float(np.abs(ours_logits - ref_logits).max())
    agree = float((ours_logits.argmax(-1) == ref_logits.argmax(-1)).mean())
    print(f"checkpoint        {ckpt_dir}")
    print(f"sequence          {ids.shape[1]} tokens, 1 image of grid {grids[0].tolist()}")
    print(f"logit range       [{ref_logits.min():.3f}, {ref_logits.max():.3f}]")
    print(f"max |difference|  {diff:.2e}  ({'PASS' if diff <= TOLERANCE else 'FAIL'} at {TOLERANCE:g})")
    print(f"greedy agreement  {agree:.1%}")
    print(f"time              ours {ours_s * 1e3:.0f} ms (includes compilation), transformers {ref_s * 1e3:.0f} ms")
    return diff


def main(argv):
    del argv
    quiet_library_logs()
    f = flags.FLAGS
    if f.hf_dir and f.ckpt_dir:
        diff = report(f.hf_dir, f.ckpt_dir)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            hf_dir = random_tiny_hf_dir(os.path.join(tmp, "hf"))
            convert(hf_dir, os.path.join(tmp, "ckpt"))
            diff = report(hf_dir, os.path.join(tmp, "ckpt"))
    if diff > TOLERANCE:
        raise SystemExit(1)


if __name__ == "__main__":
    flags.DEFINE_string("hf_dir", None, "transformers checkpoint directory; omit to use a random tiny model.")
    flags.DEFINE_string("ckpt_dir", None, "Our converted checkpoint of hf_dir.")
    app.run(main)
