"""The slot KV cache and the two jitted steps that touch it.

* `append_segment` writes a segment (a prompt, or a tool turn with its images) into one slot: the
  vision tower encodes the images, their features replace the image pads, and the tokens go into
  the cache in fixed-size chunks. Segment lengths are padded to `chunk * 2**i`, image windows to
  the vision layout's buckets, so varied prompts, tool outputs and image sizes reuse a handful of
  compilations.
* `decode_steps` runs up to `steps` tokens for every slot in one `lax.while_loop`, sampling in the
  jit. A slot stops when it samples a token that may end a stop string (the host then checks the
  decoded text) or runs out of its token budget; the others keep decoding, and the call returns
  when no slot is left running. One host round trip moves [B, steps] tokens and log-probabilities.
  Attention reads only the filled part of the cache (`window`, bucketed).

Each slot keeps one *pending* token: sampled (or the last token of an appended segment) but not
yet in the cache. The next decode step feeds it, so a segment's logits are never needed and a
finished turn's last token costs no forward pass.

The cache holds `capacity + chunk` positions: a chunk write starting at any length <= capacity
stays in bounds, because `dynamic_update_slice` would otherwise clamp it onto real entries.

On a mesh (`SlotCache(..., mesh=mesh)`) the cache is sharded: slots over the data-parallel axes
("data", "fsdp"), KV heads over "tensor" (see `SamplerSharding`), and both steps are jitted
with those explicit in/out shardings and traced under `jax.set_mesh`, so the TPU attention
kernels run per shard. The parameters keep whatever sharding they arrive with
(rollout/weights.py puts them in a sampling layout). An append then runs per shard of slots, the
owner of the target slot writing it (`_append_on_shards`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from codedance_jax.mesh import BATCH_AXES
from models.qwen2_5_vl import model as model_lib
from models.qwen2_5_vl import text
from models.qwen2_5_vl.config import ModelConfig
from rollout.sampling import choose_tokens

# Decode attends to a power-of-two number of these key blocks. 256-key blocks brought the
# benchmarks' `small` model (1024 ids, batch 8) from 5.8x to 2.3x its floor, but then the window
# depends on how far other slots have filled, so overlapped and turn-synchronous scheduling
# attend over different padded lengths and a near-tie sample can flip between them
# (tests/rollout/test_engine.py); 1024 keeps them equal at this test's lengths.
WINDOW_BLOCK = 1024


@dataclasses.dataclass
class Segment:
    """Tokens for one slot's cache (host side); image pads are already expanded."""
    token_ids: np.ndarray                 # int32 [n]
    positions: np.ndarray                 # int32 [3, n] M-RoPE positions continuing the slot
    pixel_values: np.ndarray | None = None  # float32 [patches, patch_dim] of the images in order
    image_grid_thw: np.ndarray | None = None  # int64 [n_images, 3]


@dataclasses.dataclass
class DecodeInputs:
    """Per-slot decode state (numpy, one row per slot)."""
    tokens: np.ndarray       # int32 [B] pending token
    positions: np.ndarray    # int32 [B] its position (text: the three M-RoPE axes are equal)
    budget: np.ndarray       # int32 [B] tokens the slot may generate in this call; 0 idles it
    keys: np.ndarray         # uint32 [B, 2] raw PRNG keys; a key advances only when its slot samples
    temperature: np.ndarray  # float32 [B]
    top_p: np.ndarray        # float32 [B]
    top_k: np.ndarray        # int32 [B]
    forced: np.ndarray       # int32 [B, steps] tokens to emit instead of sampling (teacher forcing)
    num_forced: np.ndarray   # int32 [B] leading entries of `forced` in use

    @classmethod
    def idle(cls, num_slots: int, steps: int) -> "DecodeInputs":
        zeros = np.zeros(num_slots, np.int32)
        return cls(tokens=zeros.copy(), positions=zeros.copy(), budget=zeros.copy(),
                   keys=np.zeros((num_slots, 2), np.uint32), temperature=np.ones(num_slots, np.float32),
                   top_p=np.ones(num_slots, np.float32), top_k=zeros.copy(),
                   forced=np.zeros((num_slots, steps), np.int32), num_forced=zeros.copy())


@dataclasses.dataclass
class DecodeOutputs:
    """What one decode call produced; device arrays until `to_host`."""
    tokens: np.ndarray     # int32 [B, steps]; row b holds counts[b] tokens, then -1
    log_probs: np.ndarray  # float32 [B, steps] policy log-probability of each token
    counts: np.ndarray     # int32 [B]
    keys: np.ndarray       # uint32 [B, 2] advanced keys

    def to_host(self) -> "DecodeOutputs":
        return DecodeOutputs(*(np.asarray(x) for x in (self.tokens, self.log_probs, self.counts, self.keys)))


@dataclasses.dataclass(frozen=True)
class SamplerSharding:
    """Where the sampler's arrays live on `mesh`: slots over the data-parallel axes, KV heads over
    "tensor"; per-slot inputs and outputs follow their slots, segments are replicated."""
    mesh: Mesh

    @classmethod
    def checked(cls, mesh: Mesh, cfg: ModelConfig, num_slots: int) -> "SamplerSharding":
        """Refuses a mesh that does not divide the slots or the KV heads (before any allocation)."""
        batch = int(np.prod([mesh.shape[a] for a in BATCH_AXES]))
        if num_slots % batch:
            raise ValueError(f"rollout: {num_slots} slots do not divide over the mesh's data-parallel axes "
                             f"{BATCH_AXES} ({batch} devices); use a multiple of {batch} slots")
        if cfg.text.num_kv_heads % mesh.shape["tensor"]:
            raise ValueError(f"rollout: {cfg.text.num_kv_heads} KV heads do not divide over the mesh axis 'tensor' "
                             f"({mesh.shape['tensor']} devices)")
        return cls(mesh)

    def _spec(self, *spec) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec(*spec))

    @property
    def rows(self) -> NamedSharding:
        """Arrays with a leading slot axis (per-slot inputs, outputs, triggers, cache lengths)."""
        return self._spec(BATCH_AXES)

    @property
    def replicated(self) -> NamedSharding:
        return self._spec()

    @property
    def cache(self) -> text.KVCache:
        kv = self._spec("tensor", None, BATCH_AXES, None, None)  # [kv_heads, layers, slots, len, head_dim]
        return text.KVCache(k=kv, v=kv, lengths=self.rows)


def _decode_steps(cfg: ModelConfig, params: dict, cache: text.KVCache, triggers: jax.Array, inputs: dict, *,
                  steps: int, window: int | None = None) -> tuple[text.KVCache, dict]:
    """Decodes up to `steps` tokens per slot; triggers [B, V] marks tokens that stop a slot.
    window: cache positions attended to (must hold every running slot's length + steps)."""
    batch = inputs["tokens"].shape[0]
    slots = jnp.arange(batch)

    def cond(carry):
        step, halted = carry[0], carry[1]
        return (step < steps) & ~halted

    def body(carry):
        step, _, cache, tokens, positions, budget, keys, out_tokens, out_log_probs, counts = carry
        running = budget > 0
        embeds = text.embed_tokens(params["text"], tokens[:, None], cfg.compute_dtype)
        pos = jnp.broadcast_to(positions[None, :, None], (3, batch, 1))
        logits, cache = model_lib.extend_cache(cfg, params, embeds, pos, running.astype(jnp.int32), cache,
                                               kv_window=window)
        split = jax.vmap(jax.random.split)(keys)
        sampled, log_probs = choose_tokens(logits[:, 0], split[:, 1], inputs["temperature"], inputs["top_p"],
                                           inputs["top_k"])
        token = jnp.where(step < inputs["num_forced"], inputs["forced"][:, step], sampled)
        token_log_prob = jnp.take_along_axis(log_probs, token[:, None], axis=-1)[:, 0]
        out_tokens = out_tokens.at[:, step].set(jnp.where(running, token, -1))
        out_log_probs = out_log_probs.at[:, step].set(jnp.where(running, token_log_prob, 0.0))
        step_taken = running.astype(jnp.int32)
        # A slot that may have ended a stop string stops here; the host checks it after the call.
        budget = jnp.where(running & triggers[slots, token], 0, budget - step_taken)
        halted = ~jnp.any(budget > 0)
        return (step + 1, halted, cache, jnp.where(running, token, tokens), positions + step_taken, budget,
                jnp.where(running[:, None], split[:, 0], keys), out_tokens, out_log_probs, counts + step_taken)

    budget = inputs["budget"]
    carry = (jnp.int32(0), ~jnp.any(budget > 0), cache, inputs["tokens"], inputs["positions"], budget,
             inputs["keys"], jnp.full((batch, steps), -1, jnp.int32), jnp.zeros((batch, steps), jnp.float32),
             jnp.zeros((batch,), jnp.int32))
    carry = jax.lax.while_loop(cond, body, carry)
    return carry[2], {"tokens": carry[7], "log_probs": carry[8], "counts": carry[9], "keys": carry[6]}


def _append_segment(cfg: ModelConfig, params: dict, cache: text.KVCache, slot: jax.Array, start: jax.Array,
                    segment: dict, *, chunk: int, sharding: SamplerSharding | None = None) -> text.KVCache:
    """Writes `segment["num_tokens"]` tokens into `slot` from cache position `start` (which also
    resets or rewinds the slot); the padded tail of the segment is never written past a chunk.
    sharding: the cache's, when it is split over the mesh (see `_append_on_shards`)."""
    embeds = model_lib.embed_inputs(cfg, params, segment)  # [1, L, D], image features merged
    write = functools.partial(_write_slot, cfg, positions=segment["positions"], num_tokens=segment["num_tokens"],
                              chunk=chunk)
    if sharding is not None:
        return _append_on_shards(write, sharding, params, cache, slot, start, embeds)
    return write(params, cache, slot, start, embeds, owned=True)


def _write_slot(cfg: ModelConfig, params: dict, cache: text.KVCache, slot, start, embeds, *, positions, num_tokens,
                chunk: int, owned) -> text.KVCache:
    """The append on one cache: slot `slot` alone is sliced out, written chunk by chunk, and put
    back; where `owned` is False the slot keeps its old contents."""
    # The slot's cache alone (axis 2 of [kv_heads, layers, slots, max_len, head_dim]).
    old = text.KVCache(k=jax.lax.dynamic_slice_in_dim(cache.k, slot, 1, axis=2),
                       v=jax.lax.dynamic_slice_in_dim(cache.v, slot, 1, axis=2),
                       lengths=jax.lax.dynamic_slice_in_dim(cache.lengths, slot, 1))

    def write_chunk(index, one):
        begin = index * chunk
        chunk_embeds = jax.lax.dynamic_slice_in_dim(embeds, begin, chunk, axis=1)
        chunk_positions = jax.lax.dynamic_slice_in_dim(positions, begin, chunk, axis=2)
        real = jnp.clip(num_tokens - begin, 0, chunk)[None]
        _, one = text.forward_with_cache(cfg.text, params["text"], chunk_embeds, chunk_positions, real, one,
                                         cfg.compute_dtype, attention_impl=cfg.attention_impl)
        return one

    one = jax.lax.fori_loop(0, (num_tokens + chunk - 1) // chunk, write_chunk,
                            dataclasses.replace(old, lengths=start[None]))
    one = jax.tree.map(lambda new, kept: jnp.where(owned, new, kept), one, old)
    return text.KVCache(k=jax.lax.dynamic_update_slice_in_dim(cache.k, one.k, slot, axis=2),
                        v=jax.lax.dynamic_update_slice_in_dim(cache.v, one.v, slot, axis=2),
                        lengths=jax.lax.dynamic_update_slice_in_dim(cache.lengths, one.lengths, slot, axis=0))


def _append_on_shards(write, sharding: SamplerSharding, params, cache: text.KVCache, slot, start, embeds):
    """The append on a cache whose slots are split over the data-parallel axes: each shard runs
    the single-slot write on its own slots, the target's owner for real and the others on a
    stand-in they leave unchanged. No shard reads another's cache (slicing a slot out of the
    split axis would gather the whole cache), and each computes one slot's worth, not all of
    its slots'. The "tensor" axis stays automatic: KV heads and weights keep their split."""
    def on_shard(params, cache, slot, start, embeds):
        per_shard = cache.lengths.shape[0]
        local = slot - jax.lax.axis_index(BATCH_AXES) * per_shard
        owned = (local >= 0) & (local < per_shard)
        return write(params, cache, jnp.clip(local, 0, per_shard - 1), start, embeds, owned=owned)

    rows, whole = PartitionSpec(BATCH_AXES), PartitionSpec()
    cache_spec = text.KVCache(k=PartitionSpec(None, None, BATCH_AXES), v=PartitionSpec(None, None, BATCH_AXES),
                              lengths=rows)
    return jax.shard_map(on_shard, mesh=sharding.mesh, in_specs=(whole, cache_spec, whole, whole, whole),
                         out_specs=cache_spec, axis_names=set(BATCH_AXES), check_vma=False)(
                             params, cache, slot, start, embeds)


# The jitted steps, one per static configuration; kept so tests can count their compilations.
_JITTED: dict[tuple, Callable] = {}


def jitted_decode(cfg: ModelConfig, steps: int, window: int | None, sharding: SamplerSharding | None):
    """decode(params, cache, triggers, inputs) -> (cache, outputs); the cache is donated. With a
    sharding, its in/out shardings are explicit (the parameters keep their own)."""
    key = ("decode", cfg, steps, window, sharding)
    if key not in _JITTED:
        fn = functools.partial(_decode_steps, cfg, steps=steps, window=window)
        rows = sharding.rows if sharding else None
        _JITTED[key] = (jax.jit(fn, donate_argnums=1) if sharding is None else
                        jax.jit(fn, in_shardings=(None, sharding.cache, rows, rows),
                                out_shardings=(sharding.cache, rows), donate_argnums=1))
    return _JITTED[key]


def jitted_append(cfg: ModelConfig, chunk: int, sharding: SamplerSharding | None):
    """append(params, cache, slot, start, segment) -> cache; the cache is donated."""
    key = ("append", cfg, chunk, sharding)
    if key not in _JITTED:
        fn = functools.partial(_append_segment, cfg, chunk=chunk, sharding=sharding)
        whole = sharding.replicated if sharding else None
        _JITTED[key] = (jax.jit(fn, donate_argnums=1) if sharding is None else
                        jax.jit(fn, in_shardings=(None, sharding.cache, whole, whole, whole),
                                out_shardings=sharding.cache, donate_argnums=1))
    return _JITTED[key]


def compilations() -> int:
    """Executables the sampler's steps have compiled so far (a warmed-up workload adds none)."""
    return sum(fn._cache_size() for fn in _JITTED.values())


def segment_bucket(num_tokens: int, chunk: int) -> int:
    """Padded segment length: chunk * 2**i, the smallest that holds num_tokens."""
    chunks = max(1, -(-num_tokens // chunk))
    return chunk * (1 << (chunks - 1).bit_length())


class SlotCache:
    """A KV cache of `num_slots` slots, each holding up to `capacity` tokens; sharded over `mesh`
    when given (see `SamplerSharding`)."""

    def __init__(self, cfg: ModelConfig, num_slots: int, capacity: int, chunk: int, steps: int, dtype=None,
                 mesh: Mesh | None = None):
        if min(num_slots, capacity, chunk, steps) < 1:
            raise ValueError("num_slots, capacity, chunk and steps must be positive")
        self.cfg, self.num_slots, self.capacity, self.chunk, self.steps = cfg, num_slots, capacity, chunk, steps
        self.sharding = None if mesh is None else SamplerSharding.checked(mesh, cfg, num_slots)
        dtype = cfg.compute_dtype if dtype is None else dtype
        make = functools.partial(text.KVCache.zeros, cfg.text, num_slots, capacity + chunk, dtype)
        # On a mesh each device allocates only its own shard.
        self.cache = make() if self.sharding is None else jax.jit(make, out_shardings=self.sharding.cache)()
        self._placed = self.sharding is not None

    def _place_with(self, params: dict) -> None:
        """Commits an unsharded fresh cache to the parameters' device: every later call gets the
        previous call's (committed) output, and a jit compiles again when only committedness differs."""
        if not self._placed:
            self._placed = True
            sharding = getattr(jax.tree.leaves(params)[0], "sharding", None)
            devices = sharding.device_set if sharding is not None else ()
            if len(devices) == 1:
                self.cache = jax.device_put(self.cache, next(iter(devices)))

    def _on_mesh(self):
        """Traces under the cache's mesh, so the attention kernels shard themselves over it."""
        return jax.set_mesh(self.sharding.mesh) if self.sharding is not None else contextlib.nullcontext()

    @property
    def nbytes(self) -> int:
        return self.cache.nbytes

    def append(self, params: dict, slot: int, start: int, segment: Segment) -> None:
        """Writes a segment into `slot` from position `start` (dispatched asynchronously)."""
        num_tokens = len(segment.token_ids)
        if start + num_tokens > self.capacity:
            raise ValueError(f"slot {slot}: {start} + {num_tokens} tokens exceed the capacity {self.capacity}")
        if num_tokens == 0:
            return
        self._place_with(params)
        length = segment_bucket(num_tokens, self.chunk)
        inputs = {"input_ids": np.pad(segment.token_ids.astype(np.int32), (0, length - num_tokens))[None],
                  "positions": np.pad(segment.positions.astype(np.int32), ((0, 0), (0, length - num_tokens)))[:, None],
                  "num_tokens": np.int32(num_tokens)}
        if segment.pixel_values is not None and len(segment.pixel_values):
            pixels, layout, _ = model_lib.vision_inputs(self.cfg, segment.pixel_values, segment.image_grid_thw)
            inputs.update(pixel_values=pixels, vision_layout=layout)
        append = jitted_append(self.cfg, self.chunk, self.sharding)
        with self._on_mesh():
            self.cache = append(params, self.cache, np.int32(slot), np.int32(start), inputs)

    def decode(self, params: dict, triggers: jax.Array, inputs: DecodeInputs, filled: int | None = None
               ) -> DecodeOutputs:
        """Dispatches one decode call; the outputs are device arrays (call `to_host`).
        filled: the longest cache length among the decoding slots (default: assume a full cache)."""
        self._place_with(params)
        decode = jitted_decode(self.cfg, self.steps, self.window_for(filled), self.sharding)
        with self._on_mesh():
            self.cache, out = decode(params, self.cache, triggers, dataclasses.asdict(inputs))
        return DecodeOutputs(**out)

    def window_for(self, filled: int | None) -> int:
        """Cache positions a decode call attends to: WINDOW_BLOCK * 2**i holding `filled + steps`,
        or the whole cache; a handful of compilations per cache size."""
        size = self.cache.max_len
        if filled is None:
            return size
        blocks = -(-(filled + self.steps) // WINDOW_BLOCK)
        return min(size, WINDOW_BLOCK * (1 << (blocks - 1).bit_length()))
