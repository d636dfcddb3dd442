"""The Pallas TPU attention path (models/qwen2_5_vl/attention_kernels.py), run in Pallas' TPU
interpret mode on CPU against the dense reference (layers.attention with the equivalent mask)."""
import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from codedance_jax.mesh import make_mesh
from models.qwen2_5_vl import attention_kernels as ak
from models.qwen2_5_vl import text
from models.qwen2_5_vl.config import TextConfig
from models.qwen2_5_vl.layers import attention

ATOL = 2e-5


def qkv(rng, batch, length, heads, kv_heads, head_dim):
    return tuple(jnp.asarray(rng.standard_normal((batch, length, n, head_dim)), jnp.float32)
                 for n in (heads, kv_heads, kv_heads))


def padded_rows(length):
    """Row 0: right padding of 83 tokens; row 1: left padding of 45 (as HF batches pad)."""
    valid = np.ones((2, length), bool)
    valid[0, length - 83:] = False
    valid[1, :45] = False
    return valid


def dense_causal(q, k, v, valid):
    length = q.shape[1]
    return attention(q, k, v, np.tril(np.ones((length, length), bool))[None] & valid[:, None, :])


def test_splash_equals_dense_causal_with_padding_and_gqa():
    """384 tokens (a multiple of the 128 block, not a power of two), 4 query heads over 2 KV heads."""
    q, k, v = qkv(np.random.default_rng(0), 2, 384, 4, 2, 32)
    valid = padded_rows(384)
    ours = ak.splash_causal_attention(q, k, v, jnp.asarray(valid), interpret=True)
    np.testing.assert_allclose(np.asarray(ours)[valid], np.asarray(dense_causal(q, k, v, valid))[valid],
                               atol=ATOL, rtol=0)


def test_splash_gradients_equal_dense():
    """Splash's custom VJP (its dq and dkv kernels) against jax.grad of the dense path; padding rows
    get no cotangent, as in the losses."""
    rng = np.random.default_rng(1)
    q, k, v = qkv(rng, 2, 256, 4, 2, 32)  # two blocks: diagonal and off-diagonal block pairs
    valid = padded_rows(256)
    cotangent = jnp.asarray(rng.standard_normal(q.shape) * valid[:, :, None, None], jnp.float32)

    def grads(attend):
        return jax.grad(lambda q, k, v: (attend(q, k, v) * cotangent).sum(), argnums=(0, 1, 2))(q, k, v)

    ours = grads(lambda q, k, v: ak.splash_causal_attention(q, k, v, jnp.asarray(valid), interpret=True))
    ref = grads(lambda q, k, v: dense_causal(q, k, v, valid))
    for name, a, b in zip("qkv", ours, ref):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=0, err_msg=f"d{name}")


def test_splash_refuses_a_length_it_cannot_tile():
    q, k, v = qkv(np.random.default_rng(2), 1, 200, 2, 1, 32)
    with pytest.raises(ValueError, match="multiple of 128.*length 200"):
        ak.splash_causal_attention(q, k, v, jnp.ones((1, 200), bool), interpret=True)


def test_paged_decode_equals_dense_over_each_slots_filled_part():
    """Three slots filled to 1, 37 and all 96 positions, in layer 1 of a 2-layer head-major cache
    (pages of 32: the kernel must follow the page indices to the right layer and slot). The
    kernel takes bfloat16 caches; the reference reads the same values in float32."""
    rng = np.random.default_rng(3)
    kv_heads, layers, slots, cache_len, head_dim = 2, 2, 3, 96, 32
    k_cache, v_cache = (jnp.asarray(rng.standard_normal((kv_heads, layers, slots, cache_len, head_dim)), jnp.bfloat16)
                        for _ in range(2))
    q = jnp.asarray(rng.standard_normal((slots, 1, 4, head_dim)), jnp.float32)
    lengths = np.array([1, 37, 96], np.int32)
    ours = ak.paged_decode_attention(q, k_cache, v_cache, jnp.int32(1), jnp.asarray(lengths), interpret=True)
    layer = lambda c: c[:, 1].transpose(1, 2, 0, 3).astype(jnp.float32)  # noqa: E731  [B, S, K, H]
    mask = (np.arange(cache_len)[None, :] < lengths[:, None])[:, None, :]
    np.testing.assert_allclose(ours, attention(q, layer(k_cache), layer(v_cache), mask), atol=ATOL, rtol=0)


def test_paged_decode_refuses_a_cache_it_cannot_page():
    q, lengths = jnp.zeros((2, 1, 2, 32)), jnp.ones(2, jnp.int32)
    odd = jnp.zeros((1, 1, 2, 40, 32), jnp.bfloat16)
    with pytest.raises(ValueError, match="multiple of 16.*got 40"):
        ak.paged_decode_attention(q, odd, odd, jnp.int32(0), lengths)
    wide = jnp.zeros((1, 1, 2, 64, 32), jnp.float32)
    with pytest.raises(ValueError, match="bfloat16; got a float32 cache"):
        ak.paged_decode_attention(q, wide, wide, jnp.int32(0), lengths)


def test_kernels_run_per_shard_under_a_mesh():
    """Under jax.set_mesh (data 2 x tensor 2), both kernels run in a shard_map (XLA cannot
    partition a Pallas call): rows split over data, heads over tensor, page indices per shard."""
    mesh = make_mesh((2, 1, 2), jax.devices()[:4])
    rng = np.random.default_rng(5)
    q, k, v = qkv(rng, 2, 128, 4, 2, 32)
    valid = padded_rows(128)
    cache = jnp.asarray(rng.standard_normal((2, 2, 2, 64, 32)), jnp.bfloat16)
    lengths = jnp.array([5, 64], jnp.int32)
    with jax.set_mesh(mesh):
        ours = ak.splash_causal_attention(q, k, v, jnp.asarray(valid), interpret=True)
        decoded = ak.paged_decode_attention(q[:, :1], cache, cache, jnp.int32(1), lengths, interpret=True)
    np.testing.assert_allclose(np.asarray(ours)[valid], np.asarray(dense_causal(q, k, v, valid))[valid],
                               atol=ATOL, rtol=0)
    layer = cache[:, 1].transpose(1, 2, 0, 3).astype(jnp.float32)
    mask = (np.arange(64)[None, :] < np.asarray(lengths)[:, None])[:, None, :]
    np.testing.assert_allclose(decoded, attention(q[:, :1], layer, layer, mask), atol=ATOL, rtol=0)
    tensor_4 = make_mesh((1, 1, 4), jax.devices()[:4])
    with jax.set_mesh(tensor_4), pytest.raises(ValueError, match="2 heads do not divide"):
        ak.splash_causal_attention(q, k, v, jnp.asarray(valid), interpret=True)


# A two-layer decoder small enough to run its attention in interpret mode.
CFG = TextConfig(vocab_size=64, hidden_size=64, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                 mrope_section=(2, 3, 3))


@pytest.fixture(scope="module")
def decoder():
    rng = np.random.default_rng(4)  # numpy weights: eager nnx init would compile each initialiser
    shapes = nnx.to_pure_dict(nnx.state(nnx.eval_shape(lambda: text.TextDecoder(CFG, True, rngs=nnx.Rngs(0))),
                                        nnx.Param))
    params = jax.tree.map(lambda a: jnp.asarray(0.2 * rng.standard_normal(a.shape), jnp.float32), shapes)
    embeds = jnp.asarray(rng.standard_normal((2, 128, CFG.hidden_size)), jnp.float32)
    positions = jnp.broadcast_to(jnp.arange(128), (3, 2, 128))
    return params, embeds, positions


def test_auto_takes_the_xla_path_on_cpu_and_splash_the_kernel(decoder):
    params, embeds, positions = decoder
    mask = jnp.ones((2, 128), jnp.int32)
    jaxpr = lambda impl: str(jax.make_jaxpr(  # noqa: E731
        lambda e: text.forward_hidden(CFG, params, e, positions, mask, jnp.float32, attention_impl=impl))(embeds))
    assert "pallas_call" not in jaxpr("auto") and "pallas_call" not in jaxpr("chunked")
    assert "pallas_call" in jaxpr("splash")
    with pytest.raises(ValueError, match="attention_impl must be one of"):
        ak.use_pallas("flash", True)


def test_decoder_forward_and_cache_decode_agree_across_impls(decoder):
    """The model-level hook-up: a padded full forward, then prefill + one decode step over the
    head-major bfloat16 cache, give the same hidden states with splash/paged (interpret) as chunked."""
    params, embeds, positions = decoder
    real = padded_rows(128)
    mask = jnp.asarray(real, jnp.int32)
    with ak.interpreted():  # the model path, with the kernels interpreted
        full = {impl: text.forward_hidden(CFG, params, embeds, positions, mask, jnp.float32, attention_impl=impl)
                for impl in ("chunked", "splash")}
    np.testing.assert_allclose(full["splash"][real], full["chunked"][real], atol=1e-4, rtol=0)

    # A 16-token prefill takes the dense path under either impl (only T == 1 is paged).
    cache = text.KVCache.zeros(CFG, batch=2, max_len=96, dtype=jnp.bfloat16)
    _, cache = text.forward_with_cache(CFG, params, embeds[:, :16], positions[:, :, :16], jnp.array([16, 9]),
                                       cache, jnp.float32)
    with ak.interpreted():
        decoded = {impl: text.forward_with_cache(CFG, params, embeds[:, 16:17], positions[:, :, 16:17],
                                                 jnp.array([1, 1]), cache, jnp.float32, attention_impl=impl)[0]
                   for impl in ("chunked", "splash")}
    np.testing.assert_allclose(decoded["splash"], decoded["chunked"], atol=1e-4, rtol=0)


@pytest.mark.tpu
@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None, reason="libtpu is not installed "
                    "(pip install -r requirements-tpu.txt)")
def test_kernels_compile_for_a_tpu_topology():
    """The real Mosaic kernels (not interpreted) compile for v5p at 7B's head shapes (28 query heads
    over 4 KV heads of 128, bfloat16), splash with its backward, per shard on a data x tensor mesh."""
    import os

    from jax.experimental import topologies
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    devices = list(topologies.get_topology_desc(topology_name="v5p:2x2x1", platform="tpu").devices)
    mesh = make_mesh((1, 2, 2), devices)
    rows, heads = ("data", "fsdp"), "tensor"
    spec = lambda shape, dims, dtype=jnp.bfloat16: jax.ShapeDtypeStruct(  # noqa: E731
        shape, dtype, sharding=NamedSharding(mesh, P(*dims)))
    q, k = spec((2, 2048, 28, 128), (rows, None, heads, None)), spec((2, 2048, 4, 128), (rows, None, heads, None))
    valid = spec((2, 2048), (rows, None), jnp.bool_)
    cache = spec((4, 2, 4, 1024, 128), (heads, None, rows, None, None))
    loss = lambda q, k, v, valid: ak.splash_causal_attention(q, k, v, valid).astype(jnp.float32).sum()  # noqa: E731
    with jax.set_mesh(mesh):
        jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(q, k, k, valid).compile()
        decode = lambda q, c, lengths: ak.paged_decode_attention(q, c, c, 1, lengths)  # noqa: E731
        jax.jit(decode).lower(spec((4, 1, 28, 128), (rows, None, heads, None)), cache,
                              spec((4,), (rows,), jnp.int32)).compile()
