"""Reading and writing the parameter tree with orbax, with shape/dtype checks that name the key."""
from __future__ import annotations

import os

import jax
import numpy as np
import orbax.checkpoint as ocp


def _flat(tree) -> dict[str, object]:
    return {"/".join(str(getattr(k, "key", k)) for k in path): leaf
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def save_params(path: str, params: dict) -> None:
    """Writes `params` (numpy or jax arrays) to a fresh orbax directory and waits for it."""
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(os.path.abspath(path), params)
    checkpointer.wait_until_finished()


def stored_structure(path: str) -> dict:
    """{key: (shape, dtype)} of a saved parameter tree, without reading the data."""
    meta = ocp.StandardCheckpointer().metadata(os.path.abspath(path)).item_metadata.tree
    return {k: (tuple(m.shape), np.dtype(m.dtype)) for k, m in _flat(meta).items()}


def check_structure(path: str, expected: dict) -> dict:
    """Compares the stored tree with `expected` (a tree of arrays or ShapeDtypeStructs) and raises
    a ValueError naming every missing, unexpected or mis-shaped key. Returns the stored structure."""
    stored = stored_structure(path)
    want = {k: tuple(v.shape) for k, v in _flat(expected).items()}
    missing = sorted(set(want) - set(stored))
    extra = sorted(set(stored) - set(want))
    shapes = [f"{k}: stored {stored[k][0]}, expected {want[k]}"
              for k in sorted(set(want) & set(stored)) if stored[k][0] != want[k]]
    problems = ([f"missing: {', '.join(missing)}"] if missing else []) + \
               ([f"unexpected: {', '.join(extra)}"] if extra else []) + shapes
    if problems:
        raise ValueError(f"checkpoint {path} does not match the model config: " + "; ".join(problems))
    return stored


def load_params(path: str, expected: dict, shardings=None) -> dict:
    """Restores parameters saved by `save_params`, keeping their stored dtypes.

    expected: a tree of arrays/ShapeDtypeStructs with the model's structure (e.g. from
    `Qwen2_5_VL.abstract(cfg).params()`); shardings: an optional matching tree of shardings.
    """
    stored = check_structure(path, expected)
    flat_shardings = _flat(shardings) if shardings is not None else {}

    def target(path_key, leaf):
        key = "/".join(str(getattr(k, "key", k)) for k in path_key)
        shape, dtype = stored[key]
        return jax.ShapeDtypeStruct(shape, dtype, sharding=flat_shardings.get(key))

    abstract = jax.tree_util.tree_map_with_path(target, expected)
    return ocp.StandardCheckpointer().restore(os.path.abspath(path), abstract)
