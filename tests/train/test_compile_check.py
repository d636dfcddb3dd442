"""train/compile_check: the abstract batch matches what the SFT binary feeds the step (CPU), and
the tiny preset AOT-compiles for a TPU topology with a memory report (needs libtpu)."""
import importlib.util

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from codedance_jax import mesh as mesh_lib
from configs.sft import get_config
from models.qwen2_5_vl import get_preset
from train import compile_check

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


@pytest.mark.tpu
@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None, reason="libtpu is not installed "
                    "(pip install -r requirements-tpu.txt)")
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
