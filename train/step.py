"""The SFT train step: masked next-token loss, token-mean over the global batch, gradient
accumulation over stacked micro-batches, AdamW update. Pure and jitted with shardings."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from models.qwen2_5_vl import ModelConfig
from models.qwen2_5_vl import model as model_lib
from train.losses import cross_entropy_sum, shifted_targets
from train.state import TrainState

def rebase_layout(micro: dict, num_blocks: int) -> dict:
    """The vision layout of a global batch made of `num_blocks` process-local blocks: each
    block's indices refer to its own pixel rows, slots and windows, so offset them by the
    block's start."""
    index, windows, order = micro["patch_index"], micro["frame_windows"], micro["merged_order"]
    rows_per_block = micro["pixel_values"].shape[0] // num_blocks
    slots_per_block = index.shape[0] // num_blocks
    windows_per_block = windows.shape[0] // num_blocks
    merged_per_block = order.shape[0] // num_blocks
    slot_block = jnp.arange(index.shape[0]) // slots_per_block
    window_block = (jnp.arange(windows.shape[0]) // windows_per_block)[:, None]
    merged_block = jnp.arange(order.shape[0]) // merged_per_block
    return {
        "patch_index": jnp.where(index >= 0, index + slot_block * rows_per_block, -1),
        "rope_hw": micro["rope_hw"],
        "frame_windows": jnp.where(windows >= 0, windows + window_block * windows_per_block, -1),
        "merged_order": order + merged_block * merged_per_block,
    }


def micro_batch_loss(model_cfg: ModelConfig, params: dict, micro: dict, *, remat: bool, num_blocks: int,
                     loss_chunk: int):
    """(sum of token losses, (loss tokens, correct predictions, input tokens)) for one micro-batch."""
    inputs = {k: micro[k] for k in ("input_ids", "attention_mask", "positions")}
    if "pixel_values" in micro:
        inputs["pixel_values"] = micro["pixel_values"]
        inputs["vision_layout"] = rebase_layout(micro, num_blocks)
    hidden = model_lib.forward_hidden(model_cfg, params, inputs, remat=remat)
    targets, mask = shifted_targets(micro["input_ids"], micro["loss_mask"])
    loss, correct = cross_entropy_sum(params["text"], hidden, targets, mask, loss_chunk)
    return loss, (mask.sum(), correct, micro["attention_mask"].sum())


def loss_and_grads(params: dict, batch: dict, *, model_cfg: ModelConfig, remat: bool = False,
                   num_blocks: int = 1, loss_chunk: int = 2048):
    """Token-mean loss and its gradients over micro-batches stacked on axis 0 (accumulated in
    float32, divided once by the token count of the whole global batch)."""
    grad_fn = jax.value_and_grad(functools.partial(micro_batch_loss, model_cfg, remat=remat,
                                                   num_blocks=num_blocks, loss_chunk=loss_chunk), has_aux=True)

    def accumulate(carry, micro):
        grads, sums = carry
        (micro_loss, counts), micro_grads = grad_fn(params, micro)
        grads = jax.tree.map(lambda a, g: a + g.astype(jnp.float32), grads, micro_grads)
        return (grads, [s + c.astype(jnp.float32) for s, c in zip(sums, (micro_loss, *counts))]), None

    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
    (grads, (loss, targets, correct, tokens)), _ = jax.lax.scan(accumulate, (zeros, [jnp.float32(0)] * 4), batch)
    denominator = jnp.maximum(targets, 1.0)
    grads = jax.tree.map(lambda g: g / denominator, grads)
    return grads, {"loss": loss / denominator, "accuracy": correct / denominator, "loss_tokens": targets,
                   "tokens": tokens}


def train_step(state: TrainState, batch: dict, *, model_cfg: ModelConfig, tx: optax.GradientTransformation,
               schedule: optax.Schedule, remat: bool = False, num_blocks: int = 1, loss_chunk: int = 2048):
    """One optimizer step over a batch of micro-batches stacked on axis 0."""
    grads, metrics = loss_and_grads(state.params, batch, model_cfg=model_cfg, remat=remat, num_blocks=num_blocks,
                                    loss_chunk=loss_chunk)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    params = jax.tree.map(lambda new, old: new.astype(old.dtype), params, state.params)
    metrics.update(grad_norm=optax.tree.norm(grads), learning_rate=schedule(state.step))
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics


def jit_train_step(model_cfg: ModelConfig, tx, schedule, shardings: TrainState, *, remat: bool,
                   num_blocks: int, loss_chunk: int = 2048):
    """The step jitted with the state's shardings; the state is donated."""
    step = functools.partial(train_step, model_cfg=model_cfg, tx=tx, schedule=schedule, remat=remat,
                             num_blocks=num_blocks, loss_chunk=loss_chunk)
    return jax.jit(step, in_shardings=(shardings, None), out_shardings=(shardings, None), donate_argnums=0)
