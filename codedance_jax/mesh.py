"""Device mesh from config, and logical-axis rules -> NamedSharding.

Parameters carry logical axis names (`axes` metadata on each nnx.Param, e.g. ("layers", "embed",
"mlp")); a rule table maps each logical name to a mesh axis (or None = replicated). Sharding a
dimension that the mesh axis does not divide is an error reported up front, naming the
parameter, not a silent replication or a crash deep inside XLA.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")  # the batch is split over both data-parallel axes

# Default logical -> mesh axis rules: FSDP shards the embedding dimension of every matrix,
# tensor parallelism shards heads and MLP width, the vocabulary goes on the tensor axis.
DEFAULT_RULES: tuple[tuple[str, str | None], ...] = (
    ("batch", BATCH_AXES),
    ("layers", None),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("norm", None),
    ("qkv", None),
    ("patch", None),
    ("vision_embed", "fsdp"),
    ("vision_heads", "tensor"),
    ("vision_mlp", "tensor"),
    ("vision_merged", "fsdp"),
)


def make_mesh(shape: Sequence[int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh. One entry may be -1: it takes the remaining devices."""
    devices = list(jax.devices() if devices is None else devices)
    shape = list(shape)
    if len(shape) != len(MESH_AXES):
        raise ValueError(f"mesh shape {shape} must have {len(MESH_AXES)} entries for axes {MESH_AXES}")
    if shape.count(-1) > 1:
        raise ValueError(f"mesh shape {shape}: at most one entry may be -1")
    if -1 in shape:
        known = math.prod(s for s in shape if s != -1)
        if len(devices) % known:
            raise ValueError(f"mesh shape {shape} does not divide the {len(devices)} devices")
        shape[shape.index(-1)] = len(devices) // known
    if math.prod(shape) != len(devices):
        raise ValueError(f"mesh shape {dict(zip(MESH_AXES, shape))} needs {math.prod(shape)} devices, "
                         f"but {len(devices)} are available")
    grid = np.asarray(devices).reshape(shape)
    # Auto: XLA propagates shardings through the model code, which carries no annotations.
    return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def logical_to_spec(axes: Sequence[str | None], rules: Mapping[str, object]) -> PartitionSpec:
    spec = []
    for name in axes:
        if name is not None and name not in rules:
            raise ValueError(f"no sharding rule for logical axis {name!r}")
        spec.append(None if name is None else rules[name])
    return PartitionSpec(*spec)


def _mesh_size(mesh: Mesh, entry) -> int:
    if entry is None:
        return 1
    names = entry if isinstance(entry, tuple) else (entry,)
    return math.prod(mesh.shape[n] for n in names)


def param_shardings(module: nnx.Module, mesh: Mesh, rules=DEFAULT_RULES) -> dict:
    """NamedShardings for `module`'s parameters (same tree as `nnx.to_pure_dict` of its Params).

    Raises naming the parameter when a sharded dimension is not divisible by its mesh axes.
    """
    rules = dict(rules)
    state = nnx.state(module, nnx.Param)
    flat = {}
    for path, var in nnx.to_flat_state(state):
        axes = var.get_metadata().get("axes")
        name = "/".join(map(str, path))
        if axes is None:
            raise ValueError(f"parameter {name} has no logical 'axes' metadata")
        spec = logical_to_spec(axes, rules)
        for dim, entry in zip(var.get_value().shape, spec):
            size = _mesh_size(mesh, entry)
            if dim % size:
                raise ValueError(f"parameter {name} {tuple(var.get_value().shape)}: dimension {dim} is not divisible "
                                 f"by mesh axes {entry} of size {size}")
        flat[path] = NamedSharding(mesh, spec)
    return nnx.to_pure_dict(nnx.from_flat_state(flat))


def batch_sharding(mesh: Mesh, ndim: int, batch_dim: int = 0) -> NamedSharding:
    """Sharding of a batch array: `batch_dim` split over the data-parallel axes."""
    spec = [None] * ndim
    spec[batch_dim] = BATCH_AXES
    return NamedSharding(mesh, PartitionSpec(*spec))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def check_model_fits_mesh(num_heads: int, num_kv_heads: int, mesh: Mesh, rules=DEFAULT_RULES) -> None:
    """A clear error when attention heads do not divide the tensor-parallel axis."""
    rules = dict(rules)
    for what, count, axis in (("num_attention_heads", num_heads, rules.get("heads")),
                              ("num_key_value_heads", num_kv_heads, rules.get("kv_heads"))):
        size = _mesh_size(mesh, axis)
        if count % size:
            raise ValueError(f"{what}={count} is not divisible by the '{axis}' mesh axis of size {size}")
