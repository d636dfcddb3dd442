"""Activation sharding constraints by logical axis name (the parameters' rules in
codedance_jax/mesh.py), applied against the mesh a computation is traced under (`jax.set_mesh`).

Without such a mesh (CPU tests, single-device runs, callers that jit without one) they are
no-ops, so the model code carries them unconditionally.
"""
from __future__ import annotations

import math
from typing import Sequence

import jax
from jax.sharding import PartitionSpec

from codedance_jax import mesh as mesh_lib

_RULES = dict(mesh_lib.DEFAULT_RULES)


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
    """x laid out with each dimension over the mesh axes of its logical name (None: whole).

    A dimension its mesh axes do not divide is left whole rather than refused: activation
    shapes follow the data (e.g. a micro-batch's vision windows), and replicating one of them
    is a memory cost, not an error.
    """
    if len(axes) != x.ndim:
        raise ValueError(f"{len(axes)} logical axes {tuple(axes)} for an array of shape {x.shape}")
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    spec = []
    for size, entry in zip(x.shape, mesh_lib.logical_to_spec(axes, _RULES)):
        names = () if entry is None else entry if isinstance(entry, tuple) else (entry,)
        names = tuple(n for n in names if n in mesh.axis_names)
        parts = math.prod(mesh.shape[n] for n in names)
        spec.append(names if names and size % parts == 0 else None)
    return jax.lax.with_sharding_constraint(x, PartitionSpec(*spec))
