"""The weights the sampler reads, taken from the training state on device (no host round trip).

Two layouts on the training mesh, and a per-host one for multi-host runs:

* "train": the training state's parameters in place. Costs no memory, but under FSDP every
  decode step all-gathers every weight matrix again: a whole model's bytes over the
  interconnect per generated token, against one small matmul per layer.
* "gathered": one reshard per GRPO step to a copy in the compute dtype, replicated over the
  data-parallel axes and split over "tensor" only. Decode then moves no weights; the copy costs
  params x compute bytes / tensor devices of memory per chip (7B in bf16 on tensor 1: 15 GiB).
* per host (`host_local`): the gathered copy viewed as arrays on each process's own devices, for
  an engine whose mesh is `host_mesh(mesh)`. Nothing crosses hosts after the reshard, so one
  host's tool waits and stop pattern never meet another's collectives.

"auto" picks "train" when nothing is split over the data-parallel axes (the weights are already
whole on every device: in place is free), else "gathered" when the copy fits the devices'
reported free memory (or the backend reports none, as on CPU), else "train".
"""
from __future__ import annotations

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from codedance_jax import mesh as mesh_lib
from models.qwen2_5_vl import ModelConfig, Qwen2_5_VL

LAYOUTS = ("auto", "train", "gathered")
# The data-parallel axes' rules dropped: what stays split is what tensor parallelism splits.
GATHERED_RULES = tuple((name, None if axis in ("fsdp", mesh_lib.BATCH_AXES) else axis)
                       for name, axis in mesh_lib.DEFAULT_RULES)


def gathered_shardings(model_cfg: ModelConfig, mesh: Mesh) -> dict:
    return mesh_lib.param_shardings(Qwen2_5_VL.abstract(model_cfg), mesh, GATHERED_RULES)


def _copy_bytes_per_chip(params: dict, model_cfg: ModelConfig, mesh: Mesh) -> int:
    itemsize = np.dtype(model_cfg.compute_dtype).itemsize
    return sum(x.size for x in jax.tree.leaves(params)) * itemsize // mesh.shape["tensor"]


def _free_bytes() -> int | None:
    """Free memory of one of this process's devices, if the backend reports it (TPU and GPU do)."""
    stats = jax.local_devices()[0].memory_stats()
    if not stats or "bytes_limit" not in stats:
        return None
    return stats["bytes_limit"] - stats.get("bytes_in_use", 0)


def choose_layout(layout: str, params: dict, model_cfg: ModelConfig, mesh: Mesh) -> str:
    """The layout to sample with (see the module docstring for "auto")."""
    if layout not in LAYOUTS:
        raise ValueError(f"rollout param layout must be one of {LAYOUTS}, got {layout!r}")
    if layout != "auto":
        return layout
    if mesh.shape["fsdp"] == 1:
        return "train"
    free = _free_bytes()
    return "gathered" if free is None or _copy_bytes_per_chip(params, model_cfg, mesh) < free else "train"


def sampling_params(params: dict, model_cfg: ModelConfig, mesh: Mesh, layout: str) -> dict:
    """The parameters in `layout` ("train" or "gathered"; see choose_layout for "auto")."""
    if layout == "train":
        return params
    shardings = gathered_shardings(model_cfg, mesh)
    cast = jax.jit(lambda p: jax.tree.map(lambda x: x.astype(model_cfg.compute_dtype), p), out_shardings=shardings)
    return cast(params)


def host_mesh(mesh: Mesh) -> Mesh:
    """This process's devices of `mesh` as a mesh of its own: (local rows, 1, tensor), each device
    keeping its tensor coordinate, so a gathered copy's shards are already where they belong."""
    tensor = mesh.shape["tensor"]
    rows = mesh.devices.reshape(-1, tensor)
    mine = np.asarray([[d.process_index == jax.process_index() for d in row] for row in rows])
    if np.any(mine.any(axis=1) & ~mine.all(axis=1)):
        raise ValueError(f"the mesh's 'tensor' axis ({tensor} devices) spans processes; per-host rollouts need "
                         f"each tensor-parallel group on one host (put 'tensor' within a host's devices)")
    local = rows[mine.all(axis=1)]
    return Mesh(local.reshape(-1, 1, tensor), mesh_lib.MESH_AXES, axis_types=(AxisType.Auto,) * 3)


def host_local(gathered: dict, local_mesh: Mesh) -> dict:
    """A gathered copy (replicated over the data-parallel axes) as arrays on `local_mesh` alone:
    the same device buffers, re-described, so no data moves."""
    def local(x: jax.Array) -> jax.Array:
        spec = PartitionSpec(*x.sharding.spec)
        sharding = NamedSharding(local_mesh, spec)
        shards = {shard.device: shard.data for shard in x.addressable_shards}
        return jax.make_array_from_single_device_arrays(
            x.shape, sharding, [shards[d] for d in sharding.addressable_devices_indices_map(x.shape)])

    return jax.tree.map(local, gathered)
