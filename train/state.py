"""Train state (step, parameters, optimizer state), the optimizer, and sharded initialisation."""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from codedance_jax import mesh as mesh_lib
from models.qwen2_5_vl import ModelConfig, Qwen2_5_VL

_NO_DECAY = ("norm", "bias")  # parameter names (substrings) excluded from weight decay


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class TrainState:
    step: jax.Array
    params: dict
    opt_state: Any


def learning_rate_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=config.learning_rate, warmup_steps=config.warmup_steps,
        decay_steps=max(config.total_steps, config.warmup_steps + 1),
        end_value=config.learning_rate * config.min_lr_ratio)


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """AdamW with warmup + cosine decay and global-norm clipping; no decay on norms and biases."""
    def decay_mask(params):
        return jax.tree_util.tree_map_with_path(
            lambda path, _: not any(tag in str(path[-1]) for tag in _NO_DECAY), params)

    return optax.chain(
        optax.clip_by_global_norm(config.grad_clip),
        optax.adamw(learning_rate_schedule(config), b1=config.adam_b1, b2=config.adam_b2,
                    weight_decay=config.weight_decay, mask=decay_mask))


def state_shardings(model_cfg: ModelConfig, tx: optax.GradientTransformation, mesh, param_dtype) -> TrainState:
    """Shardings of every leaf of the train state: optimizer moments follow their parameter."""
    abstract_model = Qwen2_5_VL.abstract(model_cfg, param_dtype)
    params = mesh_lib.param_shardings(abstract_model, mesh)
    abstract_opt = jax.eval_shape(tx.init, abstract_model.params())
    replicated = mesh_lib.replicated(mesh)
    opt = optax.tree_map_params(tx, lambda _, sharding: sharding, abstract_opt, params,
                                transform_non_params=lambda _: replicated)
    return TrainState(step=replicated, params=params, opt_state=opt)


def init_state(model_cfg: ModelConfig, tx: optax.GradientTransformation, shardings: TrainState, *,
               seed: int, param_dtype, init_checkpoint: str = "") -> TrainState:
    """A fresh state, created directly in its shards (never whole on one host or device).

    init_checkpoint: a converted checkpoint directory whose parameters replace the random init.
    """
    if init_checkpoint:
        loaded = Qwen2_5_VL.from_checkpoint(init_checkpoint, shardings=shardings.params)
        if loaded.config.text != model_cfg.text or loaded.config.vision != model_cfg.vision:
            raise ValueError(f"{init_checkpoint}: its config.json does not match model_preset's architecture")
        params = jax.jit(lambda p: jax.tree.map(lambda a: a.astype(param_dtype), p),
                         out_shardings=shardings.params)(loaded.params())
    else:
        params = jax.jit(lambda: Qwen2_5_VL(model_cfg, rngs=nnx.Rngs(seed), param_dtype=param_dtype).params(),
                         out_shardings=shardings.params)()
    opt_state = jax.jit(tx.init, out_shardings=shardings.opt_state)(params)
    step = jax.device_put(jnp.zeros((), jnp.int32), shardings.step)
    return TrainState(step=step, params=params, opt_state=opt_state)


def abstract_state(model_cfg: ModelConfig, tx: optax.GradientTransformation, shardings: TrainState,
                   param_dtype) -> TrainState:
    """The state's structure as ShapeDtypeStructs carrying their shardings (for restoring)."""
    params = Qwen2_5_VL.abstract(model_cfg, param_dtype).params()
    shapes = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=params,
                        opt_state=jax.eval_shape(tx.init, params))
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), shapes, shardings)
