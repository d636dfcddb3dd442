"""GRPO experiment configs: `--config=configs/grpo.py:tiny` (or demo, 3b, 7b).

The model, optimiser, mesh, checkpoint and logging fields are SFT's (configs/sft.py); GRPO adds
the prompts, the rollout engine, the sandbox, the group sampling, the policy loss and the reward.
`7b` carries the release's settings (SPEC section 5). Override any field with
`--config.field=value`, e.g. `--config.reward.kind=deepeyes --config.grpo.group_size=8`.
"""
from __future__ import annotations

import ml_collections

from codedance_jax.data.synthetic import SPLIT_SEEDS
from configs import sft


def base() -> ml_collections.ConfigDict:
    c = sft.base()
    c.learning_rate = 1e-4
    c.warmup_steps = 0
    c.min_lr_ratio = 1.0  # constant learning rate, as in the release
    c.weight_decay = 0.01
    c.total_steps = 20
    c.checkpoint_every = 10
    c.plot_every = 10
    c.length_buckets = (256, 512, 1024)  # must reach rollout.max_context: nothing is truncated
    c.patch_buckets = (512, 1024, 2048, 4096)

    # Prompts in the release's RL form, or the embedded synthetic task; a held-out set validates.
    c.data = ml_collections.ConfigDict()
    c.data.source = "synthetic"  # "synthetic", or a .jsonl / .parquet file of RL records
    c.data.num_synthetic = 256
    c.data.seed = 0
    c.data.default_task = ""  # task rules for an unknown data_source ("general"/"math"); "" = refuse
    c.data.system_prompt = ""  # prepended to prompts that have no system turn
    c.data.min_pixels = 3136
    c.data.max_pixels = 50176
    c.data.eval_source = "synthetic"  # held-out prompts: "synthetic" (another seed) or a file; "" = none
    c.data.num_eval = 16
    c.data.eval_seed = 1000
    c.eval_every = 10  # greedy validation every this many steps and at the end; 0 = never
    # Benchmarks validated too (codedance_jax.eval), comma-separated NAME[:option=value]@PATH,
    # e.g. "chartqa@/data/chartqa,countbenchqa@/data/countbench.parquet,synthetic:num=32".
    c.eval_benchmarks = ""
    c.eval_limit = 64  # items per benchmark

    # Rollouts: the engine (rollout/engine.py) with the sandbox.
    c.rollout = ml_collections.ConfigDict()
    c.rollout.num_slots = 16
    c.rollout.max_context = 1024
    c.rollout.max_turns = 6
    c.rollout.max_turn_tokens = 256
    c.rollout.max_response_tokens = 768
    c.rollout.max_tool_tokens = 512
    c.rollout.max_images = 4
    c.rollout.decode_steps = 16
    c.rollout.prefill_chunk = 128
    c.rollout.temperature = 1.0
    c.rollout.top_p = 1.0
    c.rollout.top_k = 0
    # The weights decode reads (rollout/weights.py): "train" (in place), "gathered" (a copy not
    # split over data/fsdp, made once per step) or "auto". Several processes always gather.
    c.rollout.param_layout = "auto"
    c.sandbox = ml_collections.ConfigDict()
    c.sandbox.num_workers = 4
    c.sandbox.timeout_s = 15.0
    c.sandbox.memory_mb = 1024

    # Each step: prompts_per_step prompts x group_size samples (distinct seeds), then
    # num_minibatches optimizer updates (each over batch_size / num_minibatches trajectories,
    # in grad_accum_steps micro-batches).
    c.grpo = ml_collections.ConfigDict()
    c.grpo.prompts_per_step = 4
    c.grpo.group_size = 4
    c.grpo.num_minibatches = 1

    # Policy loss (train/policy_loss.py).
    c.loss = ml_collections.ConfigDict()
    c.loss.clip_low = 0.2
    c.loss.clip_high = 0.2
    c.loss.dual_clip = 3.0
    c.loss.aggregation = "token-mean"  # or "sequence-mean-token-mean"
    c.loss.kl_coef = 0.0
    c.loss.kl_estimator = "k3"  # or "k1"
    c.loss.tis_cap = 0.0  # truncated importance weights against the sampler; 0 = off (release)

    # Reward (codedance_jax/rewards).
    c.reward = ml_collections.ConfigDict()
    c.reward.kind = "bat"  # "bat" | "deepeyes" | "accuracy"
    c.reward.invalid = "skip"  # an unusable ground truth: "skip" (counted) or "raise"
    c.reward.judge_url = ""  # an OpenAI-compatible server for free-form answers; "" = rules only
    c.reward.judge_model = "judge"
    c.reward.judge_timeout_s = 30.0
    c.reward.judge_fallback_to_rules = False  # else an unreachable judge stops the run
    c.reward.judge_cache = ""  # JSON cache file of verdicts
    return c


def demo(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`make demo`'s GRPO stage (train/demo.py sets `init_checkpoint` to the SFT export): the task
    suite's RL split, 4 prompts x 8 samples, trajectories short enough for a CPU (a code answer
    is ~400 tokens with the image), one length bucket so the update compiles once. Validation is
    left to the demo's eval stage."""
    c.model_preset = "demo"
    c.tokenizer_dir = sft.DEMO_TOKENIZER
    c.data.seed = SPLIT_SEEDS["rl"]
    c.data.num_synthetic = 1024
    c.data.max_pixels = 224 * 224
    c.data.eval_source = ""
    c.eval_every = 0
    c.grpo.prompts_per_step = 4
    c.grpo.group_size = 8
    c.learning_rate = 2e-4
    c.total_steps = 40
    c.checkpoint_every = 5
    c.log_every = 1
    c.plot_every = 5
    c.length_buckets = (768,)
    c.patch_buckets = (8192,)
    c.rollout.num_slots = 32
    c.rollout.max_context = 768
    # Room for the SFT data's longest trajectory (a failed call, its fix, the answer) without the
    # engine's last-turn wording, so rollouts meet the tool turns SFT trained on.
    c.rollout.max_turns = 4
    c.rollout.max_turn_tokens = 256
    c.rollout.max_response_tokens = 512
    c.rollout.max_tool_tokens = 256
    c.rollout.max_images = 2
    c.rollout.prefill_chunk = 256
    c.sandbox.num_workers = 2
    return c


def get_config(preset: str = "tiny") -> ml_collections.ConfigDict:
    c = base()
    if preset == "demo":
        c = demo(c)
    elif preset in ("3b", "7b"):
        c = release(c, preset)
    elif preset != "tiny":
        raise ValueError(f"unknown GRPO preset {preset!r}; choose tiny, demo, 3b or 7b")
    c.batch_size = c.grpo.prompts_per_step * c.grpo.group_size  # train.grpo sets it again after overrides
    return c


def release(c: ml_collections.ConfigDict, preset: str) -> ml_collections.ConfigDict:
    # The release (SPEC section 5): group 8, 256 prompts per step, one update per rollout batch,
    # AdamW 1e-6 constant, weight decay 0.01, clip 1.0, no KL, clip 0.2/0.2, dual clip 3,
    # token-mean, temperature 1, 6 turns, 10240 prompt + 10240 response tokens, 15 s code timeout,
    # 2 epochs (~63K prompts), a checkpoint every 20 steps.
    c.model_preset = preset
    c.dtype = "bfloat16"
    c.remat = True
    c.data.source = ""  # must be set: the CodeDance RL records
    c.data.max_pixels = 1003520
    c.data.eval_source = ""
    c.eval_every = 20
    c.grpo.prompts_per_step = 256
    c.grpo.group_size = 8
    c.grad_accum_steps = 64
    c.learning_rate = 1e-6
    c.total_steps = 500
    c.checkpoint_every = 20
    c.log_every = 1
    c.rollout.num_slots = 64
    c.rollout.max_context = 20480
    c.rollout.max_turn_tokens = 10240
    c.rollout.max_response_tokens = 10240
    c.rollout.max_tool_tokens = 10240
    c.rollout.max_images = 16
    c.rollout.prefill_chunk = 512
    c.sandbox.num_workers = 32
    c.length_buckets = (4096, 8192, 12288, 16384, 20480)
    c.patch_buckets = (16384, 32768, 65536)
    return c
