"""The rollout's two jitted steps (rollout/sampler.py) lowered for a TPU topology from a GRPO
config, for `train.compile_check --step=rollout`: one decode call over the whole slot KV cache
(every slot at the context limit) and one append of a segment with an image into a slot.

The cache is sharded like the engine's on a mesh (`sampler.SamplerSharding`: slots over the
data-parallel axes, KV heads over "tensor"); the weights are those of `rollout.param_layout`
(rollout/weights.py: the training parameters in place, or a compute-dtype copy split over
"tensor" only; "auto" resolves as on a chip with room for the copy). The training state stays
resident beside the rollout and is reported with it. Nothing is allocated: every argument is a
ShapeDtypeStruct carrying its sharding, and the steps are lowered under `jax.set_mesh`, as the
engine calls them.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from codedance_jax import mesh as mesh_lib
from models.qwen2_5_vl import attention_kernels, text
from models.qwen2_5_vl.config import ModelConfig
from models.qwen2_5_vl.model import window_bucket_for
from rollout import sampler, weights
from train.experiment import model_config
from train.state import abstract_state, make_optimizer, state_shardings


def attention_for(model_cfg: ModelConfig, devices, kernels_fit: bool) -> ModelConfig:
    """`model_cfg` with attention_impl "auto" resolved for the devices compiled for: on TPU chips
    (the steps trace under the mesh) "auto" takes the Pallas kernels when their shapes tile, but
    it decides by the backend of the host that traces, here a CPU that would keep the XLA path."""
    if model_cfg.attention_impl != "auto" or devices[0].platform != "tpu":
        return model_cfg
    return model_cfg.replace(attention_impl="splash" if kernels_fit else "chunked")


def rollout_model_config(config, devices) -> ModelConfig:
    """The rollout's model: one-token decode takes the paged kernel when the cache tiles into pages."""
    model_cfg = model_config(config)
    cache_len = config.rollout.max_context + config.rollout.prefill_chunk
    return attention_for(model_cfg, devices, attention_kernels.paged_fits(cache_len, model_cfg.compute_dtype))


@dataclasses.dataclass(frozen=True)
class RolloutSpec:
    slots: int           # rollout.num_slots (prompts x samples decoding at once)
    capacity: int        # rollout.max_context: tokens one slot holds
    chunk: int           # rollout.prefill_chunk; the cache holds capacity + chunk positions
    steps: int           # rollout.decode_steps: tokens per decode call
    segment: int         # tokens of the appended segment, padded to chunk * 2**i
    image_patches: int   # patches of the segment's one image (0: text only)

    @property
    def cache_len(self) -> int:
        return self.capacity + self.chunk


def rollout_spec(config, model_cfg: ModelConfig, *, segment_tokens: int = 0, image_patches: int = 0) -> RolloutSpec:
    """The rollout settings of a GRPO config; segment_tokens 0 = rollout.max_tool_tokens.

    Raises when a segment is longer than a slot's context, or its image has more tokens than the
    segment."""
    r = config.rollout
    segment_tokens = segment_tokens or r.max_tool_tokens
    if segment_tokens > r.max_context:
        raise ValueError(f"a segment of {segment_tokens} tokens is longer than a slot's context "
                         f"(rollout.max_context={r.max_context}, the KV cache's capacity)")
    merge = model_cfg.vision.merge_unit
    if image_patches < 0 or image_patches % merge or image_patches // merge > segment_tokens:
        raise ValueError(f"--image_patches={image_patches} must be a non-negative multiple of {merge} whose "
                         f"{image_patches // merge} image tokens fit the {segment_tokens}-token segment")
    return RolloutSpec(slots=r.num_slots, capacity=r.max_context, chunk=r.prefill_chunk, steps=r.decode_steps,
                       segment=sampler.segment_bucket(segment_tokens, r.prefill_chunk),
                       image_patches=image_patches)


def _struct(shape, dtype, sharding) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(tuple(shape), jnp.dtype(dtype), sharding=sharding)


def abstract_cache(model_cfg: ModelConfig, spec: RolloutSpec, sharding: sampler.SamplerSharding) -> text.KVCache:
    shapes = jax.eval_shape(lambda: text.KVCache.zeros(model_cfg.text, spec.slots, spec.cache_len,
                                                       model_cfg.compute_dtype))
    return jax.tree.map(lambda a, s: _struct(a.shape, a.dtype, s), shapes, sharding.cache)


def abstract_decode_inputs(model_cfg: ModelConfig, spec: RolloutSpec, sharding: sampler.SamplerSharding):
    """(triggers, inputs) of a decode call, one row per slot."""
    idle = dataclasses.asdict(sampler.DecodeInputs.idle(spec.slots, spec.steps))
    inputs = {k: _struct(v.shape, v.dtype, sharding.rows) for k, v in idle.items()}
    return _struct((spec.slots, model_cfg.text.vocab_size), np.bool_, sharding.rows), inputs


def abstract_segment(model_cfg: ModelConfig, spec: RolloutSpec, sharding: sampler.SamplerSharding) -> dict:
    """An appended segment as SlotCache.append builds it: tokens, positions, and one image padded
    to its vision layout's slots (replicated: it goes to one slot)."""
    whole = sharding.replicated
    i32 = np.int32
    segment = {"input_ids": _struct((1, spec.segment), i32, whole),
               "positions": _struct((3, 1, spec.segment), i32, whole), "num_tokens": _struct((), i32, whole)}
    if spec.image_patches:
        vision = model_cfg.vision
        windows = window_bucket_for(-(-spec.image_patches // vision.window_patches))
        slots = windows * vision.window_patches
        segment["pixel_values"] = _struct((slots, vision.patch_dim), np.float32, whole)
        segment["vision_layout"] = {
            "patch_index": _struct((slots,), i32, whole), "rope_hw": _struct((slots, 2), i32, whole),
            "frame_windows": _struct((windows, windows), i32, whole),
            "merged_order": _struct((slots // vision.merge_unit,), i32, whole)}
    return segment


def _bytes_per_device(tree) -> int:
    return sum(int(np.prod(x.sharding.shard_shape(x.shape))) * x.dtype.itemsize for x in jax.tree.leaves(tree))


def sampling_params(config, model_cfg: ModelConfig, mesh):
    """(the weights decode reads, their layout, bytes per device of the training state resident
    beside them)."""
    param_dtype = jnp.dtype(config.param_dtype)
    tx = make_optimizer(config)
    state = abstract_state(model_cfg, tx, state_shardings(model_cfg, tx, mesh, param_dtype), param_dtype)
    # No TPU here reports free memory, so "auto" takes the copy whenever data/fsdp split the weights.
    layout = weights.choose_layout(config.rollout.param_layout, state.params, model_cfg, mesh)
    if layout == "train":
        return state.params, layout, _bytes_per_device((state.step, state.opt_state))
    copy = jax.tree.map(lambda p, s: _struct(p.shape, model_cfg.compute_dtype, s), state.params,
                        weights.gathered_shardings(model_cfg, mesh))
    return copy, layout, _bytes_per_device(state)


def lower_rollout(config, devices, *, segment_tokens: int = 0, image_patches: int = 0):
    """({"decode": lowered, "append": lowered}, mesh, spec, weights layout, resident training-state
    bytes per device).

    Mesh problems (slots or KV heads that do not divide) are refused by SamplerSharding.checked
    before anything is built."""
    model_cfg = rollout_model_config(config, devices)
    mesh = mesh_lib.make_mesh(config.mesh_shape, devices)
    spec = rollout_spec(config, model_cfg, segment_tokens=segment_tokens, image_patches=image_patches)
    sharding = sampler.SamplerSharding.checked(mesh, model_cfg, spec.slots)
    params, layout, resident = sampling_params(config, model_cfg, mesh)
    cache = abstract_cache(model_cfg, spec, sharding)
    triggers, inputs = abstract_decode_inputs(model_cfg, spec, sharding)
    whole = sharding.replicated
    slot_and_start = (_struct((), np.int32, whole), _struct((), np.int32, whole))
    # Decode over the whole cache: every slot near the context limit is the worst case.
    decode = sampler.jitted_decode(model_cfg, spec.steps, spec.cache_len, sharding)
    append = sampler.jitted_append(model_cfg, spec.chunk, sharding)
    with jax.set_mesh(mesh):
        lowered = {"decode": decode.lower(params, cache, triggers, inputs),
                   "append": append.lower(params, cache, *slot_and_start, abstract_segment(model_cfg, spec, sharding))}
    return lowered, mesh, spec, layout, resident
