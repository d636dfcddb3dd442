"""Train steps, pure and jitted with shardings. Both objectives (SFT's masked next-token loss,
GRPO's clipped policy loss) run through one gradient accumulation over micro-batches stacked on
axis 0 and one guarded optimizer update; they differ only in their per-micro-batch loss."""
from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import optax

from models.qwen2_5_vl import ModelConfig
from models.qwen2_5_vl import model as model_lib
from train.losses import cross_entropy_sum, next_token, shifted_targets, token_log_probs
from train.policy_loss import PolicyLossConfig, policy_loss_terms
from train.state import TrainState

# The batch-schema keys that are model inputs (the rest are per-token training targets).
_TOKEN_INPUTS = ("input_ids", "attention_mask", "positions")


def rebase_layout(micro: dict, num_blocks: int, image_token_id: int) -> dict:
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
        "merged_order": _contiguous_merged_order(order + merged_block * merged_per_block, micro["input_ids"],
                                                 image_token_id, num_blocks),
    }


def _contiguous_merged_order(order: jax.Array, input_ids: jax.Array, image_token_id: int, num_blocks: int):
    """Each block's merged order lists its real merged tokens, then padding; the model hands
    features to the image pads in row-major order over the whole batch, so block b's real
    entries must follow block b-1's real ones, not its padding."""
    per_block = order.shape[0] // num_blocks
    counts = (input_ids == image_token_id).reshape(num_blocks, -1).sum(axis=1)  # image pads per block
    ends = jnp.cumsum(counts)
    index = jnp.arange(order.shape[0])
    block = jnp.minimum(jnp.searchsorted(ends, index, side="right"), num_blocks - 1)
    local = jnp.minimum(index - (ends - counts)[block], per_block - 1)  # past the last real entry: unused
    return order[block * per_block + local]


def micro_hidden(model_cfg: ModelConfig, params: dict, micro: dict, *, remat: bool, num_blocks: int) -> jax.Array:
    """Final hidden states [B, L, D] of one micro-batch of the batch schema (train/inputs.py)."""
    inputs = {k: micro[k] for k in _TOKEN_INPUTS}
    if "pixel_values" in micro:
        inputs["pixel_values"] = micro["pixel_values"]
        inputs["vision_layout"] = rebase_layout(micro, num_blocks, model_cfg.image_token_id)
    return model_lib.forward_hidden(model_cfg, params, inputs, remat=remat)


def sft_micro_loss(params: dict, micro: dict, *, model_cfg: ModelConfig, remat: bool, num_blocks: int,
                   loss_chunk: int):
    """(sum of token losses, (loss tokens, metric sums)) for one micro-batch."""
    hidden = micro_hidden(model_cfg, params, micro, remat=remat, num_blocks=num_blocks)
    targets, mask = shifted_targets(micro["input_ids"], micro["loss_mask"])
    loss, correct = cross_entropy_sum(params["text"], hidden, targets, mask, loss_chunk)
    return loss, (mask.sum(), {"loss_tokens": mask.sum(), "correct": correct,
                               "tokens": micro["attention_mask"].sum().astype(jnp.float32)})


def policy_log_probs(params: dict, micro: dict, *, model_cfg: ModelConfig, temperature: float, remat: bool,
                     num_blocks: int, loss_chunk: int):
    """(log-probs, entropy) [B, L] of each next token under `params` at `temperature`."""
    hidden = micro_hidden(model_cfg, params, micro, remat=remat, num_blocks=num_blocks)
    targets, _ = shifted_targets(micro["input_ids"], micro["loss_mask"])
    return token_log_probs(params["text"], hidden, targets, temperature, loss_chunk)


def grpo_micro_loss(params: dict, micro: dict, ref_params: dict | None, *, model_cfg: ModelConfig,
                    loss_cfg: PolicyLossConfig, remat: bool, num_blocks: int, loss_chunk: int):
    """(weighted policy-loss sum, (denominator, metric sums)) for one micro-batch.

    The batch's per-token arrays (advantages, sampler_log_probs, optional old_log_probs) are
    aligned with input_ids, like loss_mask; they are shifted here with the targets. Without
    old_log_probs (one update per rollout batch) the old policy is the current one, so the ratio
    is 1 in value while its gradient is the policy gradient."""
    log_probs_of = functools.partial(policy_log_probs, micro=micro, model_cfg=model_cfg,
                                     temperature=loss_cfg.temperature, remat=remat, num_blocks=num_blocks,
                                     loss_chunk=loss_chunk)
    log_probs, entropy = log_probs_of(params)
    _, mask = shifted_targets(micro["input_ids"], micro["loss_mask"])
    old = (next_token(micro["old_log_probs"]) if "old_log_probs" in micro
           else jax.lax.stop_gradient(log_probs))
    ref = None if ref_params is None else jax.lax.stop_gradient(log_probs_of(ref_params)[0])
    loss, denominator, sums = policy_loss_terms(
        log_probs, old, next_token(micro["advantages"]), mask, loss_cfg,
        sampler_log_probs=next_token(micro["sampler_log_probs"]), ref_log_probs=ref)
    sums["entropy"] = (entropy * mask).sum()
    return loss, (denominator, sums)


def accumulate_gradients(params: dict, batch: dict, micro_loss: Callable):
    """(loss, gradients, metric sums) over micro-batches stacked on axis 0, accumulated in float32
    and divided once by the summed denominator of the whole global batch.

    micro_loss(params, micro) -> (loss sum, (denominator, {name: sum}))."""
    grad_fn = jax.value_and_grad(micro_loss, has_aux=True)
    first = jax.tree.map(lambda x: x[0], batch)
    _, (_, sum_shapes) = jax.eval_shape(micro_loss, params, first)
    zero_sums = jax.tree.map(lambda _: jnp.float32(0), sum_shapes)

    def add(carry, micro):
        grads, loss, denominator, sums = carry
        (micro_loss_sum, (micro_denominator, micro_sums)), micro_grads = grad_fn(params, micro)
        grads = jax.tree.map(lambda a, g: a + g.astype(jnp.float32), grads, micro_grads)
        sums = jax.tree.map(lambda a, s: a + s.astype(jnp.float32), sums, micro_sums)
        return (grads, loss + micro_loss_sum, denominator + micro_denominator, sums), None

    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
    init = (zeros, jnp.float32(0), jnp.float32(0), zero_sums)
    (grads, loss, denominator, sums), _ = jax.lax.scan(add, init, batch)
    denominator = jnp.maximum(denominator, 1e-9)
    return loss / denominator, jax.tree.map(lambda g: g / denominator, grads), sums


def loss_and_grads(params: dict, batch: dict, *, model_cfg: ModelConfig, remat: bool = False,
                   num_blocks: int = 1, loss_chunk: int = 2048):
    """SFT: token-mean loss gradients and metrics over the stacked micro-batches."""
    loss, grads, sums = accumulate_gradients(params, batch, functools.partial(
        sft_micro_loss, model_cfg=model_cfg, remat=remat, num_blocks=num_blocks, loss_chunk=loss_chunk))
    targets = jnp.maximum(sums["loss_tokens"], 1.0)
    return grads, {"loss": loss, "accuracy": sums["correct"] / targets, "loss_tokens": sums["loss_tokens"],
                   "tokens": sums["tokens"]}


def apply_update(state: TrainState, loss: jax.Array, grads: dict, tx: optax.GradientTransformation):
    """(new state, metrics): the optimizer update, or, when the loss or gradients are not finite,
    the same parameters and optimizer state (`update_refused` 1; the host says which step)."""
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

    def update():
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return jax.tree.map(lambda new, old: new.astype(old.dtype), params, state.params), opt_state

    params, opt_state = jax.lax.cond(finite, update, lambda: (state.params, state.opt_state))
    new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state)
    return new_state, {"grad_norm": grad_norm, "update_refused": (~finite).astype(jnp.float32)}


def train_step(state: TrainState, batch: dict, *, model_cfg: ModelConfig, tx: optax.GradientTransformation,
               schedule: optax.Schedule, remat: bool = False, num_blocks: int = 1, loss_chunk: int = 2048):
    """One SFT optimizer step over a batch of micro-batches stacked on axis 0."""
    grads, metrics = loss_and_grads(state.params, batch, model_cfg=model_cfg, remat=remat, num_blocks=num_blocks,
                                    loss_chunk=loss_chunk)
    new_state, update_metrics = apply_update(state, metrics["loss"], grads, tx)
    return new_state, {**metrics, **update_metrics, "learning_rate": schedule(state.step)}


def grpo_train_step(state: TrainState, batch: dict, ref_params: dict | None, *, model_cfg: ModelConfig,
                    loss_cfg: PolicyLossConfig, tx: optax.GradientTransformation, schedule: optax.Schedule,
                    remat: bool = False, num_blocks: int = 1, loss_chunk: int = 2048):
    """One GRPO optimizer update over a mini-batch of micro-batches stacked on axis 0."""
    micro_loss = functools.partial(grpo_micro_loss, ref_params=ref_params, model_cfg=model_cfg, loss_cfg=loss_cfg,
                                   remat=remat, num_blocks=num_blocks, loss_chunk=loss_chunk)
    loss, grads, sums = accumulate_gradients(state.params, batch, micro_loss)
    new_state, update_metrics = apply_update(state, loss, grads, tx)
    tokens = jnp.maximum(sums.pop("tokens"), 1.0)
    metrics = {name: value / tokens for name, value in sums.items()}
    return new_state, {**metrics, **update_metrics, "loss": loss, "loss_tokens": tokens,
                       "learning_rate": schedule(state.step)}


class MeshJit:
    """A jitted step traced, lowered and called under `jax.set_mesh(mesh)`: the model reads the
    mesh there to place its activations (sharding constraints) and to run the Pallas attention
    kernels per shard; traced without it, a multi-chip step would keep the XLA attention."""

    def __init__(self, jitted, shardings):
        self._jitted = jitted
        self.mesh = jax.tree.leaves(shardings)[0].mesh

    def __call__(self, *args):
        with jax.set_mesh(self.mesh):
            return self._jitted(*args)

    def lower(self, *args):
        with jax.set_mesh(self.mesh):
            return self._jitted.lower(*args)

    def _cache_size(self) -> int:  # compilations so far (tests check that steps do not recompile)
        return self._jitted._cache_size()


def jit_train_step(model_cfg: ModelConfig, tx, schedule, shardings: TrainState, *, remat: bool,
                   num_blocks: int, loss_chunk: int = 2048):
    """The SFT step jitted with the state's shardings; the state is donated."""
    step = functools.partial(train_step, model_cfg=model_cfg, tx=tx, schedule=schedule, remat=remat,
                             num_blocks=num_blocks, loss_chunk=loss_chunk)
    return MeshJit(jax.jit(step, in_shardings=(shardings, None), out_shardings=(shardings, None), donate_argnums=0),
                   shardings)


def jit_grpo_step(model_cfg: ModelConfig, loss_cfg: PolicyLossConfig, tx, schedule, shardings: TrainState, *,
                  remat: bool, num_blocks: int, loss_chunk: int = 2048):
    """The GRPO update jitted with the state's shardings; the state is donated. The frozen
    reference (given only when loss_cfg.kl_coef > 0, else None) shares the parameters' shardings."""
    step = functools.partial(grpo_train_step, model_cfg=model_cfg, loss_cfg=loss_cfg, tx=tx, schedule=schedule,
                             remat=remat, num_blocks=num_blocks, loss_chunk=loss_chunk)
    reference = shardings.params if loss_cfg.kl_coef else None
    return MeshJit(jax.jit(step, in_shardings=(shardings, None, reference), out_shardings=(shardings, None),
                           donate_argnums=0), shardings)


def jit_old_log_probs(model_cfg: ModelConfig, shardings: TrainState, *, temperature: float, num_blocks: int,
                      loss_chunk: int = 2048):
    """Log-probs of a stacked batch's tokens under fixed parameters, aligned with input_ids
    (position t scores token t; 0 at t=0): the old policy when one rollout batch feeds several
    updates."""
    def old_log_probs(params, batch):
        def one(micro):
            log_probs, _ = policy_log_probs(params, micro, model_cfg=model_cfg, temperature=temperature,
                                            remat=False, num_blocks=num_blocks, loss_chunk=loss_chunk)
            return jnp.concatenate([jnp.zeros_like(log_probs[:, :1]), log_probs[:, :-1]], axis=1)
        return jax.lax.map(one, batch)

    return MeshJit(jax.jit(old_log_probs, in_shardings=(shardings.params, None)), shardings)
