"""SFT experiment configs: `--config=configs/sft.py:tiny` (or demo, 3b, 7b).

Everything an experiment is lives here; any field can be overridden on the command line with
`--config.field=value` (e.g. `--config.total_steps=100 --config.mesh_shape=(1,-1,1)`).
"""
from __future__ import annotations

import os

import ml_collections

DEMO_TOKENIZER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo_tokenizer")


def base() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    # Model: a preset name (random init) or a converted checkpoint directory.
    c.model_preset = "tiny"
    c.init_checkpoint = ""  # converted checkpoint dir (codedance_jax.hf.convert); "" = random init
    c.tokenizer_dir = ""  # "" = the packaged Qwen tokenizer (tests, tiny runs)
    c.dtype = "float32"  # compute dtype
    c.param_dtype = "float32"  # master weights
    c.remat = False  # recompute each decoder layer in the backward pass
    c.attention_impl = "auto"  # "auto" (Pallas kernels on TPU), "chunked" (XLA) or "splash"; docs/attention.md

    # Data.
    c.data = ml_collections.ConfigDict()
    c.data.source = "synthetic"  # "synthetic", or a .jsonl / .parquet file of release-form records
    c.data.tfds_dir = ""  # if set, records are first built into an array_record TFDS dataset here
    c.data.num_synthetic = 512
    c.data.seed = 0
    c.data.system_prompt = ""
    c.data.min_pixels = 3136
    c.data.max_pixels = 50176  # 64 * 28 * 28: at most 64 image tokens per image for the tiny preset
    c.data.window_batches = 8  # batches whose examples are grouped by length

    # Batch and sequence buckets.
    c.batch_size = 4  # global, in sequences
    c.grad_accum_steps = 1
    c.length_buckets = (256, 512, 1024)  # padded lengths; longer records are skipped and counted
    c.patch_buckets = (512, 1024, 2048)  # image patch rows per (process-local) micro-batch

    # Optimisation: AdamW, linear warmup then cosine decay, global-norm clipping.
    c.total_steps = 100
    c.learning_rate = 1e-3
    c.warmup_steps = 10
    c.min_lr_ratio = 0.1
    c.weight_decay = 0.0
    c.adam_b1 = 0.9
    c.adam_b2 = 0.95
    c.grad_clip = 1.0
    c.seed = 0

    # Device mesh (data, fsdp, tensor); -1 takes the remaining devices.
    c.mesh_shape = (1, -1, 1)

    # Checkpoints, logging.
    c.checkpoint_every = 50
    c.keep_checkpoints = 3
    c.log_every = 1
    c.loss_chunk_tokens = 2048  # tokens whose logits are alive at once in the loss
    c.plot_every = 50
    c.tensorboard = False
    c.distributed = False  # jax.distributed.initialize() for multi-host pods
    # Only needed off TPU/SLURM (where JAX finds them itself), e.g. several CPU processes:
    c.coordinator_address = ""  # "host:port" of process 0
    c.num_processes = 0
    c.process_id = -1
    return c


def demo(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`make demo`'s SFT stage (train/demo.py): the `demo` model on the task suite's SFT split.
    Images are capped at 224x224 px (64 tokens; the suite's code still reads them, which
    tests/data/test_synthetic.py checks at this budget). One patch bucket and two length buckets
    (a direct answer, a code trajectory) keep compilations to a handful; every suite record fits."""
    c.model_preset = "demo"
    c.tokenizer_dir = DEMO_TOKENIZER
    c.data.num_synthetic = 2048
    c.data.max_pixels = 224 * 224
    c.batch_size = 8
    c.length_buckets = (256, 768)
    c.patch_buckets = (2048,)
    c.total_steps = 400
    c.learning_rate = 3e-3
    c.warmup_steps = 10
    c.checkpoint_every = 100
    c.log_every = 10
    c.plot_every = 100
    return c


def get_config(preset: str = "tiny") -> ml_collections.ConfigDict:
    c = base()
    if preset == "tiny":
        return c
    if preset == "demo":
        return demo(c)
    if preset not in ("3b", "7b"):
        raise ValueError(f"unknown SFT preset {preset!r}; choose tiny, demo, 3b or 7b")
    # Release-scale SFT (SPEC section 5): bf16 compute, remat, long multi-turn sequences.
    c.model_preset = preset
    c.dtype = "bfloat16"
    c.remat = True
    c.data.source = ""  # must be set: the CodeDance SFT records
    c.data.max_pixels = 1003520
    c.batch_size = 64
    c.length_buckets = (2048, 4096, 8192)
    c.patch_buckets = (8192, 16384, 32768)
    c.total_steps = 1000
    c.learning_rate = 1e-5
    c.warmup_steps = 30
    c.weight_decay = 0.0
    c.mesh_shape = (1, -1, 1)
    c.checkpoint_every = 100
    c.log_every = 10
    return c
