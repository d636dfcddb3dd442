"""GRPO on two local CPU processes (jax.distributed over gloo), each rolling out its own half of
every step's prompts on its own device with its own sandbox pool, samples, scores and trains
exactly what one process with both devices does on the same prompts and seeds."""
import os
import socket
import subprocess
import sys

import jax
import numpy as np

from binary_runs import ROOT, final_params, finish, logged_steps, start

OVERRIDES = [
    "--config=configs/grpo.py:demo", "--config.total_steps=2", "--config.checkpoint_every=2", "--config.eval_every=0",
    "--config.data.num_synthetic=16", "--config.grpo.prompts_per_step=2", "--config.grpo.group_size=2",
    "--config.mesh_shape=(1,2,1)", "--config.rollout.num_slots=2", "--config.rollout.max_turn_tokens=12",
    "--config.rollout.max_response_tokens=24", "--config.data.max_pixels=12544", "--config.length_buckets=(256,)",
    "--config.rollout.max_context=256", "--config.patch_buckets=(256,)", "--config.sandbox.num_workers=1",
    "--config.loss_chunk_tokens=256", "--config.log_every=1",
]
SAMPLED = ("reward", "accuracy", "tool_call_rate", "response_length", "generated_tokens", "turns")
TRAINED = ("loss", "grad_norm", "entropy", "logprob_gap_abs")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_processes(workdir):
    port = free_port()
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}  # one CPU device per process
    runs = [subprocess.Popen(
        [sys.executable, "-m", "train.grpo", f"--workdir={workdir}", *OVERRIDES, "--config.distributed=True",
         f"--config.coordinator_address=127.0.0.1:{port}", "--config.num_processes=2", f"--config.process_id={i}"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for i in range(2)]
    for run in runs:
        finish(run)


def test_two_processes_roll_out_and_train_like_one(tmp_path, compile_cache):
    single, multi = str(tmp_path / "single"), str(tmp_path / "multi")
    finish(start("train.grpo", single, OVERRIDES, compile_cache, devices=2))
    two_processes(multi)
    expected, got = logged_steps(single), logged_steps(multi)
    assert [r["step"] for r in got] == [r["step"] for r in expected] == [1, 2]  # logged once, by process 0
    for want, have in zip(expected, got):
        assert {k: have[k] for k in SAMPLED if k in want} == {k: want[k] for k in SAMPLED if k in want}
        for key in TRAINED:
            np.testing.assert_allclose(have[key], want[key], rtol=1e-3, atol=1e-5, err_msg=key)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), final_params(multi), final_params(single))
