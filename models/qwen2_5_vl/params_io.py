"""Reading and writing the parameter tree with orbax, with shape/dtype checks that name the key."""
from __future__ import annotations

import json
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
    # Unsharded leaves go to one local device: left to orbax they would take the saved sharding,
    # which fails where the device count differs (a training export read by a one-device binary).
    one_device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

    def target(path_key, leaf):
        key = "/".join(str(getattr(k, "key", k)) for k in path_key)
        shape, dtype = stored[key]
        return jax.ShapeDtypeStruct(shape, dtype, sharding=flat_shardings.get(key, one_device))

    abstract = jax.tree_util.tree_map_with_path(target, expected)
    return ocp.StandardCheckpointer().restore(os.path.abspath(path), abstract)


class StreamingParamsWriter:
    """Writes a parameter checkpoint that orbax restores, one slab at a time.

    `StandardCheckpointer.save` holds every array in memory until it commits (about twice the
    model, measured), which defeats converting a model larger than RAM. This writer lets orbax
    lay down the checkpoint's metadata for a tree of 1-element placeholders, then replaces each
    placeholder with a full-size zarr array (same encoding orbax chose, non-OCDBT layout) and
    writes it in slabs along the leading axis, so memory holds one slab at a time.
    """

    def __init__(self, path: str, structure: dict[tuple[str, ...], tuple[tuple[int, ...], np.dtype]],
                 slab_axis_keys: set[tuple[str, ...]] = frozenset()):
        import tensorstore as ts  # an orbax dependency

        self.path = os.path.abspath(path)
        placeholder: dict = {}
        for key, (shape, dtype) in structure.items():
            node = placeholder
            for part in key[:-1]:
                node = node.setdefault(part, {})
            node[key[-1]] = np.zeros((1,) * len(shape), dtype)
        ocp.Checkpointer(ocp.StandardCheckpointHandler(use_ocdbt=False)).save(
            self.path, args=ocp.args.StandardSave(placeholder))
        self.arrays = {}
        for key, (shape, _) in structure.items():
            array_dir = os.path.join(self.path, ".".join(key))
            with open(os.path.join(array_dir, ".zarray")) as f:
                zarr_meta = json.load(f)
            chunks = (1, *shape[1:]) if key in slab_axis_keys else shape
            spec = {"driver": "zarr", "kvstore": {"driver": "file", "path": array_dir},
                    "metadata": {**zarr_meta, "shape": list(shape), "chunks": list(chunks)}}
            self.arrays[key] = ts.open(spec, create=True, delete_existing=True).result()

    def write(self, key: tuple[str, ...], value: np.ndarray, index: int | None = None) -> None:
        array = self.arrays[key]
        target = array if index is None else array[index]
        target.write(np.asarray(value, dtype=array.dtype.numpy_dtype)).result()
