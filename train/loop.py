"""The training loop shared by the SFT and GRPO binaries: resume, step, log, checkpoint,
preemption, plots, and the final export-ready parameters."""
from __future__ import annotations

import json
import os
import time
from typing import Callable

import jax
from absl import logging
from tqdm import tqdm

from codedance_jax.checkpoint import TrainCheckpointer
from codedance_jax.hf.files import copy_assets
from models.qwen2_5_vl import ModelConfig
from models.qwen2_5_vl.model import PARAMS_SUBDIR
from models.qwen2_5_vl.params_io import save_params
from train.monitoring import MetricsWriter, PreemptionGuard, plot_curves
from train.state import TrainState

EXPORT_SUBDIR = "export"  # final parameters as a checkpoint `codedance_jax.hf.export` converts


def export_parameters(state: TrainState, model_cfg: ModelConfig, out_dir: str, asset_dir: str = "") -> None:
    """Writes config.json + params/ (the converted-checkpoint layout) for `hf.export` and
    `Qwen2_5_VL.from_checkpoint`; tokenizer/processor files come from `asset_dir` when given."""
    save_params(os.path.join(out_dir, PARAMS_SUBDIR), state.params)
    if jax.process_index() == 0:
        if asset_dir:
            copy_assets(asset_dir, out_dir, skip=("config.json",))
        with open(os.path.join(out_dir, "config.json"), "w") as f:
            json.dump(model_cfg.to_hf_dict(), f, indent=2)


def run_training(config, workdir: str, *, model_cfg: ModelConfig, abstract_state: TrainState,
                 fresh_state: Callable[[], TrainState], step_fn, next_batch: Callable[[], dict],
                 data_iterator, asset_dir: str = "") -> TrainState:
    """Trains until `config.total_steps`, resuming from the latest checkpoint in `workdir`.

    data_iterator: has get_state()/set_state() (its position is checkpointed) and `skipped`.
    """
    checkpointer = TrainCheckpointer(os.path.join(workdir, "checkpoints"), keep=config.keep_checkpoints)
    latest = checkpointer.latest_step()
    if latest is None:
        state = fresh_state()
    else:
        state, data_state = checkpointer.restore(latest, abstract_state)
        data_iterator.set_state(data_state)
        logging.info("resumed from step %d", latest)
    step = int(state.step)
    is_chief = jax.process_index() == 0
    metrics_writer = MetricsWriter(workdir, tensorboard=config.tensorboard and is_chief)
    guard = PreemptionGuard()
    progress = tqdm(total=config.total_steps, initial=step, disable=not is_chief, desc="train", unit="step")
    plot_path = os.path.join(workdir, "curves.png")
    tokens_since, time_since = 0.0, time.perf_counter()
    try:
        while step < config.total_steps and not guard.requested:
            state, metrics = step_fn(state, next_batch())
            step += 1
            tokens_since += float(metrics["tokens"])
            if step % config.log_every == 0 or step == config.total_steps:
                now = time.perf_counter()
                values = {k: float(v) for k, v in metrics.items()}
                values["tokens_per_second"] = tokens_since / max(now - time_since, 1e-9)
                values.update({f"skipped_{k}": v for k, v in data_iterator.skipped.items()})
                tokens_since, time_since = 0.0, now
                if is_chief:
                    metrics_writer.write(step, values)
                progress.set_postfix(loss=f"{values['loss']:.4f}", tok_s=f"{values['tokens_per_second']:.0f}")
            progress.update(1)
            if step % config.checkpoint_every == 0 or step == config.total_steps or guard.requested:
                checkpointer.save(step, state, data_iterator.get_state())
            if is_chief and step % config.plot_every == 0:
                plot_curves(metrics_writer.read(), plot_path)
        if guard.requested:
            logging.warning("SIGTERM: saved a checkpoint at step %d and stopping", step)
        else:
            export_parameters(state, model_cfg, os.path.join(workdir, EXPORT_SUBDIR), asset_dir)
    finally:
        checkpointer.close()
        progress.close()
        guard.restore()
        if is_chief:
            plot_curves(metrics_writer.read(), plot_path)
        metrics_writer.close()
    return state
