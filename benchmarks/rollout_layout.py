"""Which weights layout the sharded rollout should decode with, measured on 8 CPU devices.

    .venv/bin/python benchmarks/rollout_layout.py [--layers=4] [--hidden=512] [--filled=300]

A model body that dominates the step (text hidden 512 x 4 layers, 2048-id vocabulary, random
weights); 8 slots of a 1024-token cache filled to `--filled` tokens (not a power of two); one
decode call = 16 tokens per slot. For each mesh it prints the median wall time of a decode call
with the training state's weights in place ("train") and with the gathered copy ("gathered",
rollout/weights.py), their ratio, and what one reshard to the gathered copy costs, in decode calls.
CPU "devices" share two cores and memory, so collectives cost copies rather than interconnect
time: the ratio is a floor for what FSDP's per-token weight gathers cost on a pod.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT]

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from codedance_jax import mesh as mesh_lib  # noqa: E402
from models.qwen2_5_vl import Qwen2_5_VL, get_preset  # noqa: E402
from models.qwen2_5_vl.config import TextConfig  # noqa: E402
from rollout.sampler import DecodeInputs, SlotCache  # noqa: E402
from rollout.weights import sampling_params  # noqa: E402

SLOTS, CAPACITY, CHUNK, STEPS = 8, 1024, 64, 16


def median_seconds(fn, repeats: int) -> float:
    fn()  # compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def decode_call(cache: SlotCache, params, filled: int):
    inputs = DecodeInputs.idle(SLOTS, STEPS)
    inputs.budget[:] = STEPS
    inputs.positions[:] = filled
    triggers = np.zeros((SLOTS, cache.cfg.text.vocab_size), bool)  # no stop token: every slot runs all steps

    def run():  # attention reads the window for `filled` tokens whatever the slots hold
        cache.decode(params, triggers, inputs, filled).counts.block_until_ready()
    return run


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--filled", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    demo = get_preset("demo")
    cfg = demo.replace(text=TextConfig(vocab_size=2048, hidden_size=args.hidden, intermediate_size=3 * args.hidden,
                                       num_layers=args.layers, num_heads=8, num_kv_heads=4, mrope_section=(8, 12, 12)),
                       vision=dataclasses.replace(demo.vision, out_hidden_size=args.hidden))
    model = Qwen2_5_VL(cfg, rngs=nnx.Rngs(0))
    print(f"text hidden {args.hidden} x {args.layers} layers, vocab 2048; {SLOTS} slots filled to {args.filled} "
          f"tokens; one decode call = {STEPS} tokens per slot; median of {args.repeats}")
    print(f"{'mesh (data, fsdp, tensor)':28s} {'train ms':>9s} {'gathered ms':>12s} {'train/gathered':>15s} "
          f"{'reshard, in calls':>18s}")
    for shape in ((1, 8, 1), (2, 2, 2), (8, 1, 1)):
        mesh = mesh_lib.make_mesh(shape)
        params = jax.device_put(model.params(), mesh_lib.param_shardings(model, mesh))
        cache = SlotCache(cfg, SLOTS, CAPACITY, CHUNK, STEPS, mesh=mesh)
        train_s = median_seconds(decode_call(cache, params, args.filled), args.repeats)
        gathered = sampling_params(params, cfg, mesh, "gathered")
        gathered_s = median_seconds(decode_call(cache, gathered, args.filled), args.repeats)
        reshard_s = median_seconds(lambda: jax.block_until_ready(sampling_params(params, cfg, mesh, "gathered")),
                                   args.repeats)
        print(f"{str(shape):28s} {train_s * 1e3:9.1f} {gathered_s * 1e3:12.1f} {train_s / gathered_s:15.2f} "
              f"{reshard_s / gathered_s:18.2f}")


if __name__ == "__main__":
    main()
