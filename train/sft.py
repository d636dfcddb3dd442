"""Supervised fine-tuning of Qwen2.5-VL on CodeDance-style multi-turn trajectories.

    python -m train.sft --config=configs/sft.py:tiny --workdir=/tmp/sft
    python -m train.sft --config=configs/sft.py:7b --workdir=gs://bucket/run \
        --config.init_checkpoint=/ckpt/qwen2_5_vl_7b --config.data.source=/data/sft.parquet

Re-running with the same workdir resumes from its latest checkpoint (parameters, optimizer,
step and data position). SIGTERM (TPU preemption) saves a checkpoint and exits.
"""
from __future__ import annotations

import os

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from codedance_jax import mesh as mesh_lib
from codedance_jax.data.pipeline import make_sft_iterator
from codedance_jax.logging_setup import quiet_library_logs
from codedance_jax.processing.image import ImageProcessingConfig
from codedance_jax.processing.tokenizer import load_tokenizer, pad_token_id
from train import inputs as inputs_lib
from train.experiment import data_source, initialize_distributed, micro_batch_rows, model_config, tokenizer_files
from train.loop import run_training
from train.state import abstract_state, init_state, learning_rate_schedule, make_optimizer, state_shardings
from train.step import jit_train_step

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file and preset, "
                                          "e.g. configs/sft.py:tiny; override fields with --config.x=y.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and plots.")


def main(argv):
    del argv
    quiet_library_logs()
    config, workdir = _CONFIG.value, _WORKDIR.value
    if not workdir:
        raise app.UsageError("--workdir is required")
    if config.distributed:
        initialize_distributed(config)
    os.makedirs(workdir, exist_ok=True)
    model_cfg = model_config(config)
    mesh = mesh_lib.make_mesh(config.mesh_shape)
    mesh_lib.check_model_fits_mesh(model_cfg.text.num_heads, model_cfg.text.num_kv_heads, mesh)
    rows = micro_batch_rows(config, mesh)

    tokenizer = load_tokenizer(tokenizer_files(config))
    images = ImageProcessingConfig(min_pixels=config.data.min_pixels, max_pixels=config.data.max_pixels)
    batches = make_sft_iterator(
        data_source(config), tokenizer=tokenizer, batch_size=rows, length_buckets=config.length_buckets,
        patch_buckets=config.patch_buckets, seed=config.data.seed, image_config=images,
        process_index=jax.process_index(), process_count=jax.process_count(),
        window_batches=config.data.window_batches, system_prompt=config.data.system_prompt or None,
        pad_id=pad_token_id(tokenizer))

    param_dtype = jax.numpy.dtype(config.param_dtype)
    tx = make_optimizer(config)
    shardings = state_shardings(model_cfg, tx, mesh, param_dtype)
    step_fn = jit_train_step(model_cfg, tx, learning_rate_schedule(config), shardings, remat=config.remat,
                             num_blocks=jax.process_count(), loss_chunk=config.loss_chunk_tokens)

    def next_batch():
        micro = [inputs_lib.model_inputs(model_cfg, next(batches).inputs) for _ in range(config.grad_accum_steps)]
        stacked = inputs_lib.agree_across_processes(inputs_lib.stack_micro_batches(micro))
        return inputs_lib.global_batch(stacked, mesh)

    def fresh_state():
        return init_state(model_cfg, tx, shardings, seed=config.seed, param_dtype=param_dtype,
                          init_checkpoint=config.init_checkpoint)

    logging.info("mesh %s, %d devices, %d rows per micro-batch per process", dict(mesh.shape), mesh.size, rows)
    run_training(config, workdir, model_cfg=model_cfg,
                 abstract_state=abstract_state(model_cfg, tx, shardings, param_dtype), fresh_state=fresh_state,
                 train_step=lambda state: step_fn(state, next_batch()), data_iterator=batches,
                 asset_dir=tokenizer_files(config), image_config=images)


if __name__ == "__main__":
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)
