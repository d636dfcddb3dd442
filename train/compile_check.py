"""Ahead-of-time compile the real train and rollout steps for a TPU topology, from any machine,
and print what one chip would need in HBM.

    pip install -r requirements-tpu.txt   # libtpu: the TPU compiler, no TPU needed
    python -m train.compile_check --config=configs/sft.py:7b --topology=v5p:2x2x2
    python -m train.compile_check --config=configs/grpo.py:7b --topology=v5p:2x2x1 --step=grpo \
        --config.grad_accum_steps=512
    python -m train.compile_check --config=configs/grpo.py:7b --topology=v5p:2x2x1 --step=rollout

Exit status 2: a step does not fit in the HBM of one chip (the TPU compiler refuses it, or its
memory analysis adds up to more than the chip's HBM).

--step=sft (default) and --step=grpo compile `train.step.jit_train_step` / `jit_grpo_step` with
the state and batch shardings of a real run on a mesh built from `config.mesh_shape` over the
topology's devices, traced under that mesh as the binaries run them. Nothing is allocated: the
state and the batch are ShapeDtypeStructs carrying their shardings. The batch is the worst case
a step sees: every micro-batch full (SFT: `batch_size / grad_accum_steps` rows; GRPO: one
update's `prompts_per_step x group_size / num_minibatches` trajectories over grad_accum_steps),
every row padded to the longest length bucket (or --seq_len), and every row holding one image of
--image_patches patches laid out in perfectly packed 64-patch attention windows (the vision
layout's smallest size for that many patches). It also prints the step's model FLOPs and the
step times at which it would run at 40% / 60% MFU (train/model_flops.py).

--step=rollout compiles the sampler's decode and append steps over the sharded slot KV cache
of the config's rollout settings (train/compile_rollout.py).
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
from models.qwen2_5_vl import attention_kernels  # noqa: E402
from models.qwen2_5_vl.config import ModelConfig  # noqa: E402
from models.qwen2_5_vl.model import window_bucket_for  # noqa: E402
from train import compile_rollout, model_flops  # noqa: E402
from train.experiment import model_config  # noqa: E402
from train.state import abstract_state, learning_rate_schedule, make_optimizer, state_shardings  # noqa: E402
from train.policy_loss import PolicyLossConfig  # noqa: E402
from train.step import jit_grpo_step, jit_train_step  # noqa: E402

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
    token_floats: tuple[str, ...] = ()  # GRPO's per-token float32 arrays (train/inputs.TOKEN_FLOATS)

    @property
    def slots(self) -> int:
        return self.windows * self.window_patches

    def shapes(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        a, b, length = self.accum, self.rows, self.seq_len
        i32 = np.dtype(np.int32)
        shapes = {"input_ids": ((a, b, length), i32), "attention_mask": ((a, b, length), i32),
                  "loss_mask": ((a, b, length), i32), "positions": ((a, 3, b, length), i32)}
        shapes.update({key: ((a, b, length), np.dtype(np.float32)) for key in self.token_floats})
        if self.patches:
            shapes.update(pixel_values=((a, self.patches, self.patch_dim), np.dtype(np.float32)),
                          patch_index=((a, self.slots), i32), rope_hw=((a, self.slots, 2), i32),
                          frame_windows=((a, self.windows, self.frame_windows), i32),
                          merged_order=((a, self.slots // 4), i32))
        return shapes


def batch_spec(config, model_cfg: ModelConfig, *, data_parallel: int, num_blocks: int, seq_len: int = 0,
               image_patches: int = 0, batch_size: int = 0, token_floats: tuple[str, ...] = ()) -> BatchSpec:
    """The batch of a step: `num_blocks` process-local blocks, each with its own vision layout.
    batch_size: sequences per optimizer step (0: config.batch_size).

    Raises when the batch does not split over the grad-accumulation steps, the data-parallel
    mesh axes or the processes, like the SFT binary would.
    """
    batch_size = batch_size or config.batch_size
    if batch_size % config.grad_accum_steps:
        raise ValueError(f"batch_size {batch_size} is not divisible by grad_accum_steps "
                         f"{config.grad_accum_steps}")
    rows = batch_size // config.grad_accum_steps
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
        patch_dim=vision.patch_dim, window_patches=vision.window_patches, token_floats=token_floats)


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


def grpo_update_rows(config) -> int:
    """Trajectories per GRPO optimizer update: a step's prompts x samples over its mini-batches
    (train/grpo.py sets batch_size to prompts x samples at startup)."""
    trajectories = config.grpo.prompts_per_step * config.grpo.group_size
    if trajectories % config.grpo.num_minibatches:
        raise ValueError(f"{trajectories} trajectories per step (grpo.prompts_per_step x grpo.group_size) do not "
                         f"split into grpo.num_minibatches={config.grpo.num_minibatches}")
    return trajectories // config.grpo.num_minibatches


def grpo_token_floats(config) -> tuple[str, ...]:
    """GRPO's per-token float arrays in the batch: old log-probs only when a rollout batch feeds
    several updates (train/grpo_trainer.py)."""
    return ("advantages", "sampler_log_probs") + (("old_log_probs",) if config.grpo.num_minibatches > 1 else ())


def train_model_config(config, devices, seq_len: int) -> ModelConfig:
    """The train step's model: on TPU, whole sequences take splash attention when their length tiles."""
    return compile_rollout.attention_for(model_config(config), devices, attention_kernels.splash_fits(seq_len))


def policy_loss_config(config) -> PolicyLossConfig:
    """The policy loss as train/grpo.py builds it (log-probs at the sampling temperature)."""
    return PolicyLossConfig(temperature=config.rollout.temperature or 1.0, **config.loss.to_dict())


def lower_step(config, devices, *, step: str = "sft", seq_len: int = 0, image_patches: int = 0):
    """(lowered train step, mesh, batch spec) for `config` on `devices` (e.g. a topology's):
    the SFT step, or with step="grpo" the GRPO update (with the KL reference when kl_coef > 0)."""
    if step not in ("sft", "grpo"):
        raise ValueError(f"lower_step lowers the 'sft' or 'grpo' train step, not {step!r}")
    model_cfg = model_config(config)
    mesh = mesh_lib.make_mesh(config.mesh_shape, devices)
    mesh_lib.check_model_fits_mesh(model_cfg.text.num_heads, model_cfg.text.num_kv_heads, mesh)
    num_blocks = len({d.process_index for d in devices})
    grpo = step == "grpo"
    spec = batch_spec(config, model_cfg, data_parallel=mesh.shape["data"] * mesh.shape["fsdp"],
                      num_blocks=num_blocks, seq_len=seq_len, image_patches=image_patches,
                      batch_size=grpo_update_rows(config) if grpo else 0,
                      token_floats=grpo_token_floats(config) if grpo else ())
    model_cfg = train_model_config(config, devices, spec.seq_len)
    param_dtype = jnp.dtype(config.param_dtype)
    tx = make_optimizer(config)
    shardings = state_shardings(model_cfg, tx, mesh, param_dtype)
    state = abstract_state(model_cfg, tx, shardings, param_dtype)
    batch = abstract_batch(spec, mesh)
    common = dict(remat=config.remat, num_blocks=num_blocks, loss_chunk=config.loss_chunk_tokens)
    if not grpo:
        return jit_train_step(model_cfg, tx, learning_rate_schedule(config), shardings, **common).lower(
            state, batch), mesh, spec
    loss_cfg = policy_loss_config(config)
    update = jit_grpo_step(model_cfg, loss_cfg, tx, learning_rate_schedule(config), shardings, **common)
    reference = state.params if loss_cfg.kl_coef else None
    return update.lower(state, batch, reference), mesh, spec


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


def compile_and_report(name: str, lowered, device_kind: str, resident_gib: float = 0.0) -> bool:
    """Compiles one lowered step and prints its memory per chip; whether it fits.
    resident_gib: memory held outside the call (the training state beside a rollout)."""
    start = time.perf_counter()
    try:
        compiled = lowered.compile()
    except jax.errors.JaxRuntimeError as e:
        if not out_of_memory(e):
            raise
        # The compiler stops at the first buffer assignment that exceeds HBM, so there is no
        # breakdown; its message says how much the temporaries need.
        print(f"{name}: DOES NOT FIT in {HBM_GIB.get(device_kind, '?')} GiB HBM per chip: {out_of_memory(e)}")
        return False
    report = memory_report(compiled, device_kind)
    print(f"{name}: compiled in {time.perf_counter() - start:.0f} s; memory per chip (GiB):")
    for key in ("argument", "output", "alias", "temp", "generated_code"):
        print(f"  {key:15s} {report[key]:8.2f}")
    total = report["total"] + resident_gib
    if resident_gib:
        print(f"  {'step total':15s} {report['total']:8.2f}\n  {'+ train state':15s} {resident_gib:8.2f} "
              f"(resident beside the rollout)")
    fits = "unknown HBM size" if math.isnan(report["hbm"]) else "FITS" if total <= report["hbm"] else "DOES NOT FIT"
    print(f"  {'total':15s} {total:8.2f} of {report['hbm']:.0f} GiB HBM: {fits}")
    return fits != "DOES NOT FIT"


def print_model_flops(config, model_cfg: ModelConfig, spec: BatchSpec, step: str, chips: int, device_kind: str):
    """Model FLOPs of the step and the step times at which MFU would be 40% / 60% (an estimate:
    see train/model_flops.py for what is counted)."""
    with_reference = step == "grpo" and policy_loss_config(config).kl_coef > 0
    flops = model_flops.step_flops(model_cfg, rows=spec.accum * spec.rows, seq_len=spec.seq_len,
                                   patches_per_row=spec.patches // spec.rows,
                                   forward_passes=4 if with_reference else 3)
    print(f"model FLOPs per step {flops.model / 1e15:.4g} PFLOP (6 x params x tokens: {flops.six_n_d / 1e15:.4g})")
    peak = model_flops.PEAK_BF16_FLOPS.get(device_kind)
    if peak:
        times = ", ".join(f"{mfu:.0%} MFU at {flops.step_time_at(mfu, chips, peak):.4g} s" for mfu in (0.4, 0.6))
        print(f"modelled MFU on {chips} chips of {peak / 1e12:.0f} TFLOP/s bf16: {times} per step (estimate)")


def describe_topology(topology: str, devices, mesh) -> None:
    print(f"topology {topology}: {len(devices)} chips ({devices[0].device_kind}), "
          f"{len({d.process_index for d in devices})} hosts; mesh {dict(mesh.shape)}")


def describe_train_step(config, step: str, devices, mesh, spec: BatchSpec) -> None:
    data_parallel = mesh.shape["data"] * mesh.shape["fsdp"]
    print(f"{step} step: model {config.init_checkpoint or config.model_preset}, dtype {config.dtype}, params "
          f"{config.param_dtype}, remat {config.remat}, attention "
          f"{train_model_config(config, devices, spec.seq_len).attention_impl}, loss chunk "
          f"{config.loss_chunk_tokens} tokens")
    print(f"batch {spec.accum * spec.rows} sequences = {spec.accum} micro-batches x {spec.rows} rows "
          f"({spec.rows // data_parallel} per data-parallel shard), sequence length {spec.seq_len}"
          + (f", per-token {', '.join(spec.token_floats)}" if spec.token_floats else ""))
    if spec.patches:
        print(f"images: {spec.patches // spec.rows} patches per sequence, {spec.patches} patch rows, "
              f"{spec.windows} windows (F={spec.frame_windows}) per micro-batch")
    else:
        print("images: none (text only)")


def describe_rollout(config, devices, spec: compile_rollout.RolloutSpec, layout: str) -> None:
    impl = compile_rollout.rollout_model_config(config, devices).attention_impl
    print(f"rollout: model {config.init_checkpoint or config.model_preset}, dtype {config.dtype}, attention {impl}"
          f"{' (decode: paged kernel)' if impl == 'splash' else ''}, weights in the {layout!r} layout")
    print(f"KV cache: {spec.slots} slots x {spec.cache_len} positions ({spec.capacity} context + {spec.chunk} "
          f"chunk); decode {spec.steps} tokens per call over the whole cache")
    print(f"append: one segment of {spec.segment} tokens (padded), "
          + (f"one image of {spec.image_patches} patches" if spec.image_patches else "no image"))


def main(argv):
    del argv
    config, topology, step = FLAGS.config, FLAGS.topology, FLAGS.step
    devices = topology_devices(topology)
    kind = devices[0].device_kind
    resident_gib = 0.0
    if step == "rollout":
        lowered, mesh, spec, layout, resident = compile_rollout.lower_rollout(
            config, devices, segment_tokens=FLAGS.seq_len, image_patches=FLAGS.image_patches)
        describe_topology(topology, devices, mesh)
        describe_rollout(config, devices, spec, layout)
        resident_gib = resident / _GIB
    else:
        step_lowered, mesh, spec = lower_step(config, devices, step=step, seq_len=FLAGS.seq_len,
                                              image_patches=FLAGS.image_patches)
        describe_topology(topology, devices, mesh)
        describe_train_step(config, step, devices, mesh, spec)
        lowered = {f"{step} step": step_lowered}
    fits = [compile_and_report(name, one, kind, resident_gib) for name, one in lowered.items()]
    if step != "rollout":
        print_model_flops(config, model_config(config), spec, step, len(devices), kind)
    if not all(fits):
        raise SystemExit(2)


if __name__ == "__main__":
    # Defined here, not on import: train.sft and train.grpo, importable with this module, have --config.
    config_flags.DEFINE_config_file("config", None, "Experiment config file and preset, e.g. configs/sft.py:7b; "
                                    "override fields with --config.x=y.")
    flags.DEFINE_string("topology", None, "TPU topology to compile for, as libtpu names it: <version>:<chips per "
                        "axis>, e.g. v5e:4x4 (16 chips), v5p:2x2x1 (4 chips, v5p-8), v6e:2x4 (8 chips).")
    flags.DEFINE_integer("seq_len", 0, "Padded sequence length of every row; 0 = the config's largest length "
                         "bucket. --step=rollout: tokens of the appended segment; 0 = rollout.max_tool_tokens.")
    flags.DEFINE_integer("image_patches", 2048, "Image patch rows (14x14 pixels each) per sequence, as one image; "
                         "2048 is a ~400K-pixel image (512 image tokens). 0 = a text-only step.")
    flags.DEFINE_enum("step", "sft", ["sft", "grpo", "rollout"], "What to compile: the SFT train step, the GRPO "
                      "update (--config=configs/grpo.py:...), or the rollout's decode and append steps.")
    flags.mark_flags_as_required(["config", "topology"])
    app.run(main)
