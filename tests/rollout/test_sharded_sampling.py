"""The rollout engine on a device mesh: a sharded KV cache and explicitly sharded steps sample the
same trajectories as one device, whether the weights are the training state's in place, a
gathered copy, or that copy viewed on one host's devices; meshes that cannot hold the cache
are refused before anything is allocated."""
import jax
import numpy as np
import pytest
from flax import nnx

from codedance_jax import mesh as mesh_lib
from codedance_jax.processing.tokenizer import load_tokenizer
from configs.sft import DEMO_TOKENIZER
from models.qwen2_5_vl import Qwen2_5_VL, get_preset
from rollout import sampler
from rollout.engine import Engine, EngineConfig, Request
from rollout.weights import choose_layout, host_local, host_mesh, sampling_params
from rollout_helpers import smooth_image

CFG = get_preset("demo")
ENGINE = EngineConfig(num_slots=4, max_context=384, prefill_chunk=64, decode_steps=8, max_turns=3,
                      max_turn_tokens=24, max_response_tokens=200, max_tool_tokens=150)
CODE_TURN = "<code>\nprint(input_image.size)\n</code>"


@pytest.fixture(scope="module")
def setup():
    model = Qwen2_5_VL(CFG, rngs=nnx.Rngs(3))
    tokenizer = load_tokenizer(DEMO_TOKENIZER)
    image = smooth_image(112, 140)
    requests = [Request.from_question(f"What colour is shape {i}?", image if i % 2 else None, seed=i)
                for i in range(3)]
    requests.append(Request.from_question("How big is it?", image, forced_turns=[CODE_TURN]))
    return model, tokenizer, requests


def assert_same(expected, got):
    for a, b in zip(expected, got, strict=True):
        assert a.tokens == b.tokens and a.finish_reason == b.finish_reason
        np.testing.assert_allclose(a.log_probs, b.log_probs, atol=1e-4)


def test_sharded_engine_samples_what_one_device_samples(setup, pool):
    """In place on the training mesh, and as the gathered copy on the host's own mesh (on one
    process: all devices, laid out (rows, 1, tensor))."""
    model, tokenizer, requests = setup
    expected = Engine(model, tokenizer, pool, ENGINE).generate(requests)
    assert expected[-1].tool_calls and expected[-1].tool_calls[0].outcome == "ok"  # an append after a tool
    mesh = mesh_lib.make_mesh((2, 2, 2))
    params = jax.device_put(model.params(), mesh_lib.param_shardings(model, mesh))
    engine = Engine(Qwen2_5_VL.abstract(CFG), tokenizer, pool, ENGINE, mesh=mesh)
    assert engine.cache.cache.k.sharding.spec == jax.sharding.PartitionSpec("tensor", None, ("data", "fsdp"),
                                                                            None, None)
    assert_same(expected, engine.generate(requests, params=sampling_params(params, CFG, mesh, "train")))

    local_mesh = host_mesh(mesh)
    assert local_mesh.shape == {"data": 4, "fsdp": 1, "tensor": 2}
    local = host_local(sampling_params(params, CFG, mesh, "gathered"), local_mesh)
    leaf = local["text"]["embed"]
    assert leaf.sharding.mesh == local_mesh and leaf.sharding.spec == jax.sharding.PartitionSpec("tensor", None)  # vocab over tensor
    engine = Engine(Qwen2_5_VL.abstract(CFG), tokenizer, pool, ENGINE, mesh=local_mesh)
    assert_same(expected, engine.generate(requests, params=local))


def test_auto_layout_gathers_only_weights_split_over_the_data_parallel_axes(setup):
    model = setup[0]
    for shape, layout in (((2, 2, 2), "gathered"), ((8, 1, 1), "train")):  # CPU reports no memory limit
        mesh = mesh_lib.make_mesh(shape)
        params = jax.eval_shape(lambda: model.params())
        assert choose_layout("auto", params, CFG, mesh) == layout


@pytest.mark.parametrize("shape, slots, message", [
    ((4, 1, 2), 6, r"6 slots do not divide over the mesh's data-parallel axes \('data', 'fsdp'\) \(4 devices\)"),
    ((2, 1, 4), 4, r"2 KV heads do not divide over the mesh axis 'tensor' \(4 devices\)"),
])
def test_a_mesh_that_cannot_hold_the_cache_is_refused_before_allocating(shape, slots, message):
    with pytest.raises(ValueError, match=message):
        sampler.SlotCache(CFG, slots, 256, 64, 8, mesh=mesh_lib.make_mesh(shape))

