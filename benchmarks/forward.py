"""Our jitted Qwen2.5-VL forward vs transformers' on CPU, same random weights, one run.

    python benchmarks/forward.py [--repeats=5] [--configs=small,152k] [--lengths=1024,770]

Configs: text hidden 512, 8 layers (GQA 8/2 heads, MLP 1536), vision hidden 256 with
  `152k`:  the real 151936-token vocabulary and vision depth 8 (the LM head is most of the work);
  `small`: a 1200-token vocabulary and vision depth 4 (the model body is most of the work).
Inputs: one sequence of each length, with one 448x448 image (256 image pads) and text only.
Each call of ours includes its host side (M-RoPE positions, padding to the length bucket).
Ours and transformers alternate call by call; prints the median time of each and the ratio.
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
from models.qwen2_5_vl import model as model_lib  # noqa: E402

SMALL_VOCAB = 1200
SMALL_VISION_IDS = (1152, 1155, 1153)  # vision start, image pad, vision end (text ids stay below 1000)


def bench_config(vocab: str = "152k") -> Qwen2_5_VLConfig:
    small = vocab == "small"
    specials = (dict(vision_start_token_id=1152, vision_end_token_id=1153, image_token_id=1155,
                     video_token_id=1156, bos_token_id=1150, eos_token_id=1151) if small else {})
    depth, fullatt = (4, [1, 3]) if small else (8, [3, 7])
    return Qwen2_5_VLConfig(
        text_config=dict(vocab_size=SMALL_VOCAB if small else 151936, hidden_size=512, intermediate_size=1536,
                         num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=2, rms_norm_eps=1e-6,
                         rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [8, 12, 12]}),
        vision_config=dict(depth=depth, hidden_size=256, intermediate_size=512, num_heads=4, out_hidden_size=512,
                           fullatt_block_indexes=fullatt),
        tie_word_embeddings=True, **specials)


def vision_ids(hf_config) -> tuple[int, int, int]:
    return hf_config.vision_start_token_id, hf_config.image_token_id, hf_config.vision_end_token_id


def interleaved_medians(ours, theirs, repeats: int) -> tuple[float, float]:
    """Median seconds of each, calls alternating so both see the same load on a shared machine."""
    times = ([], [])
    for _ in range(repeats):
        for fn, out in zip((ours, theirs), times):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return float(np.median(times[0])), float(np.median(times[1]))


def run_config(name: str, lengths: list[int], repeats: int) -> None:
    hf = random_hf_model(bench_config(name))
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(os.path.join(tmp, "hf"))
        convert(os.path.join(tmp, "hf"), os.path.join(tmp, "ckpt"))
        ours = Qwen2_5_VL.from_checkpoint(os.path.join(tmp, "ckpt"))
    text, vis = hf.config.text_config, hf.config.vision_config
    print(f"config {name}: vocab {text.vocab_size}, text hidden {text.hidden_size} x {text.num_hidden_layers} "
          f"layers, vision depth {vis.depth}")
    print(f"  {'input':28s} {'ours ms':>9s} {'transformers ms':>16s} {'ratio':>7s}  max |logit diff|")
    rng = np.random.default_rng(0)
    grids = np.array([[1, 32, 32]])  # 448x448 pixels, 256 image pads
    pixels = random_pixels(rng, grids)
    for length in lengths:
        for with_image in (True, False):
            if with_image:
                text_len = length - 256 - 2
                pieces = [text_len // 2, grids[0], text_len - text_len // 2]
                args = (np.array([sequence(rng, pieces, vision_ids(hf.config))]), pixels, grids)
            else:
                args = (np.array([sequence(rng, [length])]),)
            diff = np.abs(np.asarray(ours(*args)) - hf_logits(hf, *args)).max()  # also compiles
            ours_s, ref_s = interleaved_medians(lambda: np.asarray(ours(*args)), lambda: hf_logits(hf, *args),
                                                repeats)
            label = f"{'image + text' if with_image else 'text only'}, {length} tokens"
            print(f"  {label:28s} {ours_s * 1e3:9.1f} {ref_s * 1e3:16.1f} {ref_s / ours_s:6.2f}x  {diff:.1e}")
    print(f"  compiled forwards so far (all configs): {model_lib.forward_logits._cache_size()}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--configs", default="small,152k")
    parser.add_argument("--lengths", default="1024,770")
    args = parser.parse_args()
    print(f"CPU, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}; ratio = transformers / ours")
    for name in args.configs.split(","):
        run_config(name, [int(n) for n in args.lengths.split(",")], args.repeats)


if __name__ == "__main__":
    main()
