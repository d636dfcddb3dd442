"""Ahead-of-time compile the real SFT train step for a TPU topology, from any machine, and print
what one chip would need in HBM.

    pip install -r requirements-tpu.txt   # libtpu: the TPU compiler, no TPU needed
    python -m train.compile_check --config=configs/sft.py:7b --topology=v5p:2x2x2
    python -m train.compile_check --config=configs/sft.py:7b --topology=v5e:4x4 --seq_len=16384 \
        --config.grad_accum_steps=16 --config.mesh_shape='(1,-1,1)'

Exit status 2: the step does not fit in the HBM of one chip (the TPU compiler refuses it, or
its memory analysis adds up to more than the chip's HBM).

The step is `train.step.jit_train_step` with the state and batch shardings of a real run on a mesh
built from `config.mesh_shape` over the topology's devices. Nothing is allocated: the state and
the batch are ShapeDtypeStructs carrying their shardings. The batch is the worst case a step sees:
`batch_size / grad_accum_steps` rows per micro-batch, every row padded to the longest length
bucket (or --seq_len), and every row holding one image of --image_patches patches laid out in
perfectly packed 64-patch attention windows (the vision layout's smallest size for that many
patches).
"""
from __future__ import annotations

import dataclasses
import math
import os
import time

# AOT compilation needs no TPU: skip the libtpu lockfile (other processes on this machine may
# hold it) and the cloud metadata queries a TPU VM would answer.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from codedance_jax import mesh as mesh_lib  # noqa: E402
from models.qwen2_5_vl.config import ModelConfig  # noqa: E402
from models.qwen2_5_vl.model import window_bucket_for  # noqa: E402
from train.experiment import model_config  # noqa: E402
from train.state import abstract_state, learning_rate_schedule, make_optimizer, state_shardings  # noqa: E402
from train.step import jit_train_step  # noqa: E402

FLAGS = flags.FLAGS

# HBM per chip (one JAX device: a v5p chip's two TensorCores form one megacore device).
HBM_GIB = {"TPU v4": 32, "TPU v5 lite": 16, "TPU v5": 95, "TPU v5p": 95, "TPU v6 lite": 32, "TPU v6e": 32}
_GIB = 1024**3


@dataclasses.dataclass(frozen=True)
class BatchSpec:
    """Global shapes of one train step's batch (see train/inputs.py and vision_layout.py)."""
    accum: int  # micro-batches stacked on axis 0 (grad_accum_steps)
    rows: int  # sequences per micro-batch, global
    seq_len: int
    patches: int  # image patch rows per micro-batch, global (0: text only)
    windows: int  # vision attention windows per micro-batch, global (slots = 64 * windows)
    frame_windows: int  # F: windows of the widest frame
    patch_dim: int
    window_patches: int

    @property
    def slots(self) -> int:
        return self.windows * self.window_patches

    def shapes(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        a, b, length = self.accum, self.rows, self.seq_len
        i32 = np.dtype(np.int32)
        shapes = {"input_ids": ((a, b, length), i32), "attention_mask": ((a, b, length), i32),
                  "loss_mask": ((a, b, length), i32), "positions": ((a, 3, b, length), i32)}
        if self.patches:
            shapes.update(pixel_values=((a, self.patches, self.patch_dim), np.dtype(np.float32)),
                          patch_index=((a, self.slots), i32), rope_hw=((a, self.slots, 2), i32),
                          frame_windows=((a, self.windows, self.frame_windows), i32),
                          merged_order=((a, self.slots // 4), i32))
        return shapes


def batch_spec(config, model_cfg: ModelConfig, *, data_parallel: int, num_blocks: int, seq_len: int = 0,
               image_patches: int = 0) -> BatchSpec:
    """The batch of a step: `num_blocks` process-local blocks, each with its own vision layout.

    Raises when the batch does not split over the grad-accumulation steps, the data-parallel
    mesh axes or the processes, like the SFT binary would.
    """
    if config.batch_size % config.grad_accum_steps:
        raise ValueError(f"batch_size {config.batch_size} is not divisible by grad_accum_steps "
                         f"{config.grad_accum_steps}")
    rows = config.batch_size // config.grad_accum_steps
    for what, size in (("data-parallel mesh size (data x fsdp)", data_parallel), ("number of processes", num_blocks)):
        if rows % size:
            raise ValueError(f"micro-batch of {rows} rows (batch_size / grad_accum_steps) is not divisible by "
                             f"the {what} {size}")
    if image_patches < 0 or image_patches % model_cfg.vision.merge_unit:
        raise ValueError(f"--image_patches={image_patches} must be a non-negative multiple of "
                         f"{model_cfg.vision.merge_unit} (one merge unit)")
    vision = model_cfg.vision
    windows_per_image = -(-image_patches // vision.window_patches)
    local_windows = window_bucket_for(rows // num_blocks * windows_per_image) if image_patches else 0
    return BatchSpec(
        accum=config.grad_accum_steps, rows=rows, seq_len=seq_len or max(config.length_buckets),
        patches=rows * image_patches, windows=local_windows * num_blocks,
        frame_windows=min(window_bucket_for(windows_per_image), local_windows) if image_patches else 0,
        patch_dim=vision.patch_dim, window_patches=vision.window_patches)


def abstract_batch(spec: BatchSpec, mesh) -> dict[str, jax.ShapeDtypeStruct]:
    """The batch as sharded ShapeDtypeStructs, laid out like train.inputs.global_batch."""
    def sharding(key: str, ndim: int) -> NamedSharding:
        pspec = [None] * ndim
        pspec[2 if key == "positions" else 1] = mesh_lib.BATCH_AXES
        return NamedSharding(mesh, PartitionSpec(*pspec))

    return {k: jax.ShapeDtypeStruct(shape, dtype, sharding=sharding(k, len(shape)))
            for k, (shape, dtype) in spec.shapes().items()}


def topology_devices(name: str) -> list:
    """The devices of a TPU topology, from libtpu (no TPU attached)."""
    try:
        import libtpu  # noqa: F401
    except ImportError:
        raise SystemExit("compile_check needs libtpu, the TPU compiler: pip install -r requirements-tpu.txt "
                         "(jax[tpu] at the pinned jax version)") from None
    from jax.experimental import topologies
    try:
        return list(topologies.get_topology_desc(topology_name=name, platform="tpu").devices)
    except Exception as e:  # libtpu raises several error types for a bad name
        raise SystemExit(f"libtpu does not accept topology {name!r} ({type(e).__name__}: {e}); "
                         "use <version>:<chips per axis>, e.g. v5e:4x4, v5p:2x2x1, v6e:2x4") from None


def lower_step(config, devices, *, seq_len: int = 0, image_patches: int = 0):
    """(lowered train step, mesh, batch spec) for `config` on `devices` (e.g. a topology's)."""
    model_cfg = model_config(config)
    mesh = mesh_lib.make_mesh(config.mesh_shape, devices)
    mesh_lib.check_model_fits_mesh(model_cfg.text.num_heads, model_cfg.text.num_kv_heads, mesh)
    num_blocks = len({d.process_index for d in devices})
    spec = batch_spec(config, model_cfg, data_parallel=mesh.shape["data"] * mesh.shape["fsdp"],
                      num_blocks=num_blocks, seq_len=seq_len, image_patches=image_patches)
    param_dtype = jnp.dtype(config.param_dtype)
    tx = make_optimizer(config)
    shardings = state_shardings(model_cfg, tx, mesh, param_dtype)
    step = jit_train_step(model_cfg, tx, learning_rate_schedule(config), shardings, remat=config.remat,
                          num_blocks=num_blocks, loss_chunk=config.loss_chunk_tokens)
    state = abstract_state(model_cfg, tx, shardings, param_dtype)
    return step.lower(state, abstract_batch(spec, mesh)), mesh, spec


def out_of_memory(error: Exception) -> str | None:
    """The TPU compiler's message when it refused a step for not fitting in HBM, else None."""
    message = str(error)
    return message if "RESOURCE_EXHAUSTED" in message else None


def memory_report(compiled, device_kind: str) -> dict[str, float]:
    """Per-chip memory of a compiled step, in GiB; `total` counts donated (aliased) buffers once."""
    stats = compiled.memory_analysis()
    report = {"argument": stats.argument_size_in_bytes, "output": stats.output_size_in_bytes,
              "alias": stats.alias_size_in_bytes, "temp": stats.temp_size_in_bytes,
              "generated_code": stats.generated_code_size_in_bytes}
    report["total"] = (report["argument"] + report["output"] - report["alias"] + report["temp"]
                       + report["generated_code"])
    report = {k: v / _GIB for k, v in report.items()}
    report["hbm"] = float(HBM_GIB.get(device_kind, math.nan))
    return report


def main(argv):
    del argv
    config, topology = FLAGS.config, FLAGS.topology
    devices = topology_devices(topology)
    kind = devices[0].device_kind
    lowered, mesh, spec = lower_step(config, devices, seq_len=FLAGS.seq_len, image_patches=FLAGS.image_patches)
    data_parallel = mesh.shape["data"] * mesh.shape["fsdp"]
    print(f"topology {topology}: {len(devices)} chips ({kind}), "
          f"{len({d.process_index for d in devices})} hosts; mesh {dict(mesh.shape)}")
    print(f"model {config.init_checkpoint or config.model_preset}, dtype {config.dtype}, params "
          f"{config.param_dtype}, remat {config.remat}, loss chunk {config.loss_chunk_tokens} tokens")
    print(f"batch {config.batch_size} sequences = {spec.accum} micro-batches x {spec.rows} rows "
          f"({spec.rows // data_parallel} per data-parallel shard), sequence length {spec.seq_len}")
    if spec.patches:
        print(f"images: {spec.patches // spec.rows} patches per sequence, {spec.patches} patch rows, "
              f"{spec.windows} windows (F={spec.frame_windows}) per micro-batch")
    else:
        print("images: none (text only)")
    start = time.perf_counter()
    try:
        compiled = lowered.compile()
    except jax.errors.JaxRuntimeError as e:
        if not out_of_memory(e):
            raise
        # The compiler stops at the first buffer assignment that exceeds HBM, so there is no
        # breakdown; its message says how much the temporaries need.
        print(f"DOES NOT FIT in {HBM_GIB.get(kind, '?')} GiB HBM per chip: {out_of_memory(e)}")
        raise SystemExit(2) from None
    seconds = time.perf_counter() - start
    report = memory_report(compiled, kind)
    print(f"compiled in {seconds:.0f} s; memory per chip (GiB):")
    for key in ("argument", "output", "alias", "temp", "generated_code"):
        print(f"  {key:15s} {report[key]:8.2f}")
    fits = "unknown HBM size" if math.isnan(report["hbm"]) else (
        "FITS" if report["total"] <= report["hbm"] else "DOES NOT FIT")
    print(f"  {'total':15s} {report['total']:8.2f} of {report['hbm']:.0f} GiB HBM: {fits}")
    if fits == "DOES NOT FIT":
        raise SystemExit(2)


if __name__ == "__main__":
    # Defined here, not on import: train.sft and train.grpo, importable with this module, have --config.
    config_flags.DEFINE_config_file("config", None, "Experiment config file and preset, e.g. configs/sft.py:7b; "
                                    "override fields with --config.x=y.")
    flags.DEFINE_string("topology", None, "TPU topology to compile for, as libtpu names it: <version>:<chips per "
                        "axis>, e.g. v5e:4x4 (16 chips), v5p:2x2x1 (4 chips, v5p-8), v6e:2x4 (8 chips).")
    flags.DEFINE_integer("seq_len", 0, "Padded sequence length of every row; 0 = the config's largest length "
                         "bucket.")
    flags.DEFINE_integer("image_patches", 2048, "Image patch rows (14x14 pixels each) per sequence, as one image; "
                         "2048 is a ~400K-pixel image (512 image tokens). 0 = a text-only step.")
    flags.mark_flags_as_required(["config", "topology"])
    app.run(main)
