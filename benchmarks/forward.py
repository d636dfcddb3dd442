"""Our jitted Qwen2.5-VL forward vs transformers' on CPU, same random weights, one run.

    python benchmarks/forward.py [--repeats=5]

Config: text hidden 512, 8 layers (GQA 8/2 heads), vision depth 8 (hidden 256), one 448x448
image and 512 text tokens. Prints the median time of each and the speed ratio.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import Qwen2_5_VLConfig  # noqa: E402

from codedance_jax.hf.convert import convert  # noqa: E402
from hf_reference import hf_logits, random_hf_model, random_pixels, sequence  # noqa: E402
from models.qwen2_5_vl import Qwen2_5_VL  # noqa: E402


def bench_config() -> Qwen2_5_VLConfig:
    return Qwen2_5_VLConfig(
        text_config=dict(vocab_size=151936, hidden_size=512, intermediate_size=1536, num_hidden_layers=8,
                         num_attention_heads=8, num_key_value_heads=2, rms_norm_eps=1e-6,
                         rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [8, 12, 12]}),
        vision_config=dict(depth=8, hidden_size=256, intermediate_size=512, num_heads=4, out_hidden_size=512,
                           fullatt_block_indexes=[3, 7]),
        tie_word_embeddings=True)


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    hf = random_hf_model(bench_config())
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(os.path.join(tmp, "hf"))
        convert(os.path.join(tmp, "hf"), os.path.join(tmp, "ckpt"))
        ours = Qwen2_5_VL.from_checkpoint(os.path.join(tmp, "ckpt"))

    rng = np.random.default_rng(0)
    grids = np.array([[1, 32, 32]])  # 448x448 pixels
    text = 512 - 256 - 2
    ids = np.array([sequence(rng, [text // 2, grids[0], text - text // 2])])
    pixels = random_pixels(rng, grids)

    ours_logits = np.asarray(ours(ids, pixels, grids))  # compiles
    ref_logits = hf_logits(hf, ids, pixels, grids)
    ours_s = median_seconds(lambda: np.asarray(ours(ids, pixels, grids)), args.repeats)
    ref_s = median_seconds(lambda: hf_logits(hf, ids, pixels, grids), args.repeats)
    print(f"tokens {ids.shape[1]} (image pads {int(grids.prod() // 4)}), torch threads {torch.get_num_threads()}")
    print(f"max |logit difference| {np.abs(ours_logits - ref_logits).max():.2e}")
    print(f"ours (jax.jit)   {ours_s * 1e3:8.1f} ms")
    print(f"transformers     {ref_s * 1e3:8.1f} ms")
    print(f"speed ratio (transformers / ours): {ref_s / ours_s:.2f}x")


if __name__ == "__main__":
    main()
