"""Our jitted SFT train step vs a transformers + torch train step on CPU, same weights and batch.

    python benchmarks/sft_step.py [--configs=small,152k] [--seq_lens=1024,770] [--steps=5] [--batch=1]

Both start from one random transformers model (ours loads it through `convert` and
`init_state(init_checkpoint=...)`), take the same batch (each sequence: 32 text tokens, one
224x224 image (64 image pads), text; loss on the second half of each sequence, random pixels)
and the same optimizer (AdamW, constant learning rate, no weight decay, global-norm clipping at
1.0). Ours is `train.step.jit_train_step` on a (1, 1, 1) mesh; theirs is forward with `labels`,
backward, `clip_grad_norm_`, `AdamW.step`. Prints the losses of the first steps of each (the
first must agree to ~1e-4 relative in float32; these steps are the warm-up), then the median step
time over `--steps` more steps of each (alternating ours and theirs, so both see the same load on
a shared machine), tokens per second and the speed ratio. Ours pads each sequence to its length
bucket (the model's DEFAULT_LENGTH_BUCKETS: 770 tokens run as 832), as training does, and pays for
the padding; transformers runs the exact length. The step's compilations are printed.

Configs: `small` and `152k` are benchmarks/forward.bench_config (text hidden 512, 8 layers; a
1200-token vocabulary and vision depth 4, or the real 151936-token vocabulary and vision depth
8, whose embedding and LM head then dominate); `tiny` is tests/hf_reference.tiny_hf_config
(text hidden 64, 3 layers, vision depth 4, 152k vocabulary). Each config runs at every length of
`--seq_lens` (a power of two and not).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests"), os.path.join(ROOT, "benchmarks")]

import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from codedance_jax import mesh as mesh_lib  # noqa: E402
from codedance_jax.hf.convert import convert  # noqa: E402
from codedance_jax.processing.batching import Batch, choose_bucket  # noqa: E402
from codedance_jax.processing.rope_index import get_rope_index  # noqa: E402
from configs.sft import get_config  # noqa: E402
from hf_reference import random_hf_model, random_pixels, sequence, tiny_hf_config  # noqa: E402
from models.qwen2_5_vl.config import load_config  # noqa: E402
from models.qwen2_5_vl.model import DEFAULT_LENGTH_BUCKETS  # noqa: E402
from train import inputs as inputs_lib  # noqa: E402
from train.state import init_state, learning_rate_schedule, make_optimizer, state_shardings  # noqa: E402
from train.step import jit_train_step  # noqa: E402

GRID = np.array([1, 16, 16])  # a 224x224 image: 256 patches, 64 image tokens
TEXT_BEFORE_IMAGE = 32
LEARNING_RATE = 1e-4
COMPARED_STEPS = 3  # untimed warm-up steps whose losses are printed side by side


def hf_config(name: str):
    if name == "tiny":
        return tiny_hf_config()
    from forward import bench_config
    return bench_config(name)


def make_batch(rng: np.random.Generator, batch: int, seq_len: int, hf_cfg) -> Batch:
    """`batch` sequences of exactly `seq_len` tokens, one image each, loss on the second half."""
    from forward import vision_ids
    merge = hf_cfg.vision_config.spatial_merge_size
    text_after = seq_len - TEXT_BEFORE_IMAGE - (int(GRID.prod()) // merge**2 + 2)
    if text_after < 1:
        raise ValueError(f"--seq_len={seq_len} is too short for one 224x224 image")
    ids = np.array([sequence(rng, [TEXT_BEFORE_IMAGE, GRID, text_after], vision_ids(hf_cfg)) for _ in range(batch)],
                   np.int32)
    grids = np.tile(GRID, (batch, 1))
    mask = np.ones_like(ids)
    loss_mask = np.zeros_like(ids)
    loss_mask[:, seq_len // 2:] = 1
    token_types = (ids == hf_cfg.image_token_id).astype(np.int32)
    positions, deltas = get_rope_index(ids, grids, mask, spatial_merge_size=merge, mm_token_type_ids=token_types,
                                       image_token_id=hf_cfg.image_token_id,
                                       vision_start_token_id=hf_cfg.vision_start_token_id,
                                       video_token_id=hf_cfg.video_token_id)
    pixels = random_pixels(rng, grids)
    return Batch(input_ids=ids, attention_mask=mask, position_ids=positions, rope_deltas=deltas, loss_mask=loss_mask,
                 mm_token_type_ids=token_types, pixel_values=pixels, image_grid_thw=grids,
                 num_valid_patches=len(pixels))


def optimizer_config():
    """configs/sft.py with a constant learning rate (no warmup, cosine end = peak), no decay."""
    c = get_config("tiny")
    c.learning_rate, c.warmup_steps, c.min_lr_ratio, c.weight_decay, c.grad_clip = LEARNING_RATE, 0, 1.0, 0.0, 1.0
    return c


def ours_step_fn(ckpt_dir: str, batch: Batch):
    """(step function closing over the state, model inputs on device)."""
    model_cfg = load_config(ckpt_dir)
    config = optimizer_config()
    mesh = mesh_lib.make_mesh((1, 1, 1), jax.devices()[:1])
    tx = make_optimizer(config)
    shardings = state_shardings(model_cfg, tx, mesh, np.float32)
    state = init_state(model_cfg, tx, shardings, seed=0, param_dtype=np.float32, init_checkpoint=ckpt_dir)
    step = jit_train_step(model_cfg, tx, learning_rate_schedule(config), shardings, remat=False, num_blocks=1,
                          loss_chunk=config.loss_chunk_tokens)
    inputs = inputs_lib.global_batch(inputs_lib.stack_micro_batches([inputs_lib.model_inputs(model_cfg, batch)]),
                                     mesh)

    def run() -> float:
        nonlocal state
        state, metrics = step(state, inputs)
        jax.block_until_ready(state)
        return float(metrics["loss"])
    run.compilations = step._cache_size
    return run


def padded_to_bucket(batch: Batch) -> Batch:
    """The batch padded to its length bucket, as training pads it (padding has attention, loss
    and position 0): ours pays for the padding, transformers runs the exact length."""
    length = batch.input_ids.shape[1]
    pad = choose_bucket(length, DEFAULT_LENGTH_BUCKETS, "sequence length") - length

    def right(a):
        return np.pad(a, [(0, 0)] * (a.ndim - 1) + [(0, pad)])
    return dataclasses.replace(batch, input_ids=right(batch.input_ids), attention_mask=right(batch.attention_mask),
                               position_ids=right(batch.position_ids), loss_mask=right(batch.loss_mask),
                               mm_token_type_ids=right(batch.mm_token_type_ids))


def torch_step_fn(model, batch: Batch):
    c = optimizer_config()
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=c.learning_rate, betas=(c.adam_b1, c.adam_b2), eps=1e-8, weight_decay=0.0)
    ids = torch.tensor(batch.input_ids, dtype=torch.long)
    # transformers shifts labels itself: logits at t are scored against labels[t + 1], which is
    # what our shifted_targets does with loss_mask[t + 1].
    labels = torch.where(torch.tensor(batch.loss_mask, dtype=torch.bool), ids, -100)
    kwargs = dict(input_ids=ids, attention_mask=torch.tensor(batch.attention_mask, dtype=torch.long), labels=labels,
                  mm_token_type_ids=torch.tensor(batch.mm_token_type_ids, dtype=torch.long),
                  pixel_values=torch.tensor(batch.pixel_values[: batch.num_valid_patches]),
                  image_grid_thw=torch.tensor(batch.image_grid_thw, dtype=torch.long))

    def run() -> float:
        opt.zero_grad(set_to_none=True)
        loss = model(**kwargs).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, c.grad_clip)
        opt.step()
        return float(loss.detach())
    return run


def timed_pair(ours, theirs, steps: int) -> tuple[float, float]:
    """Median seconds per step of each, the timed steps alternating between the two so that both
    see the same load on a shared machine."""
    times = ([], [])
    for _ in range(steps):
        for fn, out in zip((ours, theirs), times):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return float(np.median(times[0])), float(np.median(times[1]))


def run(name: str, seq_len: int, args) -> None:
    hf = random_hf_model(hf_config(name))
    batch = make_batch(np.random.default_rng(0), args.batch, seq_len, hf.config)
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(os.path.join(tmp, "hf"))
        convert(os.path.join(tmp, "hf"), os.path.join(tmp, "ckpt"))
        ours = ours_step_fn(os.path.join(tmp, "ckpt"), padded_to_bucket(batch))
    theirs = torch_step_fn(hf, batch)

    ours_losses = [ours() for _ in range(COMPARED_STEPS)]  # the first compiles
    ref_losses = [theirs() for _ in range(COMPARED_STEPS)]
    ours_s, ref_s = timed_pair(ours, theirs, args.steps)
    tokens = args.batch * seq_len
    text = hf.config.text_config
    print(f"config {name} (text hidden {text.hidden_size}, {text.num_hidden_layers} layers, vocab "
          f"{text.vocab_size}; vision depth {hf.config.vision_config.depth}), batch {args.batch} x {seq_len} "
          f"tokens, {int(batch.loss_mask[:, 1:].sum())} loss tokens, {args.batch} images {GRID[1] * 14}x{GRID[2] * 14}")
    for i, (a, b) in enumerate(zip(ours_losses, ref_losses)):
        print(f"  step {i + 1} loss: ours {a:.6f}  transformers {b:.6f}  relative difference {abs(a - b) / abs(b):.1e}")
    print(f"  ours {ours_s * 1e3:9.1f} ms/step ({tokens / ours_s:7.0f} tokens/s), transformers + torch "
          f"{ref_s * 1e3:9.1f} ms/step ({tokens / ref_s:7.0f} tokens/s): {ref_s / ours_s:.2f}x "
          f"(median of {args.steps} steps each); ours padded to {padded_to_bucket(batch).input_ids.shape[1]} tokens, "
          f"{ours.compilations()} compilation(s)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="small,152k", help="comma-separated: small, 152k, tiny")
    parser.add_argument("--seq_lens", default="1024,770", help="tokens per sequence (ours pads to its bucket)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps of each, after %d untimed ones"
                        % COMPARED_STEPS)
    parser.add_argument("--batch", type=int, default=1, help="sequences per step (one 224x224 image each)")
    args = parser.parse_args()
    print(f"jax devices {jax.devices()}, cpu cores {os.cpu_count()}, torch threads {torch.get_num_threads()}; "
          f"ratio = transformers / ours")
    for name in args.configs.split(","):
        for seq_len in args.seq_lens.split(","):
            run(name, int(seq_len), args)


if __name__ == "__main__":
    main()
