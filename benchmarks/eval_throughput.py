"""Items per minute: eval.main's path against the release's way of evaluating, same model and items.

    .venv/bin/python benchmarks/eval_throughput.py [--items=16] [--turn_tokens=64] [--slots=8]

Model: random weights, benchmarks/decode.bench_config (text hidden 256 x 4 layers, vocab 151936,
vision depth 2), float32 on CPU; items: the synthetic benchmark (shapes pictures, 128-288 px).
- Ours: `codedance_jax.eval.runner.Runner` as eval.main runs it: the rollout engine (slots
  decoding together, tools overlapped), the sandbox pool, scoring and a predictions file written
  per item. Warmed up (compiled) on other items first.
- The release's way: one item at a time, transformers `generate` (greedy, the same stop strings)
  for each assistant turn, the same tool loop (the call parsed, run in the same sandbox pool, its
  tool turn rendered and appended, generation continued), the same scoring.
Both: greedy, at most 7 assistant turns of `turn_tokens` tokens. A random model rarely writes a
tool call, so both mostly generate one full turn per item; the generated token counts are
printed to show both did the same work.
"""
from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests"), os.path.join(ROOT, "benchmarks")]

import torch  # noqa: E402

from codedance_jax.eval import predictions, registry, scoring  # noqa: E402
from codedance_jax.eval.runner import Runner, request_for  # noqa: E402
from codedance_jax.hf.convert import convert  # noqa: E402
from codedance_jax.processing.chat import render_chat  # noqa: E402
from codedance_jax.processing.image import ImageProcessingConfig as ImageConfig, preprocess_images, resize_for_model  # noqa: E402
from codedance_jax.processing.tokenizer import load_tokenizer  # noqa: E402
from decode import bench_config  # noqa: E402
from hf_reference import IMAGE_PAD, random_hf_model, save_hf  # noqa: E402
from models.qwen2_5_vl import Qwen2_5_VL  # noqa: E402
from rollout.engine import DEFAULT_STOP_STRINGS, INPUT_IMAGE_FILE, Engine, EngineConfig  # noqa: E402
from rollout.sampling import SamplingParams  # noqa: E402
from rollout.tool_images import usable_images  # noqa: E402
from rollout.tool_turns import (DEFAULT_SYSTEM_PROMPT, ToolTurnFormat, has_final_answer, outcome_of,  # noqa: E402
                                parse_tool_call, render_tool_turn)
from rollout.trajectory import TOOL_PARSE_ERROR, ToolCall  # noqa: E402
from sandbox import InterpreterPool  # noqa: E402

MAX_TURNS = 7


def ours(model, tokenizer, pool, benchmark, items, warmup, slots: int, turn_tokens: int) -> tuple[float, int]:
    engine = Engine(model, tokenizer, pool, EngineConfig(
        num_slots=slots, max_context=4096, prefill_chunk=256, decode_steps=16, max_turns=MAX_TURNS,
        max_turn_tokens=turn_tokens, max_response_tokens=4096, sampling=SamplingParams(temperature=0.0)))
    with tempfile.TemporaryDirectory() as out:
        runner = Runner(engine, tokenizer, benchmark, out, DEFAULT_SYSTEM_PROMPT)
        with predictions.PredictionWriter(os.path.join(out, "warmup.jsonl")) as writer:
            runner.run(warmup, writer.write, progress=False)
        path = os.path.join(out, predictions.PREDICTIONS)
        started = time.perf_counter()
        with predictions.PredictionWriter(path) as writer:
            runner.run(items, writer.write, progress=False)
        elapsed = time.perf_counter() - started
        generated = sum(r.get("generated_tokens", 0) for r in predictions.read_predictions(path))
    return elapsed, generated


def release_item(hf_model, tokenizer, pool, benchmark, item, turn_tokens: int, session: str) -> int:
    """One item the release's way; returns the generated token count."""
    request = request_for(item, DEFAULT_SYSTEM_PROMPT)
    rendered = render_chat(request.messages, tokenizer, list(request.images), add_generation_prompt=True)
    ids, images = rendered.input_ids.tolist(), list(rendered.images)
    jpeg = io.BytesIO()
    resize_for_model(images[0]).save(jpeg, format="JPEG", quality=95)
    files = {INPUT_IMAGE_FILE: jpeg.getvalue()}
    generated_text, generated = [], 0
    for turn in range(MAX_TURNS):
        pixels, grids = preprocess_images(images)
        input_ids = torch.tensor([ids])
        with torch.no_grad():
            out = hf_model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                    pixel_values=torch.tensor(pixels), image_grid_thw=torch.tensor(grids),
                                    mm_token_type_ids=(input_ids == IMAGE_PAD).int(), max_new_tokens=turn_tokens,
                                    do_sample=False, stop_strings=list(DEFAULT_STOP_STRINGS), tokenizer=tokenizer)
        new = out[0, len(ids):].tolist()
        generated += len(new)
        text = tokenizer.decode(new, skip_special_tokens=False)
        generated_text.append(text)
        ids += new
        parsed = None if has_final_answer(text) else parse_tool_call(text)
        if parsed is None or turn == MAX_TURNS - 1:
            break
        if parsed.error is not None:
            call, pngs = ToolCall(code=None, outcome=TOOL_PARSE_ERROR, error=parsed.error), []
        else:
            result = pool.execute(session, parsed.code, files=files)
            files = None
            call = ToolCall(code=parsed.code, outcome=outcome_of(result.error, result.timed_out), error=result.error,
                            stdout=result.stdout, stderr=result.stderr)
            pngs = result.images
        tool_images, call.notes = usable_images(pngs, 16 - len(images), ImageConfig())
        tool_turn = render_tool_turn(call, tool_images, tokenizer, ToolTurnFormat(), ImageConfig(),
                                     last_turn=turn == MAX_TURNS - 2)
        closer = tokenizer("\n" if text.endswith("<|im_end|>") else "<|im_end|>\n", add_special_tokens=False)["input_ids"]
        ids += closer + tool_turn.input_ids.tolist()
        images += tool_turn.images
    pool.close_session(session)
    scoring.score(benchmark, item, "\n".join(generated_text))
    return generated


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=16, help="items timed on each side")
    parser.add_argument("--turn_tokens", type=int, default=64, help="most tokens per assistant turn")
    parser.add_argument("--slots", type=int, default=8, help="engine slots")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        hf_model = random_hf_model(bench_config("bench"), seed=0)
        save_hf(hf_model, os.path.join(tmp, "hf"))
        convert(os.path.join(tmp, "hf"), os.path.join(tmp, "ckpt"))
        model = Qwen2_5_VL.from_checkpoint(os.path.join(tmp, "ckpt"))
    tokenizer = load_tokenizer(None)
    benchmark = registry.get(f"synthetic:num={args.items + args.slots}")
    everything = benchmark.read(None).items
    warmup, items = everything[: args.slots], everything[args.slots:]
    print(f"CPU, {os.cpu_count()} cores, torch {torch.get_num_threads()} threads; {len(items)} synthetic items, "
          f"greedy, up to {MAX_TURNS} turns of {args.turn_tokens} tokens")
    with InterpreterPool(num_workers=args.slots, timeout_s=15.0) as pool:
        ours_s, ours_tokens = ours(model, tokenizer, pool, benchmark, items, warmup, args.slots, args.turn_tokens)
        release_item(hf_model, tokenizer, pool, benchmark, warmup[0], 4, "warmup")
        started = time.perf_counter()
        theirs_tokens = sum(release_item(hf_model, tokenizer, pool, benchmark, item, args.turn_tokens, f"item{k}")
                            for k, item in enumerate(items))
        theirs_s = time.perf_counter() - started
    per_minute = lambda seconds: 60 * len(items) / seconds  # noqa: E731
    print(f"  eval.main path (engine, {args.slots} slots)  {per_minute(ours_s):7.1f} items/min  "
          f"({ours_s:.1f} s, {ours_tokens} generated tokens)")
    print(f"  release way (generate, one at a time)  {per_minute(theirs_s):7.1f} items/min  "
          f"({theirs_s:.1f} s, {theirs_tokens} generated tokens)")
    print(f"  ratio {theirs_s / ours_s:.2f}x")


if __name__ == "__main__":
    main()
