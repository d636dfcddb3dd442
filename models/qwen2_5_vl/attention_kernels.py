"""Pallas TPU attention for the text decoder, chosen by `ModelConfig.attention_impl`.

* Whole sequences (training, full forwards): splash attention, causal, with padding as its own
  segment id; GQA through splash's grouped MHA (k/v keep their K heads, no repetition).
* One-token decode over the slot KV cache: paged attention. The cache is laid out head-major,
  [kv_heads, layers, slots, max_len, head_dim], so the whole cache *is* a page pool
  [kv_heads, layers * slots * pages, page, head_dim] by a free reshape: a layer and slot are
  picked by page index and the kernel DMAs only the pages below each slot's length, where slicing
  the layer out first would copy it on every step.

Elsewhere (CPU/GPU, or shapes the kernels cannot tile under "auto") the XLA paths in layers.py
run. `interpret=True`, or tracing under `interpreted()`, runs the kernels in Pallas' interpret
mode on any backend, for tests; nothing else interprets (so an AOT compile for TPU from a CPU
host lowers the real kernels).

XLA cannot partition a Pallas kernel, so on several devices a kernel runs per shard in a
shard_map over the mesh the caller traces under (`jax.set_mesh`): rows over the data-parallel
axes, heads over "tensor". Without such a mesh "auto" keeps the XLA path on multi-device hosts.
"""
from __future__ import annotations

import contextlib
import contextvars

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas.ops.tpu import splash_attention as splash
from jax.experimental.pallas.ops.tpu.paged_attention import paged_attention
from jax.sharding import PartitionSpec

from codedance_jax.mesh import BATCH_AXES
from models.qwen2_5_vl.config import ATTENTION_IMPLS

# Splash's key blocks are computed 128 lanes at a time; larger blocks amortise per-block
# overhead (MaxText's default is 512).
SPLASH_BLOCKS = (512, 256, 128)
# Page sizes that tile a cache length; decode reads about DECODE_BLOCK_TOKENS keys per step.
PAGE_SIZES = (128, 64, 32, 16)
DECODE_BLOCK_TOKENS = 512

_INTERPRETED = contextvars.ContextVar("attention_kernels_interpreted", default=False)


@contextlib.contextmanager
def interpreted():
    """Kernels traced inside run in interpret mode (the model path has no `interpret` argument)."""
    token = _INTERPRETED.set(True)
    try:
        yield
    finally:
        _INTERPRETED.reset(token)


def _largest_divisor(size: int, candidates: tuple[int, ...]) -> int | None:
    return next((c for c in candidates if size % c == 0), None)


def splash_fits(length: int) -> bool:
    return _largest_divisor(length, SPLASH_BLOCKS) is not None


def paged_fits(cache_len: int, dtype) -> bool:
    return _largest_divisor(cache_len, PAGE_SIZES) is not None and jnp.dtype(dtype) == jnp.bfloat16


def _context_mesh():
    mesh = jax.sharding.get_abstract_mesh()
    return None if mesh.empty else mesh


def use_pallas(impl: str, fits: bool) -> bool:
    """Whether a call takes the Pallas kernel: "splash" always (shapes that do not fit then fail
    with the kernel's error), "auto" on TPU when the shapes fit and the kernel can be placed (one
    device, or a mesh to shard over), "chunked" never."""
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f"attention_impl must be one of {ATTENTION_IMPLS}, got {impl!r}")
    if impl == "auto":
        placeable = jax.device_count() == 1 or _context_mesh() is not None
        return fits and placeable and jax.default_backend() == "tpu"
    return impl == "splash"


def _per_shard(fn, arrays, specs, out_spec):
    """fn(*arrays), as a shard_map over the context mesh when there is one. Specs name each
    dimension "rows" (the data-parallel axes), "heads" (the tensor axis) or None (whole)."""
    mesh = _context_mesh()
    if mesh is None:
        return fn(*arrays)
    axes = {"rows": tuple(a for a in BATCH_AXES if a in mesh.axis_names),
            "heads": tuple(a for a in ("tensor",) if a in mesh.axis_names), None: ()}
    for array, spec in zip(arrays, specs):
        for size, kind in zip(array.shape, spec):
            parts = int(np.prod([mesh.shape[name] for name in axes[kind]]))
            if size % parts:
                raise ValueError(f"attention kernel: {size} {kind} do not divide over mesh axes {axes[kind]} "
                                 f"({parts} devices)")
    partition = lambda spec: PartitionSpec(*(axes[kind] or None for kind in spec))  # noqa: E731
    return jax.shard_map(fn, mesh=mesh, in_specs=tuple(map(partition, specs)), out_specs=partition(out_spec),
                         check_vma=False)(*arrays)


def _splash_kernel(length: int, num_heads: int, block: int, interpret: bool):
    mask = splash.MultiHeadMask([splash.CausalMask((length, length))] * num_heads)
    sizes = splash.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
                              block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block,
                              block_kv_dq=block)
    # Built per trace, not cached: the kernel holds arrays made under the caller's trace.
    return splash.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret)


def splash_causal_attention(q: jax.Array, k: jax.Array, v: jax.Array, key_valid: jax.Array, *,
                            interpret: bool = False) -> jax.Array:
    """Causal self-attention with splash; the contract of layers.causal_attention.

    q [B, L, N, H], k/v [B, L, K, H] (N a multiple of K), key_valid [B, L] (False for padding).
    Padding is segment 0 and real tokens segment 1, so real queries never see padding keys and
    every padding query still has one key (itself): no empty softmax row. Padding rows' outputs
    differ from the dense path's (which lets them see real keys); both are don't-cares.
    """
    _, length, _, head_dim = q.shape
    interpret = interpret or _INTERPRETED.get()
    block = _largest_divisor(length, SPLASH_BLOCKS)
    if block is None:
        raise ValueError(f"splash attention needs the sequence length to be a multiple of {SPLASH_BLOCKS[-1]} "
                         f"(its smallest block); got length {length}: pad to such a bucket or use "
                         f"attention_impl='chunked'")
    heads_first = lambda a: a.transpose(1, 0, 2)  # noqa: E731  splash takes [heads, L, H]

    def rows(q, k, v, segments):  # one shard: its rows and heads
        # Splash's own interpret flag (kept for its backward kernels, and it works under vmap,
        # where this JAX's TPU interpret mode does not).
        kernel = _splash_kernel(length, q.shape[2], block, interpret)

        def one_row(q, k, v, segments):
            ids = splash.SegmentIds(q=segments, kv=segments)
            return kernel(heads_first(q), heads_first(k), heads_first(v), segment_ids=ids)

        return jax.vmap(one_row)(q, k, v, segments)  # [B, N, L, H]

    qkv_spec = ("rows", None, "heads", None)
    out = _per_shard(rows, (q * head_dim ** -0.5, k, v, key_valid.astype(jnp.int32)),
                     (qkv_spec, qkv_spec, qkv_spec, ("rows", None)), ("rows", "heads", None, None))
    return out.transpose(0, 2, 1, 3)


def paged_decode_attention(q: jax.Array, k_cache: jax.Array, v_cache: jax.Array, layer: jax.Array,
                           lengths: jax.Array, *, interpret: bool = False) -> jax.Array:
    """One query per slot over its first `lengths` cache positions in one layer, with paged attention.

    q [B, 1, N, H]; k_cache/v_cache the whole cache [K, layers, B, S, H]; layer: int scalar
    (may be traced); lengths [B] keys per slot, at least 1. Returns [B, 1, N, H].
    The kernel computes with bfloat16 K/V (it casts its pages), so it takes bfloat16 caches only:
    on a float32 cache it would silently round.
    """
    batch, _, _, head_dim = q.shape
    slots, cache_len = k_cache.shape[2:4]
    if slots != batch:
        raise ValueError(f"the cache holds {slots} slots but q has {batch} rows")
    if k_cache.dtype != jnp.bfloat16:
        raise ValueError(f"paged decode attention reads the KV cache as bfloat16; got a {k_cache.dtype} cache: "
                         f"use a bfloat16 cache (rollout cache_dtype) or attention_impl='chunked'")
    page = _largest_divisor(cache_len, PAGE_SIZES)
    if page is None:
        raise ValueError(f"paged decode attention needs the KV cache length to be a multiple of {PAGE_SIZES[-1]} "
                         f"(its smallest page); got {cache_len}: choose capacity + chunk accordingly or use "
                         f"attention_impl='chunked'")
    interpret = interpret or _INTERPRETED.get()
    pages_per_slot = cache_len // page
    per_block = max(c for c in range(1, max(1, DECODE_BLOCK_TOKENS // page) + 1) if pages_per_slot % c == 0)

    def shard(q, k_cache, v_cache, lengths, layer):  # page indices are local to a shard's slots
        kv_heads, _, slots = k_cache.shape[:3]
        pool = lambda a: a.reshape(kv_heads, -1, page, head_dim)  # noqa: E731  [K, layers * slots * pages, ...]
        first_page = (layer * slots + jnp.arange(slots)) * pages_per_slot
        page_indices = (first_page[:, None] + jnp.arange(pages_per_slot)[None, :]).astype(jnp.int32)
        context = pltpu.force_tpu_interpret_mode() if interpret else contextlib.nullcontext()
        with context:  # read when the kernel is traced
            out = paged_attention((q[:, 0] * head_dim ** -0.5).astype(q.dtype), pool(k_cache), pool(v_cache),
                                  lengths.astype(jnp.int32), page_indices, pages_per_compute_block=per_block)
        return out[:, None]

    cache_spec, q_spec = ("heads", None, "rows", None, None), ("rows", None, "heads", None)
    return _per_shard(shard, (q, k_cache, v_cache, lengths, jnp.asarray(layer, jnp.int32)),
                      (q_spec, cache_spec, cache_spec, ("rows",), ()), q_spec)
