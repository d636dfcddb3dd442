"""train/compile_check: the abstract batches match what the SFT and GRPO binaries feed their steps,
the GRPO update and the rollout's decode/append lower on CPU devices and refuse meshes and
lengths they cannot take (CPU); small presets AOT-compile for a TPU topology with a memory
report (needs libtpu)."""
import importlib.util
import types

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from codedance_jax import mesh as mesh_lib
from configs import grpo
from configs.sft import get_config
from models.qwen2_5_vl import get_preset
from train import compile_check, compile_rollout, model_flops

MODEL = get_preset("tiny")


def test_batch_spec_shapes():
    c = get_config("tiny")
    c.batch_size, c.grad_accum_steps, c.length_buckets = 16, 2, (256, 512)
    spec = compile_check.batch_spec(c, MODEL, data_parallel=4, num_blocks=2, image_patches=256)
    # 8 rows per micro-batch, 4 per process; 256 patches = 4 windows per row -> 16 windows per process.
    assert (spec.accum, spec.rows, spec.seq_len, spec.patches) == (2, 8, 512, 8 * 256)
    assert (spec.windows, spec.frame_windows) == (2 * 16, 4)
    shapes = spec.shapes()
    assert shapes["input_ids"] == ((2, 8, 512), np.dtype(np.int32))
    assert shapes["positions"][0] == (2, 3, 8, 512)
    assert shapes["pixel_values"] == ((2, 2048, MODEL.vision.patch_dim), np.dtype(np.float32))
    slots = 32 * MODEL.vision.window_patches
    assert shapes["patch_index"][0] == (2, slots)
    assert shapes["rope_hw"][0] == (2, slots, 2)
    assert shapes["frame_windows"][0] == (2, 32, 4)
    assert shapes["merged_order"][0] == (2, slots // 4)


def test_batch_spec_text_only_and_seq_len_override():
    c = get_config("tiny")
    spec = compile_check.batch_spec(c, MODEL, data_parallel=1, num_blocks=1, seq_len=1024, image_patches=0)
    assert spec.seq_len == 1024
    assert set(spec.shapes()) == {"input_ids", "attention_mask", "loss_mask", "positions"}


def test_batch_spec_refuses_unsplittable_batches():
    c = get_config("tiny")
    c.batch_size, c.grad_accum_steps = 8, 4  # 2 rows per micro-batch
    with pytest.raises(ValueError, match="not divisible by the data-parallel"):
        compile_check.batch_spec(c, MODEL, data_parallel=4, num_blocks=1)
    c.grad_accum_steps = 3
    with pytest.raises(ValueError, match="grad_accum_steps"):
        compile_check.batch_spec(c, MODEL, data_parallel=1, num_blocks=1)
    c.grad_accum_steps = 1
    with pytest.raises(ValueError, match="image_patches"):
        compile_check.batch_spec(c, MODEL, data_parallel=1, num_blocks=1, image_patches=6)


def test_abstract_batch_is_sharded_like_global_batch():
    c = get_config("tiny")
    c.batch_size = 8
    mesh = mesh_lib.make_mesh((2, 2, 2), jax.devices()[:8])
    spec = compile_check.batch_spec(c, MODEL, data_parallel=4, num_blocks=1, image_patches=256)
    batch = compile_check.abstract_batch(spec, mesh)
    assert batch["input_ids"].sharding.spec == PartitionSpec(None, mesh_lib.BATCH_AXES, None)
    assert batch["positions"].sharding.spec == PartitionSpec(None, None, mesh_lib.BATCH_AXES, None)
    assert batch["pixel_values"].sharding.spec == PartitionSpec(None, mesh_lib.BATCH_AXES, None)
    assert batch["frame_windows"].shape == (1, spec.windows, spec.frame_windows)


def grpo_config(**rollout):
    """The demo GRPO preset with a small update: 2 prompts x 4 samples in 2 micro-batches of 4 rows."""
    c = grpo.get_config("demo")
    c.grpo.prompts_per_step, c.grpo.group_size, c.grad_accum_steps = 2, 4, 2
    c.length_buckets, c.mesh_shape = (128,), (1, -1, 1)
    c.rollout.update({**dict(num_slots=8, max_context=256, prefill_chunk=128, max_tool_tokens=128), **rollout})
    return c


def test_grpo_batch_carries_the_policy_loss_arrays():
    c = grpo_config()
    c.grpo.num_minibatches = 2  # several updates per rollout batch: the old policy's log-probs too
    spec = compile_check.batch_spec(c, get_preset("demo"), data_parallel=2, num_blocks=1,
                                    batch_size=compile_check.grpo_update_rows(c),
                                    token_floats=compile_check.grpo_token_floats(c))
    assert spec.rows == 2  # 8 trajectories / 2 mini-batches / 2 micro-batches
    shapes = spec.shapes()
    for key in ("advantages", "sampler_log_probs", "old_log_probs"):
        assert shapes[key] == ((2, 2, 128), np.dtype(np.float32))
    c.grpo.num_minibatches = 3
    with pytest.raises(ValueError, match="num_minibatches=3"):
        compile_check.grpo_update_rows(c)


@pytest.mark.parametrize("kl_coef", [0.0, 0.1])
def test_grpo_update_lowers_on_cpu_devices_with_its_reference(kl_coef):
    c = grpo_config()
    c.loss.kl_coef = kl_coef
    lowered, mesh, spec = compile_check.lower_step(c, jax.devices()[:4], step="grpo", image_patches=64)
    assert dict(mesh.shape) == {"data": 1, "fsdp": 4, "tensor": 1}
    (_, batch, reference), _ = lowered.args_info
    assert set(batch) >= {"advantages", "sampler_log_probs", "pixel_values"}
    assert (reference is None) == (kl_coef == 0)


def test_rollout_decode_and_append_lower_on_cpu_devices():
    c = grpo_config()
    c.mesh_shape = (1, 2, 2)
    lowered, mesh, spec, layout, resident = compile_rollout.lower_rollout(c, jax.devices()[:4], image_patches=64)
    assert set(lowered) == {"decode", "append"} and layout == "gathered" and resident > 0
    assert spec.cache_len == 256 + 128
    cache = lowered["decode"].args_info[0][1]
    assert cache.k.shape[2:4] == (8, spec.cache_len)  # [kv_heads, layers, slots, max_len, head_dim]
    assert cache.k.donated  # written in place, as the engine's calls do


@pytest.mark.parametrize("change, message", [
    (dict(num_slots=6), r"6 slots do not divide over the mesh's data-parallel axes \('data', 'fsdp'\) \(4 devices\)"),
    (dict(max_tool_tokens=512), "512 tokens is longer than a slot's context.*max_context=256"),
])
def test_rollout_refuses_what_the_mesh_or_cache_cannot_hold(change, message):
    with pytest.raises(ValueError, match=message):
        compile_rollout.lower_rollout(grpo_config(**change), jax.devices()[:4])


def test_rollout_refuses_kv_heads_the_tensor_axis_does_not_divide():
    c = grpo_config()
    c.mesh_shape = (1, 1, 4)  # the demo model has 2 KV heads
    with pytest.raises(ValueError, match="2 KV heads do not divide over the mesh axis 'tensor' \\(4 devices\\)"):
        compile_rollout.lower_rollout(c, jax.devices()[:4])


def test_auto_attention_resolves_as_on_the_chips_compiled_for():
    """The tracing host is a CPU, where "auto" keeps XLA attention; a TPU executable takes the
    kernels when the shapes tile."""
    cfg = get_preset("demo")
    assert cfg.attention_impl == "auto"
    tpu = [types.SimpleNamespace(platform="tpu")]
    assert compile_rollout.attention_for(cfg, tpu, kernels_fit=True).attention_impl == "splash"
    assert compile_rollout.attention_for(cfg, tpu, kernels_fit=False).attention_impl == "chunked"
    assert compile_rollout.attention_for(cfg, jax.devices(), kernels_fit=True) is cfg
    chosen = cfg.replace(attention_impl="chunked")
    assert compile_rollout.attention_for(chosen, tpu, kernels_fit=True) is chosen


def test_model_flops_of_a_7b_step_are_close_to_six_n_d():
    """Text only, the model FLOPs are 6 x (non-embedding weights + LM head) x tokens plus attention,
    a few percent under 6 x all parameters x tokens; an image adds the vision tower's share."""
    cfg = get_preset("7b")
    text = model_flops.step_flops(cfg, rows=64, seq_len=8192, patches_per_row=0)
    assert 0.9 < text.model / text.six_n_d < 1.0
    images = model_flops.step_flops(cfg, rows=64, seq_len=8192, patches_per_row=2048)
    assert text.model < images.model < 1.2 * text.model
    assert text.step_time_at(0.5, chips=4, peak=1e15) == pytest.approx(text.model / 2e15)


needs_libtpu = pytest.mark.skipif(importlib.util.find_spec("libtpu") is None, reason="libtpu is not installed "
                                  "(pip install -r requirements-tpu.txt)")


@pytest.mark.tpu
@needs_libtpu
def test_an_unknown_topology_is_refused_by_name():
    with pytest.raises(SystemExit, match="does not accept topology 'v5p:3x3x3x3'"):
        compile_check.topology_devices("v5p:3x3x3x3")


@pytest.mark.tpu
@needs_libtpu
def test_grpo_update_and_rollout_compile_for_a_tpu_topology():
    devices = compile_check.topology_devices("v5e:2x2")
    lowered, _, _ = compile_check.lower_step(grpo_config(), devices, step="grpo", image_patches=64)
    rollout, _, _, _, _ = compile_rollout.lower_rollout(grpo_config(), devices, image_patches=64)
    for one in (lowered, rollout["decode"], rollout["append"]):
        report = compile_check.memory_report(one.compile(), devices[0].device_kind)
        assert 0 < report["total"] < report["hbm"]


@pytest.mark.tpu
@needs_libtpu
def test_tiny_preset_compiles_for_a_tpu_topology():
    devices = compile_check.topology_devices("v5e:2x2")
    c = get_config("tiny")
    c.mesh_shape, c.length_buckets = (1, -1, 1), (256,)
    lowered, mesh, spec = compile_check.lower_step(c, devices, image_patches=256)
    assert dict(mesh.shape) == {"data": 1, "fsdp": 4, "tensor": 1}
    report = compile_check.memory_report(lowered.compile(), devices[0].device_kind)
    assert set(report) == {"argument", "output", "alias", "temp", "generated_code", "total", "hbm"}
    assert report["hbm"] == 16
    assert 0 < report["argument"] and 0 < report["temp"] and 0 < report["total"] < report["hbm"]
    # The state is donated: its buffers alias the outputs and count once in the total.
    assert 0 < report["alias"] <= report["output"]
