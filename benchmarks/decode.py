"""Rollout engine on CPU: decode throughput against the machine's floor and transformers'
`generate`, and how long the device waits on tools with overlapped tool calls against a
turn-synchronous baseline.

    .venv/bin/python benchmarks/decode.py [--configs=tiny,bench,small] [--batches=1,8] [--new_tokens=96]

Models (random weights): `tiny` is the tiny preset (text hidden 128 x 4 layers, vocab 151936,
the `python -m rollout.answer` test model); `bench` is text hidden 256 x 4 layers (GQA 4/2 heads),
vision depth 2, vocab 151936; `small` is text hidden 512 x 8 layers (GQA 8/2) with the demo
tokenizer's 1024-id vocabulary, where the model body rather than the LM head dominates.
1. Throughput, for each config and batch: `batch` prompts (text + a 112x140 image), greedy,
   exactly N new tokens each, in a KV cache of `--max_context` tokens per slot, warmed up first.
   Prints ours with prefill included next to transformers `generate` (target: >= 3x at batch 8),
   and our decode-only rate (N tokens over the difference of the median times of 2N- and N-token
   runs) next to the floor: one jitted step reading every text weight once plus the LM head's
   argmax for that batch, a decode step's memory traffic without attention (target: within 2x of
   it). The sampler's compiled executables are counted per config.
2. Tool workload (`bench` config): `requests` scripted (teacher-forced) trajectories on the
   largest batch of slots; each reasons for a varying number of tokens, runs code that sleeps
   1-3 s (a slow tool) and crops the input image, then answers after reading the crop. Device
   idle = time no slot could decode because all busy slots waited on tools. Target: under 10%
   with overlap.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from transformers import Qwen2_5_VLConfig  # noqa: E402

from codedance_jax.hf.convert import convert  # noqa: E402
from codedance_jax.processing.chat import render_chat  # noqa: E402
from codedance_jax.processing.image import preprocess_images  # noqa: E402
from codedance_jax.processing.tokenizer import load_tokenizer  # noqa: E402
from hf_reference import random_hf_model, save_hf  # noqa: E402
from models.qwen2_5_vl import Qwen2_5_VL, get_preset  # noqa: E402
from configs.sft import DEMO_TOKENIZER  # noqa: E402
from rollout import sampler  # noqa: E402
from rollout.engine import Engine, EngineConfig, Request  # noqa: E402
from rollout.sampling import SamplingParams, first_argmax  # noqa: E402
from sandbox import InterpreterPool  # noqa: E402

GREEDY = SamplingParams(temperature=0.0)
REPEATS = 3  # medians of the N- and 2N-token runs, alternating (the machine is shared)


def bench_config(name: str) -> Qwen2_5_VLConfig:
    if name == "tiny":
        return Qwen2_5_VLConfig(**get_preset("tiny").to_hf_dict())
    if name == "small":  # the demo tokenizer's 1024 ids: the model body, not the LM head, dominates
        hf = get_preset("demo").to_hf_dict()
        hf["text_config"].update(hidden_size=512, intermediate_size=1536, num_hidden_layers=8, num_attention_heads=8,
                                 num_key_value_heads=2)
        hf["text_config"]["rope_parameters"]["mrope_section"] = [8, 12, 12]
        hf["vision_config"]["out_hidden_size"] = 512
        return Qwen2_5_VLConfig(**hf)
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


def floor_seconds(model, batch: int, repeats: int = 20) -> float:
    """Median time of one jitted step that reads every text weight once, as a decode step must
    (a batch-row product with each matrix; the embedding table only where it is the LM head),
    plus the argmax over the vocabulary. Attention over the cache is not included."""
    params = dict(model.params()["text"])
    head = params.pop("lm_head").T if "lm_head" in params else params["embed"]
    params.pop("embed")
    matrices = [w.reshape(-1, w.shape[-1]) for w in jax.tree.leaves(params) if w.ndim >= 2]

    def step(h, head, matrices):
        touched = [(jnp.ones((h.shape[0], w.shape[0]), w.dtype) @ w).sum() for w in matrices]
        return first_argmax(jnp.einsum("BD,VD->BV", h, head)), touched

    step = jax.jit(step)
    hidden = jnp.ones((batch, head.shape[1]), jnp.float32)
    jax.block_until_ready(step(hidden, head, matrices))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(step(hidden, head, matrices))
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def throughput(model, hf_model, tokenizer, batch: int, new_tokens: int, max_context: int) -> None:
    engines = {tokens: Engine(model, tokenizer, None, EngineConfig(
        num_slots=batch, max_context=max_context, prefill_chunk=64, decode_steps=16, max_turn_tokens=tokens))
        for tokens in (new_tokens, 2 * new_tokens)}

    def run(tokens: int, seed: int) -> float:
        engine = engines[tokens]
        trajectories = engine.generate([question(seed + i) for i in range(batch)])
        assert all(t.response_length == tokens for t in trajectories)
        return engine.stats.wall_s

    for tokens in engines:  # compile, and fill the engines' host-side caches
        run(tokens, 1000)
    floor = floor_seconds(model, batch)  # before torch runs: its idle threads spin for a while
    times = np.array([(run(new_tokens, 0), run(2 * new_tokens, 0)) for _ in range(REPEATS)])
    ours, ours_twice = np.median(times, axis=0)
    requests = [question(i) for i in range(batch)]
    transformers_generate(hf_model, tokenizer, requests[:1], 2)  # warm-up
    theirs = transformers_generate(hf_model, tokenizer, requests, new_tokens)
    tokens = batch * new_tokens
    decode_rate = tokens / max(ours_twice - ours, 1e-9)
    print(f"  batch {batch}: {new_tokens} new tokens each, prefill included: ours {tokens / ours:7.1f} tokens/s, "
          f"transformers {tokens / theirs:7.1f} tokens/s, speed-up {theirs / ours:5.2f}x")
    print(f"  batch {batch}: decode only: ours {decode_rate:7.1f} tokens/s, floor {batch / floor:7.1f} tokens/s "
          f"(LM head + argmax {floor * 1e3:.2f} ms), {batch / floor / decode_rate:4.2f}x from the floor")


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


def tokenizer_for(name: str):
    return load_tokenizer(DEMO_TOKENIZER if name == "small" else None)


def load(name: str, tmp: str):
    hf_model = random_hf_model(bench_config(name), seed=0)
    save_hf(hf_model, os.path.join(tmp, name, "hf"))
    convert(os.path.join(tmp, name, "hf"), os.path.join(tmp, name, "ckpt"))
    return hf_model, Qwen2_5_VL.from_checkpoint(os.path.join(tmp, name, "ckpt"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="tiny,bench,small", help="tiny, bench and/or small")
    parser.add_argument("--batches", default="1,8", help="slots (and transformers batch sizes)")
    parser.add_argument("--new_tokens", type=int, default=96, help="tokens generated per prompt (N, then 2N)")
    parser.add_argument("--max_context", type=int, default=4096, help="KV cache tokens per slot")
    parser.add_argument("--requests", type=int, default=24, help="trajectories in the tool workload (0: skip)")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    print(f"CPU, {os.cpu_count()} cores, torch {torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory() as tmp:
        names = {*args.configs.split(","), *(["bench"] if args.requests else [])}
        models = {name: load(name, tmp) for name in names}
        for name in args.configs.split(","):
            hf_model, model = models[name]
            text = model.config.text
            print(f"config {name}: text hidden {text.hidden_size} x {text.num_layers} layers, vocab {text.vocab_size}, "
                  f"KV cache {args.max_context} tokens per slot")
            compiled = sampler.compilations()
            for batch in batches:
                throughput(model, hf_model, tokenizer_for(name), batch, args.new_tokens, args.max_context)
            print(f"  sampler executables compiled for this config: {sampler.compilations() - compiled}")
        if args.requests:
            tool_workload(models["bench"][1], tokenizer_for("bench"), max(batches), args.requests)


if __name__ == "__main__":
    main()
