"""Rollout engine on CPU: decode throughput against transformers' `generate`, and how long the
device waits on tools with overlapped tool calls against a turn-synchronous baseline.

    .venv/bin/python benchmarks/decode.py [--batch=8] [--new_tokens=64] [--requests=24]

Model: random weights, text hidden 256 x 4 layers (GQA 4/2 heads, vocab 151936), vision depth 2.
1. Throughput: `batch` prompts (text + a 112x140 image), greedy, exactly `new_tokens` new tokens
   each, prefill included, both sides warmed up first. Target: faster than transformers at batch 8.
2. Tool workload: `requests` scripted (teacher-forced) trajectories on `batch` slots; each
   reasons for a varying number of tokens, runs code that sleeps 1-3 s (a slow tool) and crops the input
   image, then answers after reading the crop. Device idle = time no slot could decode because all
   busy slots waited on tools. Target: under 10% with overlap.
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
from PIL import Image  # noqa: E402
from transformers import Qwen2_5_VLConfig  # noqa: E402

from codedance_jax.hf.convert import convert  # noqa: E402
from codedance_jax.processing.chat import render_chat  # noqa: E402
from codedance_jax.processing.image import preprocess_images  # noqa: E402
from codedance_jax.processing.tokenizer import load_tokenizer  # noqa: E402
from hf_reference import random_hf_model, save_hf  # noqa: E402
from models.qwen2_5_vl import Qwen2_5_VL  # noqa: E402
from rollout.engine import Engine, EngineConfig, Request  # noqa: E402
from rollout.sampling import SamplingParams  # noqa: E402
from sandbox import InterpreterPool  # noqa: E402

GREEDY = SamplingParams(temperature=0.0)


def bench_config() -> Qwen2_5_VLConfig:
    return Qwen2_5_VLConfig(
        text_config=dict(vocab_size=151936, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6,
                         rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [8, 12, 12]}),
        vision_config=dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=2, out_hidden_size=256,
                           fullatt_block_indexes=[1]),
        tie_word_embeddings=True)


def smooth_image(seed: int, height: int = 112, width: int = 140) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return Image.fromarray(pixels).resize((width, height), Image.Resampling.BICUBIC)


def question(seed: int) -> Request:
    return Request(messages=[{"role": "user", "content": "<image>\nDescribe this picture in detail."}],
                   images=[smooth_image(seed)], seed=seed, sampling=GREEDY, stop_strings=())


def transformers_generate(hf_model, tokenizer, requests, new_tokens: int) -> float:
    rendered = [render_chat(r.messages, tokenizer, r.images, add_generation_prompt=True) for r in requests]
    pixels, grids = preprocess_images([im for r in rendered for im in r.images])
    ids = torch.tensor(np.stack([r.input_ids for r in rendered]), dtype=torch.long)
    started = time.perf_counter()
    with torch.no_grad():
        hf_model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=torch.tensor(pixels),
                          image_grid_thw=torch.tensor(grids),
                          mm_token_type_ids=torch.tensor(np.stack([r.mm_token_type_ids for r in rendered])),
                          max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    return time.perf_counter() - started


def throughput(model, hf_model, tokenizer, batch: int, new_tokens: int) -> None:
    config = EngineConfig(num_slots=batch, max_context=256, prefill_chunk=64, decode_steps=16,
                          max_turn_tokens=new_tokens)
    engine = Engine(model, tokenizer, None, config)
    engine.generate([question(1000 + i) for i in range(batch)])  # compile
    requests = [question(i) for i in range(batch)]
    trajectories = engine.generate(requests)
    assert all(t.response_length == new_tokens for t in trajectories)
    ours = engine.stats.wall_s
    transformers_generate(hf_model, tokenizer, requests[:1], 2)  # warm-up
    theirs = transformers_generate(hf_model, tokenizer, requests, new_tokens)
    tokens = batch * new_tokens
    print(f"decode, batch {batch}, {new_tokens} new tokens each (prefill included), KV cache "
          f"{engine.cache_nbytes / 2**20:.1f} MiB")
    print(f"  ours          {tokens / ours:8.1f} tokens/s  ({ours:.2f} s, {engine.stats.decode_calls} decode calls)")
    print(f"  transformers  {tokens / theirs:8.1f} tokens/s  ({theirs:.2f} s)")
    print(f"  speed-up      {theirs / ours:8.2f}x")


def tool_request(index: int, rng: np.random.Generator) -> Request:
    thoughts = " ".join(f"Region {k} looks plain." for k in range(int(rng.integers(1, 7))))
    sleep = rng.uniform(1.0, 3.0)
    code = (f"<think>{thoughts}</think>\n<code>\n```python\nimport time\ntime.sleep({sleep:.2f})\n"
            f"crop = input_image.crop((0, 0, 60, 60))\nprint(crop.size)\ncrop\n```\n</code>")
    answer = f"<think>{thoughts[: len(thoughts) // 2]}</think>\n<answer>{index}</answer><|im_end|>"
    return Request.from_question("What is in the top-left corner?", smooth_image(index), seed=index,
                                 forced_turns=[code, answer])


def tool_workload(model, tokenizer, batch: int, count: int) -> None:
    rng = np.random.default_rng(0)
    requests = [tool_request(i, rng) for i in range(count)]
    print(f"tool workload: {count} trajectories on {batch} slots, one 1-3 s tool call each")
    with InterpreterPool(num_workers=batch, timeout_s=5.0) as pool:
        for synchronous in (False, True):
            engine = Engine(model, tokenizer, pool, EngineConfig(
                num_slots=batch, max_context=1024, prefill_chunk=64, decode_steps=16, max_turn_tokens=512,
                turn_synchronous=synchronous))
            engine.generate(requests[:batch])  # compile, start sessions
            trajectories = engine.generate(requests)
            assert all(t.finish_reason == "stop" and t.tool_calls[0].outcome == "ok" for t in trajectories)
            stats = engine.stats
            name = "turn-synchronous" if synchronous else "overlapped"
            print(f"  {name:17s} wall {stats.wall_s:6.2f} s, device idle on tools {stats.tool_wait_s:5.2f} s "
                  f"({stats.tool_wait_fraction:5.1%}), {stats.generated_tokens} generated tokens")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8, help="slots (and transformers batch size)")
    parser.add_argument("--new_tokens", type=int, default=64, help="tokens generated per prompt")
    parser.add_argument("--requests", type=int, default=24, help="trajectories in the tool workload")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        hf_model = random_hf_model(bench_config(), seed=0)
        save_hf(hf_model, os.path.join(tmp, "hf"))
        convert(os.path.join(tmp, "hf"), os.path.join(tmp, "ckpt"))
        model = Qwen2_5_VL.from_checkpoint(os.path.join(tmp, "ckpt"))
    tokenizer = load_tokenizer(None)
    print(f"CPU, {os.cpu_count()} cores, torch {torch.get_num_threads()} threads")
    throughput(model, hf_model, tokenizer, args.batch, args.new_tokens)
    tool_workload(model, tokenizer, args.batch, args.requests)


if __name__ == "__main__":
    main()
