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
from codedance_jax.processing.image import PREPROCESSOR_CONFIG, ImageProcessingConfig
from models.qwen2_5_vl import ModelConfig
from models.qwen2_5_vl.model import PARAMS_SUBDIR
from models.qwen2_5_vl.params_io import save_params
from train.monitoring import PLOTTED, MetricsWriter, PreemptionGuard, plot_curves
from train.state import TrainState

EXPORT_SUBDIR = "export"  # final parameters as a checkpoint `codedance_jax.hf.export` converts


def export_parameters(state: TrainState, model_cfg: ModelConfig, out_dir: str, asset_dir: str = "",
                      image_config: ImageProcessingConfig | None = None) -> None:
    """Writes config.json + params/ (the converted-checkpoint layout) for `hf.export` and
    `Qwen2_5_VL.from_checkpoint`; tokenizer files come from `asset_dir` when given, and
    preprocessor_config.json says the image sizes the run trained with (`image_config`)."""
    save_params(os.path.join(out_dir, PARAMS_SUBDIR), state.params)
    if jax.process_index() == 0:
        if asset_dir:
            copy_assets(asset_dir, out_dir, skip=("config.json",))
        if image_config is not None:
            with open(os.path.join(out_dir, PREPROCESSOR_CONFIG), "w") as f:
                json.dump(image_config.to_preprocessor_config(), f, indent=2)
        with open(os.path.join(out_dir, "config.json"), "w") as f:
            json.dump(model_cfg.to_hf_dict(), f, indent=2)


def run_training(config, workdir: str, *, model_cfg: ModelConfig, abstract_state: TrainState,
                 fresh_state: Callable[[], TrainState], train_step: Callable[[TrainState], tuple[TrainState, dict]],
                 data_iterator, asset_dir: str = "", image_config: ImageProcessingConfig | None = None,
                 evaluate: Callable[[TrainState], dict] | None = None,
                 plotted: tuple[str, ...] = PLOTTED, progress_keys: tuple[str, ...] = ("loss",)) -> TrainState:
    """Trains until `config.total_steps`, resuming from the latest checkpoint in `workdir`.

    train_step: one step from a state (SFT: a batch and a jitted update; GRPO: rollouts, rewards
      and updates). Its metrics may be device arrays; they are fetched on log steps only.
    data_iterator: has get_state()/set_state() (its position is checkpointed) and `skipped`.
    evaluate: run every `config.eval_every` steps and at the end; its metrics get their own row.
    """
    checkpointer = TrainCheckpointer(os.path.join(workdir, "checkpoints"), keep=config.keep_checkpoints)
    is_chief = jax.process_index() == 0
    metrics_writer = MetricsWriter(workdir, tensorboard=config.tensorboard and is_chief)
    latest = checkpointer.latest_step()
    if latest is None:
        state = fresh_state()
    else:
        state, data_state = checkpointer.restore(latest, abstract_state)
        data_iterator.set_state(data_state)
        logging.info("resumed from step %d", latest)
    step = int(state.step)
    if is_chief:
        metrics_writer.truncate_after(step)  # rows a crash logged after the last checkpoint are redone
    eval_every = config.get("eval_every", 0)
    guard = PreemptionGuard()
    progress = tqdm(total=config.total_steps, initial=step, disable=not is_chief, desc="train", unit="step")
    plot_path = os.path.join(workdir, "curves.png")
    tokens_pending, time_since = [], time.perf_counter()
    saved_step = step  # the start: restored from (or, at 0, nothing to save)
    try:
        while step < config.total_steps and not guard.stop_at(step):
            state, metrics = train_step(state)
            step += 1
            # Kept on device until a log step, and not added there: no op of its own between steps.
            tokens_pending.append(metrics.get("tokens", 0.0))
            if step % config.log_every == 0 or step == config.total_steps:
                now = time.perf_counter()
                values = {k: float(v) for k, v in metrics.items()}
                values["tokens_per_second"] = sum(map(float, tokens_pending)) / max(now - time_since, 1e-9)
                values.update({f"skipped_{k}": v for k, v in data_iterator.skipped.items()})
                tokens_pending, time_since = [], now
                if values.get("update_refused"):
                    logging.error("step %d: the loss or gradients were not finite (loss %s, grad norm %s); the "
                                  "update was refused and the parameters are unchanged",
                                  step, values.get("loss"), values.get("grad_norm"))
                if is_chief:
                    metrics_writer.write(step, values)
                progress.set_postfix({k: f"{values[k]:.4g}" for k in progress_keys if k in values})
            progress.update(1)
            if evaluate is not None and eval_every and (step % eval_every == 0 or step == config.total_steps):
                eval_values = evaluate(state)
                if is_chief:
                    metrics_writer.write(step, eval_values)
            if step % config.checkpoint_every == 0 or step == config.total_steps:
                checkpointer.save(step, state, data_iterator.get_state())
                saved_step = step
            if is_chief and step % config.plot_every == 0:
                plot_curves(metrics_writer.read(), plot_path, plotted)
        guard.training_done()
        if step < config.total_steps:  # stopped by SIGTERM, at the same step on every process
            if saved_step != step:
                checkpointer.save(step, state, data_iterator.get_state())
            logging.warning("SIGTERM: saved a checkpoint at step %d and stopping", step)
        else:
            export_parameters(state, model_cfg, os.path.join(workdir, EXPORT_SUBDIR), asset_dir, image_config)
    finally:
        checkpointer.close()
        progress.close()
        guard.restore()
        if is_chief:
            plot_curves(metrics_writer.read(), plot_path, plotted)
        metrics_writer.close()
    return state
